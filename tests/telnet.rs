//! The line protocol as people use it: the real `telnet` binary in a pseudo-terminal, typing
//! keys and reading the screen. Needs Debian's `telnet` (scripts/test.sh installs it).
//!
//! The screen is what a terminal would show: the bytes telnet wrote, played on a grid (CR,
//! LF, BS and TAB move the cursor; a character overwrites what is under it). Each test also
//! checks the mode telnet put the terminal in, which says who echoes and edits: in telnet's
//! line mode the terminal does both, so a screen alone could not tell chatd's work from it.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;

const TELNET: &str = "/usr/bin/telnet";
/// Set (by scripts/test.sh when telnet is installed) to make these tests fail, not skip,
/// without it.
const REQUIRE_ENV: &str = "CHATD_REQUIRE_TELNET";

/// Whether telnet is here; says loudly that the test is skipped when it is not.
fn have_telnet(test: &str) -> bool {
    if std::path::Path::new(TELNET).exists() {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set but {TELNET} is missing"
    );
    eprintln!("SKIPPED {test}: no {TELNET} (apt-get install telnet; scripts/test.sh does)");
    false
}

/// `telnet` running in a pseudo-terminal: keys typed into it, and everything it showed.
struct Terminal {
    child: Child,
    keyboard: std::fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
    /// How much of the screen `expect` has gone past.
    seen: usize,
}

impl Terminal {
    fn telnet(addr: SocketAddr) -> Terminal {
        // SAFETY: plain libc calls on a descriptor this function owns; each result is checked.
        let (master, slave_path) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned();
            (OwnedFd::from_raw_fd(fd), path)
        };
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .expect("open the terminal");
        let mut command = Command::new(TELNET);
        command
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .env("TERM", "dumb")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid and ioctl are async-signal-safe; they make the terminal telnet's
            // controlling terminal, so Ctrl-C reaches it as a person's would.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("telnet starts");
        let keyboard = std::fs::File::from(master);
        let mut display = keyboard.try_clone().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let shown = screen.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // Ends with EIO once telnet has exited and the terminal is closed.
            while let Ok(n @ 1..) = display.read(&mut chunk) {
                shown.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Terminal {
            child,
            keyboard,
            screen,
            seen: 0,
        }
    }

