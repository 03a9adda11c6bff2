//! The operator's listener: the connections as JSON (paged, sorted, filtered), a live trace of
//! one, the operator's actions (disconnect, reset a password, remove a user), the token, and
//! where it may be bound.

mod common;

use std::time::Duration;

use common::irc::Irc;
use common::TestServer;
use futures::StreamExt;
use serde_json::Value;

async fn get(server: &TestServer, path: &str) -> Value {
    let response = reqwest::get(server.admin_url(path)).await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

async fn connections(server: &TestServer, query: &str) -> Vec<Value> {
    get(server, &format!("/admin/connections{query}")).await["connections"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits (up to 5 s) until `ok` holds for the open connections.
async fn until_connections(server: &TestServer, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let conns = connections(server, "").await;
        if ok(&conns) {
            return conns;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the connections never became as expected: {:#?}",
        connections(server, "").await
    );
}

/// An IRC client logged in (SASL) to a new account `name`, password "pw".
async fn irc_account(server: &TestServer, name: &str) -> Irc {
    server.client().await.ok(&format!("REGISTER {name} pw")).await;
    Irc::sasl(server.irc.unwrap(), name, "pw", "").await
}

fn users(conns: &[Value]) -> Vec<&str> {
    conns.iter().filter_map(|c| c["user"].as_str()).collect()
}

#[tokio::test]
async fn connections_are_listed_with_their_door_user_bytes_and_masked_last_line() {
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let mut alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    let _carol = irc_account(&server, "carol").await;
    let conns = until_connections(&server, |c| c.len() == 3 && users(c).len() == 3).await;
    let alice_row = conns.iter().find(|c| c["user"] == "alice").unwrap();
    assert_eq!(alice_row["door"], "line");
    assert_eq!(
        alice_row["last_line"], "AUTH alice ****",
        "the password is masked"
    );
    assert!(alice_row["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(alice_row["bytes_in"].as_u64().unwrap() >= 30);
    assert!(alice_row["bytes_out"].as_u64().unwrap() > 0);
    let carol = conns.iter().find(|c| c["user"] == "carol").unwrap();
    assert_eq!(carol["door"], "irc");

    // Filters, sorting and paging, as NATS' /connz has them.
    let lines = connections(&server, "?door=line").await;
    assert_eq!(users(&lines), ["alice", "bob"]);
    let page = get(
        &server,
        "/admin/connections?sort=user&order=desc&limit=1&offset=1",
    )
    .await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["num_connections"], 1);
    assert_eq!(users(page["connections"].as_array().unwrap()), ["bob"]);
    assert_eq!(users(&connections(&server, "?user=carol").await), ["carol"]);
    let bad = reqwest::get(server.admin_url("/admin/connections?sort=mood"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("sort by id"));

    // A connection that closes leaves the list at once.
    alice.ok("SEND bob hello").await;
    drop(alice);
    until_connections(&server, |c| {
        users(c) == ["bob", "carol"] || users(c) == ["carol", "bob"]
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_operator_disconnects_a_connection_and_the_client_is_told() {
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let mut alice = server.user("alice").await;
    let mut irc = irc_account(&server, "carol").await;
    let conns = until_connections(&server, |c| c.len() == 2 && users(c).len() == 2).await;
    let id_of = |user: &str| {
        conns.iter().find(|c| c["user"] == user).unwrap()["id"]
            .as_u64()
            .unwrap()
    };

    let http = reqwest::Client::new();
    let url = server.admin_url(&format!("/admin/connections/{}/disconnect", id_of("alice")));
    let done: Value = http.post(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(done["status"], "OK");
    assert_eq!(alice.closed().await, ["BYE disconnected by the operator"]);

    let url = server.admin_url(&format!("/admin/connections/{}/disconnect", id_of("carol")));
    assert!(http.post(url).send().await.unwrap().status().is_success());
    let (closing, _) = irc.until("ERROR").await;
    assert!(
        closing.text().contains("disconnected by the operator"),
        "{closing:?}"
    );

    let missing = http
        .post(server.admin_url("/admin/connections/999999/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    until_connections(&server, |c| c.is_empty()).await;
    // The server goes on.
    server.client().await.ok("AUTH alice pw").await;
    server.stop().await;
}

#[tokio::test]
async fn a_connections_trace_streams_live_to_the_operator() {
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let _bob = server.user("bob").await;
    let mut alice = server.client().await;
    alice.ok("REGISTER alice pw").await;
    let conns = until_connections(&server, |c| c.len() == 2 && users(c) == ["bob"]).await;
    let id = conns.iter().find(|c| c["user"].is_null()).unwrap()["id"]
        .as_u64()
        .unwrap();
    let response = reqwest::get(server.admin_url(&format!("/admin/trace?conn={id}")))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let mut read_until = async |text: &str, seen: &mut String| {
        while !seen.contains(text) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .unwrap_or_else(|_| panic!("no {text:?} in the trace: {seen}"))
                .expect("the stream goes on")
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until("tracing #", &mut seen).await;
    alice.ok("AUTH alice pw").await;
    alice.ok("SEND bob over the wire").await;
    read_until("-> OK", &mut seen).await;
    read_until("SEND bob over the wire", &mut seen).await;
    assert!(seen.contains("<- AUTH alice ****"), "{seen}");
    assert!(!seen.contains(" pw"), "the password never shows: {seen}");
    assert!(seen.contains(" alice <- SEND bob over the wire"), "{seen}");
    drop(alice);
    read_until("the connection closed", &mut seen).await;
    server.stop().await;
}

#[tokio::test]
async fn a_reset_password_ends_the_users_sessions_and_tokens() {
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let mut alice = server.user("alice").await;
    let token = common::http_token(&server.url(""), "alice").await;
    let http = reqwest::Client::new();
    let reset = http
        .post(server.admin_url("/admin/users/alice/reset-password"))
        .json(&serde_json::json!({"password": "n3w-pass"}))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success());
    let done: Value = reset.json().await.unwrap();
    assert_eq!(done["tokens_ended"], 1, "{done}");
    let bye = alice.closed().await;
    assert!(
        bye.iter().any(|l| l.starts_with("BYE")),
        "alice's session ended: {bye:?}"
    );
    let me = http
        .get(server.url("/get_messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the old token ended");
    let mut again = server.client().await;
    assert_eq!(again.err("AUTH alice pw").await, "BAD_CREDENTIALS");
    again.ok("AUTH alice n3w-pass").await;
    let missing = http
        .post(server.admin_url("/admin/users/nobody/reset-password"))
        .json(&serde_json::json!({"password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_user_is_gone_and_what_they_said_stays() {
    let server = TestServer::start_with(|c| c.load_test_hashing = true).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    alice.ok("JOIN #lab").await;
    bob.ok("JOIN #lab").await;
    alice.ok("SEND bob from alice").await;
    bob.ok("SEND alice to alice").await;
    let http = reqwest::Client::new();
    let removed = http
        .delete(server.admin_url("/admin/users/alice"))
        .send()
        .await
        .unwrap();
    assert!(removed.status().is_success());
    let removed: Value = removed.json().await.unwrap();
    assert_eq!(removed["rooms_left"], serde_json::json!(["#lab"]));
    alice.closed().await;

    // Bob keeps what alice said to him; the room saw her leave.
    let inbox = bob.cmd("INBOX 0").await;
    assert!(inbox.data.iter().any(|l| l.ends_with("from alice")), "{inbox:?}");
    let mut fresh = server.client().await;
    assert_eq!(fresh.err("AUTH alice pw").await, "BAD_CREDENTIALS");
    // The name is free; the new alice does not get the old one's messages.
    fresh.ok("REGISTER alice other").await;
    fresh.ok("AUTH alice other").await;
    let inbox = fresh.cmd("INBOX 0").await;
    assert!(inbox.data.is_empty(), "{inbox:?}");
    let missing = http
        .delete(server.admin_url("/admin/users/alice2"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn with_a_token_every_request_needs_it() {
    let server = TestServer::start_with(|c| c.admin_token = Some("s3cret".into())).await;
    let http = reqwest::Client::new();
    for path in ["/admin/connections", "/metrics", "/admin/events"] {
        let refused = http.get(server.admin_url(path)).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        assert_eq!(
            refused.headers()["www-authenticate"],
            "Bearer realm=\"chatd admin\""
        );
        let wrong = http
            .get(server.admin_url(path))
            .bearer_auth("s3cre")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    let ok = http
        .get(server.admin_url("/admin/connections"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let action = http
        .post(server.admin_url("/admin/connections/1/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(action.status(), 401);
    // The page loads, and asks for the token.
    let page = http.get(server.admin_url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("admin token"));
    server.stop().await;
}

#[tokio::test]
async fn the_admin_listener_off_loopback_needs_a_token() {
    let mut config = chatd::Config::for_tests("sqlite::memory:");
    config.admin_addr = Some("0.0.0.0:0".parse().unwrap());
    let error = chatd::Server::bind(config.clone()).await.err().expect("refused");
    let error = format!("{error:#}");
    assert!(error.contains("--admin-token"), "{error}");
    config.admin_token = Some("s3cret".into());
    let server = chatd::Server::bind(config).await.expect("with a token it starts");
    assert!(server.admin_addr().unwrap().ip().is_unspecified());
}

#[tokio::test]
async fn a_taken_admin_port_stops_the_start_when_given_and_is_skipped_by_default() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = chatd::Config::for_tests("sqlite::memory:");
    config.admin_addr = Some(taken.local_addr().unwrap());
    let error = format!(
        "{:#}",
        chatd::Server::bind(config.clone()).await.err().expect("refused")
    );
    assert!(error.contains("the admin listener"), "{error}");
    assert!(
        error.contains(&taken.local_addr().unwrap().port().to_string()),
        "{error}"
    );

    // The default port, taken (by this test, or by another chatd on this machine).
    let _default = std::net::TcpListener::bind("127.0.0.1:9187");
    config.admin_addr = None;
    let server = chatd::Server::bind(config)
        .await
        .expect("it starts without the listener");
    assert_eq!(server.admin_addr(), None);
    assert!(
        server
            .banner()
            .contains("No teacher's view: 127.0.0.1:9187 is taken"),
        "{}",
        server.banner()
    );
}
