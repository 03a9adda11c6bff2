//! Several chatd nodes on one PostgreSQL: live delivery across nodes, presence across nodes,
//! a node cut off from the store catching up, and a store outage. These need a PostgreSQL
//! server (`CHATD_TEST_DATABASE_URL`); without one they say loudly that they were skipped.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::Process;
use common::{Backend, Client, Msg, TestDb, TestServer};

/// Polls WHO on `client` until it lists exactly `users`, or fails after `within`.
async fn who_becomes(client: &mut Client, users: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    let expected: Vec<String> = users.iter().map(|u| format!("USER {u}")).collect();
    loop {
        let who = client.cmd("WHO").await;
        if who.data == expected {
            assert_eq!(who.last, format!("OK {}", users.len()));
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "WHO is still {:?}, not {expected:?}",
            who.data
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_serve_one_community() {
    let Some(backend) = Backend::postgres("two_nodes_serve_one_community") else {
        return;
    };
    let db = TestDb::create(backend).await;
    let node1 = Process::start_with(&db.url, &["--node-id", "node-1"], None);
    let mut node2 = Process::start_with(&db.url, &["--node-id", "node-2"], None);

    let mut alice = Client::connect(node1.addr).await;
    alice.ok("REGISTER alice pw").await;
    alice.ok("AUTH alice pw").await;
    let mut bob = Client::connect(node2.addr).await;
    bob.ok("REGISTER bob pw").await;
    bob.ok("AUTH bob pw").await;

    // WHO on either node shows both.
    who_becomes(&mut alice, &["alice", "bob"], Duration::from_secs(5)).await;
    who_becomes(&mut bob, &["alice", "bob"], Duration::from_secs(5)).await;

    // Bob, on node 2, gets alice's message from node 1 live within a second.
    let sent = Instant::now();
    let id: i64 = alice.ok("SEND bob hello from node 1").await.parse().unwrap();
    let pushed = bob.msg().await;
    let latency = sent.elapsed();
    assert_eq!(
        (pushed.id, pushed.from.as_str(), pushed.text.as_str()),
        (id, "alice", "hello from node 1")
    );
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    // ... and the other way round.
    let back: i64 = bob.ok("SEND alice hello from node 2").await.parse().unwrap();
    assert_eq!(alice.msg().await.id, back);

    // More traffic, then node 2 dies without a word.
    let mut acked = vec![id];
    let batch: String = (0..50).map(|i| format!("SEND bob burst {i}\n")).collect();
    alice.write(batch.as_bytes()).await;
    for _ in 0..50 {
        acked.push(alice.ok_reply().await.parse().unwrap());
    }
    node2.signal(libc::SIGKILL);
    node2.wait_exit(Duration::from_secs(5));
    let gone_after = who_becomes(&mut alice, &["alice"], Duration::from_secs(20)).await;
    eprintln!("bob left WHO {gone_after:?} after node 2 was killed");

    // Every acknowledged message is in the store; bob reads them through node 1.
    let mut bob = Client::connect(node1.addr).await;
    bob.ok("AUTH bob pw").await;
    let stored = bob.inbox_ids().await;
    assert_eq!(stored, acked);
    drop(node1);
}

/// A PostgreSQL URL that logs in as `user` instead.
fn with_user(url: &str, user: &str) -> String {
    let start = url.find("://").unwrap() + 3;
    let at = url[start..].find('@').map(|i| start + i + 1).unwrap_or(start);
    format!("{}{user}@{}", &url[..start], &url[at..])
}

async fn admin(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

#[tokio::test]
async fn a_node_cut_off_from_the_store_catches_up_on_what_it_missed() {
    let Some(backend) = Backend::postgres("a_node_cut_off_from_the_store_catches_up_on_what_it_missed")
    else {
        return;
    };
    let db = Arc::new(TestDb::create(backend).await);
    let role = format!("{}_node_b", db.pg_name().unwrap());
    admin(&db, &format!("CREATE ROLE {role} LOGIN SUPERUSER")).await;
    let node_a = TestServer::on_db(db.clone(), |c| c.node_id = Some("node-a".into())).await;
    let url_b = with_user(&db.url, &role);
    let node_b = TestServer::on_db(db.clone(), |c| {
        c.node_id = Some("node-b".into());
        c.db = url_b;
    })
    .await;
    let mut alice = node_a.user("alice").await;
    let mut bob = node_b.user("bob").await;
    who_becomes(&mut alice, &["alice", "bob"], Duration::from_secs(5)).await;
    // A room too: each stream is caught up on.
    alice.ok("JOIN #lab").await;
    bob.ok("JOIN #lab").await;
    assert_eq!(alice.line().await.split(' ').nth(5), Some("bob"), "bob joined");
    let first = alice.ok("SEND bob before the cut").await;
    assert_eq!(bob.msg().await.id.to_string(), first);

    // Cut node B off: its role may no longer log in, and its connections are terminated.
    admin(&db, &format!("ALTER ROLE {role} NOLOGIN")).await;
    admin(
        &db,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    )
    .await;
    let failed = Instant::now();
    let reply = bob.cmd("SEND alice are you there?").await;
    assert!(reply.last.starts_with("ERR INTERNAL "), "{reply:?}");
    assert!(reply.last.contains("unavailable"), "{reply:?}");
    assert!(
        failed.elapsed() < Duration::from_secs(10),
        "the error came after {:?}",
        failed.elapsed()
    );
    assert_eq!(
        bob.cmd("PING").await.last,
        "OK PONG",
        "the node keeps its connections"
    );

    // Meanwhile node A goes on storing messages for bob, and in the room.
    let (mut missed, mut missed_room) = (Vec::new(), Vec::new());
    for i in 0..10 {
        missed.push(
            alice
                .ok(&format!("SEND bob while you were away {i}"))
                .await
                .parse::<i64>()
                .unwrap(),
        );
        missed_room.push(
            alice
                .ok(&format!("SEND #lab while you were away {i}"))
                .await
                .parse::<i64>()
                .unwrap(),
        );
    }

    // The store comes back for node B: it reconnects and delivers exactly what it missed,
    // each stream in order.
    admin(&db, &format!("ALTER ROLE {role} LOGIN")).await;
    let (mut delivered, mut delivered_room) = (Vec::new(), Vec::new());
    while delivered.len() + delivered_room.len() < missed.len() + missed_room.len() {
        let line = bob.line().await;
        let pushed = if line.starts_with("ROOM ") {
            let pushed = Msg::parse_room(&line);
            delivered_room.push(pushed.id);
            pushed
        } else {
            let pushed = Msg::parse(&line);
            delivered.push(pushed.id);
            pushed
        };
        assert_eq!(pushed.from, "alice");
        assert!(pushed.text.starts_with("while you were away"), "{pushed:?}");
    }
    assert_eq!(delivered, missed, "in order, none lost");
    assert_eq!(delivered_room, missed_room, "the room in order, none lost");
    let last = alice.ok("SEND bob after the cut").await;
    assert_eq!(bob.msg().await.id.to_string(), last, "no duplicates before it");
    // And node B serves commands against the store again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bob.cmd("SEND alice back again").await.last.starts_with("OK ") {
        assert!(Instant::now() < deadline, "node B never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node_b.stop().await;
    node_a.stop().await;
    admin(&db, &format!("DROP ROLE {role}")).await;
}

#[tokio::test]
async fn a_store_outage_fails_commands_cleanly_and_loses_nothing_acknowledged() {
    let Some(backend) =
        Backend::postgres("a_store_outage_fails_commands_cleanly_and_loses_nothing_acknowledged")
    else {
        return;
    };
    let server = TestServer::on(backend).await;
    let name = server.db.pg_name().unwrap().to_string();
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;

    // Alice sends without pause while the store goes away and comes back.
    let addr = server.addr;
    let sender = tokio::spawn(async move {
        let mut alice = Client::connect(addr).await;
        alice.ok("AUTH alice pw").await;
        let (mut acked, mut failed) = (Vec::new(), 0);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            let reply = alice.cmd(&format!("SEND bob n{}", acked.len() + failed)).await;
            if let Some(id) = reply.last.strip_prefix("OK ") {
                acked.push(id.parse::<i64>().unwrap());
            } else {
                assert!(reply.last.starts_with("ERR INTERNAL "), "{reply:?}");
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (acked, failed)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin_url = std::env::var(common::PG_ENV).unwrap();
    let outage = async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    };
    let mut conn = outage.await;
    // During the outage: a clear error over both doors, and the connections stay.
    let reply = alice.cmd("INBOX").await;
    assert!(
        reply.last.starts_with("ERR INTERNAL the store is unavailable"),
        "{reply:?}"
    );
    let http = reqwest::Client::new();
    let response = http
        .get(server.url("/get_messages"))
        .basic_auth("bob", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "INTERNAL");
    assert_eq!(bob.cmd("PING").await.last, "OK PONG");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut conn)
        .await
        .unwrap();

    let (acked, failed) = sender.await.unwrap();
    assert!(failed > 0, "some SENDs failed during the outage");
    assert!(
        acked.len() > 10,
        "SENDs succeeded before and after it: {}",
        acked.len()
    );
    // Service resumed, and every acknowledged message is there (read on a fresh connection:
    // bob's own has all the live pushes waiting in it).
    let mut reader = server.client().await;
    reader.ok("AUTH bob pw").await;
    let stored = reader.inbox_ids().await;
    assert_eq!(stored, acked);
    server.stop().await;
}
