//! Rooms over HTTP end to end: every `/rooms` route with its statuses and exact fields, and
//! `/events` carrying room rows and resuming every stream after a reconnect.

mod common;

use std::time::Duration;

use common::{Backend, TestServer};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

/// Registers `user` (password "pw") and returns a bearer token for it.
async fn token(server: &TestServer, user: &str) -> String {
    common::http_token(&server.url(""), user).await
}

/// An authorised request as `who` (a token).
struct As<'a> {
    server: &'a TestServer,
    http: reqwest::Client,
    token: String,
}

impl<'a> As<'a> {
    async fn new(server: &'a TestServer, user: &str) -> As<'a> {
        As {
            server,
            http: reqwest::Client::new(),
            token: token(server, user).await,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        call(self.http.get(self.server.url(path)).bearer_auth(&self.token)).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        call(
            self.http
                .post(self.server.url(path))
                .bearer_auth(&self.token)
                .json(&body),
        )
        .await
    }
}

/// `(status, code)` of an error answer, which has exactly `status` and `message`.
fn refused((status, body): (StatusCode, Value)) -> (StatusCode, String) {
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["message", "status"], "{body}");
    (status, body["status"].as_str().unwrap().to_string())
}

fn code(status: StatusCode, code: &str) -> (StatusCode, String) {
    (status, code.to_string())
}

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

async fn joining_saying_and_reading_a_room(backend: Backend) {
    let server = TestServer::on(backend).await;
    let alice = As::new(&server, "alice").await;
    let bob = As::new(&server, "bob").await;

    assert_eq!(
        alice.post("/rooms/class/join", json!({})).await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "members": 1})
        )
    );
    // The path's name has no '#'; a bad name is BAD_ARGS.
    for bad in [
        "/rooms/%23class/join",
        "/rooms/a%20b/join",
        &format!("/rooms/{}/join", "x".repeat(33)),
    ] {
        assert_eq!(
            refused(alice.post(bad, json!({})).await),
            code(StatusCode::BAD_REQUEST, "BAD_ARGS"),
            "{bad}"
        );
    }
    assert_eq!(
        refused(bob.get("/rooms/class/messages").await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    assert_eq!(
        refused(bob.post("/rooms/class/messages", json!({"message": "hi"})).await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    assert_eq!(
        refused(
            alice
                .post("/rooms/nowhere/messages", json!({"message": "hi"}))
                .await
        ),
        code(StatusCode::NOT_FOUND, "NO_SUCH_ROOM")
    );
    assert_eq!(
        refused(alice.get("/rooms/nowhere").await),
        code(StatusCode::NOT_FOUND, "NO_SUCH_ROOM")
    );
    // Case-insensitive, shown as first created.
    assert_eq!(
        bob.post("/rooms/CLASS/join", json!({})).await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "members": 2})
        )
    );

    let (status, sent) = alice
        .post("/rooms/class/messages", json!({"message": "hello class"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(keys(&sent), ["id", "server_time", "status"]);
    assert_eq!(sent["status"], "SUCCESS");
    let said = sent["id"].as_i64().unwrap();
    assert_eq!(
        refused(alice.post("/rooms/class/messages", json!({})).await),
        code(StatusCode::BAD_REQUEST, "BAD_ARGS")
    );

    let (status, page) = bob.get("/rooms/class/messages").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(keys(&page), ["count", "messages", "more", "status"]);
    assert_eq!(
        (page["count"].as_u64(), page["more"].as_bool()),
        (Some(3), Some(false))
    );
    let rows = page["messages"].as_array().unwrap();
    assert_eq!(
        keys(&rows[0]),
        [
            "event",
            "id",
            "message",
            "room",
            "sender",
            "server_time",
            "subject"
        ]
    );
    assert_eq!(
        (
            &rows[0]["event"],
            &rows[0]["sender"],
            &rows[0]["subject"],
            &rows[0]["message"],
            &rows[0]["room"]
        ),
        (
            &json!("join"),
            &json!("alice"),
            &json!("alice"),
            &json!("alice joined"),
            &json!("#class")
        )
    );
    assert_eq!(
        (&rows[1]["event"], &rows[1]["message"]),
        (&json!("join"), &json!("bob joined"))
    );
    assert_eq!(keys(&rows[2]), ["id", "message", "room", "sender", "server_time"]);
    assert_eq!(
        (
            rows[2]["id"].as_i64(),
            &rows[2]["sender"],
            &rows[2]["message"],
            &rows[2]["server_time"]
        ),
        (
            Some(said),
            &json!("alice"),
            &json!("hello class"),
            &sent["server_time"]
        )
    );
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();

    // Paging: after, before, limit, and "more" each way.
    let (_, after) = bob
        .get(&format!("/rooms/class/messages?after={}&limit=1", ids[0]))
        .await;
    assert_eq!(
        (after["count"].as_u64(), after["more"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(after["messages"][0]["id"].as_i64(), Some(ids[1]));
    let (_, before) = bob
        .get(&format!("/rooms/class/messages?before={said}&limit=1"))
        .await;
    assert_eq!(
        (before["count"].as_u64(), before["more"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(before["messages"][0]["id"].as_i64(), Some(ids[1]));
    let (_, latest) = bob.get("/rooms/class/messages?limit=2").await;
    let latest: Vec<i64> = latest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(latest, ids[1..]);
    let (_, oldest) = bob.get(&format!("/rooms/class/messages?before={}", ids[0])).await;
    assert_eq!(
        (oldest["count"].as_u64(), oldest["more"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(
        refused(bob.get("/rooms/class/messages?after=1&before=9").await),
        code(StatusCode::BAD_REQUEST, "BAD_ARGS")
    );

    // Unread counts messages, not events, after the read mark, which lives on the server.
    assert_eq!(
        bob.get("/rooms").await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "count": 1,
                   "rooms": [{"name": "#class", "members": 2, "unread": 1, "topic": ""}]})
        )
    );
    assert_eq!(
        bob.post("/rooms/class/read", json!({})).await,
        (StatusCode::OK, json!({"status": "SUCCESS", "room": "#class"}))
    );
    assert_eq!(bob.get("/rooms").await.1["rooms"][0]["unread"], 0);
    alice
        .post("/rooms/class/messages", json!({"message": "two"}))
        .await;
    let (_, three) = alice
        .post("/rooms/class/messages", json!({"message": "three"}))
        .await;
    assert_eq!(bob.get("/rooms").await.1["rooms"][0]["unread"], 2);
    bob.post(
        "/rooms/class/read",
        json!({"id": three["id"].as_i64().unwrap() - 1}),
    )
    .await;
    assert_eq!(bob.get("/rooms").await.1["rooms"][0]["unread"], 1);
    assert_eq!(
        refused(bob.post("/rooms/nowhere/read", json!({})).await),
        code(StatusCode::NOT_FOUND, "NO_SUCH_ROOM")
    );

    // Leaving, twice.
    assert_eq!(
        bob.post("/rooms/class/leave", json!({})).await,
        (StatusCode::OK, json!({"status": "SUCCESS", "room": "#class"}))
    );
    assert_eq!(
        refused(bob.post("/rooms/class/leave", json!({})).await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    assert_eq!(
        bob.get("/rooms").await.1,
        json!({"status": "SUCCESS", "count": 0, "rooms": []})
    );
    // Without credentials: 401, as on every route.
    let anonymous = reqwest::Client::new();
    assert_eq!(
        refused(call(anonymous.get(server.url("/rooms"))).await),
        code(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED")
    );
    assert_eq!(
        refused(call(anonymous.post(server.url("/rooms/class/join"))).await),
        code(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED")
    );
    server.stop().await;
}

async fn moderating_a_room(backend: Backend) {
    let server = TestServer::on(backend).await;
    let alice = As::new(&server, "alice").await;
    let bob = As::new(&server, "bob").await;
    let dave = As::new(&server, "dave").await;
    alice.post("/rooms/class/join", json!({})).await;
    bob.post("/rooms/class/join", json!({})).await;
    let mut carol = server.user("carol").await;
    carol.ok("JOIN #class").await;

    // Topic: locked by default, so ops only.
    assert_eq!(
        refused(bob.post("/rooms/class/topic", json!({"topic": "mine"})).await),
        code(StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        alice
            .post("/rooms/class/topic", json!({"topic": "Week 3: sockets"}))
            .await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "topic": "Week 3: sockets"})
        )
    );
    // Modes.
    assert_eq!(
        refused(bob.post("/rooms/class/mode", json!({"mode": "+m"})).await),
        code(StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    for bad in ["+x", "m", "+o", "+m now"] {
        assert_eq!(
            refused(alice.post("/rooms/class/mode", json!({"mode": bad})).await),
            code(StatusCode::BAD_REQUEST, "BAD_ARGS"),
            "{bad}"
        );
    }
    assert_eq!(
        alice.post("/rooms/class/mode", json!({"mode": "+m"})).await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "mode": "+m"})
        )
    );
    assert_eq!(
        refused(
            bob.post("/rooms/class/messages", json!({"message": "may I?"}))
                .await
        ),
        code(StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        alice.post("/rooms/class/mode", json!({"mode": "+o bob"})).await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "mode": "+o bob"})
        )
    );
    assert_eq!(
        bob.post("/rooms/class/messages", json!({"message": "as an op"}))
            .await
            .0,
        StatusCode::CREATED
    );
    alice.post("/rooms/class/mode", json!({"mode": "+i"})).await;

    // The room as shown: topic, flags, and members with role and online (carol is, over the
    // line protocol).
    assert_eq!(
        bob.get("/rooms/class").await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "topic": "Week 3: sockets",
            "flags": {"invite_only": true, "moderated": true, "topic_locked": true},
            "members": [
                {"name": "alice", "role": "owner", "online": false},
                {"name": "bob", "role": "op", "online": false},
                {"name": "carol", "role": "member", "online": true},
            ]})
        )
    );
    // Invite-only: hidden from, and closed to, whoever was not invited.
    assert_eq!(
        refused(dave.get("/rooms/class").await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    assert_eq!(
        refused(dave.post("/rooms/class/join", json!({})).await),
        code(StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        refused(dave.post("/rooms/class/invite", json!({"user": "dave"})).await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    assert_eq!(
        refused(bob.post("/rooms/class/invite", json!({"user": "zed"})).await),
        code(StatusCode::NOT_FOUND, "NO_SUCH_USER")
    );
    assert_eq!(
        bob.post("/rooms/class/invite", json!({"user": "dave"})).await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "user": "dave"})
        )
    );
    assert_eq!(dave.post("/rooms/class/join", json!({})).await.1["members"], 4);

    // Removing: ops only; the owner stays; the removed reads nothing more.
    assert_eq!(
        refused(dave.post("/rooms/class/kick", json!({"user": "carol"})).await),
        code(StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        refused(bob.post("/rooms/class/kick", json!({"user": "alice"})).await),
        code(StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    assert_eq!(
        bob.post(
            "/rooms/class/kick",
            json!({"user": "dave", "reason": "wrong class"})
        )
        .await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "room": "#class", "user": "dave"})
        )
    );
    assert_eq!(
        refused(bob.post("/rooms/class/kick", json!({"user": "dave"})).await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    assert_eq!(
        refused(dave.get("/rooms/class/messages").await),
        code(StatusCode::FORBIDDEN, "NOT_MEMBER")
    );
    let (_, page) = alice.get("/rooms/class/messages").await;
    let events: Vec<(&str, &str, &str)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("event").is_some())
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["subject"].as_str().unwrap(),
                r["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        &events[3..],
        [
            ("topic", "alice", "alice set the topic: Week 3: sockets"),
            ("mode", "alice", "alice set +m"),
            ("mode", "bob", "alice set +o bob"),
            ("mode", "alice", "alice set +i"),
            ("join", "dave", "dave joined"),
            ("kick", "dave", "bob removed dave: wrong class"),
        ],
        "{page}"
    );
    assert_eq!(
        page["messages"].as_array().unwrap().last().unwrap()["sender"],
        "bob",
        "an event's sender is who made the change"
    );
    server.stop().await;
}

async fn a_newcomer_finds_the_open_rooms(backend: Backend) {
    let server = TestServer::on(backend).await;
    let alice = As::new(&server, "alice").await;
    let newcomer = As::new(&server, "newcomer").await;
    alice.post("/rooms/class/join", json!({})).await;
    alice
        .post("/rooms/class/topic", json!({"topic": "Networks"}))
        .await;
    alice.post("/rooms/Team3/join", json!({})).await;
    alice.post("/rooms/staff/join", json!({})).await;
    alice.post("/rooms/staff/mode", json!({"mode": "+i"})).await;
    assert_eq!(
        newcomer.get("/rooms?all=1").await,
        (
            StatusCode::OK,
            json!({"status": "SUCCESS", "count": 2, "more": false, "rooms": [
                {"name": "#class", "members": 1, "topic": "Networks"},
                {"name": "#Team3", "members": 1, "topic": ""},
            ]})
        )
    );
    let (_, after) = newcomer.get("/rooms?all=1&after=%23class").await;
    assert_eq!(
        after["rooms"],
        json!([{"name": "#Team3", "members": 1, "topic": ""}])
    );
    assert_eq!(
        refused(newcomer.get("/rooms?all=maybe").await),
        code(StatusCode::BAD_REQUEST, "BAD_ARGS")
    );
    server.stop().await;
}

/// Reads `count` SSE events from `stream`: each as (event, id, data).
async fn read_events(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    count: usize,
) -> Vec<(String, String, Value)> {
    read_events_but(stream, buffer, count, |_| false).await
}

/// Reads `count` SSE events from `stream`, leaving out those `skip` says.
async fn read_events_but(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    count: usize,
    skip: impl Fn(&Value) -> bool,
) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while events.len() < count {
            if let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_string)
                };
                if let Some(data) = field("data: ") {
                    let data: Value = serde_json::from_str(&data).unwrap();
                    if skip(&data) {
                        continue;
                    }
                    events.push((
                        field("event: ").unwrap_or_default(),
                        field("id: ").unwrap_or_default(),
                        data,
                    ));
                }
                continue;
            }
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} events arrive; got {events:?}"));
    events
}

async fn open_events(server: &TestServer, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(server.url("/events"))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// Whether `data` is `user`'s own join: with PostgreSQL a join acknowledged before a stream
/// opened may still be on its way to the hub, and reach the stream live.
fn own_join(user: &'static str) -> impl Fn(&Value) -> bool {
    move |data| data["event"] == "join" && data["subject"] == user
}

/// Waits until `user` counts as online (its event stream is live).
async fn until_online(line: &mut common::Client, user: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !line.cmd("WHO").await.data.contains(&format!("USER {user}")) {
        assert!(std::time::Instant::now() < deadline, "{user} never came online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events_carry_rooms_and_resume_every_stream(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bob = As::new(&server, "bob").await;
    let mut alice = server.user("alice").await;
    alice.ok("JOIN #class").await;
    alice.ok("JOIN #team3").await;
    bob.post("/rooms/class/join", json!({})).await;
    bob.post("/rooms/team3/join", json!({})).await;

    let mut stream = open_events(&server, &bob.token, None).await.bytes_stream();
    let mut buffer = String::new();
    until_online(&mut alice, "bob").await;
    let said: i64 = alice.ok("SEND #class hello from telnet").await.parse().unwrap();
    let direct: i64 = alice.ok("SEND bob psst").await.parse().unwrap();
    let got = read_events_but(&mut stream, &mut buffer, 2, own_join("bob")).await;
    let (event, id, data) = &got[0];
    assert_eq!(event, "room");
    let server_time = data["server_time"].clone();
    assert_eq!(
        data,
        &json!({"id": said, "room": "#class", "sender": "alice", "message": "hello from telnet",
                "server_time": server_time})
    );
    // The cursor names the inbox's place and every room's: before anything came in the
    // inbox, its place is where it stood (empty: 0); team3 is at its newest row, bob's join.
    let team3_join = bob.get("/rooms/team3/messages").await.1["messages"][1]["id"]
        .as_i64()
        .unwrap();
    assert_eq!(id, &format!("0,class:{said},team3:{team3_join}"));
    assert_eq!(got[1].0, "message");
    assert_eq!(got[1].2["message"], "psst");
    let cursor = got[1].1.clone();
    assert_eq!(cursor, format!("{direct},class:{said},team3:{team3_join}"));
    drop(stream);

    // Missed while away: messages in three streams, in an order that crosses them.
    let mut missed = vec![
        alice.ok("SEND #team3 team one").await.parse::<i64>().unwrap(),
        alice.ok("SEND bob direct one").await.parse().unwrap(),
        alice.ok("SEND #class class one").await.parse().unwrap(),
        alice.ok("SEND #team3 team two").await.parse().unwrap(),
    ];
    let response = open_events(&server, &bob.token, Some(&cursor)).await;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut got = read_events(&mut stream, &mut buffer, 4).await;
    // After the replay, live again: one more, and nothing twice.
    missed.push(alice.ok("SEND #class live again").await.parse().unwrap());
    got.extend(read_events(&mut stream, &mut buffer, 1).await);
    let mut ids: Vec<i64> = got.iter().map(|(_, _, d)| d["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, missed, "{got:?}");
    let last = &got.last().unwrap().1;
    assert_eq!(
        last,
        &format!("{},class:{},team3:{}", missed[1], missed[4], missed[3])
    );
    // Within each stream, in id order.
    for room in ["#class", "#team3"] {
        let ids: Vec<i64> = got
            .iter()
            .filter(|(_, _, d)| d["room"] == room)
            .map(|(_, _, d)| d["id"].as_i64().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{room}: {ids:?}");
    }
    drop(stream);

    // A plain integer (as before rooms) resumes the inbox and every room after it.
    let response = open_events(&server, &bob.token, Some(&missed[1].to_string())).await;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let got = read_events(&mut stream, &mut buffer, 3).await;
    let mut ids: Vec<i64> = got.iter().map(|(_, _, d)| d["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, missed[2..], "{got:?}");
    drop(stream);
    server.stop().await;
}

async fn leaving_drops_the_room_from_the_cursor(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bob = As::new(&server, "bob").await;
    let alice = As::new(&server, "alice").await;
    alice.post("/rooms/class/join", json!({})).await;
    bob.post("/rooms/class/join", json!({})).await;
    let mut line = server.user("carol").await;
    let mut stream = open_events(&server, &bob.token, None).await.bytes_stream();
    let mut buffer = String::new();
    until_online(&mut line, "bob").await;
    alice.post("/rooms/class/kick", json!({"user": "bob"})).await;
    let got = read_events_but(&mut stream, &mut buffer, 1, own_join("bob")).await;
    let (event, id, data) = &got[0];
    assert_eq!(event, "room");
    assert_eq!(
        (data["event"].as_str(), data["subject"].as_str()),
        (Some("kick"), Some("bob"))
    );
    assert_eq!(id, "0", "a room left is no longer followed");
    // Nothing more from it.
    alice
        .post("/rooms/class/messages", json!({"message": "after"}))
        .await;
    let (_, sent) = alice
        .post(
            "/",
            json!({"sender": "alice", "recipient": "bob", "message": "still here"}),
        )
        .await;
    let got = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(got[0].2["id"], sent["id"]);
    server.stop().await;
}

on_both_stores!(
    joining_saying_and_reading_a_room,
    moderating_a_room,
    a_newcomer_finds_the_open_rooms,
    events_carry_rooms_and_resume_every_stream,
    leaving_drops_the_room_from_the_cursor,
);

/// Classroom mode: the lab's client names its user and sends no credentials, for rooms too.
#[tokio::test]
async fn lab_mode_acts_as_the_named_user() {
    let lab = TestServer::start_with(|c| c.lab = true).await;
    let http = reqwest::Client::new();
    token(&lab, "alice").await;
    let (status, joined) = call(
        http.post(lab.url("/rooms/class/join"))
            .json(&json!({"username": "alice"})),
    )
    .await;
    assert_eq!((status, &joined["room"]), (StatusCode::OK, &json!("#class")));
    let (status, sent) = call(
        http.post(lab.url("/rooms/class/messages"))
            .json(&json!({"sender": "alice", "message": "from the lab"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let (_, page) = call(http.get(lab.url("/rooms/class/messages?username=alice"))).await;
    assert_eq!(page["messages"][1]["message"], "from the lab");
    lab.stop().await;

    let strict = TestServer::start().await;
    token(&strict, "alice").await;
    let answer = call(
        http.post(strict.url("/rooms/class/messages"))
            .json(&json!({"sender": "alice", "message": "no"})),
    )
    .await;
    assert_eq!(refused(answer), code(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED"));
    strict.stop().await;
}
