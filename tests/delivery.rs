//! Delivery you can trust: every acknowledged message reaches every channel of its recipient
//! exactly once and in increasing id order, whichever nodes store it; a bad message fails
//! alone; message text cannot carry terminal control sequences; and every SEND is answered
//! within its deadline, even when the store hangs.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_token, Backend, Client, Msg, TestDb, TestServer};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

/// Collects the ids of an `/events` stream (replaying from id 0) until `target` of them
/// arrived or `within` passed.
async fn collect_events(
    url: String,
    token: String,
    mut target: watch::Receiver<usize>,
    within: Duration,
) -> Vec<i64> {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut ids = Vec::new();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if ids.len() >= *target.borrow_and_update() {
            return ids;
        }
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            _ = target.changed() => continue,
            _ = tokio::time::sleep_until(deadline) => return ids,
        };
        let Some(Ok(chunk)) = chunk else { return ids };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id: ")) {
                ids.push(id.trim().parse().unwrap());
            }
        }
    }
}

/// Pages `/get_messages?after=<highest id seen>` as protocol.md recommends.
async fn page_messages(
    url: String,
    token: String,
    mut target: watch::Receiver<usize>,
    within: Duration,
) -> Vec<i64> {
    let http = reqwest::Client::new();
    let mut ids: Vec<i64> = Vec::new();
    let deadline = Instant::now() + within;
    while ids.len() < *target.borrow_and_update() && Instant::now() < deadline {
        let after = ids.last().copied().unwrap_or(0);
        let reply: Value = http
            .get(format!("{url}?after={after}&limit=1000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = reply["messages"].as_array().expect("messages");
        ids.extend(page.iter().map(|m| m["id"].as_i64().unwrap()));
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ids
}

/// Sends to `to` for `duration`, `window` SENDs in flight; returns the acknowledged ids.
async fn send_for(mut client: Client, to: &'static str, duration: Duration, window: usize) -> Vec<i64> {
    let mut acked = Vec::new();
    let until = Instant::now() + duration;
    let mut n = 0;
    while Instant::now() < until {
        let batch: String = (0..window)
            .map(|i| format!("SEND {to} message {} from a sender\n", n + i))
            .collect();
        n += window;
        client.write(batch.as_bytes()).await;
        for _ in 0..window {
            acked.push(client.ok_reply().await.parse().unwrap());
        }
    }
    acked
}

fn assert_increasing(what: &str, ids: &[i64]) {
    if let Some(pair) = ids.windows(2).find(|w| w[0] >= w[1]) {
        panic!("{what}: id {} came after {}", pair[1], pair[0]);
    }
}

fn assert_exactly(what: &str, got: &[i64], acked: &BTreeSet<i64>) {
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "{what}: duplicates");
    let missing: Vec<_> = acked.difference(&unique).take(10).collect();
    let extra: Vec<_> = unique.difference(acked).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} of {} acknowledged messages missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
        acked.difference(&unique).count(),
        acked.len(),
        unique.difference(acked).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writing_nodes_deliver_every_message_once_and_in_order() {
    let Some(backend) = Backend::postgres("two_writing_nodes_deliver_every_message_once_and_in_order") else {
        return;
    };
    let _ = tracing_subscriber::fmt().with_env_filter("chatd=info").try_init();
    let db = Arc::new(TestDb::create(backend).await);
    // A pool large enough for the senders, both streams, the pager and the relay at once, so a
    // busy machine (the whole suite runs in parallel) does not run a node out of connections.
    let node = |name: &'static str| {
        move |c: &mut chatd::Config| {
            c.node_id = Some(name.into());
            c.db_pool = 16;
        }
    };
    let node1 = TestServer::on_db(db.clone(), node("node-1")).await;
    let node2 = TestServer::on_db(db.clone(), node("node-2")).await;

    let mut rcpt = node2.user("rcpt").await;
    let mut senders = Vec::new();
    for (i, node) in [&node1, &node2, &node1, &node2].into_iter().enumerate() {
        senders.push(node.user(&format!("sender{i}")).await);
    }
    // Both relays are live: a message from each node reaches the session on node 2.
    let mut acked = BTreeSet::new();
    for sender in senders.iter_mut().take(2) {
        let id: i64 = sender.ok("SEND rcpt warm-up").await.parse().unwrap();
        assert_eq!(rcpt.msg().await.id, id);
        acked.insert(id);
    }
    let mut pushed = acked.iter().copied().collect::<Vec<_>>();

    let (target_tx, target) = watch::channel(usize::MAX);
    let within = Duration::from_secs(60);
    let rcpt_token = http_token(&node1.url(""), "rcpt").await;
    let streams: Vec<_> = [&node1, &node2]
        .iter()
        .map(|node| {
            tokio::spawn(collect_events(
                node.url("/events"),
                rcpt_token.clone(),
                target.clone(),
                within,
            ))
        })
        .collect();
    let pager = tokio::spawn(page_messages(
        node1.url("/get_messages"),
        rcpt_token.clone(),
        target.clone(),
        within,
    ));

    let sending: Vec<_> = senders
        .into_iter()
        .map(|client| tokio::spawn(send_for(client, "rcpt", Duration::from_secs(10), 16)))
        .collect();
    for sender in sending {
        acked.extend(sender.await.unwrap());
    }
    target_tx.send(acked.len()).unwrap();
    eprintln!("{} messages acknowledged from two nodes", acked.len());

    let deadline = Instant::now() + Duration::from_secs(30);
    while pushed.len() < acked.len() && Instant::now() < deadline {
        let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), rcpt.try_line()).await else {
            break;
        };
        pushed.push(Msg::parse(&line).id);
    }
    assert_increasing("the line session", &pushed);
    assert_exactly("the line session", &pushed, &acked);
    for (i, stream) in streams.into_iter().enumerate() {
        let ids = stream.await.unwrap();
        let what = format!("/events on node {}", i + 1);
        assert_increasing(&what, &ids);
        assert_exactly(&what, &ids, &acked);
    }
    let paged = pager.await.unwrap();
    assert_exactly("paging /get_messages?after=", &paged, &acked);
    eprintln!("stopping node 1");
    node1.stop().await;
    eprintln!("stopping node 2");
    node2.stop().await;
}

