//! Shutting down by one deadline: a stalled HTTP request cannot hold the process, and every
//! SEND the server accepted before the signal is committed before it exits.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::Client;

#[tokio::test]
async fn sigterm_with_a_stalled_http_body_exits_0_within_6_s_and_commits_every_accepted_send() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("chatd.db").display());
    let mut p = Process::start(&db);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;

    // A request whose body never comes.
    let stalled = p.stalled_body().await;
    // SENDs still in flight when the signal comes.
    let batch: String = (0..300).map(|i| format!("SEND alice in flight {i}\n")).collect();
    alice.write(batch.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    p.signal(libc::SIGTERM);
    let mut acked = Vec::new();
    while let Some(line) = alice.try_line().await {
        if let Some(id) = line.strip_prefix("OK ") {
            acked.push(id.parse::<i64>().unwrap());
        }
    }
    let status = p.wait_exit(Duration::from_secs(6));
    assert!(status.success(), "{status:?}");
    eprintln!(
        "exited {:?} after SIGTERM; {} SENDs acknowledged",
        started.elapsed(),
        acked.len()
    );
    assert!(!acked.is_empty());
    drop(stalled);
    drop(p);

    // Every acknowledged SEND is stored.
    let p = Process::start(&db);
    let mut alice = Client::connect(p.addr).await;
    alice.ok("AUTH alice pw").await;
    let stored = alice.inbox_ids().await;
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} was not stored");
    }
}
