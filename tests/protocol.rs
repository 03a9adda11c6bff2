//! The line protocol end to end: a real server, real sockets, every verb and error code.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Client, Msg, TestServer};

async fn greeting_ping_echo_help_quit(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.client().await;
    assert!(c
        .hello
        .starts_with(&format!("HELLO chatd/{} ", env!("CARGO_PKG_VERSION"))));
    assert_eq!(c.cmd("PING").await.last, "OK PONG");
    assert_eq!(c.cmd("ping").await.last, "OK PONG", "verbs are case-insensitive");
    assert_eq!(c.cmd("ECHO hello  there ").await.last, "OK hello  there ");
    assert_eq!(c.cmd("eChO é ü").await.last, "OK é ü");
    let help = c.cmd("HELP").await;
    assert_eq!(help.last, "OK");
    assert!(help.data.len() >= 9, "{help:?}");
    assert!(help.data.iter().any(|l| l.contains("SEND <user> <text>")));
    assert!(help
        .data
        .iter()
        .all(|l| !l.starts_with("OK") && !l.starts_with("ERR")));
    assert_eq!(c.err("PING extra").await, "BAD_ARGS");
    assert_eq!(c.err("FROBNICATE now").await, "UNKNOWN_COMMAND");
    assert!(c.cmd("QUIT").await.last.starts_with("OK"));
    assert!(c.closed().await.is_empty(), "nothing follows QUIT's reply");
    server.stop().await;
}

async fn register_and_auth(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.client().await;
    c.ok("REGISTER alice s3cret").await;
    assert_eq!(c.err("REGISTER alice other").await, "USER_EXISTS");
    assert_eq!(c.err("REGISTER alice").await, "BAD_ARGS");
    assert_eq!(c.err("REGISTER bad:name pw").await, "BAD_ARGS");
    assert_eq!(
        c.err(&format!("REGISTER {} pw", "n".repeat(33))).await,
        "BAD_ARGS"
    );
    assert_eq!(
        c.err(&format!("REGISTER bob {}", "p".repeat(1025))).await,
        "BAD_ARGS"
    );
    c.ok(&format!("REGISTER bob {}", "p".repeat(1024))).await;
    assert_eq!(c.err("AUTH alice wrong").await, "BAD_CREDENTIALS");
    assert_eq!(
        c.err("AUTH nobody s3cret").await,
        "BAD_CREDENTIALS",
        "unknown users look like wrong passwords"
    );
    assert_eq!(c.err("AUTH alice").await, "BAD_ARGS");
    assert!(c.ok("auth alice s3cret").await.contains("alice"));
    server.stop().await;
}

