//! `chatd load` end to end: each scenario run as the real binary against a real `chatd serve`
//! on loopback, with small sizes, its `--json` report parsed and checked. No timing
//! thresholds here: figures belong in BENCHMARKS.md.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use common::process::{Process, CHATD};

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
    (out.status.success(), report)
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
    let m = &r["memory"];
    assert_eq!(u(&m["server_pid"]), u64::from(server.pid()));
    assert!(u(&m["before_kib"]) > 0 && u(&m["holding_kib"]) > 0, "{m}");
    assert!(m["per_conn_kib"].as_f64().is_some());
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(
        svg.contains("<svg") && svg.contains("connections opened"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_log_in_as_users_of_their_own() {
    let server = Served::start(&[]).await;
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
    assert_eq!(u(&r["memory"]["before_conns"]), 2, "{r:#}");
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
    assert!(passed, "the run itself went fine: {r:#}");
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
    assert!(!r["plot"]["throughput"].as_array().unwrap().is_empty());
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
    ])
    .await;
    assert!(passed, "{r:#}");
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
    assert!(
        r["problems"][0].as_str().unwrap().contains("never delivered"),
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

    let client = reqwest::Client::new();
    let base = format!("http://{http}");
    let user = serde_json::json!({"username": "loadhttp", "password": "pw"});
    client
        .post(format!("{base}/register"))
        .json(&user)
        .send()
        .await
        .unwrap();
    let auth: Value = client
        .post(format!("{base}/auth"))
        .json(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = auth["token"].as_str().unwrap();
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

    // A wrong token: every response is a 401, counted as an error.
    let (_, r) = load(&[
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
    assert_eq!(u(&r["run"]["ok"]), 0, "{r:#}");
    assert!(u(&r["run"]["errors"]) > 0, "{r:#}");
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
    for row in ["scenario", "connections", "replies", "latency", "result"] {
        assert!(
            table.lines().any(|l| l.trim_start().starts_with(row)),
            "{row}: {table}"
        );
    }
    assert!(table.contains("PASS"), "{table}");
    // Standard error is not a terminal here: no progress bar.
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
