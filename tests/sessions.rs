//! Sessions and what bounds them, end to end: a token ends what it opened (its `/events`
//! streams), "log out everywhere" on both doors, the cap on tokens per user and on streams per
//! token, WHO and `/who` behind a login and paged, the send budget, fields of the wrong type,
//! and the hint a lab client gets. The two-node tests need PostgreSQL
//! (`CHATD_TEST_DATABASE_URL`); without it they say loudly that they were skipped.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, Client, TestDb, TestServer};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How long a node may take to end what a logout on another node ended: the 5 s a token is
/// trusted for, and a second for a loaded machine.
const ELSEWHERE: Duration = Duration::from_secs(6);
/// "At once" on the node that answered, with room for a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(2);

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let body = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("a JSON body: {body}")),
    )
}

/// A bearer token for `user` (password "pw"), who must exist.
async fn login(server: &TestServer, user: &str) -> String {
    let http = reqwest::Client::new();
    let (status, reply) = call(
        http.post(server.url("/auth"))
            .json(&json!({"username": user, "password": "pw"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["token"].as_str().unwrap().to_string()
}

/// Whether `token` is accepted (`/get_messages`), or refused with 401.
async fn token_works(server: &TestServer, token: &str) -> bool {
    let (status, reply) = call(
        reqwest::Client::new()
            .get(server.url("/get_messages"))
            .bearer_auth(token),
    )
    .await;
    assert!(
        matches!(status, StatusCode::OK | StatusCode::UNAUTHORIZED),
        "{status}: {reply}"
    );
    status == StatusCode::OK
}

async fn register(server: &TestServer, user: &str) {
    let (status, reply) = call(
        reqwest::Client::new()
            .post(server.url("/register"))
            .json(&json!({"username": user, "password": "pw"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
}

type Events = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Opens `/events` with `auth` applied to the request; it must be accepted.
async fn open_events(
    server: &TestServer,
    auth: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Events {
    let response = auth(reqwest::Client::new().get(server.url("/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
    Box::pin(response.bytes_stream())
}

/// Waits until the server ends the event stream, failing after `within`; how long it took.
async fn ends_within(events: &mut Events, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, async { while let Some(Ok(_)) = events.next().await {} })
        .await
        .unwrap_or_else(|_| panic!("{what}: the event stream is still open after {within:?}"));
    started.elapsed()
}

/// Reads the stream until an event with message id `id` arrives (the stream is live).
async fn receives(events: &mut Events, id: i64) {
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains(&format!("id: {id}\n")) {
            let chunk = events.next().await.expect("the stream is open").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("message {id} never arrived: {text:?}"));
}

/// Waits until the line client is closed; its last line must be `last`.
async fn closed_with(client: &mut Client, last: &str) {
    let lines = client.closed().await;
    assert_eq!(lines.last().map(String::as_str), Some(last), "{lines:?}");
}

/// The number `SELECT` `query` (one count, no parameters) returns from the server's store.
async fn count(server: &TestServer, query: &str) -> i64 {
    use sqlx::Connection;
    if server.db.pg_name().is_some() {
        let mut conn = sqlx::PgConnection::connect(&server.db_url).await.unwrap();
        sqlx::query_scalar(query).fetch_one(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&server.db_url).await.unwrap();
        sqlx::query_scalar(query).fetch_one(&mut conn).await.unwrap()
    }
}

/// Runs `statement` (no parameters) on the server's store.
async fn execute(server: &TestServer, statement: &str) {
    use sqlx::Connection;
    if server.db.pg_name().is_some() {
        let mut conn = sqlx::PgConnection::connect(&server.db_url).await.unwrap();
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&server.db_url).await.unwrap();
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
}

/// Two line connections logged in as `user`, who is registered on the first.
async fn logged_in_twice(server: &TestServer, user: &str) -> (Client, Client) {
    let first = server.user(user).await;
    let mut second = server.client().await;
    second.ok(&format!("AUTH {user} pw")).await;
    (first, second)
}

/// Sends `text` from `from` (logged in on the line) to `to`; its id.
async fn send(from: &mut Client, to: &str, text: &str) -> i64 {
    from.ok(&format!("SEND {to} {text}")).await.parse().unwrap()
}

// --- a token ends what it opened ---------------------------------------------------------

async fn logout_ends_the_streams_of_its_token(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut bob = server.user("bob").await;
    let mut alice_line = server.user("alice").await;
    let (one, two) = (login(&server, "alice").await, login(&server, "alice").await);
    let mut on_one = open_events(&server, |r| r.bearer_auth(&one)).await;
    let mut on_two = open_events(&server, |r| r.bearer_auth(&two)).await;
    let id = send(&mut bob, "alice", "before").await;
    receives(&mut on_one, id).await;
    receives(&mut on_two, id).await;
    assert_eq!(alice_line.msg().await.id, id);

    let http = reqwest::Client::new();
    let (status, reply) = call(http.post(server.url("/logout")).bearer_auth(&one)).await;
    assert_eq!(
        (status, reply["username"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    let took = ends_within(&mut on_one, AT_ONCE, "the logged-out token's stream").await;
    eprintln!("the stream of the logged-out token ended {took:?} after the logout");
    assert!(!token_works(&server, &one).await);

    // The user's other token, and the line session, go on.
    let id = send(&mut bob, "alice", "after").await;
    receives(&mut on_two, id).await;
    assert_eq!(alice_line.msg().await.id, id);
    server.stop().await;
}

async fn an_expired_token_ends_its_streams(backend: Backend) {
    let server = TestServer::on(backend).await;
    let _alice = server.user("alice").await;
    let token = login(&server, "alice").await;
    let mut events = open_events(&server, |r| r.bearer_auth(&token)).await;
    execute(
        &server,
        "UPDATE tokens SET expires_at_us = 1 WHERE user_name = 'alice'",
    )
    .await;
    let took = ends_within(&mut events, ELSEWHERE, "the expired token's stream").await;
    eprintln!("the stream of the expired token ended {took:?} after it expired");
    assert!(!token_works(&server, &token).await);
    // Expired tokens are deleted, not kept: the next token issued for the user clears them.
    let _fresh = login(&server, "alice").await;
    assert_eq!(
        count(&server, "SELECT COUNT(*) FROM tokens WHERE expires_at_us = 1").await,
        0
    );
    server.stop().await;
}

// --- log out everywhere -------------------------------------------------------------------

async fn log_out_everywhere_from_the_line(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut bob = server.user("bob").await;
    let (mut alice, mut alice_elsewhere) = logged_in_twice(&server, "alice").await;
    let token = login(&server, "alice").await;
    let mut by_token = open_events(&server, |r| r.bearer_auth(&token)).await;
    let mut by_password = open_events(&server, |r| r.basic_auth("alice", Some("pw"))).await;

    let reply = alice.ok("LOGOUT ALL").await;
    assert!(reply.starts_with("logged out everywhere"), "{reply}");
    closed_with(&mut alice_elsewhere, "BYE logged out everywhere").await;
    ends_within(&mut by_token, AT_ONCE, "the token's stream").await;
    ends_within(&mut by_password, AT_ONCE, "the password's stream").await;
    assert!(!token_works(&server, &token).await);
    assert_eq!(
        count(&server, "SELECT COUNT(*) FROM tokens WHERE user_name = 'alice'").await,
        0
    );

    // The connection that asked stays open, logged out; it may log in again, and stays so.
    assert_eq!(alice.err("SEND bob still me?").await, "AUTH_REQUIRED");
    assert_eq!(alice.err("WHO").await, "AUTH_REQUIRED");
    alice.ok("PING").await;
    alice.ok("AUTH alice pw").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = send(&mut alice, "bob", "back again").await;
    assert_eq!(bob.msg().await.id, id);
    // Nobody else was touched.
    let id = send(&mut bob, "alice", "welcome back").await;
    assert_eq!(alice.msg().await.id, id);
    server.stop().await;
}

async fn log_out_everywhere_over_http(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice_line = server.user("alice").await;
    let (one, two) = (login(&server, "alice").await, login(&server, "alice").await);
    let mut events = open_events(&server, |r| r.bearer_auth(&two)).await;
    let http = reqwest::Client::new();
    let (status, reply) = call(
        http.post(server.url("/logout"))
            .bearer_auth(&one)
            .json(&json!({"all": "yes"})),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    let (status, reply) = call(
        http.post(server.url("/logout"))
            .basic_auth("alice", Some("pw"))
            .json(&json!({"all": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        (
            reply["username"].as_str(),
            reply["all"].as_bool(),
            reply["tokens_ended"].as_u64()
        ),
        (Some("alice"), Some(true), Some(2))
    );
    closed_with(&mut alice_line, "BYE logged out everywhere").await;
    ends_within(&mut events, AT_ONCE, "the stream").await;
    for token in [&one, &two] {
        let (status, _) = call(http.get(server.url("/who")).bearer_auth(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    server.stop().await;
}

async fn logout_on_the_line_ends_only_that_connection(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut bob = server.user("bob").await;
    let (mut alice, mut alice_elsewhere) = logged_in_twice(&server, "alice").await;
    assert_eq!(bob.err("LOGOUT ALL now").await, "BAD_ARGS");
    let reply = alice.ok("LOGOUT").await;
    assert!(reply.starts_with("logged out alice"), "{reply}");
    assert_eq!(alice.err("LOGOUT").await, "AUTH_REQUIRED");
    assert_eq!(alice.err("INBOX").await, "AUTH_REQUIRED");
    // Its pushes stop; the other connection still gets them.
    let id = send(&mut bob, "alice", "one of you").await;
    assert_eq!(alice_elsewhere.msg().await.id, id);
    alice.ok("PING").await;
    let help = alice.cmd("HELP LOGOUT").await;
    assert!(help.data.iter().any(|l| l.starts_with("LOGOUT ALL")), "{help:?}");
    let help = alice.cmd("HELP").await;
    assert!(
        help.data
            .iter()
            .any(|l| l.trim_start().starts_with("LOGOUT [ALL]")),
        "{help:?}"
    );
    server.stop().await;
}

// --- caps -----------------------------------------------------------------------------------

async fn tokens_are_capped_per_user_oldest_first(backend: Backend) {
    let server = TestServer::on_with(backend, |c| c.max_tokens_per_user = 3).await;
    let _alice = server.user("alice").await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(login(&server, "alice").await);
    }
    let mut oldest = open_events(&server, |r| r.bearer_auth(&tokens[0])).await;
    tokens.push(login(&server, "alice").await);
    ends_within(&mut oldest, AT_ONCE, "the oldest token's stream").await;
    let mut valid = Vec::new();
    for token in &tokens {
        valid.push(token_works(&server, token).await);
    }
    assert_eq!(valid, [false, true, true, true]);
    assert_eq!(
        count(&server, "SELECT COUNT(*) FROM tokens WHERE user_name = 'alice'").await,
        3
    );
    server.stop().await;
}

/// One leaked token opens 64 event streams, the most a user may have; the owner can still log
/// in on the line.
async fn one_token_cannot_fill_its_users_sessions(backend: Backend) {
    let server = TestServer::on(backend).await;
    register(&server, "alice").await;
    let leaked = login(&server, "alice").await;
    let opened = futures::future::join_all((0..64).map(|_| {
        let request = reqwest::Client::new()
            .get(server.url("/events"))
            .bearer_auth(&leaked);
        async move { request.send().await.unwrap() }
    }))
    .await;
    let (open, refused): (Vec<_>, Vec<_>) = opened.into_iter().partition(|r| r.status() == StatusCode::OK);
    assert_eq!((open.len(), refused.len()), (8, 56));
    let refusal: Value = refused.into_iter().next().unwrap().json().await.unwrap();
    assert_eq!(refusal["status"], "SERVER_BUSY", "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap().contains("token"),
        "{refusal}"
    );
    let mut owner = server.client().await;
    owner.ok("AUTH alice pw").await;
    let mut own_stream = open_events(&server, |r| r.basic_auth("alice", Some("pw"))).await;
    let mut bob = server.user("bob").await;
    let id = send(&mut bob, "alice", "still reachable").await;
    assert_eq!(owner.msg().await.id, id);
    receives(&mut own_stream, id).await;
    drop(open);
    server.stop().await;
}

// --- WHO ------------------------------------------------------------------------------------

async fn who_needs_a_login(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut stranger = server.client().await;
    assert_eq!(stranger.err("WHO").await, "AUTH_REQUIRED");
    let http = reqwest::Client::new();
    let (status, reply) = call(http.get(server.url("/who"))).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("AUTH_REQUIRED"))
    );

    let mut bob = server.user("bob").await;
    let _alice = server.user("alice").await;
    let _carol = server.user("carol").await;
    let who = bob.cmd("WHO").await;
    assert_eq!(
        (who.data, who.last),
        (
            vec!["USER alice".to_string(), "USER bob".into(), "USER carol".into()],
            "OK 3".to_string()
        )
    );
    let who = bob.cmd("WHO after alice").await;
    assert_eq!(
        (who.data, who.last),
        (
            vec!["USER bob".to_string(), "USER carol".into()],
            "OK 2".to_string()
        )
    );
    assert_eq!(bob.err("WHO alice").await, "BAD_ARGS");
    let token = login(&server, "bob").await;
    let (status, reply) = call(http.get(server.url("/who?after=bob")).bearer_auth(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply,
        json!({"status": "SUCCESS", "count": 1, "more": false, "users": ["carol"]})
    );
    server.stop().await;
}

/// 1,003 users online: WHO and `/who` answer 1,000 at a time and say there are more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_pages_by_a_thousand() {
    const USERS: usize = 1003;
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i:04}")).collect();
    let mut online = Vec::new();
    for chunk in names.chunks(USERS / 16 + 1) {
        online.push(tokio::spawn({
            let (addr, chunk) = (server.addr, chunk.to_vec());
            async move {
                let mut clients = Vec::new();
                for name in chunk {
                    let mut client = Client::connect(addr).await;
                    client.ok(&format!("REGISTER {name} pw")).await;
                    client.ok(&format!("AUTH {name} pw")).await;
                    clients.push(client);
                }
                clients
            }
        }));
    }
    let mut clients = Vec::new();
    for task in online {
        clients.extend(task.await.unwrap());
    }
    let first = clients.first_mut().unwrap();
    let page = first.cmd("WHO").await;
    let expected: Vec<String> = names.iter().take(1000).map(|n| format!("USER {n}")).collect();
    assert_eq!(page.data, expected);
    assert_eq!(page.last, "OK 1000 more");
    let bytes: usize = page.data.iter().map(|l| l.len() + 2).sum();
    assert!(bytes < 40_000, "{bytes} bytes");
    let rest = first.cmd("WHO after u0999").await;
    assert_eq!(rest.data, ["USER u1000", "USER u1001", "USER u1002"]);
    assert_eq!(rest.last, "OK 3");

    let token = login(&server, "u0000").await;
    let http = reqwest::Client::new();
    let (_, page) = call(http.get(server.url("/who")).bearer_auth(&token)).await;
    assert_eq!(
        (page["count"].as_u64(), page["more"].as_bool()),
        (Some(1000), Some(true))
    );
    assert_eq!(page["users"][999], "u0999");
    let (_, rest) = call(http.get(server.url("/who?after=u0999")).bearer_auth(&token)).await;
    assert_eq!(
        (rest["users"].clone(), rest["more"].as_bool()),
        (json!(["u1000", "u1001", "u1002"]), Some(false))
    );
    drop(clients);
    server.stop().await;
}

// --- the send budget ------------------------------------------------------------------------

/// A sender over its budget is refused on both doors with how long to wait, and nothing it
/// was refused is stored; other senders are not held back.
async fn a_sender_is_held_to_its_send_budget(backend: Backend) {
    const RATE: u64 = 20_000;
    let server = TestServer::on_with(backend, |c| c.max_send_rate = RATE).await;
    let mut bob = server.user("bob").await;
    let mut alice = server.user("alice").await;
    let http = reqwest::Client::new();
    let text = "x".repeat(15_000);
    let started = Instant::now();
    let mut acked_bytes = 0u64;
    let mut acked = 0;
    let refusal = loop {
        assert!(acked < 20, "never refused");
        let body = json!({"sender": "alice", "recipient": "bob", "message": text});
        let (status, reply) = call(
            http.post(server.url("/"))
                .basic_auth("alice", Some("pw"))
                .json(&body),
        )
        .await;
        if status != StatusCode::CREATED {
            break (status, reply);
        }
        acked += 1;
        acked_bytes += text.len() as u64 + chatd::bounds::SEND_MESSAGE_OVERHEAD as u64;
    };
    assert_eq!(refusal.0, StatusCode::TOO_MANY_REQUESTS, "{}", refusal.1);
    assert_eq!(refusal.1["status"], "RATE_LIMITED");
    assert!(
        refusal.1["message"]
            .as_str()
            .unwrap()
            .contains(" s and send again"),
        "{}",
        refusal.1
    );
    // At most the burst and what refilled meanwhile, and at least the burst less a message.
    let burst = chatd::bounds::SEND_BURST_SECS as f64 * RATE as f64;
    let allowed = burst + RATE as f64 * started.elapsed().as_secs_f64();
    assert!((acked_bytes as f64) <= allowed, "{acked_bytes} > {allowed}");
    assert!((acked_bytes as f64) > burst - 15_064.0, "{acked_bytes}");
    // The other door holds the same bucket: the line refuses too, within a few tries.
    let line_text = "y".repeat(3000);
    let mut tries = 0;
    let reply = loop {
        tries += 1;
        let reply = alice.cmd(&format!("SEND bob {line_text}")).await;
        if !reply.last.starts_with("OK ") || tries > 10 {
            break reply;
        }
        acked += 1;
    };
    assert!(reply.last.starts_with("ERR RATE_LIMITED "), "{reply:?}");
    assert!(reply.last.contains("wait "), "{reply:?}");
    // Others send as usual.
    let mut carol = server.user("carol").await;
    send(&mut carol, "bob", &"z".repeat(3000)).await;
    // Nothing refused was stored.
    let stored = count(&server, "SELECT COUNT(*) FROM messages WHERE sender = 'alice'").await;
    assert_eq!(stored, acked);
    // Once it has waited, the sender goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&mut alice, "bob", "after a pause").await;
    bob.ok("PING").await;
    server.stop().await;
}

/// With the default budget a person chatting, even pasting a long text line by line as fast
/// as the connection takes it, never notices it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_chatting_never_notices_the_default_budget() {
    let server = TestServer::start().await;
    let _bob = server.user("bob").await;
    let mut alice = server.user("alice").await;
    let paste: String = (0..300)
        .map(|i| format!("SEND bob line {i} of a long paste {}\n", "-".repeat(400)))
        .collect();
    alice.write(paste.as_bytes()).await;
    for _ in 0..300 {
        alice.ok_reply().await;
    }
    server.stop().await;
}

/// A flood of the largest messages from one account, on four connections at once, is held to
/// the budget: what is stored is at most the burst and the rate over the time, the rest is
/// refused. (At the default 1 MiB/s a debug build cannot outrun the budget, so this one is set
/// lower; the mechanism is the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_account_is_held_to_its_budget() {
    const RATE: u64 = 256 * 1024;
    let server = TestServer::start_with(|c| c.max_send_rate = RATE).await;
    let _bob = server.user("bob").await;
    let _alice = server.user("alice").await;
    let token = login(&server, "alice").await;
    let text = "f".repeat(chatd::bounds::MAX_MESSAGE_BYTES);
    let started = Instant::now();
    let flood = futures::future::join_all((0..4).map(|_| {
        let (http, url, token, text) = (
            reqwest::Client::new(),
            server.url("/"),
            token.clone(),
            text.clone(),
        );
        async move {
            let (mut stored, mut refused) = (0u64, 0u64);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let body = json!({"recipient": "bob", "message": text});
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::CREATED => stored += 1,
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    other => panic!("{other}"),
                }
            }
            (stored, refused)
        }
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let (stored, refused) = flood
        .iter()
        .fold((0, 0), |(s, r), (stored, refused)| (s + stored, r + refused));
    let stored_bytes = stored as f64 * (text.len() + chatd::bounds::SEND_MESSAGE_OVERHEAD) as f64;
    let allowed = (chatd::bounds::SEND_BURST_SECS as f64 + elapsed) * RATE as f64;
    eprintln!(
        "flood: {stored} stored ({:.2} MB/s), {refused} refused in {elapsed:.1} s",
        stored_bytes / elapsed / 1e6
    );
    assert!(refused > 0, "the flood was never refused");
    assert!(stored_bytes <= allowed, "{stored_bytes} > {allowed}");
    let in_store = count(&server, "SELECT COUNT(*) FROM messages WHERE sender = 'alice'").await;
    assert_eq!(in_store as u64, stored);
    server.stop().await;
}

// --- fields of the wrong type, and a lab client without --lab ---------------------------------

async fn a_field_of_the_wrong_type_is_refused(backend: Backend) {
    let server = TestServer::on(backend).await;
    let _bob = server.user("bob").await;
    let _alice = server.user("alice").await;
    let token = login(&server, "alice").await;
    let http = reqwest::Client::new();
    for sender in [json!(["bob"]), json!({}), json!(null), json!(true)] {
        let body = json!({"sender": sender, "recipient": "bob", "message": "as whom?"});
        let (status, reply) = call(http.post(server.url("/")).bearer_auth(&token).json(&body)).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (StatusCode::BAD_REQUEST, Some("BAD_ARGS")),
            "{sender}: {reply}"
        );
        assert!(reply["message"].as_str().unwrap().contains("sender"), "{reply}");
    }
    for username in [json!(["alice"]), json!(null)] {
        let body = json!({"username": username});
        let (status, reply) = call(
            http.get(server.url("/get_messages"))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (StatusCode::BAD_REQUEST, Some("BAD_ARGS")),
            "{username}: {reply}"
        );
    }
    let body = json!({"recipient": "bob", "message": "hi", "password": ["pw"], "sender": "alice"});
    let (status, _) = call(http.post(server.url("/")).json(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(count(&server, "SELECT COUNT(*) FROM messages").await, 0);
    // The right types still work.
    let body = json!({"sender": "alice", "recipient": "bob", "message": "hi"});
    let (status, _) = call(http.post(server.url("/")).bearer_auth(&token).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
}

async fn a_lab_client_is_told_about_lab(backend: Backend) {
    let server = TestServer::on(backend).await;
    let _alice = server.user("alice").await;
    let http = reqwest::Client::new();
    let lab_send = json!({"sender": "alice", "recipient": "alice", "message": "hi", "timestamp": "now"});
    let (status, reply) = call(http.post(server.url("/")).json(&lab_send)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("AUTH_REQUIRED"))
    );
    assert!(reply["message"].as_str().unwrap().contains("--lab"), "{reply}");
    let (status, reply) = call(
        http.get(server.url("/get_messages"))
            .json(&json!({"username": "alice"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(reply["message"].as_str().unwrap().contains("--lab"), "{reply}");
    // Where --lab would change nothing, it is not mentioned.
    let (_, reply) = call(
        http.get(server.url("/events"))
            .json(&json!({"username": "alice"})),
    )
    .await;
    assert!(!reply["message"].as_str().unwrap().contains("--lab"), "{reply}");
    let (_, reply) = call(
        http.post(server.url("/"))
            .json(&json!({"recipient": "alice", "message": "hi"})),
    )
    .await;
    assert!(!reply["message"].as_str().unwrap().contains("--lab"), "{reply}");
    server.stop().await;
}

on_both_stores!(
    logout_ends_the_streams_of_its_token,
    an_expired_token_ends_its_streams,
    log_out_everywhere_from_the_line,
    log_out_everywhere_over_http,
    logout_on_the_line_ends_only_that_connection,
    tokens_are_capped_per_user_oldest_first,
    one_token_cannot_fill_its_users_sessions,
    who_needs_a_login,
    a_sender_is_held_to_its_send_budget,
    a_field_of_the_wrong_type_is_refused,
    a_lab_client_is_told_about_lab,
);

// --- two nodes on PostgreSQL --------------------------------------------------------------

async fn two_nodes(test: &str, adjust: impl Fn(&mut chatd::Config)) -> Option<(TestServer, TestServer)> {
    let backend = Backend::postgres(test)?;
    let db = std::sync::Arc::new(TestDb::create(backend).await);
    let a = TestServer::on_db(db.clone(), |c| {
        adjust(c);
        c.node_id = Some("node-a".into());
    })
    .await;
    let b = TestServer::on_db(db, |c| {
        adjust(c);
        c.node_id = Some("node-b".into());
    })
    .await;
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_node_ends_the_stream_on_the_other() {
    let Some((a, b)) = two_nodes("a_logout_on_one_node_ends_the_stream_on_the_other", |_| {}).await else {
        return;
    };
    let mut bob = a.user("bob").await;
    let _alice = a.user("alice").await;
    let (one, two) = (login(&a, "alice").await, login(&a, "alice").await);
    let mut on_one = open_events(&b, |r| r.bearer_auth(&one)).await;
    let mut on_two = open_events(&b, |r| r.bearer_auth(&two)).await;
    let id = send(&mut bob, "alice", "before").await;
    receives(&mut on_one, id).await;

    let (status, _) = call(reqwest::Client::new().post(a.url("/logout")).bearer_auth(&one)).await;
    assert_eq!(status, StatusCode::OK);
    let took = ends_within(&mut on_one, ELSEWHERE, "the stream on the other node").await;
    eprintln!("the stream on node b ended {took:?} after the logout on node a");
    let id = send(&mut bob, "alice", "after").await;
    receives(&mut on_two, id).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_reaches_every_node() {
    let Some((a, b)) = two_nodes("logging_out_everywhere_reaches_every_node", |_| {}).await else {
        return;
    };
    let mut alice_a = a.user("alice").await;
    let mut bob = a.user("bob").await;
    let mut alice_b = b.client().await;
    alice_b.ok("AUTH alice pw").await;
    let token = login(&b, "alice").await;
    let mut by_token = open_events(&b, |r| r.bearer_auth(&token)).await;
    let mut by_password = open_events(&b, |r| r.basic_auth("alice", Some("pw"))).await;

    let asked = Instant::now();
    alice_a.ok("LOGOUT ALL").await;
    closed_with(&mut alice_b, "BYE logged out everywhere").await;
    let line_took = asked.elapsed();
    ends_within(&mut by_token, ELSEWHERE, "the token's stream on node b").await;
    ends_within(&mut by_password, ELSEWHERE, "the password's stream on node b").await;
    eprintln!(
        "node b closed alice's line session {line_took:?} and her streams {:?} after LOGOUT ALL on node a",
        asked.elapsed()
    );
    assert!(asked.elapsed() < ELSEWHERE, "{:?}", asked.elapsed());
    let (status, _) = call(reqwest::Client::new().get(b.url("/who")).bearer_auth(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A login after the logout is a new session: node b leaves it alone.
    let mut again = b.client().await;
    again.ok("AUTH alice pw").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let id = send(&mut bob, "alice", "are you back?").await;
    assert_eq!(again.msg().await.id, id);
    send(&mut again, "bob", "yes").await;
    a.stop().await;
    b.stop().await;
}

/// Logins for one user on two nodes at once never leave more tokens than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cap_holds_across_nodes() {
    let Some((a, b)) = two_nodes("the_token_cap_holds_across_nodes", |c| {
        c.max_tokens_per_user = 5;
        c.auth_concurrent_per_account = 32;
    })
    .await
    else {
        return;
    };
    let _alice = a.user("alice").await;
    let tokens = futures::future::join_all((0..24).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        login(node, "alice")
    }))
    .await;
    assert_eq!(tokens.len(), 24);
    assert_eq!(
        count(&a, "SELECT COUNT(*) FROM tokens WHERE user_name = 'alice'").await,
        5
    );
    // WHO on either node reads presence from both, paged by name.
    let _carol = b.user("carol").await;
    let mut alice = a.client().await;
    alice.ok("AUTH alice pw").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let who = alice.cmd("WHO after alice").await;
        if who.data == ["USER carol"] {
            assert_eq!(who.last, "OK 1");
            break;
        }
        assert!(Instant::now() < deadline, "{who:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
}