async fn send_and_inbox(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice = server.client().await;
    alice.ok("REGISTER alice pw").await;
    assert_eq!(alice.err("SEND alice hi").await, "AUTH_REQUIRED");
    assert_eq!(alice.err("INBOX").await, "AUTH_REQUIRED");
    alice.ok("AUTH alice pw").await;
    let mut bob = server.user("bob").await;

    assert_eq!(alice.err("SEND nobody hi").await, "NO_SUCH_USER");
    assert_eq!(alice.err("SEND bad:name hi").await, "NO_SUCH_USER");
    assert_eq!(alice.err("SEND bob").await, "BAD_ARGS");
    let before = chrono_now_ms();
    let id1: i64 = alice
        .ok("SEND bob  hello,  bob! ")
        .await
        .parse()
        .expect("SEND acks with an id");
    let id2: i64 = alice.ok("SEND alice a note to self").await.parse().unwrap();
    assert!(id2 > id1);

    // Bob is online, so the message is pushed to him live...
    let pushed = bob.msg().await;
    assert_eq!(
        (pushed.id, pushed.from.as_str(), pushed.text.as_str()),
        (id1, "alice", " hello,  bob! ")
    );
    let sent_at = chrono::DateTime::parse_from_rfc3339(&pushed.time).expect("RFC 3339 time");
    assert!(pushed.time.ends_with('Z'), "UTC: {}", pushed.time);
    assert!((sent_at.timestamp_millis() - before).abs() < 60_000);
    // ... and it is in his inbox, as pushed; alice's note to herself is in hers.
    let inbox = bob.cmd("INBOX").await;
    assert_eq!(inbox.last, "OK 1");
    assert_eq!(Msg::parse(&inbox.data[0]), pushed);
    let own = alice.cmd("INBOX").await;
    assert!(
        own.data
            .iter()
            .map(|l| Msg::parse(l))
            .any(|m| m.id == id2 && m.from == "alice"),
        "{own:?}"
    );
    assert_eq!(bob.cmd(&format!("INBOX {id1}")).await.last, "OK 0");
    assert_eq!(bob.err("INBOX -5").await, "BAD_ARGS");
    server.stop().await;
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn crlf_and_bare_lf_and_blank_lines(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.client().await;
    c.write(b"ECHO crlf\r\n\r\n\nECHO lf\n   \r\nPING\r\n").await;
    assert_eq!(c.reply().await.last, "OK crlf");
    assert_eq!(c.reply().await.last, "OK lf");
    assert_eq!(c.reply().await.last, "OK PONG");
    server.stop().await;
}

async fn telnet_negotiation_is_refused_and_stripped(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.client().await;
    // What a telnet client may send first: WILL NAWS, WILL TERMINAL-TYPE, a window size.
    c.write(b"\xff\xfb\x1f\xff\xfb\x18\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0PING\r\n")
        .await;
    // DONT NAWS, DONT TERMINAL-TYPE, then the reply.
    assert_eq!(c.bytes(6).await, b"\xff\xfe\x1f\xff\xfe\x18");
    assert_eq!(c.reply().await.last, "OK PONG");
    c.write(b"EC\xff\xf1HO split\xff\xfd").await;
    c.write(b"\x05 across writes\r\n").await;
    // WONT STATUS. (ECHO would be agreed to: see tests/framing.rs.)
    assert_eq!(c.bytes(3).await, b"\xff\xfc\x05");
    assert_eq!(c.reply().await.last, "OK split across writes");
    server.stop().await;
}

async fn an_overlong_line_is_refused_and_the_connection_goes_on(backend: Backend) {
    let server = TestServer::on_with(backend, |c| c.max_line = 100).await;
    let mut c = server.client().await;
    c.write(format!("ECHO {}\nPING\n", "x".repeat(200)).as_bytes())
        .await;
    assert_eq!(c.err_code().await, "LINE_TOO_LONG");
    assert_eq!(c.reply().await.last, "OK PONG");
    // The same, arriving in pieces without a line end for a while.
    for _ in 0..10 {
        c.write("y".repeat(64).as_bytes()).await;
    }
    c.write(b"end of the long line\nECHO after\n").await;
    assert_eq!(c.err_code().await, "LINE_TOO_LONG");
    assert_eq!(c.reply().await.last, "OK after");
    let exact = format!("ECHO {}", "z".repeat(95));
    assert_eq!(
        c.cmd(&exact).await.last,
        format!("OK {}", "z".repeat(95)),
        "100 bytes is allowed"
    );
    server.stop().await;
}

async fn the_default_line_limit_is_4096_bytes(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.client().await;
    c.write(format!("ECHO {}\n", "x".repeat(5000)).as_bytes()).await;
    assert_eq!(c.err_code().await, "LINE_TOO_LONG");
    assert_eq!(c.cmd("PING").await.last, "OK PONG");
    server.stop().await;
}

async fn invalid_utf8_is_refused_and_the_connection_goes_on(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.client().await;
    c.write(b"ECHO \xc3\x28 broken\r\nECHO fine\r\n").await;
    assert_eq!(c.err_code().await, "BAD_ENCODING");
    assert_eq!(c.reply().await.last, "OK fine");
    server.stop().await;
}

async fn fifty_pipelined_commands_are_answered_in_order(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.user("alice").await;
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&match i % 5 {
            0 => format!("ECHO {i}\n"),
            1 => "PING\n".to_string(),
            2 => format!("SEND alice pipelined {i}\n"),
            3 => "NOPE\n".to_string(),
            _ => "WHO\n".to_string(),
        });
    }
    c.write(batch.as_bytes()).await;
    let mut last_id = 0;
    for i in 0..50 {
        let reply = c.reply().await;
        match i % 5 {
            0 => assert_eq!(reply.last, format!("OK {i}")),
            1 => assert_eq!(reply.last, "OK PONG"),
            2 => {
                let id: i64 = reply.last.trim_start_matches("OK ").parse().expect("an id");
                assert!(id > last_id);
                last_id = id;
            }
            3 => assert!(reply.last.starts_with("ERR UNKNOWN_COMMAND"), "{reply:?}"),
            _ => assert!(reply.last.starts_with("OK "), "{reply:?}"),
        }
    }
    server.stop().await;
}

