//! `chatd load` end to end: each scenario run as the real binary against a real `chatd serve`
//! on loopback, with small sizes, its `--json` report parsed and checked, and its exit status
//! (0 pass, 1 a rule failed, 130 stopped by a signal). No timing thresholds here: figures
//! belong in BENCHMARKS.md.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use common::process::{Process, CHATD};
use common::{http_token, Backend, TestDb};

/// A `chatd serve` process on ephemeral loopback ports with a fresh database; killed on drop.
struct Served {
    line: SocketAddr,
    http: SocketAddr,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("c.db").display());
        let process = Process::start_with(&db, extra, None);
        Served {
            line: process.addr,
            http: process.http.expect("HTTP is on"),
            process,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.process.child.id()
    }
}

/// Runs `chatd load <args> --json`; returns the exit success and the parsed report.
async fn load(args: &[&str]) -> (bool, Value) {
    let (code, report) = load_code(args).await;
    (code == Some(0), report)
}

/// Runs `chatd load <args> --json`; returns the exit code and the parsed report.
async fn load_code(args: &[&str]) -> (Option<i32>, Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(CHATD).arg("load").args(args).arg("--json").output(),
    )
    .await
    .expect("the load run ends by itself")
    .expect("chatd load runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "one JSON object on stdout ({e}): {stdout:?}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// The rule of that name in the report's verdict.
fn rule<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["verdict"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name:?}: {r:#}"))
}

fn failed(r: &Value, name: &str) -> bool {
    rule(r, name)["passed"] == false
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a count: {v}"))
}

/// The CI smoke run: 200 connections held for 2 s, with the server's memory and a plot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_smoke() {
    let server = Served::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("conns.svg");
    let (passed, r) = load(&[
        "connections",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "200",
        "--hold",
        "2",
        "--server-pid",
        &server.pid().to_string(),
        "--plot",
        plot.to_str().unwrap(),
    ])
    .await;
    assert!(passed, "{r:#}");
    let c = &r["connect"];
    assert_eq!(u(&c["attempted"]), 200);
    assert_eq!(u(&c["opened"]), 200, "{r:#}");
    assert_eq!(u(&c["failures"]["refused"]) + u(&c["failures"]["server_busy"]), 0);
    assert_eq!(u(&c["failures"]["timeout"]) + u(&c["failures"]["other"]), 0);
    assert!(c["per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(u(&r["held"]["dropped"]), 0);
    let m = &r["memory"][0];
    assert_eq!(u(&m["server_pid"]), u64::from(server.pid()));
    assert_eq!(u(&m["conns"]), 200, "{m}");
    assert!(u(&m["before_kib"]) > 0 && u(&m["holding_kib"]) > 0, "{m}");
    assert!(m["per_conn_kib"].as_f64().is_some());
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(
        svg.contains("<svg") && svg.contains("connections open") && svg.contains("RSS of server"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

/// `--proto irc`: connections register on the IRC door and are held; PING counts PONGs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_connections_register_and_ping_counts_pongs() {
    let server = Served::start(&[]).await;
    let irc = server.process.irc.expect("the IRC door is open").to_string();
    let (passed, r) = load(&[
        "connections",
        "--proto",
        "irc",
        "--addr",
        &irc,
        "--conns",
        "100",
        "--hold",
        "1",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["connect"]["opened"]), 100, "{r:#}");
    // chatd's NickServ speaks to each after its welcome: that is not a close.
    assert_eq!(u(&r["held"]["dropped"]), 0, "{r:#}");
    let (passed, r) = load(&[
        "ping",
        "--proto",
        "irc",
        "--addr",
        &irc,
        "--conns",
        "10",
        "--requests",
        "2000",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["run"]["ok"]), 2000, "{r:#}");
    assert_eq!(u(&r["run"]["errors"]), 0, "{r:#}");
    // The line port is no IRC server: registering there fails, and says so.
    let (passed, r) = load(&[
        "connections",
        "--proto",
        "irc",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "3",
        "--connect-timeout",
        "2",
    ])
    .await;
    assert!(!passed, "{r:#}");
    assert_eq!(u(&r["connect"]["opened"]), 0, "{r:#}");
    let out = Command::new(CHATD)
        .args(["load", "http", "--proto", "irc", "--addr", &irc])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "http does not speak IRC");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("http speaks HTTP"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_privmsgs_between_accounts_reach_each_recipient_once_and_are_stored() {
    let server = Served::start(&["--load-test-hashing", "--max-send-rate", "0"]).await;
    let irc = server.process.irc.expect("the IRC door is open").to_string();
    let (passed, r) = load(&[
        "chat",
        "--proto",
        "irc",
        "--addr",
        &irc,
        "--users",
        "6",
        "--rate",
        "200",
        "--duration",
        "1",
        "--user-prefix",
        "ircd",
        "--irc-register",
    ])
    .await;
    assert!(passed, "{r:#}");
    let written = u(&r["delivery"]["acked"]);
    assert!(written >= 150, "{r:#}");
    assert_eq!(u(&r["delivery"]["delivered"]), written, "{r:#}");
    assert_eq!(u(&r["delivery"]["lost"]), 0, "{r:#}");
    // A PRIVMSG between accounts is a SEND: the line protocol reads it in the inbox.
    let mut reader = common::Client::connect(server.line).await;
    reader.ok("AUTH ircd_0 load-pw").await;
    let inbox = reader.cmd("INBOX").await;
    assert!(
        inbox.data.iter().any(|l| l.contains(" ircd.")),
        "{:?}",
        inbox.data
    );
    // An IRC server acknowledges nothing: without --rate there is no loop to close.
    let out = Command::new(CHATD)
        .args(["load", "chat", "--proto", "irc", "--addr", &irc])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_rooms_deliver_every_privmsg_to_every_other_member_once_and_fail_without_accounts() {
    let server = Served::start(&["--load-test-hashing", "--max-send-rate", "0"]).await;
    let irc = server.process.irc.expect("the IRC door is open").to_string();
    let rooms = |prefix: &'static str, extra: &'static [&'static str]| {
        let mut args = vec![
            "rooms",
            "--proto",
            "irc",
            "--addr",
            &irc,
            "--rooms",
            "2",
            "--members",
            "4",
            "--senders",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
            "--user-prefix",
            prefix,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let args = rooms("ircl", &["--irc-register"]);
    let (passed, r) = load(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(passed, "{r:#}");
    let written = u(&r["delivery"]["acked"]);
    assert!(written >= 150, "{r:#}");
    // Each of a room's 4 members hears the other senders' messages: 3 each.
    assert_eq!(u(&r["delivery"]["delivered"]), written * 3, "{r:#}");
    assert_eq!(u(&r["delivery"]["lost"]), 0, "{r:#}");
    // A sender that is sent nothing (the only one in its room) still counts what it wrote.
    let (passed, r) = load(&[
        "rooms",
        "--proto",
        "irc",
        "--addr",
        &irc,
        "--rooms",
        "3",
        "--members",
        "2",
        "--senders",
        "1",
        "--rate",
        "100",
        "--duration",
        "1",
        "--user-prefix",
        "ircp",
        "--irc-register",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(
        u(&r["delivery"]["delivered"]),
        u(&r["delivery"]["acked"]),
        "{r:#}"
    );
    // chatd's IRC door stored every one: the line protocol reads them back.
    let mut reader = common::Client::connect(server.line).await;
    reader.ok("AUTH ircl_0 load-pw").await;
    let history = reader.cmd("HISTORY #ircl.r0").await;
    let said = history.data.iter().filter(|l| l.contains(" ircl.")).count();
    assert!(said >= 50, "{:?}", history.data);
    // Without accounts chatd's door lets no one join: the run says so, and fails.
    let args = rooms("ircm", &[]);
    let (passed, r) = load(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(!passed, "{r:#}");
    assert_eq!(u(&r["rooms"]["joined"]), 0, "{r:#}");
    // An IRC server acknowledges nothing: without --rate there is no loop to close.
    let out = Command::new(CHATD)
        .args(["load", "rooms", "--proto", "irc", "--addr", &irc])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_log_in_as_users_of_their_own() {
    // The cheap hashing of a load-test deployment, which says so loudly.
    let server = Served::start(&["--load-test-hashing"]).await;
    assert!(
        server
            .process
            .banner
            .iter()
            .any(|l| l.starts_with("WARNING: --load-test-hashing")),
        "{:?}",
        server.process.banner
    );
    let (passed, r) = load(&[
        "connections",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "6",
        "--auth",
        "--hold",
        "0.5",
        "--server-pid",
        &server.pid().to_string(),
        "--baseline-after",
        "2",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(r["connect"]["auth"], true);
    assert_eq!(u(&r["connect"]["opened"]), 6, "{r:#}");
    assert_eq!(u(&r["memory"][0]["before_conns"]), 2, "{r:#}");
    // A second run picks other user names, so REGISTER does not collide.
    let (passed, r) = load(&[
        "connections",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "6",
        "--auth",
        "--hold",
        "0",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["connect"]["opened"]), 6, "{r:#}");
    // With --user-prefix the users are registered once and reused: twice the same six log in.
    for _ in 0..2 {
        let (passed, r) = load(&[
            "connections",
            "--addr",
            &server.line.to_string(),
            "--conns",
            "6",
            "--auth",
            "--user-prefix",
            "reuse",
            "--hold",
            "0",
        ])
        .await;
        assert!(passed, "{r:#}");
        assert_eq!(u(&r["connect"]["opened"]), 6, "{r:#}");
    }
    let info: Value = reqwest::get(format!("http://{}/info", server.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["users"],
        6 + 6 + 6,
        "two fresh runs and one reused prefix: {info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_reported_as_server_busy() {
    let server = Served::start(&["--max-connections", "20"]).await;
    let (passed, r) = load(&[
        "connections",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "50",
        "--hold",
        "0.5",
        "--busy-retries",
        "2",
    ])
    .await;
    assert!(!passed, "fewer connections than asked fail the run: {r:#}");
    assert!(failed(&r, "connections opened"), "{r:#}");
    assert_eq!(rule(&r, "connections opened")["by"], "30 short", "{r:#}");
    let c = &r["connect"];
    assert_eq!(u(&c["opened"]), 20, "{r:#}");
    assert_eq!(u(&c["failures"]["server_busy"]), 30, "{r:#}");
    assert_eq!(
        u(&c["failures"]["refused"]) + u(&c["failures"]["other"]) + u(&c["failures"]["timeout"]),
        0
    );
    // Every refused connection backed off and tried twice more.
    assert_eq!(u(&c["busy_retries"]), 60, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_refused() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (passed, r) = load(&[
        "connections",
        "--addr",
        &addr.to_string(),
        "--conns",
        "5",
        "--hold",
        "0",
    ])
    .await;
    assert!(!passed, "a run that opened nothing fails: {r:#}");
    assert_eq!(u(&r["connect"]["opened"]), 0);
    assert_eq!(u(&r["connect"]["failures"]["refused"]), 5, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pipelined() {
    let server = Served::start(&[]).await;
    let (passed, r) = load(&[
        "ping",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "4",
        "--pipeline",
        "8",
        "--duration",
        "2",
    ])
    .await;
    assert!(passed, "{r:#}");
    let run = &r["run"];
    assert!(u(&run["ok"]) > 0, "{r:#}");
    assert_eq!(u(&run["errors"]), 0);
    assert_eq!(u(&run["broken"]), 0, "{r:#}");
    assert_eq!(u(&run["latency"]["count"]), u(&run["ok"]));
    assert!(run["latency"]["p99_us"].as_f64().unwrap() >= run["latency"]["p50_us"].as_f64().unwrap());
    assert!(r["verdict"]["passed"].as_bool().unwrap(), "{r:#}");
    let series = r["timeline"]["series"].as_array().unwrap();
    assert!(
        series
            .iter()
            .any(|s| s[0] == "replies" && !s[1].as_array().unwrap().is_empty()),
        "{r:#}"
    );
    assert_eq!(r["schema_version"], 3);
    assert!(
        r["tool_version"].is_string() && r["started_at"].is_string(),
        "{r:#}"
    );
    assert!(
        u(&r["host"]["cores"]) >= 1 && u(&r["host"]["open_files_limit"]) > 0,
        "{r:#}"
    );
    assert_eq!(r["params"]["pipeline"], 8, "the parameters are all there: {r:#}");
    let l = &run["latency"];
    for field in [
        "min_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "mean_us",
        "stddev_us",
    ] {
        assert!(l[field].as_f64().is_some(), "{field}: {l}");
    }
    assert!(l["min_us"].as_f64() <= l["p90_us"].as_f64() && l["p90_us"].as_f64() <= l["p99_us"].as_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_counts_replies_it_did_not_expect_as_errors() {
    let server = Served::start(&[]).await;
    let (_, r) = load(&[
        "ping",
        "--addr",
        &server.line.to_string(),
        "--duration",
        "0.5",
        "--expect",
        "+PONG",
    ])
    .await;
    assert_eq!(u(&r["run"]["ok"]), 0, "{r:#}");
    assert!(u(&r["run"]["errors"]) > 0, "{r:#}");
    assert_eq!(
        u(&r["run"]["statuses"]["unexpected"]),
        u(&r["run"]["errors"]),
        "{r:#}"
    );
}

/// `--no-greeting --expect +PONG` drives a Redis-like server: here a tiny one in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_drives_a_server_without_greeting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if line == "PING" {
                        b"+PONG\r\n"
                    } else {
                        b"-ERR unknown\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (passed, r) = load(&[
        "ping",
        "--addr",
        &addr.to_string(),
        "--conns",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "1",
        "--no-greeting",
        "--expect",
        "+PONG",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert!(u(&r["run"]["ok"]) > 0, "{r:#}");
    assert_eq!(u(&r["run"]["errors"]), 0, "{r:#}");
}

/// Four users SEND to each other for 2 s: every acked message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_delivers_every_acked_message_exactly_once() {
    let server = Served::start(&[]).await;
    let (passed, r) = load(&[
        "chat",
        "--addr",
        &server.line.to_string(),
        "--users",
        "4",
        "--duration",
        "2",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["connect"]["opened"]), 4);
    let d = &r["delivery"];
    assert!(u(&d["acked"]) > 0, "{r:#}");
    assert_eq!(u(&d["delivered"]), u(&d["acked"]), "{r:#}");
    for field in [
        "lost",
        "duplicates",
        "misrouted",
        "unacked_delivered",
        "unanswered",
    ] {
        assert_eq!(u(&d[field]), 0, "{field}: {r:#}");
    }
    assert_eq!(u(&d["latency"]["count"]), u(&d["delivered"]));
    assert_eq!(u(&r["run"]["errors"]), 0);
    assert!(u(&r["run"]["ok"]) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_view_is_printed_beside_the_generators() {
    let server = Served::start(&[]).await;
    let metrics = format!(
        "http://{}/metrics",
        server.process.admin.expect("the admin listener")
    );
    let (passed, r) = load(&[
        "chat",
        "--addr",
        &server.line.to_string(),
        "--users",
        "4",
        "--duration",
        "1",
        "--server-metrics",
        &metrics,
    ])
    .await;
    assert!(passed, "{r:#}");
    let view = &r["server"][0];
    assert_eq!(view["url"], metrics.as_str());
    // Every acked SEND was committed, as the server counted it; each went to one recipient.
    assert_eq!(view["committed_direct"], r["delivery"]["acked"], "{r:#}");
    assert_eq!(view["pushes"], r["delivery"]["delivered"], "{r:#}");
    assert_eq!(view["logins_ok"], 4, "{r:#}");
    assert!(view["commits"].as_u64().unwrap() >= 1);
    assert!(view["mean_batch"].as_f64().unwrap() >= 1.0);

    // Nothing listening there: the run does not start.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(CHATD)
            .args(["load", "ping", "--addr", &server.line.to_string(), "--conns", "1"])
            .args(["--server-metrics", "http://127.0.0.1:1/metrics"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--server-metrics http://127.0.0.1:1/metrics"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let flags = [
        "--tls",
        "--tls-port",
        "0",
        "--https-port",
        "0",
        "--irc-tls-port",
        "0",
    ];
    let process = common::process::Process::start_with(&db, &flags, None);
    let port_after = |prefix: &str| -> String {
        let line = process
            .banner
            .iter()
            .find(|l| l.trim().starts_with(prefix))
            .expect(prefix);
        line.rsplit([':', ' '])
            .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit()))
            .unwrap()
            .to_string()
    };
    let line = format!("127.0.0.1:{}", port_after("ncat --ssl"));
    let irc = format!("127.0.0.1:{}", port_after("In an IRC client"));
    // `curl --cacert <path> https://127.0.0.1:<port>/info`
    let https = process
        .banner
        .iter()
        .find_map(|l| l.split("https://").nth(1)?.split('/').next())
        .unwrap()
        .to_string();
    let cert = dir.path().join("chatd-tls-cert.pem");
    let cert = cert.to_str().unwrap();
    for args in [
        vec![
            "ping",
            "--addr",
            &line,
            "--conns",
            "4",
            "--duration",
            "1",
            "--tls-ca",
            cert,
        ],
        vec!["chat", "--addr", &line, "--users", "4", "--duration", "1"],
        vec!["http", "--addr", &https, "--conns", "2", "--duration", "1"],
        vec![
            "connections",
            "--addr",
            &irc,
            "--proto",
            "irc",
            "--conns",
            "4",
            "--hold",
            "0.5",
        ],
    ] {
        let mut args = args.clone();
        args.push("--tls");
        let (passed, r) = load(&args).await;
        assert!(passed, "{args:?}: {r:#}");
        assert_eq!(
            u(&r["connect"]["opened"]),
            u(&r["connect"]["attempted"]),
            "{args:?}: {r:#}"
        );
        if args[0] != "connections" {
            assert!(u(&r["run"]["ok"]) > 0, "{args:?}: {r:#}");
        }
        if args[0] == "chat" {
            assert_eq!(
                u(&r["delivery"]["delivered"]),
                u(&r["delivery"]["acked"]),
                "{r:#}"
            );
        }
    }
    // A certificate other than the server's is refused when one is named.
    let other = tempfile::tempdir().unwrap();
    let mut config = chatd::Config::for_tests(format!("sqlite://{}", other.path().join("o.db").display()));
    config.tls = true;
    drop(chatd::Server::bind(config).await.unwrap());
    let wrong = other.path().join("chatd-tls-cert.pem");
    let (passed, r) = load(&[
        "ping",
        "--addr",
        &line,
        "--conns",
        "1",
        "--duration",
        "1",
        "--tls",
        "--tls-ca",
        wrong.to_str().unwrap(),
    ])
    .await;
    assert!(!passed, "{r:#}");
    assert_eq!(u(&r["connect"]["opened"]), 0, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_at_a_target_rate() {
    let server = Served::start(&[]).await;
    let (passed, r) = load(&[
        "chat",
        "--addr",
        &server.line.to_string(),
        "--users",
        "3",
        "--duration",
        "1.5",
        "--rate",
        "100",
        // A loaded machine may ack the last SENDs late: the rate has tests of its own.
        "--min-rate-ratio",
        "0.5",
        "--max-p99",
        "10s",
    ])
    .await;
    assert!(passed, "{r:#}");
    // Acks and deliveries are each judged by the latency limit.
    for name in ["p99 ack latency", "p99 delivery latency"] {
        assert_eq!(rule(&r, name)["limit"], "10.00 s", "{r:#}");
    }
    let d = &r["delivery"];
    // 100/s for 1.5 s: about 150, and never more (a slow machine may fall behind).
    let sent = u(&d["sent"]);
    assert!((1..=156).contains(&sent), "{r:#}");
    assert_eq!(u(&d["acked"]), sent);
    assert_eq!(u(&d["delivered"]), sent);
    assert_eq!(u(&d["lost"]) + u(&d["duplicates"]), 0);
}

/// A run against a server that loses messages fails with a non-zero exit: here a fake chatd
/// that acks every SEND and delivers none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_fails_when_acked_messages_are_lost() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next_id = 0u64;
        while let Ok((stream, _)) = listener.accept().await {
            next_id += 1_000_000;
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                write.write_all(b"HELLO chatd/0 fake\r\n").await.unwrap();
                let mut lines = BufReader::new(read).lines();
                let mut id = next_id;
                while let Ok(Some(line)) = lines.next_line().await {
                    id += 1;
                    let reply = if line.starts_with("SEND ") {
                        format!("OK {id}\r\n")
                    } else {
                        "OK\r\n".into()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (passed, r) = load(&[
        "chat",
        "--addr",
        &addr.to_string(),
        "--users",
        "2",
        "--duration",
        "0.5",
    ])
    .await;
    assert!(!passed, "{r:#}");
    assert!(u(&r["delivery"]["lost"]) > 0, "{r:#}");
    assert_eq!(u(&r["delivery"]["lost"]), u(&r["delivery"]["acked"]));
    assert!(failed(&r, "exactly once"), "{r:#}");
    assert!(
        r["problems"][0].as_str().unwrap().starts_with("exactly once"),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gets_with_and_without_a_bearer_token() {
    let server = Served::start(&[]).await;
    let http = server.http.to_string();
    let (passed, r) = load(&[
        "http",
        "--addr",
        &http,
        "--conns",
        "4",
        "--duration",
        "1",
        "--path",
        "/info",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert!(u(&r["run"]["ok"]) > 0, "{r:#}");
    assert_eq!(u(&r["run"]["errors"]) + u(&r["run"]["broken"]), 0, "{r:#}");

    let token = &http_token(&format!("http://{http}"), "loadhttp").await;
    let (passed, r) = load(&[
        "http",
        "--addr",
        &http,
        "--conns",
        "2",
        "--duration",
        "1",
        "--path",
        "/get_messages",
        "--bearer",
        token,
    ])
    .await;
    assert!(passed, "{r:#}");
    assert!(u(&r["run"]["ok"]) > 0, "{r:#}");
    assert_eq!(u(&r["run"]["errors"]), 0, "{r:#}");
    assert!(
        r["params"].get("bearer").is_none(),
        "the token is not echoed: {r:#}"
    );

    // A wrong token: every response is a 401, counted as an error, and the run fails.
    let (code, r) = load_code(&[
        "http",
        "--addr",
        &http,
        "--duration",
        "0.5",
        "--path",
        "/get_messages",
        "--bearer",
        "nope",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(u(&r["run"]["ok"]), 0, "{r:#}");
    assert!(u(&r["run"]["errors"]) > 0, "{r:#}");
    assert_eq!(u(&r["run"]["statuses"]["401"]), u(&r["run"]["errors"]), "{r:#}");
    assert!(failed(&r, "errors"), "{r:#}");
    // ... unless the run allows that many.
    let (passed, r) = load(&[
        "http",
        "--addr",
        &http,
        "--requests",
        "20",
        "--path",
        "/get_messages",
        "--bearer",
        "nope",
        "--max-error-rate",
        "1",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["run"]["statuses"]["401"]), 20, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_is_for_people() {
    let server = Served::start(&[]).await;
    let out = Command::new(CHATD)
        .args([
            "load",
            "ping",
            "--addr",
            &server.line.to_string(),
            "--duration",
            "0.3",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for row in ["scenario", "connections", "replies", "latency", "rule", "result"] {
        assert!(
            table.lines().any(|l| l.trim_start().starts_with(row)),
            "{row}: {table}"
        );
    }
    assert!(table.contains("PASS"), "{table}");
    // Standard error is not a terminal here: no progress bar.
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_port_fails_with_a_hint() {
    let server = Served::start(&[]).await;
    // The HTTP port where the line protocol was expected: a hint, not a 10 s wait each.
    let (code, r) = load_code(&[
        "ping",
        "--addr",
        &server.http.to_string(),
        "--conns",
        "3",
        "--duration",
        "0.5",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    assert!(failed(&r, "connections opened"), "{r:#}");
    let hint = r["connect"]["failures"]["hint"].as_str().unwrap();
    assert!(hint.contains("HTTP port"), "{r:#}");
    assert!(r["connect"]["secs"].as_f64().unwrap() < 8.0, "{r:#}");
    // And the line port where HTTP was expected.
    let (code, r) = load_code(&["http", "--addr", &server.line.to_string(), "--duration", "0.5"]).await;
    assert_eq!(code, Some(1), "{r:#}");
    assert!(u(&r["run"]["broken"]) > 0, "{r:#}");
    assert!(
        r["run"]["broken_example"].as_str().unwrap().contains("line port"),
        "{r:#}"
    );
    // A URL as --addr: a hint, before anything is sent.
    let out = Command::new(CHATD)
        .args(["load", "http", "--addr", &format!("http://{}/info", server.http)])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("try --addr {}", server.http)), "{err}");
}

/// An open loop the server cannot keep up with: every acked SEND, the many acked after the
/// timed phase included, is in the ack histogram (its count equals the acked SENDs), with its
/// latency counted from when it was due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_open_loop_counts_every_ack() {
    let server = Served::start(&[]).await;
    let (_, r) = load_code(&[
        "chat",
        "--addr",
        &server.line.to_string(),
        "--users",
        "2",
        "--rate",
        "20000",
        "--duration",
        "0.25",
        "--drain",
        "60",
    ])
    .await;
    let run = &r["run"];
    assert_eq!(run["requested_rate"].as_f64(), Some(20_000.0));
    rule(&r, "rate");
    let acked = u(&r["delivery"]["acked"]);
    assert!(acked > 0, "{r:#}");
    assert_eq!(u(&run["latency"]["count"]), acked, "{r:#}");
    assert_eq!(u(&run["ok"]), acked, "{r:#}");
    // Acks that came after the 0.25 s of sending are in it, and the drain says how long.
    assert!(run["latency"]["max_us"].as_f64().unwrap() > 250_000.0, "{r:#}");
    assert!(run["drain_secs"].as_f64().unwrap() > 0.0, "{r:#}");
    let d = &r["delivery"];
    assert_eq!(
        u(&d["lost"]) + u(&d["duplicates"]) + u(&d["misrouted"]),
        0,
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_at_a_rate_it_cannot_reach_fails() {
    let server = Served::start(&[]).await;
    let (code, r) = load_code(&[
        "ping",
        "--addr",
        &server.line.to_string(),
        "--rate",
        "50000000",
        "--duration",
        "1",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    assert!(failed(&r, "rate"), "{r:#}");
    assert!(
        rule(&r, "rate")["by"].as_str().unwrap().contains("points short"),
        "{r:#}"
    );
    // A rate it can reach passes, and counts exactly --requests. (The ratio leaves room for a
    // loaded machine that reads the last replies late; a limit of seconds, for the same.)
    let (passed, r) = load(&[
        "ping",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "2",
        "--rate",
        "200",
        "--requests",
        "300",
        "--min-rate-ratio",
        "0.8",
        "--max-p50",
        "2s",
        "--max-p99",
        "5000",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["run"]["sent"]), 300, "{r:#}");
    assert_eq!(u(&r["run"]["latency"]["count"]), 300, "{r:#}");
    assert!(rule(&r, "rate")["passed"] == true && rule(&r, "p99 latency")["passed"] == true);
    assert_eq!(rule(&r, "p50 latency")["limit"], "2.00 s", "{r:#}");
    assert_eq!(r["params"]["max_p99"], 5000.0, "{r:#}");
}

/// A line server that is slow on purpose: it answers each request 10 ms after the one before,
/// so never more than 100 a second, however many are asked of it.
async fn slow_line_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                if write.write_all(b"HELLO slow\r\n").await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if write.write_all(b"OK PONG\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// An open loop the server falls behind: every request goes out on time and every one is
/// answered in the drain, without an error, but the server answered about 100 a second of the
/// 400 asked, seconds late. The rate rule judges what was answered, the latency limit the
/// delay: the run fails on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_falls_behind_fails_the_rate_and_latency_rules() {
    let addr = slow_line_server().await;
    let (code, r) = load_code(&[
        "ping",
        "--addr",
        &addr.to_string(),
        "--rate",
        "400",
        "--duration",
        "1",
        "--drain",
        "30",
        "--max-p99",
        "250ms",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    let run = &r["run"];
    assert_eq!(u(&run["ok"]), u(&run["sent"]), "all answered in the drain: {r:#}");
    assert_eq!(
        u(&run["errors"]) + u(&run["unanswered"]) + u(&run["broken"]),
        0,
        "{r:#}"
    );
    assert!(rule(&r, "errors")["passed"] == true, "{r:#}");
    let (issued, answered) = (
        run["issued_rate"].as_f64().unwrap(),
        run["answered_rate"].as_f64().unwrap(),
    );
    assert!(answered < 200.0 && answered < issued, "{r:#}");
    assert!(failed(&r, "rate"), "{r:#}");
    assert!(
        rule(&r, "rate")["actual"]
            .as_str()
            .unwrap()
            .contains("/s answered of 400/s asked"),
        "{r:#}"
    );
    assert!(failed(&r, "p99 latency"), "{r:#}");
    assert_eq!(rule(&r, "p99 latency")["limit"], "250.00 ms", "{r:#}");
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("p99 latency")),
        "{r:#}"
    );
}

/// A server, broken or hostile, that answers the first request (after `greeting`) with `head`
/// and then with `x` forever, 64 KiB every 5 ms: never a line end, never the end of a head.
async fn endless_server(greeting: &'static [u8], head: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut request = [0u8; 1024];
                if stream.write_all(greeting).await.is_err() || stream.read(&mut request).await.is_err() {
                    return;
                }
                let endless = vec![b'x'; 64 * 1024];
                let _ = stream.write_all(head).await;
                while stream.write_all(&endless).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    addr
}

/// What a server sends is held only up to a bound per connection: a line that never ends, or
/// an HTTP head, breaks the connection with the reason; a body is read through, never held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cannot_make_the_generator_hold_an_endless_reply() {
    let broken = |r: &Value| {
        assert!(u(&r["run"]["broken"]) > 0, "{r:#}");
        assert!(failed(r, "errors"), "{r:#}");
        r["run"]["broken_example"].as_str().unwrap().to_string()
    };
    // Each run sends for a second and waits two for what is missing, then fails.
    let run = |scenario: &'static str, addr: SocketAddr| async move {
        let (code, r) = load_code(&[
            scenario,
            "--addr",
            &addr.to_string(),
            "--conns",
            "2",
            "--duration",
            "1",
            "--drain",
            "2",
        ])
        .await;
        assert_eq!(code, Some(1), "{r:#}");
        let why = broken(&r);
        (r, why)
    };
    let (r, why) = run("ping", endless_server(b"HELLO endless\r\n", b"").await).await;
    assert_eq!(u(&r["run"]["broken"]), 2, "{r:#}");
    assert!(why.starts_with("a reply line over 65 KiB"), "{r:#}");

    let (r, why) = run("http", endless_server(b"", b"").await).await;
    assert!(why.starts_with("an HTTP response head over 64 KiB"), "{r:#}");

    // A body of a terabyte, never held: read through until the drain gives up on it.
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n";
    let (r, why) = run("http", endless_server(b"", head).await).await;
    assert!(
        why.contains("missing after the drain") && why.contains("bytes still to come"),
        "{r:#}"
    );
    // Far more was read than the 64 KiB a connection's buffer holds.
    assert!(
        r["run"]["bytes_in_per_sec"].as_f64().unwrap() > 1024.0 * 1024.0,
        "{r:#}"
    );
}

/// A server stopped (SIGSTOP) mid-run answers and delivers nothing more: the run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_to_a_stopped_server_fail_the_run() {
    let server = Served::start(&[]).await;
    let addr = server.line.to_string();
    let run = tokio::spawn(async move {
        load_code(&[
            "chat",
            "--addr",
            &addr,
            "--users",
            "4",
            "--rate",
            "400",
            "--duration",
            "3",
            "--drain",
            "1",
        ])
        .await
    });
    // Setting up four users takes a moment (argon2); then stop the server mid-run.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.process.signal(libc::SIGSTOP);
    let (code, r) = run.await.unwrap();
    server.process.signal(libc::SIGCONT);
    assert_eq!(code, Some(1), "{r:#}");
    let d = &r["delivery"];
    assert!(u(&d["unanswered"]) + u(&d["lost"]) > 0, "{r:#}");
    assert!(failed(&r, "errors") || failed(&r, "exactly once"), "{r:#}");
}

/// SIGINT stops the run: the table is printed, --json written, marked interrupted, exit 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_prints_and_writes_the_report_so_far() {
    let server = Served::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let child = Command::new(CHATD)
        .args([
            "load",
            "ping",
            "--addr",
            &server.line.to_string(),
            "--conns",
            "2",
            "--duration",
            "60",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: kill(2) on the pid of the child just started.
    assert_eq!(
        unsafe { libc::kill(child.id().unwrap() as libc::pid_t, libc::SIGINT) },
        0
    );
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("it stops soon after SIGINT")
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("INTERRUPTED") && table.contains("replies"),
        "{table}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["interrupted"], true, "{r:#}");
    assert!(failed(&r, "interrupted"), "{r:#}");
    assert!(u(&r["run"]["ok"]) > 0, "{r:#}");
    assert!(r["run"]["secs"].as_f64().unwrap() < 30.0, "{r:#}");
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the name may hold spaces, the rest does not.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        if fields[1].parse::<u32>().ok() == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether process `pid` catches SIGINT and SIGTERM yet (its signal handlers are in place).
fn catches_stop_signals(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| {
            let bit = |signal: libc::c_int| 1u64 << (signal - 1);
            mask & bit(libc::SIGINT) != 0 && mask & bit(libc::SIGTERM) != 0
        })
}

/// Ctrl-C on a `--procs 2` run, delivered as a terminal does to its foreground group and, on
/// top, to each generator process directly: the parent passes on one stop request, no process
/// takes a duplicate for "quit now", and the report merges both processes' parts, marked
/// interrupted (exit 130) and failed for nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_procs_writes_the_merged_report_so_far() {
    let server = Served::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut command = Command::new(CHATD);
    command
        .args([
            "load",
            "ping",
            "--addr",
            &server.line.to_string(),
            "--conns",
            "4",
            "--procs",
            "2",
            "--duration",
            "60",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, as a shell gives a foreground job.
        .process_group(0);
    let child = command.spawn().unwrap();
    let parent = child.id().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let procs = loop {
        let procs = children_of(parent);
        if procs.len() == 2 && procs.iter().all(|&p| catches_stop_signals(p)) {
            break procs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two generator processes: {procs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let them connect and send for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signal = |pid: i32, signal| {
        // SAFETY: kill(2) on the process group and the processes this test started.
        unsafe { libc::kill(pid, signal) }
    };
    // Ctrl-C: the terminal signals the foreground group, and the generator processes had they
    // been in it; then the same request again a moment later, as a supervisor or `timeout`
    // may deliver it (and as the parent passed it on before).
    assert_eq!(signal(-(parent as i32), libc::SIGINT), 0);
    for &p in &procs {
        signal(p as i32, libc::SIGINT);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for &p in &procs {
        signal(p as i32, libc::SIGTERM);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("it stops soon after Ctrl-C")
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(130), "{table}");
    assert!(
        table.contains("INTERRUPTED") && table.contains("replies") && table.contains("result"),
        "{table}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["interrupted"], true, "{r:#}");
    let parts = r["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "both processes reported: {r:#}");
    assert!(
        parts.iter().all(|p| u(&p["opened"]) == 2 && u(&p["ok"]) > 0),
        "{r:#}"
    );
    assert_eq!(u(&r["connect"]["opened"]), 4, "{r:#}");
    assert_eq!(
        u(&r["run"]["ok"]),
        parts.iter().map(|p| u(&p["ok"])).sum::<u64>(),
        "{r:#}"
    );
    let failed_rules: Vec<&Value> = r["verdict"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["passed"] == false)
        .map(|x| &x["rule"])
        .collect();
    assert_eq!(failed_rules, ["interrupted"], "{r:#}");
    assert!(r["warnings"].as_array().unwrap().is_empty(), "{r:#}");
}

/// `--procs 2`: two generator processes; the merged totals are the sums of what each reported,
/// and the merged histogram has every sample (its maximum is the larger maximum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procs_merge_to_the_sum_of_the_processes() {
    let server = Served::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (passed, r) = load(&[
        "ping",
        "--addr",
        &server.line.to_string(),
        "--conns",
        "6",
        "--pipeline",
        "2",
        "--duration",
        "1",
        "--procs",
        "2",
        "--hdr-out",
        dir.path().to_str().unwrap(),
        "--timeline-csv",
        dir.path().join("t.csv").to_str().unwrap(),
    ])
    .await;
    assert!(passed, "{r:#}");
    let parts = r["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{r:#}");
    let sum = |k: &str| parts.iter().map(|p| u(&p[k])).sum::<u64>();
    assert_eq!(sum("opened"), 6);
    assert_eq!(u(&r["connect"]["opened"]), 6);
    assert_eq!(u(&r["run"]["ok"]), sum("ok"), "{r:#}");
    assert_eq!(u(&r["run"]["sent"]), sum("sent"), "{r:#}");
    assert_eq!(u(&r["run"]["latency"]["count"]), sum("latency_count"), "{r:#}");
    let max = parts
        .iter()
        .map(|p| p["latency_max_us"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(r["run"]["latency"]["max_us"].as_f64().unwrap(), max, "{r:#}");
    assert_eq!(r["procs"], 2);
    let log = std::fs::read_to_string(dir.path().join("ping-replies.hlog")).unwrap();
    assert!(log.contains("Tag=total"), "{log}");
    let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
    assert!(csv.starts_with("t_s,series,") && csv.contains(",replies,") && csv.contains("open_connections"));
}

/// Two nodes on one PostgreSQL: users are dealt out over both, and chat reports same-node and
/// cross-node delivery, exactly once over all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_two_nodes_reports_cross_node_delivery() {
    let Some(backend) = Backend::postgres("chat_over_two_nodes_reports_cross_node_delivery") else {
        return;
    };
    let db = TestDb::create(backend).await;
    let a = Process::start_with(&db.url, &["--node-id", "node-a"], None);
    let b = Process::start_with(&db.url, &["--node-id", "node-b"], None);
    let (passed, r) = load(&[
        "chat",
        "--addr",
        &a.addr.to_string(),
        "--addr",
        &b.addr.to_string(),
        "--users",
        "6",
        "--rate",
        "200",
        "--duration",
        "1.5",
        // Commits on a loaded machine may ack the last SENDs late: the rate has tests of its own.
        "--min-rate-ratio",
        "0.5",
        "--user-prefix",
        "pair",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(r["connect"]["per_node"], serde_json::json!([3, 3]), "{r:#}");
    let d = &r["delivery"];
    assert_eq!(u(&d["delivered"]), u(&d["acked"]), "{r:#}");
    assert!(
        u(&d["cross_node"]["count"]) > 0 && u(&d["same_node"]["count"]) > 0,
        "{r:#}"
    );
    assert_eq!(
        u(&d["cross_node"]["count"]) + u(&d["same_node"]["count"]),
        u(&d["latency"]["count"])
    );
    // The same users again: registered already, they just log in.
    let (passed, r) = load(&[
        "chat",
        "--addr",
        &b.addr.to_string(),
        "--users",
        "6",
        "--requests",
        "30",
        "--user-prefix",
        "pair",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(u(&r["delivery"]["acked"]), 30, "{r:#}");
}

/// `http --method POST` loads the send route with a unique message per request; the status
/// breakdown counts each 201, and the recipient has every message, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_post_sends_unique_messages() {
    let server = Served::start(&[]).await;
    let http = server.http.to_string();
    let base = format!("http://{http}");
    let client = reqwest::Client::new();
    let token = &http_token(&base, "poster").await;
    let (passed, r) = load(&[
        "http",
        "--addr",
        &http,
        "--conns",
        "3",
        "--method",
        "POST",
        "--path",
        "/",
        "--bearer",
        token,
        "--header",
        "X-Load: yes",
        "--body",
        r#"{"recipient": "poster", "message": "load {{unique}}"}"#,
        "--requests",
        "60",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(r["run"]["statuses"], serde_json::json!({"201": 60}), "{r:#}");
    assert!(r["run"]["bytes_out_per_sec"].as_f64().unwrap() > 0.0, "{r:#}");
    let inbox: Value = client
        .get(format!("{base}/get_messages"))
        .bearer_auth(token)
        .json(&serde_json::json!({"username": "poster", "limit": 1000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: std::collections::HashSet<String> = inbox["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{inbox}"))
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .filter(|m| m.starts_with("load "))
        .collect();
    assert_eq!(texts.len(), 60, "60 different messages: {inbox}");
    // Without the token: every reply a 401, and the run fails.
    let (code, r) = load_code(&[
        "http",
        "--addr",
        &http,
        "--method",
        "POST",
        "--path",
        "/",
        "--body",
        r#"{"recipient": "poster", "message": "x"}"#,
        "--requests",
        "10",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["run"]["statuses"], serde_json::json!({"401": 10}), "{r:#}");
}

/// Three rooms of five members, two of them sending, for 2 s: every acked room message reaches
/// the four other members of its room, once, in order; the report's figures agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_deliver_every_acked_message_to_every_other_member() {
    let server = Served::start(&["--load-test-hashing"]).await;
    let (passed, r) = load(&[
        "rooms",
        "--addr",
        &server.line.to_string(),
        "--rooms",
        "3",
        "--members",
        "5",
        "--senders",
        "2",
        "--duration",
        "2",
    ])
    .await;
    assert!(passed, "{r:#}");
    assert_eq!(r["scenario"], "rooms");
    assert_eq!(u(&r["connect"]["opened"]), 15, "{r:#}");
    let (d, rooms) = (&r["delivery"], &r["rooms"]);
    assert_eq!(
        (
            u(&rooms["rooms"]),
            u(&rooms["members"]),
            u(&rooms["senders"]),
            u(&rooms["joined"])
        ),
        (3, 15, 6, 15),
        "{r:#}"
    );
    let acked = u(&d["acked"]);
    assert!(acked > 0, "{r:#}");
    assert_eq!(acked, u(&r["run"]["ok"]));
    // Each acked message goes to the 4 other members of its room.
    assert_eq!(u(&d["delivered"]), acked * 4, "{r:#}");
    assert_eq!(u(&rooms["expected"]), acked * 4, "{r:#}");
    assert_eq!(u(&d["latency"]["count"]), acked * 4);
    for field in [
        "lost",
        "duplicates",
        "misrouted",
        "unacked_delivered",
        "unanswered",
    ] {
        assert_eq!(u(&d[field]), 0, "{field}: {r:#}");
    }
    assert_eq!(u(&rooms["out_of_order"]) + u(&rooms["disconnected"]), 0, "{r:#}");
    // Deliveries per second are the acks per second times the fan-out, over the same time.
    let (dps, aps) = (
        rooms["deliveries_per_sec"].as_f64().unwrap(),
        rooms["acked_per_sec"].as_f64().unwrap(),
    );
    assert!(aps > 0.0 && (dps - 4.0 * aps).abs() < 1e-6 * dps, "{r:#}");
    let l = &d["latency"];
    assert!(l["p50_us"].as_f64() <= l["p99_us"].as_f64() && l["p99_us"].as_f64() <= l["max_us"].as_f64());
    for name in ["exactly once", "in order", "members connected", "rooms joined"] {
        assert_eq!(rule(&r, name)["passed"], true, "{name}: {r:#}");
    }
}

/// A member that never reads, in a busy room, is disconnected by the server (a short push
/// queue, messages of 60 KB: the server holds about 5 MB for it before it gives up, a room of
/// two senders sends it that in about 2 s here); the others miss nothing and stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_a_member_who_never_reads_is_disconnected() {
    let server = Served::start(&[
        "--load-test-hashing",
        "--push-queue",
        "16",
        "--max-line",
        "70000",
        "--max-send-rate",
        "0",
    ])
    .await;
    let (passed, r) = load(&[
        "rooms",
        "--addr",
        &server.line.to_string(),
        "--rooms",
        "1",
        "--members",
        "4",
        "--senders",
        "2",
        "--stalled",
        "1",
        "--payload",
        "60000",
        "--duration",
        "4",
        "--drain",
        "5",
    ])
    .await;
    assert!(passed, "{r:#}");
    let (d, rooms) = (&r["delivery"], &r["rooms"]);
    assert_eq!(
        (u(&rooms["stalled_kicked"]), u(&rooms["stalled_not_kicked"])),
        (1, 0),
        "{r:#}"
    );
    assert_eq!(u(&rooms["disconnected"]), 0, "{r:#}");
    assert_eq!(u(&d["lost"]) + u(&d["duplicates"]), 0, "{r:#}");
    // The stalled member is left out: each message is owed to the 2 other readers.
    assert_eq!(u(&rooms["expected"]), 2 * u(&d["acked"]), "{r:#}");
    assert_eq!(u(&d["delivered"]), u(&rooms["expected"]), "{r:#}");
    // Its room's latency is reported apart from that of rooms without a stalled member.
    assert_eq!(
        u(&rooms["with_stalled"]["count"]),
        u(&d["latency"]["count"]),
        "{r:#}"
    );
    assert_eq!(u(&rooms["without_stalled"]["count"]), 0, "{r:#}");
}

/// A member meant to stall but never disconnected fails the run: on a default server, a
/// second of short messages fills no push queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_fail_when_a_stalled_member_is_not_disconnected() {
    let server = Served::start(&["--load-test-hashing"]).await;
    let (code, r) = load_code(&[
        "rooms",
        "--addr",
        &server.line.to_string(),
        "--rooms",
        "1",
        "--members",
        "3",
        "--senders",
        "1",
        "--stalled",
        "1",
        "--duration",
        "1",
        "--drain",
        "1",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    assert!(failed(&r, "stalled members disconnected"), "{r:#}");
    assert_eq!(
        rule(&r, "stalled members disconnected")["actual"],
        "0 of 1 joined",
        "{r:#}"
    );
    // Everything else held: the stalled member is the only problem.
    assert_eq!(r["problems"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(u(&r["delivery"]["lost"]), 0, "{r:#}");
}

/// A fake chatd that acks every room SEND and pushes nothing: every message is lost, and the
/// run fails with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_fail_when_acked_messages_are_lost() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ids = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ids = ids.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                write.write_all(b"HELLO chatd/0 fake\r\n").await.unwrap();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if line.starts_with("SEND #") {
                        format!(
                            "OK {}\r\n",
                            ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                        )
                    } else if let Some(room) = line.strip_prefix("JOIN ") {
                        format!("OK joined {room} (1 members)\r\n")
                    } else {
                        "OK\r\n".into()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (passed, r) = load(&[
        "rooms",
        "--addr",
        &addr.to_string(),
        "--rooms",
        "2",
        "--members",
        "3",
        "--senders",
        "1",
        "--duration",
        "0.5",
        "--drain",
        "0.5",
    ])
    .await;
    assert!(!passed, "{r:#}");
    let d = &r["delivery"];
    assert!(u(&d["acked"]) > 0, "{r:#}");
    // Each acked message was owed to the 2 other members of its room.
    assert_eq!(u(&d["lost"]), 2 * u(&d["acked"]), "{r:#}");
    assert!(failed(&r, "exactly once"), "{r:#}");
    assert!(
        r["problems"][0].as_str().unwrap().starts_with("exactly once"),
        "{r:#}"
    );
}
