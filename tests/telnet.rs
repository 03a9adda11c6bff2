//! The line protocol as people use it: the real `telnet` binary in a pseudo-terminal, typing
//! keys and reading the screen. Needs Debian's `telnet` (scripts/test.sh installs it).

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

    /// The screen's lines, without line ends.
    fn lines(&self) -> Vec<String> {
        self.screen()
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    /// Ctrl-] then a command at the `telnet>` prompt.
    async fn telnet_command(&mut self, command: &str) {
        self.type_keys("\x1d").await;
        self.expect("telnet> ").await;
        self.type_keys(&format!("{command}\r")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_then_ping_gets_pong() {
    if !have_telnet("ctrl_c_then_ping_gets_pong") {
        return;
    }
    let server = TestServer::start().await;
    let mut t = connected(&server).await;
    t.type_keys("PIN").await;
    // Telnet sends IAC IP, IAC DO TIMING-MARK, and shows nothing more until the mark is
    // answered.
    t.type_keys("\x03").await;
    t.type_keys("PING\r").await;
    t.expect("OK PONG\r\n").await;
    t.type_keys("ECHO still here\r").await;
    t.expect("OK still here\r\n").await;
    assert!(!t.screen().contains("ERR"), "{}", t.screen());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_mode_and_a_typo_corrected_with_backspace() {
    if !have_telnet("character_mode_and_a_typo_corrected_with_backspace") {
        return;
    }
    let server = TestServer::start().await;
    let mut t = connected(&server).await;
    t.telnet_command("mode character").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The erase key of a terminal sends DEL.
    t.type_keys("PNIG\x7f\x7f\x7fING\r").await;
    t.expect("OK PONG\r\n").await;
    t.type_keys("ECHO ab\x7fc\r").await;
    t.expect("OK ac\r\n").await;
    assert!(!t.screen().contains("UNKNOWN_COMMAND"), "{}", t.screen());
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
async fn a_push_arriving_mid_typing_leaves_the_typed_text_intact() {
    if !have_telnet("a_push_arriving_mid_typing_leaves_the_typed_text_intact") {
        return;
    }
    let server = TestServer::start().await;
    let mut alice = connected(&server).await;
    let mut bob = connected(&server).await;
    for (t, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        // Any negotiation shows the server a person at a telnet client.
        t.telnet_command("mode character").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        t.type_keys(&format!("REGISTER {name} pw\r")).await;
        t.expect("OK registered").await;
        t.type_keys(&format!("AUTH {name} pw\r")).await;
        t.expect("OK logged in").await;
    }
    bob.type_keys("SEND alice I am typing a long li").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.type_keys("SEND bob hello bob\r").await;
    alice.expect("OK ").await;
    bob.expect("hello bob\r\n").await;
    bob.type_keys("ne here\r").await;
    bob.expect("OK ").await;
    alice.expect("I am typing a long line here\r\n").await;
    // On bob's screen the push is a line of its own, and what he had typed is whole on its
    // line, not glued to the push.
    let lines = bob.lines();
    let push = lines
        .iter()
        .position(|l| l.contains("hello bob"))
        .expect("the push is shown");
    assert!(
        lines[push].starts_with("MSG ")
            && lines[push].contains(" alice ")
            && lines[push].ends_with(" hello bob"),
        "the push has a line of its own: {lines:#?}"
    );
    assert!(
        lines[..push]
            .iter()
            .any(|l| l == "SEND alice I am typing a long li"),
        "the typed text is intact on its own line: {lines:#?}"
    );
    // Alice got exactly what bob typed.
    let got = alice
        .lines()
        .into_iter()
        .find(|l| l.starts_with("MSG ") && l.contains(" bob "))
        .expect("alice's push");
    assert!(got.ends_with(" I am typing a long line here"), "{got}");
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
