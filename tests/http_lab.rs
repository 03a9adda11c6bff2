//! Tokens that end, and the classroom mode: the lab's own Python client, exactly as its cheat
//! sheet writes it, against `--lab` (and refused without it).

mod common;

use std::time::{Duration, Instant};

use common::{http_token, Backend, TestDb, TestServer};
use serde_json::{json, Value};

async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

async fn logout_ends_the_token(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let token = http_token(&server.url(""), "alice").await;
    let other = {
        let (_, reply) = call(
            http.post(server.url("/auth"))
                .json(&json!({"username": "alice", "password": "pw"})),
        )
        .await;
        reply["token"].as_str().unwrap().to_string()
    };
    assert_eq!(
        call(http.get(server.url("/get_messages")).bearer_auth(&token))
            .await
            .0,
        200
    );
    let (status, reply) = call(http.post(server.url("/logout")).bearer_auth(&token)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("SUCCESS")),
        "{reply}"
    );
    let (status, reply) = call(http.get(server.url("/get_messages")).bearer_auth(&token)).await;
    assert_eq!((status, reply["status"].as_str()), (401, Some("BAD_CREDENTIALS")));
    assert_eq!(
        call(http.post(server.url("/logout")).bearer_auth(&token)).await.0,
        401
    );
    assert_eq!(
        call(http.post(server.url("/logout"))).await.0,
        401,
        "no token to end"
    );
    // Only that token ended: the user's other login still works.
    assert_eq!(
        call(http.get(server.url("/get_messages")).bearer_auth(&other))
            .await
            .0,
        200
    );
    server.stop().await;
}

