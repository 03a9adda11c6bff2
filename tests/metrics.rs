//! `/metrics`, read by the Prometheus project's own parser (Python's `prometheus_client`,
//! its OpenMetrics parser), and each counter moving when its event happens. The metrics are the
//! process's: the tests here take turns (nextest runs each in a process of its own anyway),
//! and read what moved.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Parses the exposition with `prometheus_client` and prints each sample as `name{labels}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;

/// One server in this process at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn parser_missing() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CHATD_REQUIRE_PROMETHEUS_CLIENT").is_none(),
            "python3 has no prometheus_client, and scripts/test.sh said it would"
        );
        eprintln!(
            "SKIPPED: the metrics test needs python3 with prometheus_client (pip install prometheus_client)"
        );
    }
    !ok
}

struct Samples(HashMap<String, f64>);

impl Samples {
    /// A counter with labels exists once it has counted: before, it is 0.
    fn or_zero(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    fn get(&self, key: &str) -> f64 {
        *self.0.get(key).unwrap_or_else(|| {
            let mut keys: Vec<_> = self.0.keys().collect();
            keys.sort();
            panic!("no sample {key} in /metrics: {keys:#?}")
        })
    }
}

async fn scrape(server: &TestServer) -> Samples {
    let response = reqwest::get(server.admin_url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    let mut python = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    python.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Samples(serde_json::from_slice(&out.stdout).unwrap())
}

/// Scrapes until `key` has moved by `by` from `before` (the server counts some things a moment
/// after it answers: a connection's close, a push).
async fn moved(server: &TestServer, before: &Samples, key: &str, by: f64) -> Samples {
    for _ in 0..50 {
        let now = scrape(server).await;
        if now.or_zero(key) - before.or_zero(key) >= by {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = scrape(server).await;
    panic!(
        "{key} moved by {} (wanted {by})",
        now.or_zero(key) - before.or_zero(key)
    );
}

#[tokio::test]
async fn each_counter_moves_when_its_event_happens() {
    if parser_missing() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.auth_failures_per_conn = 2;
        c.max_connections_per_ip = Some(8);
        c.push_queue = 4;
        c.push_queue_bytes = 16 * 1024;
        c.max_send_rate = 1_000_000;
    })
    .await;
    let start = scrape(&server).await;
    assert_eq!(start.get(r#"chatd_connections{door="line"}"#), 0.0);
    assert_eq!(start.get("chatd_store_up"), 1.0);
    assert!(start.get("chatd_process_resident_memory_bytes") > 1e6);

    // Connections, bytes and logins.
    let mut alice = server.user("alice").await;
    let now = moved(&server, &start, r#"chatd_logins_total{outcome="ok"}"#, 1.0).await;
    let moved_by = |key: &str| now.get(key) - start.get(key);
    assert_eq!(now.get(r#"chatd_connections{door="line"}"#), 1.0);
    assert_eq!(moved_by(r#"chatd_connections_accepted_total{door="line"}"#), 1.0);
    assert!(moved_by(r#"chatd_received_bytes_total{door="line"}"#) >= 30.0);
    assert!(moved_by(r#"chatd_sent_bytes_total{door="line"}"#) > 0.0);
    let mut wrong = server.client().await;
    assert_eq!(wrong.err("AUTH alice nope").await, "BAD_CREDENTIALS");
    let now = moved(
        &server,
        &now,
        r#"chatd_logins_total{outcome="bad_credentials"}"#,
        1.0,
    )
    .await;
    assert_eq!(wrong.err("AUTH alice nope").await, "BAD_CREDENTIALS");
    assert_eq!(wrong.err("AUTH alice nope").await, "RATE_LIMITED");
    let now = moved(
        &server,
        &now,
        r#"chatd_logins_total{outcome="rate_limited"}"#,
        1.0,
    )
    .await;
    drop(wrong);
    assert!(now.get(r#"chatd_logins_total{outcome="ok"}"#) >= 1.0);

    // Messages: committed, batched, timed, pushed.
    let mut bob = server.user("bob").await;
    let before = scrape(&server).await;
    alice.ok("SEND bob hello").await;
    bob.msg().await;
    let now = moved(
        &server,
        &before,
        r#"chatd_messages_committed_total{kind="direct"}"#,
        1.0,
    )
    .await;
    for key in [
        "chatd_commit_batch_size_count",
        "chatd_commit_seconds_count",
        "chatd_delivery_seconds_count",
        "chatd_pushes_total",
    ] {
        assert!(now.get(key) - before.get(key) >= 1.0, "{key} did not move");
    }
    alice.ok("JOIN #lab").await;
    alice.ok("SEND #lab hi all").await;
    moved(
        &server,
        &now,
        r#"chatd_messages_committed_total{kind="room"}"#,
        2.0,
    )
    .await;

    // HTTP, per route and status.
    let http = reqwest::get(server.url("/info")).await.unwrap();
    assert_eq!(http.status(), 200);
    let key = r#"chatd_http_requests_total{method="GET",route="/info",status="200"}"#;
    let now = scrape(&server).await;
    assert_eq!(now.get(key) - start.or_zero(key), 1.0);
    let http_in = r#"chatd_received_bytes_total{door="http"}"#;
    assert!(now.get(http_in) - start.get(http_in) > 0.0);

    // A reader that never reads is kicked once its queue is full.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"AUTH bob pw\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let big = "x".repeat(3000);
    let before = scrape(&server).await;
    let mut kicked = false;
    for _ in 0..4000 {
        alice.ok(&format!("SEND bob {big}")).await;
        let now = scrape_quick(&server).await;
        if now > before.get("chatd_slow_reader_kicks_total") {
            kicked = true;
            break;
        }
    }
    assert!(kicked, "the reader that never reads was never kicked");
    drop(slow);

    // A connection over the per-address limit is refused, and counted.
    let before = scrape(&server).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    moved(
        &server,
        &before,
        r#"chatd_connections_refused_total{door="line",reason="address_full"}"#,
        1.0,
    )
    .await;
    drop(held);
    drop(bob);
    drop(alice);
    server.stop().await;
}

/// `chatd_slow_reader_kicks_total`, read without the Python parser (it is run once a SEND).
async fn scrape_quick(server: &TestServer) -> f64 {
    let text = reqwest::get(server.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("chatd_slow_reader_kicks_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_is_counted_on_a_cluster() {
    let Some(backend) = common::Backend::postgres("the_relay_is_counted_on_a_cluster") else {
        return;
    };
    if parser_missing() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = std::sync::Arc::new(common::TestDb::create(backend).await);
    let adjust = |c: &mut chatd::Config| c.load_test_hashing = true;
    let one = TestServer::on_db(db.clone(), adjust).await;
    let two = TestServer::on_db(db.clone(), adjust).await;
    let start = scrape(&two).await;
    // The relays' LISTEN connections are cut: each node reconnects and catches up.
    let name = db.pg_name().unwrap();
    let admin = std::env::var("CHATD_TEST_DATABASE_URL").unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND query ILIKE 'LISTEN%'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let start = moved(&two, &start, "chatd_relay_catchups_total", 1.0).await;
    let mut alice = one.user("alice").await;
    let mut bob = two.user("bob").await;
    alice.ok("SEND bob across the nodes").await;
    bob.msg().await;
    moved(&two, &start, "chatd_relay_lag_seconds_count", 1.0).await;
    let now = scrape(&two).await;
    let lag = now.get("chatd_relay_lag_seconds_sum") - start.get("chatd_relay_lag_seconds_sum");
    assert!((0.0..10.0).contains(&lag), "the lag is a time: {lag} s");
    drop((alice, bob));
    one.stop().await;
    two.stop().await;
}
