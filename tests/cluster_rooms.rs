//! A room across two chatd nodes on one PostgreSQL: members on both, senders on both, one
//! member also receiving direct messages from both. Every session gets every message of every
//! stream it follows exactly once, each stream in increasing id order, on the line protocol and
//! on `/events`; HISTORY misses
//! nothing; a removed member gets nothing more, on either node.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Client, Msg, TestDb, TestServer};

/// How long the senders send.
const TRAFFIC: Duration = Duration::from_secs(10);

/// What one session was pushed, by stream (a room's name, or `inbox`), in arrival order.
type Received = HashMap<String, Vec<Msg>>;

fn file(received: &mut Received, lines: Vec<String>) {
    for line in lines {
        let (stream, msg) = if line.starts_with("ROOM ") {
            let msg = Msg::parse_room(&line);
            (msg.room.clone().unwrap(), msg)
        } else if line.starts_with("MSG ") {
            ("inbox".to_string(), Msg::parse(&line))
        } else {
            panic!("an unexpected line: {line:?}");
        };
        received.entry(stream).or_default().push(msg);
    }
}

/// Reads what `client` is pushed until `stop`, then until nothing more comes for a second.
async fn read_until_quiet(mut client: Client, stop: Arc<AtomicBool>) -> (Client, Received) {
    let mut received = Received::new();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let reply = client.cmd("PING").await;
        assert_eq!(reply.last, "OK PONG");
        let empty = reply.data.is_empty();
        file(&mut received, reply.data);
        if !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        match (empty, quiet_since) {
            (false, _) => quiet_since = None,
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() > Duration::from_secs(1) => return (client, received),
            (true, Some(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one line and returns its acked id; what the session was pushed meanwhile is filed.
async fn send(client: &mut Client, received: &mut Received, line: &str) -> i64 {
    let reply = client.cmd(line).await;
    let id = reply
        .last
        .strip_prefix("OK ")
        .expect(&reply.last)
        .parse()
        .unwrap();
    file(received, reply.data);
    id
}

/// Sends to the room and to `dm_to` in turn for [`TRAFFIC`], one at a time: the acked ids of
/// each, and what the sending session was pushed meanwhile.
async fn send_for_a_while(
    mut client: Client,
    me: &str,
    dm_to: &str,
) -> (Client, Vec<i64>, Vec<i64>, Received) {
    let (mut room, mut direct, mut received) = (Vec::new(), Vec::new(), Received::new());
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < TRAFFIC {
        room.push(send(&mut client, &mut received, &format!("SEND #class {me} says {i}")).await);
        if i % 4 == 0 {
            let line = format!("SEND {dm_to} {me} whispers {i}");
            direct.push(send(&mut client, &mut received, &line).await);
        }
        i += 1;
    }
    (client, room, direct, received)
}

/// Every message of `stream` with an id in `expected` exactly once, and the stream's ids
/// (events too) increasing.
fn check_stream(who: &str, received: &Received, stream: &str, expected: &BTreeSet<i64>) {
    let got = received.get(stream).map(Vec::as_slice).unwrap_or_default();
    let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{who}: {stream} not in increasing id order (or a duplicate)"
    );
    let said: BTreeSet<i64> = got.iter().filter(|m| m.from != "*").map(|m| m.id).collect();
    let missing: Vec<&i64> = expected.difference(&said).collect();
    let extra: Vec<&i64> = said.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{who}: {stream}: {} missing (first {:?}), {} unexpected (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
}

/// Reads `user`'s `/events` stream at `base`, from every stream's id `after` on, until `stop`, then until nothing more comes
/// for 1.5 s: what it carried, by stream, in arrival order.
async fn read_events_until_quiet(
    base: String,
    user: &'static str,
    after: i64,
    stop: Arc<AtomicBool>,
) -> Received {
    use futures::StreamExt;
    let token = common::http_token(&base, user).await;
    let response = reqwest::Client::new()
        .get(format!("{base}/events"))
        .bearer_auth(token)
        .header("Last-Event-ID", after.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut stream = response.bytes_stream();
    let (mut buffer, mut received) = (String::new(), Received::new());
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_string)
            };
            let (Some(kind), Some(data)) = (field("event: "), field("data: ")) else {
                continue;
            };
            let data: serde_json::Value = serde_json::from_str(&data).unwrap();
            let stream = match kind.as_str() {
                "room" => data["room"].as_str().unwrap().to_string(),
                "message" => "inbox".to_string(),
                other => panic!("an unexpected event: {other}"),
            };
            let from = if data.get("event").is_some_and(|e| !e.is_null()) {
                "*"
            } else {
                data["sender"].as_str().unwrap()
            };
            received.entry(stream).or_default().push(Msg {
                id: data["id"].as_i64().unwrap(),
                room: data["room"].as_str().map(str::to_string),
                from: from.to_string(),
                time: String::new(),
                text: data["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        let wait = if stop.load(Ordering::Relaxed) {
            Duration::from_millis(1500)
        } else {
            Duration::from_millis(200)
        };
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(chunk)) => buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
            Ok(None) => panic!("{user}'s event stream ended"),
            Err(_) if stop.load(Ordering::Relaxed) => return received,
            Err(_) => {}
        }
    }
}

/// Leaves out of a session's room messages those up to `start`. `start` was acked before the
/// session logged in, but in a cluster it reaches each node's sessions through the store's
/// announcements, which may come after a login: whether the session is pushed it is a race.
fn drop_start(received: &mut Received, start: i64) {
    if let Some(said) = received.get_mut("#class") {
        said.retain(|m| m.id > start);
    }
}

async fn logged_in(server: &TestServer, user: &str) -> Client {
    let mut client = server.client().await;
    client.ok(&format!("AUTH {user} pw")).await;
    client
}

#[tokio::test]
async fn a_room_across_two_nodes_delivers_every_stream_exactly_once_in_order() {
    let Some(backend) =
        Backend::postgres("a_room_across_two_nodes_delivers_every_stream_exactly_once_in_order")
    else {
        return;
    };
    let db = Arc::new(TestDb::create(backend).await);
    let a = TestServer::on_db(db.clone(), |c| {
        c.node_id = Some("node-a".into());
        c.max_send_rate = 0;
    })
    .await;
    let b = TestServer::on_db(db.clone(), |c| {
        c.node_id = Some("node-b".into());
        c.max_send_rate = 0;
    })
    .await;
    let mut owner = a.user("teacher").await;
    owner.ok("JOIN #class").await;
    // Members on both nodes; two senders, one per node; m1 has a session on each node and
    // receives direct messages from both senders.
    let users = ["m1", "m2", "m3", "m4", "sa", "sb"];
    for user in users {
        let mut c = a.client().await;
        c.ok(&format!("REGISTER {user} pw")).await;
        c.ok(&format!("AUTH {user} pw")).await;
        c.ok("JOIN #class").await;
    }
    // Where the event streams start: whatever comes after this id, in every stream.
    let start: i64 = owner.ok("SEND #class let us begin").await.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (name, node) in [("m1", &a), ("m1", &b), ("m2", &a), ("m3", &b), ("m4", &b)] {
        let client = logged_in(node, name).await;
        let label = format!("{name}@{}", if std::ptr::eq(node, &a) { "a" } else { "b" });
        readers.push((label, name, tokio::spawn(read_until_quiet(client, stop.clone()))));
    }
    // m1 and m3 also follow everything over HTTP, on the other node than their line session.
    let sse = [("m1", b.url("")), ("m3", a.url(""))].map(|(user, base)| {
        (
            user,
            tokio::spawn(read_events_until_quiet(base, user, start, stop.clone())),
        )
    });
    // m4 also has a session on node a, for the removal below.
    let m4_on_a = tokio::spawn(read_until_quiet(logged_in(&a, "m4").await, stop.clone()));
    // Both senders are online before either sends.
    let (sa, sb) = (logged_in(&a, "sa").await, logged_in(&b, "sb").await);
    let sa = tokio::spawn(async move {
        let sent = send_for_a_while(sa, "sa", "m1").await;
        (a, sent)
    });
    let sb = tokio::spawn(async move {
        let sent = send_for_a_while(sb, "sb", "m1").await;
        (b, sent)
    });
    let (a, (mut sa_client, sa_room, sa_direct, sa_got)) = sa.await.unwrap();
    let (b, (mut sb_client, sb_room, sb_direct, sb_got)) = sb.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let room: BTreeSet<i64> = sa_room.iter().chain(&sb_room).copied().collect();
    let direct: BTreeSet<i64> = sa_direct.iter().chain(&sb_direct).copied().collect();
    eprintln!(
        "{} room messages and {} direct messages acked",
        room.len(),
        direct.len()
    );
    assert!(
        room.len() > 200,
        "too little traffic to show anything: {}",
        room.len()
    );

    // Each sender was pushed the other's room messages, not its own.
    let mut sa_got = sa_got;
    file(&mut sa_got, sa_client.cmd("PING").await.data);
    let mut sb_got = sb_got;
    file(&mut sb_got, sb_client.cmd("PING").await.data);
    let settle = Instant::now() + Duration::from_secs(10);
    while sa_got.get("#class").map_or(0, Vec::len) < sb_room.len() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        file(&mut sa_got, sa_client.cmd("PING").await.data);
    }
    while sb_got.get("#class").map_or(0, Vec::len) < sa_room.len() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        file(&mut sb_got, sb_client.cmd("PING").await.data);
    }
    check_stream("sa", &sa_got, "#class", &sb_room.iter().copied().collect());
    check_stream("sb", &sb_got, "#class", &sa_room.iter().copied().collect());

    let mut clients = Vec::new();
    for (label, name, reader) in readers {
        let (client, mut received) = reader.await.unwrap();
        drop_start(&mut received, start);
        check_stream(&label, &received, "#class", &room);
        let inbox = if name == "m1" {
            direct.clone()
        } else {
            BTreeSet::new()
        };
        check_stream(&label, &received, "inbox", &inbox);
        clients.push((label, client));
    }
    for (user, events) in sse {
        let received = events.await.unwrap();
        let label = format!("{user}'s /events");
        check_stream(&label, &received, "#class", &room);
        let inbox = if user == "m1" {
            direct.clone()
        } else {
            BTreeSet::new()
        };
        check_stream(&label, &received, "inbox", &inbox);
    }
    let (mut m4_a, mut m4_a_got) = m4_on_a.await.unwrap();
    drop_start(&mut m4_a_got, start);
    check_stream("m4@a", &m4_a_got, "#class", &room);

    // HISTORY after the last id a member saw before the traffic holds all of it.
    let (_, m2) = clients.iter_mut().find(|(l, _)| l == "m2@a").unwrap();
    let mut after = start;
    let mut stored = BTreeSet::new();
    loop {
        let page = m2.cmd(&format!("HISTORY #class after {after}")).await;
        let rows: Vec<Msg> = page.data.iter().map(|l| Msg::parse_room(l)).collect();
        if rows.is_empty() {
            break;
        }
        after = rows.last().unwrap().id;
        stored.extend(rows.iter().filter(|m| m.from != "*").map(|m| m.id));
    }
    assert_eq!(stored, room, "HISTORY holds every acked room message");

    // The owner on node a removes m4, whose sessions are on both nodes: both get the
    // removal, and nothing after it, live or in HISTORY.
    let (_, m4_b) = clients.iter_mut().find(|(l, _)| l == "m4@b").unwrap();
    owner.cmd("PING").await;
    owner.ok("KICK #class m4 end of the lab").await;
    for _ in 0..5 {
        owner.cmd("SEND #class after m4 left").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (label, client) in [("m4@b", &mut *m4_b), ("m4@a", &mut m4_a)] {
        let pushed = client.cmd("PING").await.data;
        assert_eq!(pushed.len(), 1, "{label}: only the removal: {pushed:?}");
        let removal = Msg::parse_room(&pushed[0]);
        assert_eq!(
            (&*removal.from, &*removal.text),
            ("*", "teacher removed m4: end of the lab")
        );
        assert_eq!(client.err("HISTORY #class").await, "NOT_MEMBER", "{label}");
    }
    drop(clients);
    a.stop().await;
    b.stop().await;
}
