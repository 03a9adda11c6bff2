//! The HTTP facade end to end, with a real HTTP client against the real server.

mod common;

use std::time::Duration;

use common::{Backend, TestServer};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "JSON, not {content_type}: {body}"
    );
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

/// Registers `user` (password "pw") and returns a bearer token for it.
async fn token(server: &TestServer, http: &reqwest::Client, user: &str) -> String {
    let body = json!({"username": user, "password": "pw"});
    let (status, _) = call(http.post(server.url("/register")).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, reply) = call(http.post(server.url("/auth")).json(&body)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["token"].as_str().unwrap().to_string()
}

async fn info_reports_the_server(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let _alice = server.user("alice").await;
    let (status, info) = call(http.get(server.url("/info"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["status"], "SUCCESS");
    assert_eq!(info["name"], "chatd");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["users"], 1);
    assert_eq!(info["messages"], 0);
    assert_eq!(info["connections"], 1);
    assert!(info["uptime_secs"].is_u64());
    assert_eq!(info["listeners"]["line"], server.addr.to_string());
    assert_eq!(info["listeners"]["http"], server.http.to_string());
    server.stop().await;
}

async fn api_shows_what_get_and_post_carry(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let (status, got) = call(http.get(server.url("/api?a=1&b=two"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got,
        json!({"status": "SUCCESS", "method": "GET", "a": "1", "b": "two"})
    );
    let (_, form) = call(
        http.post(server.url("/api"))
            .form(&[("name", "ada lovelace"), ("year", "1843")]),
    )
    .await;
    assert_eq!(
        form,
        json!({"status": "SUCCESS", "method": "POST", "name": "ada lovelace", "year": "1843"})
    );
    let (_, body) = call(
        http.post(server.url("/api"))
            .json(&json!({"n": 5, "list": [1, 2]})),
    )
    .await;
    assert_eq!(
        body,
        json!({"status": "SUCCESS", "method": "POST", "n": 5, "list": [1, 2]})
    );
    // What `curl -d '{...}'` sends: JSON labelled as a form.
    let curl_style = http
        .post(server.url("/api"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"username": "carol"}"#);
    assert_eq!(call(curl_style).await.1["username"], "carol");
    let (_, repeated) = call(http.get(server.url("/api?x=1&x=2"))).await;
    assert_eq!(repeated["x"], json!(["1", "2"]));
    let (status, reserved) = call(http.get(server.url("/api?status=1"))).await;
    assert_eq!(
        (status, reserved["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    server.stop().await;
}

async fn register_and_auth(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let alice = json!({"username": "alice", "password": "pw"});
    let (status, reply) = call(http.post(server.url("/register")).json(&alice)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::CREATED, Some("SUCCESS"))
    );
    let (status, reply) = call(http.post(server.url("/register")).json(&alice)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::CONFLICT, Some("USER_EXISTS"))
    );
    assert!(reply["message"].as_str().unwrap().contains("alice"));
    let (status, reply) = call(
        http.post(server.url("/register"))
            .json(&json!({"username": "no spaces", "password": "pw"})),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    let (status, reply) = call(http.post(server.url("/register")).json(&json!({"username": "x"}))).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    let (status, _) = call(http.get(server.url("/register"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // GET with a JSON body, as requests.get(url, json=...) sends it.
    let (status, reply) = call(http.get(server.url("/auth")).json(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["token_type"], "Bearer");
    assert_eq!(reply["token"].as_str().unwrap().len(), 64);
    assert!(reply["expires_in"].as_u64().unwrap() > 3600);
    // ... and from the query string.
    let (status, _) = call(http.get(server.url("/auth?username=alice&password=pw"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) = call(
        http.post(server.url("/auth"))
            .json(&json!({"username": "alice", "password": "nope"})),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("BAD_CREDENTIALS"))
    );
    assert!(reply.get("token").is_none());
    server.stop().await;
}

async fn credentials_by_token_basic_and_password_field(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let alice_token = token(&server, &http, "alice").await;
    token(&server, &http, "bob").await;
    let send = |text: &str| json!({"sender": "alice", "recipient": "bob", "message": text, "timestamp": "t"});

    let (status, by_token) = call(
        http.post(server.url("/"))
            .bearer_auth(&alice_token)
            .json(&send("one")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{by_token}");
    let (status, by_basic) = call(
        http.post(server.url("/"))
            .basic_auth("alice", Some("pw"))
            .json(&send("two")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{by_basic}");
    let mut with_password = send("three");
    with_password["password"] = "pw".into();
    let (status, by_field) = call(http.post(server.url("/")).json(&with_password)).await;
    assert_eq!(status, StatusCode::CREATED, "{by_field}");
    let ids: Vec<i64> = [by_token, by_basic, by_field]
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Bob reads them with each kind of credentials, too.
    let (_, by_basic) = call(
        http.get(server.url("/get_messages"))
            .basic_auth("bob", Some("pw")),
    )
    .await;
    let (_, by_field) = call(
        http.get(server.url("/get_messages"))
            .json(&json!({"username": "bob", "password": "pw"})),
    )
    .await;
    assert_eq!(by_basic, by_field);
    let texts: Vec<&str> = by_basic["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let first = &by_basic["messages"][0];
    assert_eq!(first["id"], ids[0]);
    assert_eq!(
        (first["sender"].as_str(), first["recipient"].as_str()),
        (Some("alice"), Some("bob"))
    );
    assert_eq!(first["timestamp"], "t", "the client's timestamp, as given");
    assert!(first["server_time"].as_str().unwrap().ends_with('Z'));
    server.stop().await;
}

async fn nobody_reads_or_sends_as_someone_else(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let alice = token(&server, &http, "alice").await;
    let bob = token(&server, &http, "bob").await;
    let (status, _) = call(
        http.post(server.url("/"))
            .bearer_auth(&bob)
            .json(&json!({"sender": "bob", "recipient": "bob", "message": "secret"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let cases = [
        (
            "no credentials",
            http.get(server.url("/get_messages?username=bob")),
            "AUTH_REQUIRED",
        ),
        (
            "alice's token",
            http.get(server.url("/get_messages?username=bob"))
                .bearer_auth(&alice),
            "BAD_CREDENTIALS",
        ),
        (
            "a made-up token",
            http.get(server.url("/get_messages")).bearer_auth("f".repeat(64)),
            "BAD_CREDENTIALS",
        ),
        (
            "a wrong password",
            http.get(server.url("/get_messages"))
                .basic_auth("bob", Some("guess")),
            "BAD_CREDENTIALS",
        ),
        (
            "a wrong password field",
            http.get(server.url("/get_messages"))
                .json(&json!({"username": "bob", "password": "guess"})),
            "BAD_CREDENTIALS",
        ),
    ];
    for (what, request, code) in cases {
        let (status, reply) = call(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {reply}");
        assert_eq!(reply["status"], code, "{what}");
        assert!(
            reply.get("messages").is_none() && !reply.to_string().contains("secret"),
            "{what}: {reply}"
        );
    }
    let (status, reply) = call(
        http.post(server.url("/"))
            .bearer_auth(&alice)
            .json(&json!({"sender": "bob", "recipient": "alice", "message": "forged"})),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("BAD_CREDENTIALS"))
    );
    let (status, reply) = call(
        http.post(server.url("/"))
            .bearer_auth(&alice)
            .json(&json!({"sender": "alice", "recipient": "nobody", "message": "hi"})),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::NOT_FOUND, Some("NO_SUCH_USER"))
    );
    let (status, reply) = call(
        http.post(server.url("/"))
            .bearer_auth(&alice)
            .json(&json!({"sender": "alice", "recipient": "bob", "message": "two\nlines"})),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    server.stop().await;
}

async fn get_messages_pages_with_after_and_limit(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let alice = token(&server, &http, "alice").await;
    for i in 0..5 {
        let body =
            json!({"sender": "alice", "recipient": "alice", "message": format!("m{i}"), "timestamp": i});
        call(http.post(server.url("/")).bearer_auth(&alice).json(&body)).await;
    }
    let (_, page) = call(http.get(server.url("/get_messages?limit=2")).bearer_auth(&alice)).await;
    assert_eq!(page["count"], 2);
    assert_eq!(
        page["messages"][1]["timestamp"], 1,
        "a numeric timestamp stays a number"
    );
    let after = page["messages"][1]["id"].as_i64().unwrap();
    let (_, rest) = call(
        http.get(server.url(&format!("/get_messages?after={after}")))
            .bearer_auth(&alice),
    )
    .await;
    let texts: Vec<&str> = rest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m2", "m3", "m4"]);
    let (status, reply) = call(
        http.get(server.url("/get_messages?limit=many"))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    server.stop().await;
}

async fn an_http_message_pops_up_in_a_telnet_session(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let alice = token(&server, &http, "alice").await;
    let mut bob = server.user("bob").await;
    let (_, sent) =
        call(http.post(server.url("/")).bearer_auth(&alice).json(
            &json!({"sender": "alice", "recipient": "bob", "message": "from the web", "timestamp": "x"}),
        ))
        .await;
    let pushed = bob.msg().await;
    assert_eq!(
        (pushed.id, pushed.from.as_str(), pushed.text.as_str()),
        (sent["id"].as_i64().unwrap(), "alice", "from the web")
    );
    server.stop().await;
}

async fn a_telnet_message_shows_up_over_http_and_live_events(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let bob = token(&server, &http, "bob").await;
    let mut alice = server.user("alice").await;
    let events = http
        .get(server.url("/events"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = events.bytes_stream();
    // Wait until bob's event stream counts as online, then send.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !alice.cmd("WHO").await.data.contains(&"USER bob".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's event stream never came online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id: i64 = alice.ok("SEND bob over telnet").await.parse().unwrap();

    let mut received = String::new();
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            received.push_str(std::str::from_utf8(&chunk).unwrap());
            if let Some(end) = received.find("\n\n") {
                if received[..end].contains("event: message") {
                    return received[..end].to_string();
                }
                received.drain(..end + 2);
            }
        }
    })
    .await
    .expect("the event arrives");
    assert!(event.contains(&format!("id: {id}")), "{event}");
    let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (data["sender"].as_str(), data["message"].as_str()),
        (Some("alice"), Some("over telnet"))
    );

    let (_, inbox) = call(http.get(server.url("/get_messages")).bearer_auth(&bob)).await;
    assert_eq!(inbox["messages"][0]["id"], id);
    assert_eq!(inbox["messages"][0]["message"], "over telnet");
    drop(stream);
    server.stop().await;
}

async fn events_replay_what_a_reconnecting_client_missed(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let bob = token(&server, &http, "bob").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"sender": "bob", "recipient": "bob", "message": format!("note {i}")});
        let (_, sent) = call(http.post(server.url("/")).bearer_auth(&bob).json(&body)).await;
        ids.push(sent["id"].as_i64().unwrap());
    }
    let response = http
        .get(server.url("/events"))
        .bearer_auth(&bob)
        .header("Last-Event-ID", ids[0].to_string())
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while text.matches("event: message").count() < 2 {
            text.push_str(std::str::from_utf8(&stream.next().await.unwrap().unwrap()).unwrap());
        }
    })
    .await
    .expect("the missed messages are replayed");
    assert!(!text.contains(&format!("id: {}\n", ids[0])), "{text}");
    assert!(
        text.contains(&format!("id: {}\n", ids[1])) && text.contains(&format!("id: {}\n", ids[2])),
        "{text}"
    );
    let (status, _) = call(http.get(server.url("/events"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Tokens never travel in URLs, where logs and browser history keep them.
    let (status, reply) = call(http.get(server.url(&format!("/events?token={bob}")))).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    assert!(
        reply["message"].as_str().unwrap().contains("Authorization"),
        "{reply}"
    );
    server.stop().await;
}

async fn bad_requests_get_json_errors_and_the_server_keeps_serving(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let malformed = http
        .post(server.url("/register"))
        .header("content-type", "application/json")
        .body("{\"username\": \"alice\", ");
    let (status, reply) = call(malformed).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_ARGS"))
    );
    assert!(reply["message"].as_str().unwrap().contains("JSON"), "{reply}");
    let not_an_object = http.post(server.url("/register")).json(&json!(["alice", "pw"]));
    assert_eq!(call(not_an_object).await.0, StatusCode::BAD_REQUEST);
    let wrong_type = http
        .post(server.url("/register"))
        .header("content-type", "text/plain")
        .body("alice pw");
    assert_eq!(call(wrong_type).await.1["status"], "BAD_ARGS");
    let huge = http
        .post(server.url("/register"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"username\": \"{}\"}}",
            "x".repeat(chatd::MAX_HTTP_BODY + 1)
        ));
    let (status, reply) = call(huge).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("LINE_TOO_LONG"))
    );
    let (status, reply) = call(http.get(server.url("/no/such/route"))).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::NOT_FOUND, Some("UNKNOWN_COMMAND"))
    );
    let (status, _) = call(http.delete(server.url("/info"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = call(http.get(server.url("/info"))).await;
    assert_eq!(status, StatusCode::OK, "still serving");
    server.stop().await;
}

async fn failed_logins_over_http_are_rate_limited(backend: Backend) {
    let server = TestServer::on_with(backend, |c| c.auth_failures_per_addr = 3).await;
    let http = reqwest::Client::new();
    token(&server, &http, "alice").await;
    let wrong = json!({"username": "alice", "password": "wrong"});
    for _ in 0..3 {
        assert_eq!(
            call(http.post(server.url("/auth")).json(&wrong)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let right = json!({"username": "alice", "password": "pw"});
    let (status, reply) = call(http.post(server.url("/auth")).json(&right)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("RATE_LIMITED"))
    );
    server.stop().await;
}

async fn the_page_is_served_to_browsers(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let page = http
        .get(server.url("/"))
        .header("accept", "text/html,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<html") && html.contains("/events"),
        "the chat page"
    );
    let (status, guide) = call(http.get(server.url("/"))).await;
    assert_eq!((status, guide["name"].as_str()), (StatusCode::OK, Some("chatd")));
    server.stop().await;
}

on_both_stores!(
    info_reports_the_server,
    api_shows_what_get_and_post_carry,
    register_and_auth,
    credentials_by_token_basic_and_password_field,
    nobody_reads_or_sends_as_someone_else,
    get_messages_pages_with_after_and_limit,
    an_http_message_pops_up_in_a_telnet_session,
    a_telnet_message_shows_up_over_http_and_live_events,
    events_replay_what_a_reconnecting_client_missed,
    bad_requests_get_json_errors_and_the_server_keeps_serving,
    failed_logins_over_http_are_rate_limited,
    the_page_is_served_to_browsers,
);
