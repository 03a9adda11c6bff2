//! A real IRC client on the door: irssi in a terminal under tmux, read from its screen as a
//! student would read it. It logs in with SASL, joins `#class`, talks with a telnet user and
//! an HTTP user, and is kicked. `scripts/test.sh` installs irssi and tmux; without them the
//! test says SKIPPED, unless CHATD_REQUIRE_IRC_CLIENTS is set, when it fails.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Msg, TestServer};

fn have(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn clients_present(test: &str) -> bool {
    if have("irssi") && have("tmux") {
        return true;
    }
    assert!(
        std::env::var_os("CHATD_REQUIRE_IRC_CLIENTS").is_none(),
        "CHATD_REQUIRE_IRC_CLIENTS is set but irssi or tmux is missing"
    );
    eprintln!("SKIPPED {test}: irssi and tmux are needed (scripts/test.sh installs them)");
    false
}

/// A program in a terminal of its own: a tmux server on a private socket, ended on drop.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn start(name: &str, command: &str, home: &Path) -> Terminal {
        let socket = format!("chatd-test-{}-{name}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "160",
                "-y",
                "45",
            ])
            .arg(command)
            .env("HOME", home)
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux new-session failed");
        Terminal { socket }
    }

    /// Types a line and presses Enter.
    fn type_line(&self, text: &str) {
        for args in [vec!["send-keys", "-l", text], vec!["send-keys", "Enter"]] {
            let status = Command::new("tmux")
                .args(["-L", &self.socket])
                .args(&args)
                .status()
                .expect("tmux runs");
            assert!(status.success());
        }
    }

    /// What the terminal shows now, with its scrollback.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-J", "-S", "-500"])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until a line of the screen holds every one of `parts`; that line.
    async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if let Some(line) = screen.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {parts:?} on the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[tokio::test]
async fn irssi_logs_in_joins_the_class_talks_to_telnet_and_http_and_is_kicked() {
    if !clients_present("irssi_logs_in_joins_the_class_talks_to_telnet_and_http_and_is_kicked") {
        return;
    }
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let irc = server.irc.expect("the IRC door is open");
    let mut teacher = server.user("teacher").await;
    teacher.ok("JOIN #class").await;
    teacher.ok("TOPIC #class Lab 3: sockets").await;
    server.user("alice").await;
    let token = common::http_token(&server.url(""), "carol").await;
    let carol_joined = reqwest::Client::new()
        .post(server.url("/rooms/class/join"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(carol_joined.status().is_success(), "{}", carol_joined.status());
    Msg::parse_room(&teacher.line().await);

    let home = tempfile::tempdir().unwrap();
    let command = format!(
        "irssi --noconnect --home={}/irssi -n alice",
        home.path().display()
    );
    let irssi = Terminal::start("irssi", &command, home.path());
    irssi.wait_for(&["Irssi"]).await;
    irssi.type_line("/set timestamp_format %H:%M:%S");
    irssi.type_line("/network add -sasl_username alice -sasl_password pw -sasl_mechanism plain class");
    irssi.type_line(&format!(
        "/server add -network class -notls {} {}",
        irc.ip(),
        irc.port()
    ));
    irssi.type_line("/connect class");
    irssi.wait_for(&["You are now logged in as alice"]).await;
    irssi.wait_for(&["SASL authentication succeeded"]).await;
    // Registered, logged in, and already in #class? No: alice is not a member yet.
    irssi
        .wait_for(&["Welcome to the chatd IRC Network", "alice"])
        .await;
    irssi.type_line("/join #class");
    irssi.wait_for(&["Topic for #class", "Lab 3: sockets"]).await;
    let joined = Msg::parse_room(&teacher.line().await);
    assert_eq!(joined.text, "alice joined");

    // The telnet user speaks: irssi shows it with the sender's nick and the commit time. Sent
    // and shown fall in the same second here, so this cannot tell server-time from the time
    // of arrival: tests/irc.rs checks the `time` tag itself.
    let id: i64 = teacher.ok("SEND #class hello from telnet").await.parse().unwrap();
    let shown = irssi.wait_for(&["teacher", "hello from telnet"]).await;
    let stored = teacher
        .cmd(&format!("HISTORY #class after {}", id - 1))
        .await
        .data
        .iter()
        .map(|l| Msg::parse_room(l))
        .find(|m| m.id == id)
        .expect("stored");
    let hms = &stored.time[11..19];
    let local = Command::new("date")
        .args(["-d", &stored.time, "+%H:%M:%S"])
        .output()
        .unwrap();
    let local = String::from_utf8_lossy(&local.stdout).trim().to_string();
    assert!(
        shown.contains(&local) || shown.contains(hms),
        "irssi shows the message's time ({local} local, {hms} UTC): {shown:?}"
    );

    // irssi speaks: telnet gets it from alice.
    irssi.type_line("hello from irssi");
    let said = Msg::parse_room(&teacher.line().await);
    assert_eq!(
        (said.from.as_str(), said.text.as_str()),
        ("alice", "hello from irssi")
    );
    irssi.type_line("/me waves");
    assert_eq!(Msg::parse_room(&teacher.line().await).text, "/me waves");

    // The HTTP user speaks.
    let posted = reqwest::Client::new()
        .post(server.url("/rooms/class/messages"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"message": "hello from http"}))
        .send()
        .await
        .unwrap();
    assert!(posted.status().is_success());
    irssi.wait_for(&["carol", "hello from http"]).await;
    Msg::parse_room(&teacher.line().await);

    // A direct message from telnet opens a query.
    teacher.ok("SEND alice see me after class").await;
    irssi.type_line("/query teacher");
    irssi.wait_for(&["teacher", "see me after class"]).await;
    irssi.type_line("/window 2");

    // The teacher removes alice.
    teacher.ok("KICK #class alice too chatty").await;
    irssi
        .wait_for(&["alice", "kicked", "#class", "teacher", "too chatty"])
        .await;
    // What the student saw, for whoever reads the test's output.
    eprintln!("irssi's #class window at the end:\n{}", irssi.screen());
    drop(irssi);
    server.stop().await;
}