async fn a_conversation_shows_both_sides_and_who_is_online(backend: Backend) {
    let server = TestServer::on(backend).await;
    let http = reqwest::Client::new();
    let alice = http_token(&server.url(""), "alice").await;
    let bob = http_token(&server.url(""), "bob").await;
    http_token(&server.url(""), "carol").await;
    let send = |token: &str, to: &str, text: &str| {
        http.post(server.url("/"))
            .bearer_auth(token)
            .json(&json!({"recipient": to, "message": text}))
    };
    for (token, to, text) in [
        (&alice, "bob", "hi bob"),
        (&bob, "alice", "hi alice"),
        (&alice, "carol", "hi carol"),
        (&alice, "bob", "again"),
    ] {
        assert_eq!(call(send(token, to, text)).await.0, 201);
    }
    let (status, reply) = call(http.get(server.url("/conversation?with=bob")).bearer_auth(&alice)).await;
    assert_eq!(status, 200, "{reply}");
    let texts: Vec<&str> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["hi bob", "hi alice", "again"],
        "both sides, in order, nobody else's"
    );
    assert_eq!(
        (reply["count"].as_u64(), reply["more"].as_bool()),
        (Some(3), Some(false))
    );
    let first = reply["messages"][0]["id"].as_i64().unwrap();
    let (_, page) = call(
        http.get(server.url(&format!("/conversation?with=bob&after={first}&limit=1")))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(
        (page["count"].as_u64(), page["more"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(page["messages"][0]["message"], "hi alice");
    let (status, reply) = call(
        http.get(server.url("/conversation?with=nobody"))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!((status, reply["status"].as_str()), (404, Some("NO_SUCH_USER")));
    assert_eq!(call(http.get(server.url("/conversation?with=bob"))).await.0, 401);

    // Who is online is for those logged in.
    assert_eq!(call(http.get(server.url("/who"))).await.0, 401);
    let (_, who) = call(http.get(server.url("/who")).bearer_auth(&alice)).await;
    assert_eq!(who["users"], json!([]));
    let _dave = server.user("dave").await;
    let (_, who) = call(http.get(server.url("/who")).bearer_auth(&alice)).await;
    assert_eq!(
        (who["users"].clone(), who["count"].as_u64(), who["more"].as_bool()),
        (json!(["dave"]), Some(1), Some(false))
    );
    server.stop().await;
}

on_both_stores!(
    logout_ends_the_token,
    a_conversation_shows_both_sides_and_who_is_online
);

#[tokio::test]
async fn logout_on_one_node_ends_the_token_on_every_node() {
    let Some(backend) = Backend::postgres("logout_on_one_node_ends_the_token_on_every_node") else {
        return;
    };
    let db = std::sync::Arc::new(TestDb::create(backend).await);
    let one = TestServer::on_db(db.clone(), |_| {}).await;
    let two = TestServer::on_db(db.clone(), |_| {}).await;
    let http = reqwest::Client::new();
    let token = http_token(&one.url(""), "alice").await;
    for node in [&one, &two] {
        assert_eq!(
            call(http.get(node.url("/get_messages")).bearer_auth(&token))
                .await
                .0,
            200
        );
    }
    let (status, _) = call(http.post(two.url("/logout")).bearer_auth(&token)).await;
    assert_eq!(status, 200);
    let logged_out = Instant::now();
    let bound = chatd::bounds::TOKEN_RECHECK + Duration::from_secs(1);
    for node in [&two, &one] {
        loop {
            let (status, _) = call(http.get(node.url("/get_messages")).bearer_auth(&token)).await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                logged_out.elapsed() < bound,
                "still accepted after {:?}",
                logged_out.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "refused on both nodes {:?} after the logout",
        logged_out.elapsed()
    );
    one.stop().await;
    two.stop().await;
}

/// The lab's client, as its cheat sheet writes it: no credentials on `POST /` or
/// `GET /get_messages`, the user named in the payload.
const LAB_CLIENT: &str = r#"
import sys, requests
base = sys.argv[1]
statuses = []
r = requests.post(base + "/register", json={"username": "alice", "password": "pw"})
statuses.append(r.json()["status"])
requests.post(base + "/register", json={"username": "bob", "password": "pw"})
r = requests.post(base + "/auth", json={"username": "alice", "password": "pw"})
statuses.append(r.json()["status"])
r = requests.post(base + "/", json={"sender": "alice", "recipient": "bob",
                                    "message": "hello bob", "timestamp": "2026-12-02 10:00"})
statuses.append(r.json()["status"])
r = requests.get(base + "/get_messages", json={"username": "bob"})
reply = r.json()
statuses.append(reply["status"])
texts = [m["message"] for m in reply.get("messages", [])]
print(" ".join(statuses) + " | " + ",".join(texts) + " | " + str(r.status_code))
"#;

fn python_requests() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: the lab client test needs python3 with requests (Debian: python3-requests)");
    }
    ok
}

/// Runs the lab client against `base`; its one line of output.
async fn run_lab_client(base: String) -> String {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("python3")
            .args(["-c", LAB_CLIENT, &base])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_client_works_with_lab_mode_only() {
    if !python_requests() {
        return;
    }
    let lab = TestServer::start_with(|c| c.lab = true).await;
    let out = run_lab_client(lab.url("")).await;
    assert_eq!(out, "SUCCESS SUCCESS SUCCESS SUCCESS | hello bob | 200");
    // Lab mode still refuses a sender who does not exist, and credentials that are wrong.
    let http = reqwest::Client::new();
    let (status, reply) = call(
        http.post(lab.url("/"))
            .json(&json!({"sender": "nobody", "recipient": "bob", "message": "hi"})),
    )
    .await;
    assert_eq!((status, reply["status"].as_str()), (404, Some("NO_SUCH_USER")));
    let (status, _) = call(
        http.get(lab.url("/get_messages"))
            .basic_auth("bob", Some("wrong")),
    )
    .await;
    assert_eq!(status, 401);
    lab.stop().await;

    let strict = TestServer::start().await;
    let out = run_lab_client(strict.url("")).await;
    assert_eq!(out, "SUCCESS SUCCESS AUTH_REQUIRED AUTH_REQUIRED |  | 401");
    strict.stop().await;
}

#[tokio::test]
async fn a_get_carrying_a_message_is_told_to_post() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let (status, reply) = call(
        http.get(server.url("/"))
            .json(&json!({"sender": "alice", "recipient": "bob", "message": "hi"})),
    )
    .await;
    assert_eq!((status, reply["status"].as_str()), (405, Some("UNKNOWN_COMMAND")));
    assert!(reply["message"].as_str().unwrap().contains("POST /"), "{reply}");
    let (status, reply) = call(
        http.get(server.url("/register"))
            .json(&json!({"username": "alice", "password": "pw"})),
    )
    .await;
    assert_eq!(status, 405);
    assert!(
        reply["message"].as_str().unwrap().contains("POST /register"),
        "{reply}"
    );
    server.stop().await;
}

#[test]
fn lab_mode_is_refused_on_postgres_unless_asked() {
    let out = std::process::Command::new(common::process::CHATD)
        .args([
            "serve",
            "--port",
            "0",
            "--http-port",
            "0",
            "--lab",
            "--db",
            "postgres://nobody@127.0.0.1:1/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--lab-on-postgres"), "{stderr}");
}

#[tokio::test]
async fn the_banner_says_loudly_what_lab_mode_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("chatd.db").display());
    let p = common::process::Process::start_with(&db, &["--lab"], None);
    assert!(
        p.banner
            .iter()
            .any(|l| l.contains("LAB MODE") && l.contains("any user")),
        "{:?}",
        p.banner
    );
}
