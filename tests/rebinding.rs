//! DNS rebinding: a web page of `evil.example`, whose name its owner then points at the
//! machine chatd runs on, is same-origin with itself, so a visitor's browser would let it call
//! chatd and read the answers. Its requests still say `Host: evil.example`, and chatd refuses
//! those with `421`, naming `--allowed-host` for a name that really is the server's.

mod common;

use common::TestServer;
use serde_json::{json, Value};

/// A client that resolves `evil.example` to the test server, as the rebound name does.
fn rebound(server: &TestServer) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve("evil.example", server.http)
        .build()
        .unwrap()
}

fn evil(server: &TestServer, path: &str) -> String {
    format!("http://evil.example:{}{path}", server.http.port())
}

async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_rebound_name_can_neither_register_nor_guess_nor_read() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    alice.ok("SEND alice a note to self").await;
    let http = rebound(&server);
    let creds = json!({"username": "mallory", "password": "pw"});
    let (status, reply) = call(http.post(evil(&server, "/register")).json(&creds)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (421, Some("MISDIRECTED")),
        "{reply}"
    );
    let hint = reply["message"].as_str().unwrap();
    assert!(hint.contains("--allowed-host evil.example"), "{hint}");
    let guess = json!({"username": "alice", "password": "pw"});
    assert_eq!(call(http.post(evil(&server, "/auth")).json(&guess)).await.0, 421);
    assert_eq!(
        call(http.get(evil(&server, "/get_messages")).json(&guess))
            .await
            .0,
        421
    );
    assert_eq!(
        call(http.get(evil(&server, "/events")).basic_auth("alice", Some("pw")))
            .await
            .0,
        421
    );
    // The page itself still loads (and shows the hint its first request gets).
    let page = http
        .get(evil(&server, "/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // Nothing was created, and the same requests by address work.
    let (status, _) = call(reqwest::Client::new().post(server.url("/register")).json(&creds)).await;
    assert_eq!(status, 201, "mallory did not exist yet");
    server.stop().await;
}

#[tokio::test]
async fn in_classroom_mode_every_request_is_checked() {
    let server = TestServer::start_with(|c| c.lab = true).await;
    let mut alice = server.user("alice").await;
    alice.ok("SEND alice a secret").await;
    let http = rebound(&server);
    let (status, reply) = call(
        http.get(evil(&server, "/get_messages"))
            .json(&json!({"username": "alice"})),
    )
    .await;
    assert_eq!(status, 421, "{reply}");
    assert!(reply.get("messages").is_none(), "{reply}");
    let send = json!({"sender": "alice", "recipient": "alice", "message": "forged"});
    assert_eq!(call(http.post(evil(&server, "/")).json(&send)).await.0, 421);
    assert_eq!(call(http.get(evil(&server, "/"))).await.0, 421);
    // By address, and by localhost, the lab's client works as before.
    let (status, reply) = call(
        reqwest::Client::new()
            .get(server.url("/get_messages"))
            .json(&json!({"username": "alice"})),
    )
    .await;
    assert_eq!(
        (status, reply["count"].as_u64()),
        (200, Some(1)),
        "nothing was forged: {reply}"
    );
    let local = format!("http://localhost:{}/get_messages", server.http.port());
    let by_name = reqwest::Client::builder()
        .resolve("localhost", server.http)
        .build()
        .unwrap();
    assert_eq!(
        call(by_name.get(local).json(&json!({"username": "alice"})))
            .await
            .0,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn allowed_host_adds_a_name() {
    let server = TestServer::start_with(|c| {
        c.lab = true;
        c.allowed_host = vec!["Evil.Example".into()];
    })
    .await;
    let _alice = server.user("alice").await;
    let (status, reply) = call(
        rebound(&server)
            .get(evil(&server, "/get_messages"))
            .json(&json!({"username": "alice"})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    server.stop().await;
}
