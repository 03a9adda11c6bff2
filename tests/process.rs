//! The `chatd` binary as a person runs it: the banner, signals, a crash, bad flags.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{Process, CHATD};
use common::Client;

#[tokio::test]
async fn the_banner_says_what_to_type() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(&format!("sqlite://{}", dir.path().join("c.db").display()));
    assert!(p.banner[0].starts_with("chatd "), "{:?}", p.banner);
    assert!(p.addr.port() != 0, "the real port, not 0");
    assert!(p
        .banner
        .iter()
        .any(|l| l.trim() == format!("telnet 127.0.0.1 {}", p.addr.port())));
    Client::connect(p.addr).await;
}

#[tokio::test]
async fn acked_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("chatd.db").display());
    let mut p = Process::start(&db);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;
    let mut acked = Vec::new();
    // Pipelined so the writer commits them in groups, as under load.
    let batch: String = (0..500).map(|i| format!("SEND alice durable {i}\n")).collect();
    alice.write(batch.as_bytes()).await;
    for _ in 0..500 {
        acked.push(alice.ok_reply().await.parse::<i64>().unwrap());
    }
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    drop(p);

    let p = Process::start(&db);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("AUTH alice pw").await;
    let stored = alice.inbox_ids().await;
    assert_eq!(stored, acked);
}

#[tokio::test]
async fn sigterm_closes_connections_politely_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(&format!("sqlite://{}", dir.path().join("c.db").display()));
    let mut client = Client::connect(p.addr).await;
    assert_eq!(client.cmd("PING").await.last, "OK PONG");
    let started = Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(
        client.closed().await,
        vec!["BYE server shutting down".to_string()]
    );
    let status = p.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(p.addr).await.is_err(),
        "no longer listening"
    );
}

#[test]
fn an_unknown_interface_is_named_in_the_error() {
    let out = Command::new(CHATD)
        .args(["serve", "--interface", "nosuch0", "--db", "sqlite::memory:"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nosuch0\""), "{err}");
    assert!(
        err.contains("lo (127.0.0.1"),
        "lists the interfaces that exist: {err}"
    );
}

#[test]
fn interfaces_lists_names_and_addresses() {
    let out = Command::new(CHATD).arg("interfaces").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lo", "127.0.0.1"]),
        "{text}"
    );
}

#[test]
fn flags_are_also_read_from_the_environment() {
    let out = Command::new(CHATD)
        .args(["serve", "--db", "sqlite::memory:"])
        .env("CHATD_INTERFACE", "nosuch1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nosuch1\""));
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    // Far more connections asked for than descriptors exist: the budget derived from the
    // open-files limit wins, so every client hears HELLO or SERVER_BUSY, never silence.
    let p = Process::start_with(&db, &["--max-connections", "1000"], Some(200));
    let (mut served, mut refused) = (Vec::new(), 0);
    for _ in 0..80 {
        let mut c = Client::connect_raw(p.addr).await;
        let first = tokio::time::timeout(Duration::from_secs(2), c.line())
            .await
            .expect("an answer within 2 s, not a hang");
        if first.starts_with("HELLO") {
            served.push(c);
        } else {
            assert!(first.starts_with("ERR SERVER_BUSY"), "{first}");
            refused += 1;
        }
    }
    assert!(
        !served.is_empty() && refused > 0,
        "{} served, {refused} refused",
        served.len()
    );
    for c in &mut served {
        assert_eq!(c.cmd("PING").await.last, "OK PONG");
    }
    // As connections close, new ones are served again.
    served.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect(p.addr).await;
    assert_eq!(again.cmd("PING").await.last, "OK PONG");
}

/// chatd logging at info into a pipe whose reader is gone, as after `chatd serve 2>&1 | tee
/// log` when Ctrl-C has killed `tee`.
fn with_stderr_closed(dir: &std::path::Path) -> Process {
    let mut command = common::process::serve_command(&format!("sqlite://{}", dir.join("c.db").display()));
    command
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut p = Process::start_command(command);
    drop(p.child.stderr.take());
    p
}