async fn live_push_reaches_every_session_of_the_recipient(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice = server.user("alice").await;
    let mut bob1 = server.user("bob").await;
    let mut bob2 = server.client().await;
    bob2.ok("AUTH bob pw").await;
    let id = alice.ok("SEND bob ping from alice").await;
    for bob in [&mut bob1, &mut bob2] {
        let pushed = bob.msg().await;
        assert_eq!(pushed.id.to_string(), id);
        assert_eq!(
            (pushed.from.as_str(), pushed.text.as_str()),
            ("alice", "ping from alice")
        );
    }
    // A push never lands inside a reply: bob's next command still gets just its own reply.
    assert_eq!(bob1.cmd("PING").await.data, Vec::<String>::new());
    assert_eq!(alice.cmd("PING").await.last, "OK PONG", "the sender got no copy");
    server.stop().await;
}

async fn pushes_never_split_a_multi_line_reply(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    for i in 0..100 {
        alice.ok(&format!("SEND bob old {i}")).await;
    }
    // Drain the 100 live pushes first.
    for _ in 0..100 {
        assert!(bob.line().await.starts_with("MSG "));
    }
    // While bob reads his inbox, alice keeps sending; every line bob sees is either a whole
    // INBOX reply or a push before/after it.
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            alice.ok(&format!("SEND bob live {i}")).await;
        }
    });
    let mut pushes = 0;
    for _ in 0..20 {
        bob.write(b"INBOX\n").await;
        loop {
            let line = bob.line().await;
            if line.contains(" live ") {
                pushes += 1;
                continue;
            }
            // The reply: the 100 "old" messages at the top of the inbox, then OK.
            let mut old = vec![line];
            while old.len() < 100 {
                old.push(bob.line().await);
            }
            assert!(old.iter().all(|l| l.contains(" old ")), "{old:?}");
            assert_eq!(bob.line().await, "OK 100");
            break;
        }
    }
    sender.await.unwrap();
    while pushes < 200 {
        assert!(bob.line().await.contains(" live "));
        pushes += 1;
    }
    server.stop().await;
}

async fn inbox_pages_past_100(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice = server.user("alice").await;
    let mut batch = String::new();
    for i in 0..250 {
        batch.push_str(&format!("SEND bob-offline message {i}\n"));
    }
    let mut bob = server.client().await;
    bob.ok("REGISTER bob-offline pw").await;
    drop(bob);
    alice.write(batch.as_bytes()).await;
    for _ in 0..250 {
        assert!(alice.reply().await.last.starts_with("OK "));
    }
    let mut bob = server.client().await;
    bob.ok("AUTH bob-offline pw").await;
    let mut after = 0;
    let mut seen = Vec::new();
    for expected in [100, 100, 50, 0] {
        let page = bob.cmd(&format!("INBOX {after}")).await;
        assert_eq!(page.last, format!("OK {expected}"));
        assert_eq!(page.data.len(), expected);
        for line in &page.data {
            let msg = Msg::parse(line);
            assert!(msg.id > after, "oldest first, after the given id");
            assert_eq!(msg.from, "alice");
            after = msg.id;
            seen.push(msg.text);
        }
    }
    let expected: Vec<String> = (0..250).map(|i| format!("message {i}")).collect();
    assert_eq!(seen, expected);
    server.stop().await;
}

