//! Upgrading in place: this binary started on a database written by the previous release
//! (before rooms) migrates it, and serves everything that was stored, with the same ids, on
//! SQLite and on PostgreSQL. The databases in `tests/fixtures/` were written by that release's
//! own binary: users alice, bob and carol (password `pw`), direct messages between them, and a
//! bearer token for alice (see tests/fixtures/README.md).

mod common;

use std::time::Duration;

use common::process::Process;
use common::{Backend, Client, Msg, TestDb};

/// What the previous release stored, as its clients saw it. `token` is the bearer token it
/// issued to alice.
async fn everything_is_still_there(p: &Process, token: &str) {
    let mut alice = Client::connect(p.addr).await;
    alice.ok("AUTH alice pw").await;
    let inbox = alice.whole_inbox().await;
    let texts: Vec<(i64, &str, &str)> = inbox
        .iter()
        .map(|m| (m.id, m.from.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            (2, "bob", "hi alice, from before rooms"),
            (4, "carol", "a second one for alice"),
        ]
    );
    let talk = alice.cmd("HISTORY bob").await;
    let talk: Vec<Msg> = talk.data.iter().map(|l| Msg::parse(l)).collect();
    assert_eq!(
        talk.iter().map(|m| (m.id, m.from.as_str())).collect::<Vec<_>>(),
        [(1, "alice"), (2, "bob"), (3, "alice")]
    );
    // New ids go on above the old ones, and rooms work on the upgraded database.
    alice.ok("JOIN #class").await;
    let mut bob = Client::connect(p.addr).await;
    bob.ok("AUTH bob pw").await;
    bob.ok("JOIN #class").await;
    let id: i64 = alice.ok("SEND #class after the upgrade").await.parse().unwrap();
    assert!(id > 5, "{id}");
    let pushed = Msg::parse_room(&bob.line().await);
    assert_eq!((pushed.id, pushed.text.as_str()), (id, "after the upgrade"));
    // The token the previous release issued is still known: valid for its 24 hours (then
    // refused as expired, like any other), and HTTP serves the same inbox.
    let http = p.http.expect("HTTP is on");
    let base = format!("http://{http}");
    let get = |token: String| {
        let base = base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/get_messages"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let reply = get(token.trim().to_string()).await;
    let reply = match reply.status().as_u16() {
        200 => reply,
        401 => get(common::http_token(&base, "alice").await).await,
        other => panic!("the old token got {other}"),
    };
    assert_eq!(reply.status().as_u16(), 200);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["count"], 2, "{body}");
}

#[tokio::test]
async fn the_new_binary_upgrades_a_sqlite_database_of_the_previous_release() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.db");
    std::fs::copy("tests/fixtures/before-rooms.db", &file).unwrap();
    let p = Process::start(&format!("sqlite://{}", file.display()));
    everything_is_still_there(&p, include_str!("fixtures/before-rooms.token")).await;
    drop(p);
    // And again: a migrated database starts like any other.
    let p = Process::start(&format!("sqlite://{}", file.display()));
    let mut alice = Client::connect(p.addr).await;
    alice.ok("AUTH alice pw").await;
    assert_eq!(alice.cmd("ROOMS").await.data, ["JOINED #class 2 0"]);
}

#[tokio::test]
async fn the_new_binary_upgrades_a_postgres_database_of_the_previous_release() {
    let Some(backend) =
        Backend::postgres("the_new_binary_upgrades_a_postgres_database_of_the_previous_release")
    else {
        return;
    };
    let db = TestDb::create(backend).await;
    load_dump(&db.url, include_str!("fixtures/before-rooms.pg.sql")).await;
    let p = Process::start(&db.url);
    everything_is_still_there(&p, include_str!("fixtures/before-rooms.pg.token")).await;
    drop(p);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Loads a plain `pg_dump --inserts` of the previous release's database: its statements,
/// without psql's own `\` commands.
async fn load_dump(url: &str, dump: &str) {
    use sqlx::Connection;
    let sql: String = dump
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}