#[tokio::test]
async fn sigint_and_sigterm_stop_it_even_when_its_stderr_is_gone() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let mut p = with_stderr_closed(dir.path());
        let mut client = Client::connect(p.addr).await;
        // Something to log into the dead pipe first.
        client.ok("REGISTER alice pw").await;
        client.ok("AUTH alice pw").await;
        let started = Instant::now();
        p.signal(signal);
        assert_eq!(
            client.closed().await,
            vec!["BYE server shutting down".to_string()]
        );
        let status = p.wait_exit(Duration::from_secs(5));
        assert!(status.success(), "signal {signal}: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn a_stop_signal_sent_twice_at_once_is_one_request() {
    // `timeout`, wrapping chatd, passes a SIGTERM on to chatd and to its process group: chatd
    // sees it twice within moments. That is a clean stop, not "exit at once".
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(&format!("sqlite://{}", dir.path().join("c.db").display()));
    let mut client = Client::connect(p.addr).await;
    client.ok("REGISTER alice pw").await;
    let _upload = p.stalled_body().await;
    p.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(20));
    p.signal(libc::SIGTERM);
    assert_eq!(
        client.closed().await,
        vec!["BYE server shutting down".to_string()]
    );
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_second_stop_signal_later_exits_at_once() {
    // A shutdown kept waiting (a request body that stalls holds it for the grace period); the
    // person at the terminal presses Ctrl-C again.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(&format!("sqlite://{}", dir.path().join("c.db").display()));
    let _upload = p.stalled_body().await;
    p.signal(libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "still stopping: the body holds the shutdown"
    );
    let again = Instant::now();
    p.signal(libc::SIGINT);
    let status = p.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(again.elapsed() < Duration::from_secs(1), "{:?}", again.elapsed());
}

#[tokio::test]
async fn sighup_says_bye_to_every_client_and_exits_0_and_sigusr1_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(&format!("sqlite://{}", dir.path().join("c.db").display()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(p.addr).await);
    }
    p.signal(libc::SIGUSR1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.child.try_wait().unwrap().is_none(), "SIGUSR1 does not kill it");
    assert_eq!(clients[0].cmd("PING").await.last, "OK PONG");
    p.signal(libc::SIGHUP);
    for client in &mut clients {
        assert_eq!(
            client.closed().await,
            vec!["BYE server shutting down".to_string()]
        );
    }
    let status = p.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn started_under_nohup_it_outlives_the_terminal() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command =
        common::process::serve_command(&format!("sqlite://{}", dir.path().join("c.db").display()));
    // What nohup(1) does before it runs the command.
    // SAFETY: signal(2) is async-signal-safe and only changes the child about to exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut p = Process::start_command(command);
    let mut client = Client::connect(p.addr).await;
    p.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.cmd("PING").await.last, "OK PONG");
    assert!(p.child.try_wait().unwrap().is_none(), "still running");
}

/// Room traffic pipelined into a server killed mid-stream: every SEND acknowledged before the
/// kill is in the room after a restart, and the membership too.
async fn acked_room_messages_survive_sigkill_mid_traffic(db: &str) {
    let mut p = Process::start(db);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;
    alice.ok("JOIN #class").await;
    let mut bob = Client::connect(p.addr).await;
    bob.ok("REGISTER bob pw").await;
    bob.ok("AUTH bob pw").await;
    bob.ok("JOIN #class").await;
    alice.line().await; // bob joined
    let batch: String = (0..2000).map(|i| format!("SEND #class durable {i}\n")).collect();
    alice.write(batch.as_bytes()).await;
    let mut acked = Vec::new();
    // Killed while most of them are still in flight.
    while acked.len() < 300 {
        let line = alice.line().await;
        acked.push(line.strip_prefix("OK ").expect(&line).parse::<i64>().unwrap());
    }
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    drop((p, alice));

    let p = Process::start(db);
    let mut bob = Client::connect(p.addr).await;
    bob.ok("AUTH bob pw").await;
    let mut stored = std::collections::BTreeSet::new();
    let mut after = 0;
    loop {
        let page = bob.cmd(&format!("HISTORY #class after {after}")).await;
        let Some(last) = page.data.last() else { break };
        after = common::Msg::parse_room(last).id;
        stored.extend(
            page.data
                .iter()
                .map(|l| common::Msg::parse_room(l))
                .filter(|m| m.from == "alice")
                .map(|m| m.id),
        );
    }
    let lost: Vec<&i64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged room messages lost: {lost:?}",
        lost.len()
    );
    assert_eq!(bob.cmd("ROOMS").await.data.len(), 1, "bob is still a member");
}

#[tokio::test]
async fn acked_room_messages_survive_sigkill_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    acked_room_messages_survive_sigkill_mid_traffic(&format!(
        "sqlite://{}",
        dir.path().join("chatd.db").display()
    ))
    .await;
}

#[tokio::test]
async fn acked_room_messages_survive_sigkill_on_postgres() {
    let Some(backend) = common::Backend::postgres("acked_room_messages_survive_sigkill_on_postgres") else {
        return;
    };
    let db = common::TestDb::create(backend).await;
    acked_room_messages_survive_sigkill_mid_traffic(&db.url).await;
}