async fn who_lists_users_online_until_they_leave(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut alice = server.user("alice").await;
    let who = alice.cmd("WHO").await;
    assert_eq!(
        (who.data, who.last),
        (vec!["USER alice".to_string()], "OK 1".to_string())
    );
    let bob = server.user("bob").await;
    let mut carol = server.client().await;
    carol.ok("REGISTER carol pw").await; // registered, not logged in: not online
    let who = alice.cmd("WHO").await;
    assert_eq!(
        (who.data, who.last),
        (
            vec!["USER alice".to_string(), "USER bob".to_string()],
            "OK 2".to_string()
        )
    );
    drop(bob);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let who = alice.cmd("WHO").await;
        if who.last == "OK 1" {
            assert_eq!(who.data, vec!["USER alice".to_string()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob still online after disconnecting: {who:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

async fn logging_in_as_someone_else_moves_the_session(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut c = server.user("alice").await;
    c.ok("REGISTER bob pw").await;
    c.ok("AUTH bob pw").await;
    let who = c.cmd("WHO").await;
    assert_eq!(who.data, vec!["USER bob".to_string()]);
    server.stop().await;
}

async fn a_full_server_says_busy_instead_of_hanging(backend: Backend) {
    let server = TestServer::on_with(backend, |c| c.max_connections = Some(2)).await;
    let mut first = server.client().await;
    let _second = server.client().await;
    let mut third = Client::connect_raw(server.addr).await;
    let lines = third.closed().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ERR SERVER_BUSY"), "{lines:?}");
    assert!(first.cmd("QUIT").await.last.starts_with("OK"));
    first.closed().await;
    // The freed slot is usable again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect_raw(server.addr).await;
        let line = c.line().await;
        if line.starts_with("HELLO") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

async fn a_client_that_never_reads_stalls_nobody(backend: Backend) {
    // 10 MB from one sender as fast as it goes: a load, beyond any send budget.
    let server = TestServer::on_with(backend, |c| {
        c.push_queue = 256;
        c.max_send_rate = 0;
    })
    .await;
    let mut alice = server.user("alice").await;
    let mut carol = server.user("carol").await;
    // Bob logs in and then never reads another byte.
    let mut bob = server.user("bob").await;
    let body = "x".repeat(1000);
    let started = Instant::now();
    let mut ids = Vec::new();
    for chunk in 0..100 {
        let batch: String = (0..100)
            .map(|i| format!("SEND bob {} {body}\n", chunk * 100 + i))
            .collect();
        alice.write(batch.as_bytes()).await;
        for _ in 0..100 {
            ids.push(alice.ok_reply().await);
        }
        // Another client is served promptly all along.
        let ping = Instant::now();
        assert_eq!(carol.cmd("PING").await.last, "OK PONG");
        assert!(
            ping.elapsed() < Duration::from_secs(2),
            "PING took {:?}",
            ping.elapsed()
        );
    }
    assert_eq!(ids.len(), 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "10,000 SENDs took {:?}",
        started.elapsed()
    );
    // Bob fell behind: the server hung up on him after what fit in the socket buffers (the
    // last line may be cut off where the server stopped writing).
    let received = bob.read_to_close().await;
    let lines = received.split(|&b| b == b'\n').count();
    assert!(lines < 10_000, "bob was disconnected, not served every push");
    // Nothing was lost: everything is in bob's inbox, in order.
    let mut bob = server.client().await;
    bob.ok("AUTH bob pw").await;
    let stored: Vec<String> = bob.inbox_ids().await.iter().map(i64::to_string).collect();
    assert_eq!(stored, ids);
    server.stop().await;
}

async fn failed_logins_are_rate_limited_per_connection(backend: Backend) {
    let server = TestServer::on_with(backend, |c| {
        c.auth_failures_per_conn = 3;
        c.auth_failures_per_addr = 100;
    })
    .await;
    let mut c = server.client().await;
    c.ok("REGISTER alice pw").await;
    for _ in 0..3 {
        assert_eq!(c.err("AUTH alice wrong").await, "BAD_CREDENTIALS");
    }
    assert_eq!(
        c.err("AUTH alice pw").await,
        "RATE_LIMITED",
        "even the right password waits"
    );
    assert_eq!(c.cmd("PING").await.last, "OK PONG", "the connection goes on");
    // Another connection from the same address is not affected.
    let mut other = server.client().await;
    other.ok("AUTH alice pw").await;
    server.stop().await;
}

async fn failed_logins_are_rate_limited_per_address(backend: Backend) {
    let server = TestServer::on_with(backend, |c| {
        c.auth_failures_per_conn = 100;
        c.auth_failures_per_addr = 4;
    })
    .await;
    let mut a = server.client().await;
    a.ok("REGISTER alice pw").await;
    let mut b = server.client().await;
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            assert_eq!(c.err("AUTH alice wrong").await, "BAD_CREDENTIALS");
        }
    }
    let mut fresh = server.client().await;
    let reply = fresh.cmd("AUTH alice pw").await;
    assert!(reply.last.starts_with("ERR RATE_LIMITED "), "{reply:?}");
    assert!(reply.last.contains("try again in"), "says how long: {reply:?}");
    // Registrations, sends and connections are not limited.
    for i in 0..20 {
        fresh.ok(&format!("REGISTER user{i} pw")).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_store_failure_is_an_internal_error_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    alice.ok("SEND alice before").await;
    // Break the store behind the server's back.
    let pool = sqlx::SqlitePool::connect(&server.db_url).await.unwrap();
    sqlx::query("DROP TABLE messages").execute(&pool).await.unwrap();
    pool.close().await;
    let reply = alice.cmd("SEND alice after").await;
    assert!(reply.last.starts_with("ERR INTERNAL "), "{reply:?}");
    assert!(
        !reply.last.contains("no such table"),
        "internals stay in the log: {reply:?}"
    );
    assert_eq!(alice.err("INBOX").await, "INTERNAL");
    assert_eq!(alice.cmd("PING").await.last, "OK PONG");
    server.stop().await;
}

async fn an_idle_connection_is_closed_with_a_goodbye(backend: Backend) {
    let server = TestServer::on_with(backend, |c| c.idle_timeout = 1).await;
    let mut busy = server.client().await;
    let mut idle = server.client().await;
    let started = Instant::now();
    // Activity keeps a connection open past the timeout.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(busy.cmd("PING").await.last, "OK PONG");
    }
    let lines = idle.closed().await;
    assert_eq!(lines, vec!["BYE idle timeout".to_string()]);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(busy.cmd("PING").await.last, "OK PONG");
    server.stop().await;
}

async fn shutdown_says_goodbye_to_every_connection(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut a = server.user("alice").await;
    let mut b = server.client().await;
    server.stop().await;
    assert_eq!(a.closed().await, vec!["BYE server shutting down".to_string()]);
    assert_eq!(b.closed().await, vec!["BYE server shutting down".to_string()]);
}

async fn the_echo_port_returns_every_byte(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::on_with(backend, |c| c.echo_port = Some(0)).await;
    let mut stream = tokio::net::TcpStream::connect(server.echo.unwrap())
        .await
        .unwrap();
    // Every byte value, including CR, LF, NUL and telnet's IAC, then a megabyte of noise.
    let mut payload: Vec<u8> = (0..=255u8).collect();
    let mut x: u32 = 12345;
    payload.extend((0..1 << 20).map(|_| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    }));
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let receive = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut echoed));
    let ((), received) = tokio::join!(send, receive);
    received.expect("echo finished").unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
    server.stop().await;
}

on_both_stores!(
    greeting_ping_echo_help_quit,
    register_and_auth,
    send_and_inbox,
    crlf_and_bare_lf_and_blank_lines,
    telnet_negotiation_is_refused_and_stripped,
    an_overlong_line_is_refused_and_the_connection_goes_on,
    the_default_line_limit_is_4096_bytes,
    invalid_utf8_is_refused_and_the_connection_goes_on,
    fifty_pipelined_commands_are_answered_in_order,
    live_push_reaches_every_session_of_the_recipient,
    pushes_never_split_a_multi_line_reply,
    inbox_pages_past_100,
    who_lists_users_online_until_they_leave,
    logging_in_as_someone_else_moves_the_session,
    a_full_server_says_busy_instead_of_hanging,
    a_client_that_never_reads_stalls_nobody,
    failed_logins_are_rate_limited_per_connection,
    failed_logins_are_rate_limited_per_address,
    an_idle_connection_is_closed_with_a_goodbye,
    shutdown_says_goodbye_to_every_connection,
    the_echo_port_returns_every_byte,
);

#[tokio::test]
async fn binding_the_ipv6_wildcard_serves_ipv4_and_ipv6() {
    let server = TestServer::start_with(|c| c.bind = "::".parse().unwrap()).await;
    let port = server.addr.port();
    for addr in ["[::1]", "127.0.0.1"] {
        let mut c = Client::connect(format!("{addr}:{port}").parse().unwrap()).await;
        assert_eq!(c.cmd("PING").await.last, "OK PONG", "over {addr}");
    }
    server.stop().await;
}
