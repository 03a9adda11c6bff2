//! A real headless Chromium drives the chat page served at `GET /`: two browsers, two users,
//! a message that arrives live (Server-Sent Events) without any reload, rendered as text; the
//! people list with who is online and unread counts; a conversation showing both sides; a
//! malformed stored message that cannot stop the rest rendering; the length counter. And a
//! room: created, found and joined on the page, live both ways, moderated, with unread counts
//! kept on the server and history that loads on scroll.
//!
//! Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian `chromium`, `chromium-driver`;
//! `scripts/test.sh` installs them). Without them the test prints `SKIPPED: ...` and passes,
//! unless `CHATD_REQUIRE_BROWSER=1` is set.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The longest any one wait may take: for chromedriver, a browser, or something in a page.
const WAIT: Duration = Duration::from_secs(10);
/// The whole test, browsers included.
const WHOLE_TEST: Duration = Duration::from_secs(180);
/// Markup and an entity: the page must show these characters, not interpret them.
const TRICKY: &str = "<b>hi</b> & bye";

#[tokio::test(flavor = "multi_thread")]
async fn two_browsers_chat_live() {
    if let Some(reason) = browser_missing() {
        if std::env::var("CHATD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("CHATD_REQUIRE_BROWSER=1, but {reason}");
        }
        eprintln!("SKIPPED: browser test: {reason}");
        return;
    }
    tokio::time::timeout(WHOLE_TEST, chat_in_two_browsers())
        .await
        .expect("the browser test finishes in time");
}