async fn a_bad_message_fails_alone(backend: Backend) {
    let server = TestServer::on(backend).await;
    let _victim = server.user("victim").await;
    let mut attacker = server.user("attacker").await;
    let mut honest = Vec::new();
    for i in 0..20 {
        honest.push(server.user(&format!("user{i}")).await);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poisoning = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch =
                    "SEND victim poison\0here\nSEND victim esc\x1b[2Khere\nSEND victim csi\u{9b}31m\n";
                attacker.write(batch.as_bytes()).await;
                for _ in 0..3 {
                    assert_eq!(attacker.err_code().await, "BAD_ARGS");
                    refused += 1;
                }
            }
            refused
        })
    };
    let sending: Vec<_> = honest
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let mut client = client;
                let mut answers = Vec::new();
                for round in 0..10 {
                    let batch: String = (0..5)
                        .map(|i| format!("SEND victim hello {round} {i}\n"))
                        .collect();
                    client.write(batch.as_bytes()).await;
                    for _ in 0..5 {
                        answers.push(client.reply().await.last);
                    }
                }
                answers
            })
        })
        .collect();
    let mut oks = 0;
    for sender in sending {
        for answer in sender.await.unwrap() {
            assert!(answer.starts_with("OK "), "an honest SEND failed: {answer}");
            oks += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = poisoning.await.unwrap();
    assert_eq!(oks, 1000);
    assert!(refused > 0);
    // Only the honest messages were stored.
    let mut victim = server.client().await;
    victim.ok("AUTH victim pw").await;
    let stored = victim.whole_inbox().await;
    for msg in &stored {
        assert!(msg.text.starts_with("hello "), "{msg:?}");
    }
    assert_eq!(stored.len(), 1000);
    server.stop().await;
}

async fn control_characters_are_refused_and_text_is_kept_exactly(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    for (text, named) in [
        ("a\x1b[2K\x1b[1GMSG 7 admin forged", "ESC (U+001B)"),
        ("bell\x07", "BEL (U+0007)"),
        ("nul\0", "NUL (U+0000)"),
        ("csi\u{9b}2K", "C1 (U+009B)"),
        ("line\u{2028}separator", "LINE SEPARATOR (U+2028)"),
    ] {
        let reply = alice.cmd(&format!("SEND bob {text}")).await;
        assert!(reply.last.starts_with("ERR BAD_ARGS "), "{text:?}: {reply:?}");
        assert!(reply.last.contains(named), "{text:?}: {}", reply.last);
    }
    let http = reqwest::Client::new();
    for text in [
        "esc\x1b]52;c;aGk=\x07",
        "bell\x07",
        "nul\0",
        "del\x7f",
        "csi\u{9b}",
        "ls\u{2028}",
    ] {
        let response = http
            .post(server.url("/"))
            .basic_auth("alice", Some("pw"))
            .json(&json!({"sender": "alice", "recipient": "bob", "message": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{text:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "BAD_ARGS", "{text:?}: {body}");
    }
    // Nothing of it was stored or pushed; what is allowed arrives exactly as sent.
    let kept = ["tab\there", "party 🎉🎈", "שלום עולם and مرحبا"];
    for text in kept {
        let id: i64 = alice.ok(&format!("SEND bob {text}")).await.parse().unwrap();
        let pushed = bob.msg().await;
        assert_eq!(
            (pushed.id, pushed.from.as_str(), pushed.text.as_str()),
            (id, "alice", text)
        );
    }
    let inbox = bob.cmd("INBOX").await;
    let texts: Vec<String> = inbox.data.iter().map(|l| Msg::parse(l).text).collect();
    assert_eq!(texts, kept);
    let reply: Value = http
        .get(server.url("/get_messages"))
        .basic_auth("bob", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: Vec<&str> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, kept);
    server.stop().await;
}

on_both_stores!(
    a_bad_message_fails_alone,
    control_characters_are_refused_and_text_is_kept_exactly,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_is_answered_within_its_deadline_while_the_store_hangs() {
    let Some(backend) = Backend::postgres("every_send_is_answered_within_its_deadline_while_the_store_hangs")
    else {
        return;
    };
    let server = TestServer::on(backend).await;
    let mut bob = server.user("bob").await;
    let mut senders = Vec::new();
    for i in 0..20 {
        let mut client = server.user(&format!("s{i}")).await;
        client.ok("SEND bob before the lock").await;
        senders.push(client);
    }
    for _ in 0..20 {
        bob.line().await;
    }
    // Another connection takes the messages table and holds it.
    use sqlx::Connection;
    let mut locker = sqlx::PgConnection::connect(&server.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let answers: Vec<_> = senders
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let sent = Instant::now();
                let last = client.cmd("SEND bob while locked").await.last;
                (client, vec![(sent.elapsed(), last)])
            })
        })
        .collect();
    let mut clients = Vec::new();
    for task in answers {
        let (client, answers) = task.await.unwrap();
        for (took, answer) in answers {
            assert!(took < Duration::from_secs(6), "answered after {took:?}: {answer}");
            assert!(
                answer.starts_with("ERR INTERNAL the store is unavailable"),
                "{answer}"
            );
        }
        clients.push(client);
    }
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    // The store is back: SENDs work again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = clients[0].cmd("SEND bob after the lock").await;
        if reply.last.starts_with("OK ") {
            break;
        }
        assert!(Instant::now() < deadline, "SEND still fails: {reply:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_streams_for_one_user_are_capped_and_slow_nobody() {
    let server = TestServer::start_with(|c| c.max_sessions_per_user = 64).await;
    let mut alice = server.user("alice").await;
    server.client().await.ok("REGISTER bob pw").await;
    let mut carol = server.user("carol").await;
    // Bob logged in 80 times: one token may hold only a few streams, its user many more.
    let mut bob_tokens = Vec::new();
    for _ in 0..80 {
        bob_tokens.push(http_token(&server.url(""), "bob").await);
    }
    let before = send_p99(&mut carol, &mut alice, None).await;
    // 5,000 event streams for bob, opened 100 at a time, each token in turn.
    let mut open = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..50 {
        let attempts: Vec<_> = (0..100)
            .map(|i| {
                let (addr, token) = (server.http, bob_tokens[i % bob_tokens.len()].clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let request = format!(
                        "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
                    );
                    stream.write_all(request.as_bytes()).await.unwrap();
                    let mut head = [0u8; 12];
                    stream.read_exact(&mut head).await.unwrap();
                    (String::from_utf8_lossy(&head[9..12]).to_string(), stream)
                })
            })
            .collect();
        for attempt in attempts {
            let (status, stream) = attempt.await.unwrap();
            match status.as_str() {
                "200" => {
                    accepted += 1;
                    open.push(stream);
                }
                "503" => refused += 1,
                other => panic!("/events answered {other}"),
            }
        }
    }
    assert_eq!((accepted, refused), (64, 4936));
    // Another user's SENDs are as fast as before, while bob's streams get messages too.
    let after = send_p99(&mut carol, &mut alice, Some(&mut alice_to_bob(&server).await)).await;
    eprintln!("carol's SEND p99: {before:?} before, {after:?} with {accepted} streams for bob");
    // 20 ms on a quiet machine; on a busy one, no worse than twice what it was without them.
    assert!(
        after < Duration::from_millis(20) || after < before * 2 + Duration::from_millis(5),
        "p99 {after:?}, was {before:?}"
    );
    drop(open);
    server.stop().await;
}

async fn alice_to_bob(server: &TestServer) -> Client {
    let mut client = server.client().await;
    client.ok("AUTH alice pw").await;
    client
}

/// The p99 of 200 SENDs from `from` to alice (who reads each push); every tenth round,
/// `fan_out` also sends one to bob.
async fn send_p99(from: &mut Client, alice: &mut Client, mut fan_out: Option<&mut Client>) -> Duration {
    let mut took = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        from.ok(&format!("SEND alice quick {i}")).await;
        took.push(started.elapsed());
        alice.line().await;
        if let Some(sender) = fan_out.as_deref_mut() {
            if i % 10 == 0 {
                sender.ok(&format!("SEND bob to every stream {i}")).await;
            }
        }
    }
    took.sort();
    took[took.len() * 99 / 100]
}
