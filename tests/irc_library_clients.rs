//! Clients that are not ours on the IRC door: `ii` (Debian's FIFO-based client, driven through
//! its files as a script would) and two clients written with the Python `irc` library. Both
//! are installed by `scripts/test.sh`; without them the tests say SKIPPED, unless
//! CHATD_REQUIRE_IRC_CLIENTS is set, when they fail.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Msg, TestServer};

fn present(test: &str, what: &str, check: &mut Command) -> bool {
    if check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    assert!(
        std::env::var_os("CHATD_REQUIRE_IRC_CLIENTS").is_none(),
        "CHATD_REQUIRE_IRC_CLIENTS is set but {what} is missing"
    );
    eprintln!("SKIPPED {test}: {what} is needed (scripts/test.sh installs it)");
    false
}

/// Waits until `path` holds a line with every one of `parts`; that line.
async fn wait_for_line(path: &std::path::Path, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {parts:?} in {}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a line into one of ii's FIFOs.
async fn ii_say(path: std::path::PathBuf, line: String) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("ii's FIFO");
        fifo.write_all(format!("{line}\n").as_bytes()).unwrap();
    })
    .await
    .unwrap();
}

/// Starts ii on `irc` as `nick` (with PASS `password`, passed in its environment) in `dir`:
/// the process and its server directory (its `in` FIFO and `out` log).
fn spawn_ii(
    irc: std::net::SocketAddr,
    dir: &std::path::Path,
    nick: &str,
    password: Option<&str>,
) -> (tokio::process::Child, std::path::PathBuf) {
    let mut command = tokio::process::Command::new("ii");
    let (host, port) = (irc.ip().to_string(), irc.port().to_string());
    command
        .args(["-s", &host, "-p", &port, "-n", nick])
        .arg("-i")
        .arg(dir);
    if let Some(password) = password {
        command.args(["-k", "IIPASS"]).env("IIPASS", password);
    }
    let ii = command.kill_on_drop(true).spawn().expect("ii starts");
    (ii, dir.join(host))
}

#[tokio::test]
async fn ii_logs_in_with_pass_joins_and_talks_with_telnet_through_its_files() {
    if !present("ii", "ii", Command::new("sh").args(["-c", "command -v ii"])) {
        return;
    }
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let irc = server.irc.expect("the IRC door is open");
    let mut teacher = server.user("teacher").await;
    teacher.ok("JOIN #class").await;
    server.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut ii, server_dir) = spawn_ii(irc, dir.path(), "bob", Some("pw"));
    wait_for_line(&server_dir.join("out"), &["logged in as bob"]).await;
    ii_say(server_dir.join("in"), "/j #class".into()).await;
    let joined = Msg::parse_room(&teacher.line().await);
    assert_eq!(joined.text, "bob joined");
    let channel = server_dir.join("#class");
    wait_for_line(&channel.join("out"), &["bob", "has joined"]).await;
    teacher.ok("SEND #class hello ii").await;
    wait_for_line(&channel.join("out"), &["<teacher>", "hello ii"]).await;
    ii_say(channel.join("in"), "hello from a FIFO".into()).await;
    let said = Msg::parse_room(&teacher.line().await);
    assert_eq!(
        (said.from.as_str(), said.text.as_str()),
        ("bob", "hello from a FIFO")
    );
    ii.kill().await.ok();
    server.stop().await;
}

#[tokio::test]
async fn ii_as_a_guest_hears_the_room_and_is_heard_live_by_irc_but_not_kept() {
    if !present("ii", "ii", Command::new("sh").args(["-c", "command -v ii"])) {
        return;
    }
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_guests = true;
    })
    .await;
    let irc = server.irc.expect("the IRC door is open");
    let mut teacher = server.user("teacher").await;
    teacher.ok("JOIN #class").await;
    let mut alice = {
        server.user("alice").await;
        common::irc::Irc::sasl(irc, "alice", "pw", "").await
    };
    alice.send("JOIN #class").await;
    alice.until("366").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut ii, server_dir) = spawn_ii(irc, dir.path(), "wanderer", None);
    wait_for_line(&server_dir.join("out"), &["End of /MOTD"]).await;
    ii_say(server_dir.join("in"), "/j #class".into()).await;
    let joined = alice.expect("JOIN").await;
    assert_eq!(joined.nick(), "wanderer");
    let channel = server_dir.join("#class");
    teacher.ok("SEND #class hello guest").await;
    wait_for_line(&channel.join("out"), &["<teacher>", "hello guest"]).await;
    ii_say(channel.join("in"), "hello from a guest".into()).await;
    let said = alice.expect("PRIVMSG").await;
    assert_eq!(said.text(), "hello guest");
    let said = alice.expect("PRIVMSG").await;
    assert_eq!((said.nick(), said.text()), ("wanderer", "hello from a guest"));
    let history = teacher.cmd("HISTORY #class").await;
    assert!(
        history.data.iter().all(|l| !l.contains("hello from a guest")),
        "a guest's message is not kept: {:?}",
        history.data
    );
    ii.kill().await.ok();
    server.stop().await;
}

#[tokio::test]
async fn the_python_irc_library_logs_in_talks_and_is_kicked() {
    if !present(
        "python irc",
        "python3 with the irc package",
        Command::new("python3").args(["-c", "import irc.client"]),
    ) {
        return;
    }
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let irc = server.irc.expect("the IRC door is open");
    server.user("alice").await;
    server.user("bob").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/irc_library.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &irc.ip().to_string(), &irc.port().to_string()])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the script ends")
        .unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let first = |who: &str, kind: &str| -> serde_json::Value {
        seen[who]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("{who} saw no {kind}: {seen}"))
    };
    assert_eq!(first("alice", "loggedin")["arguments"][1], "alice");
    first("alice", "saslsuccess");
    assert_eq!(first("alice", "welcome")["target"], "alice");
    assert_eq!(first("bob", "currenttopic")["arguments"][1], "Python lab");
    let public = first("bob", "pubmsg");
    assert!(
        public["source"].as_str().unwrap().starts_with("alice!"),
        "{public}"
    );
    assert_eq!(public["arguments"][0], "hello bob");
    let private = first("alice", "privmsg");
    assert!(
        private["source"].as_str().unwrap().starts_with("bob!"),
        "{private}"
    );
    assert_eq!(private["arguments"][0], "hi alice, privately");
    assert_eq!(first("bob", "unknownmode")["arguments"][0], "k");
    let kick = first("bob", "kick");
    assert_eq!(kick["arguments"], serde_json::json!(["bob", "lab is over"]));
    // What they said was stored first: the line protocol reads it back.
    let mut reader = server.client().await;
    reader.ok("AUTH alice pw").await;
    let history = reader.cmd("HISTORY #py").await;
    let texts: Vec<String> = history.data.iter().map(|l| Msg::parse_room(l).text).collect();
    assert!(texts.contains(&"hello bob".to_string()), "{texts:?}");
    let talk = reader.cmd("HISTORY bob").await;
    assert!(talk
        .data
        .iter()
        .any(|l| Msg::parse(l).text == "hi alice, privately"));
    server.stop().await;
}