fn browser_missing() -> Option<String> {
    [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .find(|path| !Path::new(path).exists())
        .map(|path| format!("{path} is missing (Debian packages: chromium chromium-driver)"))
}

async fn chat_in_two_browsers() {
    let server = common::TestServer::start().await;
    let page = format!("http://{}/", server.http);
    let mut driver = Chromedriver::start().await;
    let alice = driver.browser(1100, 760).await; // a laptop
    let bob = driver.browser(412, 860).await; // a phone

    // Alice registers (which logs her in), logs out, fails to take her own name again, logs
    // in with Enter, and stays logged in across a reload.
    alice.goto(&page).await.expect("alice opens the page");
    assert_eq!(alice.title().await.unwrap(), "chatd");
    register(&alice, "alice", "pw-alice").await;
    click(&alice, "logout").await;
    wait_for(&alice, "the login form", "#username", |_| true).await;
    assert_eq!(
        find(&alice, "#whoami").await.text().await.unwrap(),
        "",
        "logged out"
    );
    fill(&alice, "username", "alice").await;
    fill(&alice, "password", "pw-alice").await;
    click(&alice, "register").await;
    let status = wait_for(&alice, "the USER_EXISTS error", "#status", |t| {
        t.contains("USER_EXISTS")
    })
    .await;
    let class = find(&alice, "#status").await.attr("class").await.unwrap();
    assert_eq!(class.as_deref(), Some("error"), "{status:?} is shown as an error");
    fill(&alice, "password", &format!("pw-alice{}", Key::Enter)).await;
    wait_for(&alice, "alice logged in", "#whoami", |t| t == "alice").await;
    alice.refresh().await.expect("alice reloads");
    wait_for(&alice, "alice still logged in", "#whoami", |t| t == "alice").await;

    // A message stored with a malformed timestamp (as an older server let through) waits for
    // bob: it must not stop anything else from rendering.
    plant_malformed_message(&server.db_url, "carol", "bob", "from carol").await;

    // Bob registers in the other browser; from here on his page must never reload.
    bob.goto(&page).await.expect("bob opens the page");
    register(&bob, "bob", "pw-bob").await;
    let bob_url = bob.current_url().await.unwrap();
    bob.execute("window.chatdMarker = 'no reload'; return true;", vec![])
        .await
        .unwrap();
    wait_for(&bob, "carol's malformed message", "#messages .msg", |t| {
        t.contains("from carol")
    })
    .await;

    // Alice sees bob online, and writes to him, submitting with Enter.
    wait_for(&alice, "bob online", "#people .person.online", |t| {
        t.contains("bob")
    })
    .await;
    fill(&alice, "recipient", "bob").await;
    fill(&alice, "message", &format!("{TRICKY}{}", Key::Enter)).await;
    wait_for(&alice, "the send confirmation", "#status", |t| {
        t.contains("Sent to bob")
    })
    .await;

    // Bob sees it live, as text, once, after carol's.
    wait_for(&bob, "alice's message", "#messages .msg", |t| t.contains(TRICKY)).await;
    let shown = texts(&bob, "#messages .msg .text").await;
    assert_eq!(shown, ["from carol", TRICKY], "every message renders, in order");
    let senders = texts(&bob, "#messages .msg .sender").await;
    assert_eq!(senders, ["carol", "alice"]);
    assert!(
        bob.find_all(Locator::Css("#messages b"))
            .await
            .unwrap()
            .is_empty(),
        "the message text became markup"
    );
    let id = find(&bob, "#messages .msg").await.attr("data-id").await.unwrap();
    assert!(
        id.is_some_and(|id| id.parse::<u64>().is_ok()),
        "data-id is a message id"
    );
    assert_eq!(
        message_ids(&bob).await.len(),
        2,
        "each message is shown exactly once"
    );

    // A second message: bob's people list counts two unread from alice, one from carol.
    fill(&alice, "message", &format!("are you there?{}", Key::Enter)).await;
    wait_for(
        &bob,
        "two unread from alice",
        "#people .person[data-name='alice'] .badge",
        |t| t == "2",
    )
    .await;
    wait_for(
        &bob,
        "one unread from carol",
        "#people .person[data-name='carol'] .badge",
        |t| t == "1",
    )
    .await;
    let marker = bob
        .execute("return window.chatdMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("no reload"), "bob's page was reloaded");
    assert_eq!(bob.current_url().await.unwrap(), bob_url);
    screenshot(&bob, "bob-unread").await;

    // Bob opens the conversation with alice: her two messages, the unread count gone, and the
    // reply addressed to her.
    click_css(&bob, "#people .person[data-name='alice']").await;
    wait_for(&bob, "the conversation", "#inbox-title", |t| t.contains("alice")).await;
    wait_for(&bob, "alice's second message", "#messages .msg", |t| {
        t.contains("are you there?")
    })
    .await;
    assert_eq!(
        texts(&bob, "#messages .msg .text").await,
        [TRICKY, "are you there?"]
    );
    assert!(
        bob.find_all(Locator::Css("#people .person[data-name='alice'] .badge"))
            .await
            .unwrap()
            .is_empty(),
        "reading the conversation clears its unread count"
    );
    let to = find(&bob, "#recipient").await.prop("value").await.unwrap();
    assert_eq!(
        to.as_deref(),
        Some("alice"),
        "the conversation addresses the reply"
    );
    fill(&bob, "message", "hello alice").await;
    click(&bob, "send").await;
    wait_for(
        &bob,
        "bob's own reply in the conversation",
        "#messages .msg.mine",
        |t| t.contains("hello alice"),
    )
    .await;

    // Alice's conversation with bob shows both sides: her two messages and his reply, live.
    wait_for(&alice, "bob's reply", "#messages .msg", |t| {
        t.contains("hello alice")
    })
    .await;
    assert_eq!(
        find(&alice, "#inbox-title").await.text().await.unwrap(),
        "Conversation with bob"
    );
    assert_eq!(
        texts(&alice, "#messages .msg .text").await,
        [TRICKY, "are you there?", "hello alice"]
    );
    assert_eq!(
        texts(&alice, "#messages .msg.mine .text").await.len(),
        2,
        "her own, marked as hers"
    );
    assert_eq!(find(&alice, "#whoami").await.text().await.unwrap(), "alice");
    assert_eq!(message_ids(&alice).await.len(), 3);

    // The length counter warns before Send: a message over 64 KiB cannot be sent.
    alice
        .execute(
            "const m = document.getElementById('message'); m.value = 'é'.repeat(40000); \
             m.dispatchEvent(new Event('input')); return true;",
            vec![],
        )
        .await
        .unwrap();
    let length = wait_for(&alice, "the length warning", "#length", |t| {
        t.contains("Too long")
    })
    .await;
    assert!(length.contains("80000"), "{length}");
    assert_eq!(
        find(&alice, "#send")
            .await
            .prop("disabled")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );
    screenshot(&alice, "alice-too-long").await;
    fill(&alice, "message", "short").await;
    let length = find(&alice, "#length").await.text().await.unwrap();
    assert_eq!(length, "5 / 65536 bytes");

    screenshot(&alice, "alice").await;
    screenshot(&bob, "bob").await;

    // Log out ends the token on the server, not only in the page.
    let token = alice
        .execute(
            "return JSON.parse(sessionStorage.getItem('chatd.session')).token;",
            vec![],
        )
        .await
        .unwrap();
    click(&alice, "logout").await;
    wait_for(&alice, "the login form", "#username", |_| true).await;
    let token = token.as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = http
            .get(server.url("/get_messages"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the logged-out token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for client in [alice, bob] {
        client.close().await.expect("the browser session ends");
    }
    drop(driver);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_browsers_in_a_room() {
    if let Some(reason) = browser_missing() {
        if std::env::var("CHATD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("CHATD_REQUIRE_BROWSER=1, but {reason}");
        }
        eprintln!("SKIPPED: browser test: {reason}");
        return;
    }
    tokio::time::timeout(WHOLE_TEST, a_room_in_two_browsers())
        .await
        .expect("the browser test finishes in time");
}

/// A teacher creates a room on the page, a student finds it among the open rooms and joins;
/// they talk live, the teacher moderates, unread counts survive a new log-in, history loads
/// as the student scrolls up, and the conversation pane uses the window's height.
async fn a_room_in_two_browsers() {
    let server = common::TestServer::start().await;
    let page = format!("http://{}/", server.http);
    let mut driver = Chromedriver::start().await;
    let alice = driver.browser(1280, 860).await; // a desktop
    let bob = driver.browser(1100, 760).await; // a laptop

    alice.goto(&page).await.expect("alice opens the page");
    register(&alice, "alice", "pw-alice").await;
    bob.goto(&page).await.expect("bob opens the page");
    register(&bob, "bob", "pw-bob").await;

    // Alice creates #class by joining it, and owns it.
    fill(&alice, "room-name", &format!("#class{}", Key::Enter)).await;
    wait_for(&alice, "the room's view", "#inbox-title", |t| t == "#class").await;
    wait_for(&alice, "alice as owner", "#members .member", |t| {
        t.contains("alice") && t.contains("owner")
    })
    .await;

    // Bob finds it among the open rooms, and joins with a click.
    wait_for(&bob, "#class among the open rooms", "#open-rooms .room", |t| {
        t.contains("class")
    })
    .await;
    click_css(&bob, "#open-rooms .room[data-room='#class']").await;
    wait_for(&bob, "the room's view", "#inbox-title", |t| t == "#class").await;
    wait_for(&bob, "bob in his rooms", "#rooms .room", |t| t.contains("class")).await;

    // Alice sees him join, live, and online.
    wait_for(&alice, "bob's join", "#messages .msg.event", |t| {
        t.contains("bob joined")
    })
    .await;
    wait_for(
        &alice,
        "bob online in the members",
        "#members .member.online",
        |t| t.contains("bob"),
    )
    .await;

    // They talk, live, as text.
    fill(&bob, "message", &format!("{TRICKY}{}", Key::Enter)).await;
    wait_for(&alice, "bob's message", "#messages .msg .text", |t| t == TRICKY).await;
    fill(&alice, "message", &format!("welcome, bob{}", Key::Enter)).await;
    wait_for(&bob, "alice's message", "#messages .msg .text", |t| {
        t == "welcome, bob"
    })
    .await;
    assert!(bob
        .find_all(Locator::Css("#messages b"))
        .await
        .unwrap()
        .is_empty());

    // Moderation is for ops: alice has the tools, bob does not.
    assert!(find(&alice, "#room-tools").await.is_displayed().await.unwrap());
    assert!(!find(&bob, "#room-tools").await.is_displayed().await.unwrap());
    fill(&alice, "topic-input", "Week 3: sockets").await;
    click(&alice, "set-topic").await;
    wait_for(&bob, "the topic, live", "#room-topic", |t| {
        t == "Topic: Week 3: sockets"
    })
    .await;
    click(&alice, "mode-m").await;
    wait_for(&bob, "the moderation event", "#messages .msg.event", |t| {
        t.contains("alice set +m")
    })
    .await;
    fill(&bob, "message", &format!("may I?{}", Key::Enter)).await;
    wait_for(&bob, "the refusal", "#status", |t| t.contains("FORBIDDEN")).await;
    click(&alice, "mode-m").await;
    wait_for(&bob, "the end of moderation", "#messages .msg.event", |t| {
        t.contains("alice set -m")
    })
    .await;
    wait_for(&alice, "moderation off", "#mode-m[aria-pressed='false']", |_| {
        true
    })
    .await;
    screenshot(&alice, "room-alice").await;
    screenshot(&bob, "room-bob").await;

    // The conversation pane uses the window's height, not a fixed share of it.
    let heights = alice
        .execute(
            "return [document.querySelector('.conversation').getBoundingClientRect().height, \
             window.innerHeight];",
            vec![],
        )
        .await
        .unwrap();
    let (pane, window) = (heights[0].as_f64().unwrap(), heights[1].as_f64().unwrap());
    assert!(
        pane > window * 0.7,
        "the conversation is {pane} px of a {window} px window"
    );

    // Unread counts live on the server: bob looks away, alice writes twice, and the count
    // survives bob logging out and in again; reading it clears it for good.
    click(&bob, "all").await;
    wait_for(&bob, "the inbox", "#inbox-title", |t| t == "Inbox").await;
    fill(&alice, "message", &format!("one{}", Key::Enter)).await;
    fill(&alice, "message", &format!("two{}", Key::Enter)).await;
    let badge = "#rooms .room[data-room='#class'] .badge";
    wait_for(&bob, "two unread in #class", badge, |t| t == "2").await;
    click(&bob, "logout").await;
    fill(&bob, "username", "bob").await;
    fill(&bob, "password", &format!("pw-bob{}", Key::Enter)).await;
    wait_for(&bob, "bob logged in again", "#whoami", |t| t == "bob").await;
    wait_for(&bob, "still two unread", badge, |t| t == "2").await;
    click_css(&bob, "#rooms .room[data-room='#class']").await;
    wait_for(&bob, "the latest", "#messages .msg .text", |t| t == "two").await;
    // The page sends the read mark a moment after showing the room; the server has it.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let rooms: Value = http
            .get(server.url("/rooms"))
            .basic_auth("bob", Some("pw-bob"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if rooms["rooms"][0]["unread"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never marked #class read: {rooms}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(&bob, "logout").await;
    fill(&bob, "username", "bob").await;
    fill(&bob, "password", &format!("pw-bob{}", Key::Enter)).await;
    wait_for(&bob, "bob logged in again", "#rooms .room", |t| {
        t.contains("class")
    })
    .await;
    assert!(
        bob.find_all(Locator::Css(badge)).await.unwrap().is_empty(),
        "what was read stays read"
    );

    // History loads as bob scrolls up: 80 more messages, 50 shown, the rest on scrolling.
    let token = alice
        .execute(
            "return JSON.parse(sessionStorage.getItem('chatd.session')).token;",
            vec![],
        )
        .await
        .unwrap();
    for i in 0..80 {
        let sent = http
            .post(server.url("/rooms/class/messages"))
            .bearer_auth(token.as_str().unwrap())
            .json(&json!({"message": format!("line {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201);
    }
    click(&bob, "all").await;
    click_css(&bob, "#rooms .room[data-room='#class']").await;
    wait_for(&bob, "the latest line", "#messages .msg .text", |t| {
        t == "line 79"
    })
    .await;
    assert_eq!(message_ids(&bob).await.len(), 50, "the latest 50 first");
    let mut total = 50;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        bob.execute(
            "document.getElementById('scroller').scrollTop = 0; return true;",
            vec![],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        total = message_ids(&bob).await.len();
        if texts(&bob, "#messages .msg .text")
            .await
            .first()
            .map(String::as_str)
            == Some(TRICKY)
        {
            break;
        }
    }
    // 2 joins, 4 messages, a topic, 2 modes, then the 80.
    assert_eq!(total, 89, "the whole history loaded on scroll");
    let first = texts(&bob, "#messages .msg.event").await;
    assert_eq!(
        first.first().map(|t| t.starts_with("alice joined")),
        Some(true),
        "{first:?}"
    );

    // Alice removes bob: he sees why, and the room leaves his list.
    click_css(&alice, "#members .member[data-name='bob'] .kick").await;
    wait_for(&bob, "the removal", "#status", |t| {
        t.contains("alice removed bob")
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while !bob
        .find_all(Locator::Css("#rooms .room"))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "#class is still in bob's rooms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&bob, "the inbox", "#inbox-title", |t| t == "Inbox").await;
    screenshot(&bob, "room-bob-removed").await;

    for client in [alice, bob] {
        client.close().await.expect("the browser session ends");
    }
    drop(driver);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_teachers_view_in_a_browser() {
    if let Some(reason) = browser_missing() {
        if std::env::var("CHATD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("CHATD_REQUIRE_BROWSER=1, but {reason}");
        }
        eprintln!("SKIPPED: browser test: {reason}");
        return;
    }
    tokio::time::timeout(WHOLE_TEST, teachers_view())
        .await
        .expect("the browser test finishes in time");
}

/// The page a teacher projects: two students (telnet and IRC) in a room, the counters, a
/// click on a connection that opens its live trace (password masked), a student who leaves
/// and leaves the list, and one the teacher disconnects, who is told so.
async fn teachers_view() {
    let server = common::TestServer::start_with(|c| c.load_test_hashing = true).await;
    let mut alice = server.user("alice").await;
    server.client().await.ok("REGISTER bob pw").await;
    let mut bob = common::irc::Irc::sasl(server.irc.unwrap(), "bob", "pw", "").await;
    alice.ok("JOIN #lab").await;
    bob.send("JOIN #lab").await;
    bob.expect("JOIN").await;
    alice.ok("TOPIC #lab networks, week 3").await;
    let mut carol = server.user("carol").await;

    let mut driver = Chromedriver::start().await;
    let teacher = driver.browser(1280, 800).await; // a projector
    teacher
        .goto(&server.admin_url("/admin"))
        .await
        .expect("the teacher opens the page");
    assert_eq!(teacher.title().await.unwrap(), "chatd: the teacher's view");
    wait_for(&teacher, "three users", "#conns", |t| {
        t.contains("alice") && t.contains("bob") && t.contains("carol")
    })
    .await;
    let rows = wait_for(&teacher, "alice's row", "#conns tr", |t| t.contains("alice")).await;
    assert!(
        rows.contains("line") && rows.contains("TOPIC #lab networks, week 3"),
        "{rows}"
    );
    let bob_row = wait_for(&teacher, "bob's row", "#conns tr", |t| t.contains("bob")).await;
    assert!(bob_row.contains("irc"), "{bob_row}");
    wait_for(&teacher, "the room", "#rooms", |t| {
        t.contains("#lab") && t.contains("2 members")
    })
    .await;
    wait_for(&teacher, "who is online", "#online", |t| {
        t.contains("alice") && t.contains("bob") && t.contains("carol")
    })
    .await;
    wait_for(&teacher, "the counters", "#counters", |t| {
        t.contains("connections")
    })
    .await;

    // Carol leaves: her row goes at once.
    carol.write(b"QUIT\r\n").await;
    carol.closed().await;
    wait_for(&teacher, "carol gone", "#conns", |t| !t.contains("carol")).await;

    // A click on alice's row opens her live trace.
    let alice_cell = "#conns tr.conn td:nth-child(4)";
    for _ in 0..5 {
        let cells = teacher.find_all(Locator::Css(alice_cell)).await.unwrap();
        let mut clicked = false;
        for cell in cells {
            if cell.text().await.unwrap_or_default() == "alice" && cell.click().await.is_ok() {
                clicked = true;
                break;
            }
        }
        if clicked {
            break;
        }
    }
    wait_for(&teacher, "the trace", "#trace-lines", |t| t.contains("tracing #")).await;
    alice.ok("AUTH alice pw").await;
    alice.ok("SEND #lab who has the lab notes?").await;
    let trace = wait_for(&teacher, "alice's lines", "#trace-lines", |t| {
        t.contains("who has the lab notes?") && t.contains("-> OK")
    })
    .await;
    assert!(trace.contains("<- AUTH alice ****"), "{trace}");
    assert!(!trace.contains("AUTH alice pw"), "{trace}");
    bob.until("PRIVMSG").await;
    screenshot_as(&teacher, "admin").await;

    // The teacher disconnects alice; her client is told, and her row goes.
    teacher
        .execute("window.confirm = () => true;", vec![])
        .await
        .unwrap();
    let buttons = teacher
        .find_all(Locator::Css("#conns tr.conn button.danger"))
        .await
        .unwrap();
    let mut done = false;
    for button in buttons {
        let row_text: String = teacher
            .execute(
                "return arguments[0].closest('tr').innerText;",
                vec![serde_json::to_value(&button).unwrap()],
            )
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string();
        if row_text.contains("alice") {
            button.click().await.unwrap();
            done = true;
            break;
        }
    }
    assert!(done, "alice's Disconnect button");
    assert_eq!(alice.closed().await, ["BYE disconnected by the operator"]);
    wait_for(&teacher, "alice gone", "#conns", |t| !t.contains("alice")).await;
    wait_for(&teacher, "the trace's end", "#trace-lines", |t| {
        t.contains("the connection closed")
    })
    .await;
    screenshot_as(&teacher, "admin-after").await;

    teacher.close().await.expect("the browser session ends");
    drop(driver);
    server.stop().await;
}

/// Saves a screenshot under target/ as `browser-<name>.png`.
async fn screenshot_as(client: &Client, name: &str) {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let png = client.screenshot().await.expect("screenshot");
    let path = target.join(format!("browser-{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Saves a screenshot of the chat page under target/.
async fn screenshot(client: &Client, name: &str) {
    screenshot_as(client, &format!("chat-{name}")).await;
}

/// Stores a message whose client timestamp is a JSON object, straight into the database.
async fn plant_malformed_message(db_url: &str, from: &str, to: &str, text: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO messages (sender, recipient, body, created_at_us, client_timestamp) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(from)
    .bind(to)
    .bind(text)
    .bind(chrono_now_us())
    .bind(r#"{"toString":1}"#)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

fn chrono_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The texts of the elements matching `css`, in page order.
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        out.push(element.text().await.unwrap());
    }
    out
}

/// Registers on the page (which logs in too) and waits until the page says who we are.
async fn register(client: &Client, user: &str, password: &str) {
    wait_for(client, "the login form", "#username", |_| true).await;
    fill(client, "username", user).await;
    fill(client, "password", password).await;
    click(client, "register").await;
    wait_for(client, &format!("{user} logged in"), "#whoami", |t| t == user).await;
}

async fn find(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Replaces the text of input `#id` (typed, key by key).
async fn fill(client: &Client, id: &str, text: &str) {
    let input = find(client, &format!("#{id}")).await;
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

async fn click(client: &Client, id: &str) {
    click_css(client, &format!("#{id}")).await;
}

/// Clicks the element matching `css`, as a person would: if the page redrew it between
/// finding and clicking (the people list updates live), the new one is found and clicked.
async fn click_css(client: &Client, css: &str) {
    for _ in 0..5 {
        match find(client, css).await.click().await {
            Ok(_) => return,
            Err(e) if e.is_stale_element_reference() => continue,
            Err(e) => panic!("click {css}: {e}"),
        }
    }
    panic!("click {css}: the element was redrawn five times in a row");
}

/// Polls until a visible element matching `css` has text that satisfies `ok`; returns it.
async fn wait_for(client: &Client, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for element in client.find_all(Locator::Css(css)).await.unwrap_or_default() {
            if !element.is_displayed().await.unwrap_or(false) {
                continue;
            }
            if let Ok(text) = element.text().await {
                if ok(&text) {
                    return text;
                }
                seen.push(text);
            }
        }
        if Instant::now() > deadline {
            let status = match client.find(Locator::Id("status")).await {
                Ok(status) => status.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("no {what} within {WAIT:?}: {css} shows {seen:?}; #status says {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `data-id`s of the messages on the page, in page order.
async fn message_ids(client: &Client) -> Vec<String> {
    let script = "return [...document.querySelectorAll('#messages .msg')].map(m => m.dataset.id);";
    let ids: Vec<String> = serde_json::from_value(client.execute(script, vec![]).await.unwrap()).unwrap();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a message is shown twice: {ids:?}");
    ids
}

/// A chromedriver child process, and the browser profiles it uses. Dropping it (on success or
/// while unwinding a failure) kills chromedriver and every browser it started.
struct Chromedriver {
    child: Child,
    /// Set once the child was waited for: its pid (and group id) may then belong to others.
    reaped: bool,
    url: String,
    profiles: Vec<tempfile::TempDir>,
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        // Chromium outlives a killed chromedriver, but stays in its process group: a group of
        // its own lets Drop end exactly the processes this test started.
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let mut driver = Chromedriver {
            child,
            reaped: false,
            url: format!("http://127.0.0.1:{port}"),
            profiles: Vec::new(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = driver.child.try_wait().unwrap() {
                driver.reaped = true;
                panic!("chromedriver exited at once: {status}");
            }
            if let Ok(reply) = http.get(format!("{}/status", driver.url)).send().await {
                if reply.status().is_success() {
                    return driver;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver does not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new headless browser session with a fresh profile and the given window size.
    async fn browser(&mut self, width: u32, height: u32) -> Client {
        let profile = tempfile::tempdir().unwrap();
        let Value::Object(capabilities) = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }) else {
            unreachable!()
        };
        self.profiles.push(profile);
        let client = tokio::time::timeout(
            3 * WAIT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&self.url),
        )
        .await
        .expect("chromium starts in time")
        .expect("chromium starts");
        let timeouts = TimeoutConfiguration::new(Some(WAIT), Some(WAIT), Some(Duration::ZERO));
        client.update_timeouts(timeouts).await.unwrap();
        client.set_window_size(width, height).await.unwrap();
        client
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Not waited for yet, so the pid (and the group id) still names our chromedriver.
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // The profiles are removed after this, once no browser uses them.
    }
}

/// A TCP port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}