    /// Types keys, one at a time, as a person does.
    async fn type_keys(&mut self, keys: &str) {
        for key in keys.bytes() {
            self.keyboard.write_all(&[key]).unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// Everything shown so far, as text.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until `text` appears on the screen after what was already expected; returns the
    /// screen up to and including it.
    async fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if let Some(at) = screen[self.seen.min(screen.len())..].find(text) {
                self.seen += at + text.len();
                return screen[..self.seen].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} did not appear; the screen shows:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The rows of the screen as a terminal shows them, without trailing blanks.
    fn rows(&self) -> Vec<String> {
        let mut grid: Vec<Vec<char>> = vec![Vec::new()];
        let (mut row, mut col) = (0usize, 0usize);
        for c in self.screen().chars() {
            match c {
                '\r' => col = 0,
                '\n' => {
                    row += 1;
                    if grid.len() <= row {
                        grid.push(Vec::new());
                    }
                }
                '\x08' => col = col.saturating_sub(1),
                '\t' => col = (col / 8 + 1) * 8,
                c if c.is_control() => {}
                c => {
                    let line = &mut grid[row];
                    if line.len() <= col {
                        line.resize(col + 1, ' ');
                    }
                    line[col] = c;
                    col += 1;
                }
            }
        }
        grid.into_iter()
            .map(|l| l.into_iter().collect::<String>().trim_end().to_string())
            .collect()
    }

    /// The rows, for a failure message.
    fn shown(&self) -> String {
        self.rows().join("\n")
    }

    /// How telnet has set up the terminal: whether the terminal edits lines itself (canonical
    /// mode: keys reach telnet only at Enter), and whether it echoes keys itself.
    fn mode(&self) -> (bool, bool) {
        use std::os::fd::AsRawFd;
        // SAFETY: tcgetattr fills the termios it is given; on a pseudo-terminal's master it
        // reads the settings telnet made on its side.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(self.keyboard.as_raw_fd(), &mut termios) },
            0,
            "tcgetattr: {}",
            std::io::Error::last_os_error()
        );
        (
            termios.c_lflag & libc::ICANON != 0,
            termios.c_lflag & libc::ECHO != 0,
        )
    }

    /// Waits until telnet is in character mode with chatd echoing: the terminal neither edits
    /// nor echoes, every key goes to chatd as it is typed, and chatd shows it.
    async fn in_character_mode(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.mode() != (false, false) {
            assert!(
                Instant::now() < deadline,
                "telnet is not in character mode with remote echo: (canonical, local echo) = {:?}; the screen shows:\n{}",
                self.mode(),
                self.shown()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ctrl-] then a command at the `telnet>` prompt.
    async fn telnet_command(&mut self, command: &str) {
        self.type_keys("\x1d").await;
        self.expect("telnet> ").await;
        self.type_keys(&format!("{command}\r")).await;
    }

    /// Registers `name` (password "pw") and logs in, typing as a person does.
    async fn log_in(&mut self, name: &str) {
        self.type_keys(&format!("REGISTER {name} pw\r")).await;
        self.expect("OK registered").await;
        self.type_keys(&format!("AUTH {name} pw\r")).await;
        self.expect("OK logged in").await;
    }

    /// Waits for telnet to exit by itself.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "telnet did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A telnet session that has seen the greeting.
async fn connected(server: &TestServer) -> Terminal {
    let mut terminal = Terminal::telnet(server.addr);
    terminal.expect("HELLO chatd/").await;
    terminal.expect("\r\n").await;
    terminal
}

/// Whether the screen has a row `first` with the row `then` right below it.
fn one_above_the_other(rows: &[String], first: &str, then: &str) -> bool {
    rows.windows(2).any(|w| w[0] == first && w[1] == then)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_line_mode_starts_a_fresh_line() {
    if !have_telnet("ctrl_c_in_line_mode_starts_a_fresh_line") {
        return;
    }
    let server = TestServer::start().await;
    let mut t = connected(&server).await;
    t.type_keys("PIN").await;
    // Telnet sends IAC IP, IAC DO TIMING-MARK, and shows nothing more until the mark is
    // answered; the terminal shows ^C where the cursor was. chatd's line end comes first.
    t.type_keys("\x03").await;
    t.expect("PIN^C\r\n").await;
    t.type_keys("PING\r").await;
    t.expect("OK PONG\r\n").await;
    t.type_keys("ECHO still here\r").await;
    t.expect("OK still here\r\n").await;
    assert!(!t.screen().contains("ERR"), "{}", t.screen());
    let rows = t.rows();
    assert!(
        one_above_the_other(&rows, "PIN^C", "PING"),
        "the next command starts on a row of its own:\n{}",
        t.shown()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_mode_shows_keys_as_typed_and_backspace_erases_them() {
    if !have_telnet("character_mode_shows_keys_as_typed_and_backspace_erases_them") {
        return;
    }
    let server = TestServer::start().await;
    let mut t = connected(&server).await;
    t.telnet_command("mode character").await;
    t.in_character_mode().await;
    typing_is_shown_and_edited_by_chatd(&mut t).await;
    server.stop().await;
}

/// In character mode the terminal neither echoes nor edits: what the screen shows, chatd
/// echoed, key by key.
async fn typing_is_shown_and_edited_by_chatd(t: &mut Terminal) {
    // Keys are sent as they are typed: they are on the screen before Enter.
    t.type_keys("ECHO ab").await;
    t.expect("ECHO ab").await;
    // The erase key of a terminal sends DEL.
    t.type_keys("\x7fc\r").await;
    t.expect("OK ac\r\n").await;
    t.type_keys("PNIG\x7f\x7f\x7fING\r").await;
    t.expect("OK PONG\r\n").await;
    let rows = t.rows();
    assert!(
        one_above_the_other(&rows, "ECHO ac", "OK ac") && one_above_the_other(&rows, "PING", "OK PONG"),
        "each line shows what chatd got, the typos erased:\n{}",
        t.shown()
    );
    // Ctrl-C is a key like the others here: chatd shows ^C, drops the line, and the next
    // one starts below.
    t.type_keys("SEND nobody oops\x03").await;
    t.expect("^C\r\n").await;
    t.type_keys("PING\r").await;
    t.expect("OK PONG\r\n").await;
    let rows = t.rows();
    assert!(
        one_above_the_other(&rows, "SEND nobody oops^C", "PING"),
        "{}",
        t.shown()
    );
    assert!(!t.screen().contains("ERR"), "{}", t.shown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_arriving_mid_typing_is_shown_above_the_line_being_typed() {
    if !have_telnet("a_push_arriving_mid_typing_is_shown_above_the_line_being_typed") {
        return;
    }
    let server = TestServer::start().await;
    let mut alice = connected(&server).await;
    let mut bob = connected(&server).await;
    for t in [&mut alice, &mut bob] {
        t.telnet_command("mode character").await;
        t.in_character_mode().await;
    }
    push_while_typing(&mut alice, &mut bob).await;
    server.stop().await;
}

/// Alice and bob, in character mode, log in; a message from alice arrives while bob is
/// typing. On bob's screen the message gets a row of its own, his half-typed line is written
/// again below it, and he goes on typing where he was.
async fn push_while_typing(alice: &mut Terminal, bob: &mut Terminal) {
    alice.log_in("alice").await;
    bob.log_in("bob").await;
    bob.type_keys("SEND alice I am typing a long li").await;
    bob.expect("a long li").await;
    alice.type_keys("SEND bob hello bob\r").await;
    alice.expect("OK ").await;
    bob.expect("hello bob\r\n").await;
    bob.expect("SEND alice I am typing a long li").await;
    bob.type_keys("ne here\r").await;
    bob.expect("OK ").await;
    alice.expect("I am typing a long line here\r\n").await;
    let rows = bob.rows();
    let push = rows
        .iter()
        .position(|l| l.starts_with("MSG ") && l.ends_with(" hello bob"))
        .unwrap_or_else(|| panic!("the push has a row of its own:\n{}", bob.shown()));
    assert!(
        rows[push].contains(" alice ")
            && rows[push - 1] == "SEND alice I am typing a long li"
            && rows[push + 1] == "SEND alice I am typing a long line here"
            && rows[push + 2].starts_with("OK "),
        "the half-typed line above the push, and again below it, finished:\n{}",
        bob.shown()
    );
    // Alice got exactly what bob typed.
    let got = alice
        .rows()
        .into_iter()
        .find(|l| l.starts_with("MSG ") && l.contains(" bob "))
        .expect("alice's push");
    assert!(got.ends_with(" I am typing a long line here"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnet_negotiate_puts_a_plain_telnet_in_character_mode() {
    if !have_telnet("telnet_negotiate_puts_a_plain_telnet_in_character_mode") {
        return;
    }
    let server = TestServer::start_with(|c| c.telnet_negotiate = true).await;
    let mut alice = connected(&server).await;
    let mut bob = connected(&server).await;
    // Nothing typed at the telnet> prompt: chatd's offer did it.
    alice.in_character_mode().await;
    bob.in_character_mode().await;
    typing_is_shown_and_edited_by_chatd(&mut alice).await;
    push_while_typing(&mut alice, &mut bob).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_line_mode_help_names_the_keys_for_character_mode() {
    if !have_telnet("in_line_mode_help_names_the_keys_for_character_mode") {
        return;
    }
    let server = TestServer::start().await;
    let mut t = connected(&server).await;
    // Without --telnet-negotiate chatd sends no telnet byte: telnet stays in its line mode,
    // the terminal echoing and editing.
    assert_eq!(t.mode(), (true, true), "{}", t.shown());
    t.type_keys("HELP\r").await;
    t.expect("\r\nOK\r\n").await;
    let help = t.shown();
    assert!(
        help.contains("press Ctrl-] and type mode character"),
        "HELP says how to get character mode:\n{help}"
    );
    // And doing what it says gives it.
    t.telnet_command("mode character").await;
    t.in_character_mode().await;
    t.type_keys("PING\r").await;
    t.expect("OK PONG\r\n").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_line_mode_a_push_never_costs_the_line_being_typed() {
    if !have_telnet("in_line_mode_a_push_never_costs_the_line_being_typed") {
        return;
    }
    let server = TestServer::start().await;
    let mut alice = connected(&server).await;
    let mut bob = connected(&server).await;
    alice.log_in("alice").await;
    bob.log_in("bob").await;
    // In telnet's line mode the line being typed is in the terminal, not yet sent: chatd
    // cannot tell it is there, and a push is written after it on the same row. (HELP names
    // the way out, character mode.) The line itself is sent whole at Enter.
    bob.type_keys("SEND alice half a li").await;
    bob.expect("half a li").await;
    alice.type_keys("SEND bob hi\r").await;
    alice.expect("OK ").await;
    bob.expect(" hi\r\n").await;
    bob.type_keys("ne\r").await;
    bob.expect("OK ").await;
    alice.expect(" half a line\r\n").await;
    assert!(!bob.screen().contains("ERR"), "{}", bob.shown());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn are_you_there_gets_a_visible_answer() {
    if !have_telnet("are_you_there_gets_a_visible_answer") {
        return;
    }
    let server = TestServer::start().await;
    let mut t = connected(&server).await;
    t.telnet_command("send ayt").await;
    t.expect("[chatd is here]").await;
    t.type_keys("PING\r").await;
    t.expect("OK PONG\r\n").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_exercise_with_telnet() {
    if !have_telnet("the_echo_exercise_with_telnet") {
        return;
    }
    let server = TestServer::start_with(|c| {
        c.echo_port = Some(0);
        c.echo_greeting = Some("hello".into());
        c.echo_once = true;
    })
    .await;
    let mut t = Terminal::telnet(server.echo.unwrap());
    t.expect("\r\nhello\r\n").await;
    t.type_keys("is anyone there?\r").await;
    t.expect("Connection closed by foreign host").await;
    t.exited().await;
    // Typed (the terminal's own echo), then echoed by the server.
    assert_eq!(
        t.screen().matches("is anyone there?").count(),
        2,
        "{}",
        t.screen()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_shows_what_a_real_telnet_sends_for_ctrl_c_and_masks_the_password() {
    if !have_telnet("the_trace_shows_what_a_real_telnet_sends_for_ctrl_c_and_masks_the_password") {
        return;
    }
    let (server, lines) = TestServer::traced(|c| c.load_test_hashing = true).await;
    server.user("alice").await;
    let mut t = connected(&server).await;
    t.type_keys("AUTH alice pw\r").await;
    t.expect("OK logged in").await;
    t.type_keys("PIN").await;
    t.type_keys("\x03").await;
    t.expect("PIN^C\r\n").await;
    t.type_keys("PING\r").await;
    t.expect("OK PONG\r\n").await;
    // What the learner sees on the console, in order, for that connection.
    let shown: Vec<String> = common::until_traced(&lines, "alice -> OK PONG")
        .await
        .iter()
        .filter_map(|l| l.split(" alice ").nth(1).map(str::to_string))
        .collect();
    let at = |wanted: &str| {
        shown
            .iter()
            .position(|l| l == wanted)
            .unwrap_or_else(|| panic!("{wanted:?} not traced: {shown:#?}"))
    };
    assert!(at("<- IAC IP") < at("<- IAC DO TIMING-MARK"));
    assert!(at("<- IAC DO TIMING-MARK") < at("-> IAC WILL TIMING-MARK"));
    assert!(at("-> IAC WILL TIMING-MARK") < at("<- PING"));
    let auth = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("<- AUTH"))
        .cloned();
    assert!(auth.is_some_and(|l| l.ends_with("<- AUTH alice ****")));
    assert!(lines.lock().unwrap().iter().all(|l| !l.contains(" pw")));
    server.stop().await;
}
