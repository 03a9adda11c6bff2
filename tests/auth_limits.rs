//! Login limits under concurrency, fair password hashing and remembered credentials, against a
//! real server over real sockets. Clients bind source addresses 127.0.0.2 and up to stand for
//! different machines.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;

/// How long a client waits for a reply: a burst's last requests wait for the hashes of all
/// those before them, which on a busy test machine takes a while.
const REPLY_WAIT: Duration = Duration::from_secs(120);

/// `127.0.0.n`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A line-protocol client whose socket is bound to a chosen source address.
struct Line {
    reader: BufReader<TcpStream>,
}

impl Line {
    async fn connect_from(server: SocketAddr, source: IpAddr) -> Line {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = socket.connect(server).await.expect("connect");
        let mut line = Line {
            reader: BufReader::new(stream),
        };
        let hello = line.line().await;
        assert!(hello.starts_with("HELLO chatd/"), "{hello:?}");
        line
    }

    async fn line(&mut self) -> String {
        let mut raw = String::new();
        let n = tokio::time::timeout(REPLY_WAIT, self.reader.read_line(&mut raw))
            .await
            .expect("a line in time")
            .expect("read");
        assert!(n > 0, "the server closed the connection");
        raw.trim_end().to_string()
    }

    /// Sends a command and returns its final line.
    async fn cmd(&mut self, command: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        loop {
            let line = self.line().await;
            if line.starts_with("OK") || line.starts_with("ERR ") {
                return line;
            }
        }
    }
}

/// Registers `user` from `source` and logs in as it there.
async fn registered_and_logged_in(server: SocketAddr, source: IpAddr, user: &str, password: &str) -> Line {
    let mut c = Line::connect_from(server, source).await;
    assert!(c
        .cmd(&format!("REGISTER {user} {password}"))
        .await
        .starts_with("OK"));
    assert_eq!(
        c.cmd(&format!("AUTH {user} {password}")).await,
        format!("OK logged in as {user}")
    );
    c
}

/// The code of a final line: `OK`, or the word after `ERR`.
fn code(reply: &str) -> &str {
    match reply.strip_prefix("ERR ") {
        Some(rest) => rest.split(' ').next().unwrap(),
        None => "OK",
    }
}

/// Opens one connection per source in `sources`, then sends each its command at the same
/// moment; returns the codes the server answered, in order.
async fn at_once(server: SocketAddr, jobs: Vec<(IpAddr, String)>) -> Vec<String> {
    let barrier = Arc::new(Barrier::new(jobs.len()));
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(source, command)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut line = Line::connect_from(server, source).await;
                barrier.wait().await;
                code(&line.cmd(&command).await).to_string()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    codes
}

fn count(codes: &[String], code: &str) -> usize {
    codes.iter().filter(|c| *c == code).count()
}

#[tokio::test]
async fn concurrent_wrong_logins_from_one_address_are_counted_before_hashing() {
    // Defaults: 20 failures per address.
    let server = TestServer::start().await;
    let jobs = (0..200)
        .map(|i| (loopback(1), format!("AUTH guess{i} wrong")))
        .collect();
    let codes = at_once(server.addr, jobs).await;
    let checked = count(&codes, "BAD_CREDENTIALS");
    let limited = count(&codes, "RATE_LIMITED");
    assert_eq!(
        checked + limited,
        200,
        "every AUTH is answered one way or the other: {codes:?}"
    );
    assert!(
        (1..=20).contains(&checked),
        "{checked} passwords were checked; at most 20 may be"
    );
    // The address is now locked out, even for a correct password.
    let mut c = Line::connect_from(server.addr, loopback(1)).await;
    c.cmd("REGISTER alice pw").await;
    assert_eq!(code(&c.cmd("AUTH alice pw").await), "RATE_LIMITED");
    server.stop().await;
}

#[tokio::test]
async fn guesses_at_one_account_from_ten_addresses_are_limited() {
    // Defaults: 10 failures per account, 20 per address.
    let server = TestServer::start().await;
    let mut alice = Line::connect_from(server.addr, loopback(1)).await;
    assert_eq!(
        alice.cmd("REGISTER alice pw").await,
        "OK registered alice; now AUTH alice <password>"
    );
    // One guesser fails on alice for certain before the flood (in the flood, an address's
    // guesses may all be refused before any is checked, and then it has not failed on her).
    let mut guesser = Line::connect_from(server.addr, loopback(2)).await;
    assert_eq!(code(&guesser.cmd("AUTH alice wrong").await), "BAD_CREDENTIALS");
    let jobs = (0..200)
        .map(|i| (loopback(2 + (i % 10) as u8), "AUTH alice wrong".to_string()))
        .collect();
    let codes = at_once(server.addr, jobs).await;
    let checked = count(&codes, "BAD_CREDENTIALS");
    assert_eq!(checked + count(&codes, "RATE_LIMITED"), 200, "{codes:?}");
    // 10 for the account, then at most one more from each address that had not failed yet.
    assert!(
        (1..=20).contains(&checked),
        "{checked} guesses at alice were checked"
    );
    // At most 8 guesses at one account are checked at once: when the whole flood arrived
    // while the first 8 were being checked, the account has 9 failures, one short of its
    // back-off, and the guesser's next wrong guess is checked as the 10th.
    let failures = 1 + checked;
    let next = code(&guesser.cmd("AUTH alice wrong").await).to_string();
    let expected = if failures < 10 {
        "BAD_CREDENTIALS"
    } else {
        "RATE_LIMITED"
    };
    assert_eq!(next, expected, "after {failures} failures");
    // Now that guesser is refused at once, even with the right password; alice, from
    // elsewhere, still logs in.
    assert_eq!(code(&guesser.cmd("AUTH alice pw").await), "RATE_LIMITED");
    let mut elsewhere = Line::connect_from(server.addr, loopback(50)).await;
    assert_eq!(elsewhere.cmd("AUTH alice pw").await, "OK logged in as alice");
    server.stop().await;
}

#[tokio::test]
async fn malformed_names_do_not_lock_out_an_address() {
    let server = TestServer::start().await;
    let mut alice = Line::connect_from(server.addr, loopback(1)).await;
    alice.cmd("REGISTER alice pw").await;
    // 40 AUTHs with names no account can have, 4 per connection (under its own limit of 5).
    for _ in 0..10 {
        let mut c = Line::connect_from(server.addr, loopback(1)).await;
        for name in ["bad/name", "x".repeat(40).as_str(), "émile", "a:b"] {
            assert_eq!(code(&c.cmd(&format!("AUTH {name} pw")).await), "BAD_CREDENTIALS");
        }
    }
    let mut c = Line::connect_from(server.addr, loopback(1)).await;
    assert_eq!(c.cmd("AUTH alice pw").await, "OK logged in as alice");
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_correct_logins_does_not_delay_another_address() {
    let server = TestServer::start().await;
    let flooders = 200;
    // The flood's accounts, registered from the flooding address, and the victim's.
    let registrations: Vec<_> = (0..flooders)
        .map(|i| (loopback(1), format!("REGISTER flood{i} pw")))
        .collect();
    let codes = at_once(server.addr, registrations).await;
    assert_eq!(count(&codes, "OK"), flooders, "{codes:?}");
    let mut victim = Line::connect_from(server.addr, loopback(2)).await;
    victim.cmd("REGISTER victim pw").await;
    // What a login costs on this machine now, without a flood: the slowest of three.
    let mut calm = Duration::ZERO;
    for i in 0..3 {
        let mut c = Line::connect_from(server.addr, loopback(3)).await;
        c.cmd(&format!("REGISTER calm{i} pw")).await;
        let began = Instant::now();
        assert_eq!(
            c.cmd(&format!("AUTH calm{i} pw")).await,
            format!("OK logged in as calm{i}")
        );
        calm = calm.max(began.elapsed());
    }

    let mut flood = Vec::new();
    for i in 0..flooders {
        flood.push(Line::connect_from(server.addr, loopback(1)).await);
        let _ = i;
    }
    let flood: Vec<_> = flood
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move { code(&c.cmd(&format!("AUTH flood{i} pw")).await).to_string() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut victim = Line::connect_from(server.addr, loopback(2)).await;
    let began = Instant::now();
    assert_eq!(victim.cmd("AUTH victim pw").await, "OK logged in as victim");
    let took = began.elapsed();
    let mut codes = Vec::new();
    for task in flood {
        codes.push(task.await.unwrap());
    }
    // Within 1 s; on a machine so busy that one login alone takes over 200 ms, within a few
    // logins' time (a flood served first come, first served costs a hundred).
    let bound = Duration::from_secs(1).max(calm * 5);
    assert!(
        took < bound,
        "the victim's login took {took:?} during the flood ({calm:?} without one)"
    );
    // The flood itself was a legitimate burst: it waited its turn and succeeded.
    assert_eq!(count(&codes, "OK"), flooders, "{codes:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_registrations_and_logins_with_100_in_flight_all_succeed() {
    let server = TestServer::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let gate = gate.clone();
            let addr = server.addr;
            tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.unwrap();
                let mut c = Line::connect_from(addr, loopback(1)).await;
                let registered = c.cmd(&format!("REGISTER user{i} pw{i}")).await;
                let logged_in = c.cmd(&format!("AUTH user{i} pw{i}")).await;
                (registered, logged_in)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (registered, logged_in) = task.await.unwrap();
        if !registered.starts_with("OK") || logged_in != format!("OK logged in as user{i}") {
            failures.push((i, registered, logged_in));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    server.stop().await;
}

/// The status and JSON body of a request.
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[tokio::test]
async fn polling_with_basic_auth_does_not_hash_every_request() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    // What one hash costs here: a registration is one hash and a quick insert.
    let began = Instant::now();
    for i in 0..5 {
        let body = json!({"username": format!("u{i}"), "password": "pw"});
        assert_eq!(
            call(http.post(server.url("/register")).json(&body)).await.0,
            StatusCode::CREATED
        );
    }
    let per_hash = began.elapsed() / 5;

    let polls = 200;
    let began = Instant::now();
    for _ in 0..polls {
        let (status, body) = call(http.get(server.url("/get_messages")).basic_auth("u0", Some("pw"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let took = began.elapsed();
    assert!(
        took < per_hash * polls / 4,
        "{polls} polls took {took:?}; one hash takes {per_hash:?}"
    );
    // Only that same password matches: a wrong one, or another user's, is still refused.
    for (user, password) in [("u0", "pW"), ("u0", "pw "), ("u1", "wrong"), ("u1x", "pw")] {
        let (status, body) = call(
            http.get(server.url("/get_messages"))
                .basic_auth(user, Some(password)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}:{password} -> {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_remembered_password_gives_a_burst_of_guesses_no_extra_answers() {
    let server = TestServer::start().await;
    // Alice logs in from her own machine: her password is now remembered.
    registered_and_logged_in(server.addr, loopback(5), "alice", "the-right-one").await;
    // A guesser's burst: 256 wrong passwords (as many as one address may have in progress),
    // then the right one, before more than a few of the wrong ones can have been checked.
    let guesses = 256;
    let mut conns = Vec::new();
    for _ in 0..=guesses {
        conns.push(Line::connect_from(server.addr, loopback(1)).await);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let guess = if i == guesses {
            "the-right-one".to_string()
        } else {
            format!("wrong{i}")
        };
        c.reader
            .get_mut()
            .write_all(format!("AUTH alice {guess}\r\n").as_bytes())
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    for c in &mut conns {
        codes.push(code(&c.line().await).to_string());
    }
    // The right guess waited its turn like the others, and by then the burst's failures had
    // locked this address out: remembering it saves a hash, never a check.
    assert_eq!(codes[guesses], "RATE_LIMITED", "{codes:?}");
    let answered = count(&codes, "BAD_CREDENTIALS") + count(&codes, "OK");
    assert!(
        answered <= 20,
        "{answered} guesses were answered; at most 20 may be: {codes:?}"
    );
    // Alice, from her own address, still logs in.
    let mut again = Line::connect_from(server.addr, loopback(5)).await;
    assert_eq!(
        again.cmd("AUTH alice the-right-one").await,
        "OK logged in as alice"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_full_hash_queue_answers_503_at_once() {
    let server = TestServer::start_with(|c| {
        c.hash_queue = 2;
        c.hash_share = Some(1);
    })
    .await;
    let barrier = Arc::new(Barrier::new(30));
    let tasks: Vec<_> = (0..30u8)
        .map(|i| {
            let barrier = barrier.clone();
            let url = server.url("/register");
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .local_address(loopback(2 + i))
                    .build()
                    .unwrap();
                let body = json!({"username": format!("busy{i}"), "password": "pw"});
                barrier.wait().await;
                let began = Instant::now();
                let (status, reply) = call(http.post(url).json(&body)).await;
                (status, reply, began.elapsed())
            })
        })
        .collect();
    let mut busy = 0;
    for task in tasks {
        let (status, reply, took) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply["status"], "SERVER_BUSY", "{reply}");
                assert!(took < Duration::from_secs(1), "refused after {took:?}");
                busy += 1;
            }
            other => panic!("{other}: {reply}"),
        }
    }
    assert!(
        busy > 0,
        "30 registrations at once from 30 addresses fit in a queue of 2"
    );
    server.stop().await;
}

#[tokio::test]
async fn registrations_per_address_are_limited() {
    // Set explicitly, the limit holds for loopback too.
    let server = TestServer::start_with(|c| c.registrations_per_addr = Some(3)).await;
    let mut c = Line::connect_from(server.addr, loopback(1)).await;
    for i in 0..3 {
        assert!(c.cmd(&format!("REGISTER r{i} pw")).await.starts_with("OK"));
    }
    // A taken name costs nothing.
    assert_eq!(code(&c.cmd("REGISTER r0 pw").await), "USER_EXISTS");
    let refused = c.cmd("REGISTER r3 pw").await;
    assert_eq!(code(&refused), "RATE_LIMITED", "{refused}");
    assert!(refused.contains("try again in"), "{refused}");
    let mut other = Line::connect_from(server.addr, loopback(2)).await;
    assert!(
        other.cmd("REGISTER r3 pw").await.starts_with("OK"),
        "another address may"
    );
    server.stop().await;
}

/// Runs until dropped: forty addresses (127.0.0.2 to .41), each with four connections that
/// keep pipelining REGISTERs of new names, two at a time (a connection's commands are
/// answered in turn, and the answers to those sent together go out together). Together they
/// want more password hashes at once than the whole hash queue holds.
struct RegisteringFlood {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    replies: Arc<std::sync::atomic::AtomicUsize>,
}

impl RegisteringFlood {
    const ADDRESSES: u8 = 40;

    async fn start(server: SocketAddr) -> RegisteringFlood {
        let replies = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for a in 0..RegisteringFlood::ADDRESSES {
            for c in 0..4 {
                let replies = replies.clone();
                let mut line = Line::connect_from(server, loopback(2 + a)).await;
                tasks.push(tokio::spawn(async move {
                    for round in 0.. {
                        let batch: String = (0..2)
                            .map(|n| format!("REGISTER flood{a}x{c}x{round}x{n} pw\r\n"))
                            .collect();
                        line.reader.get_mut().write_all(batch.as_bytes()).await.unwrap();
                        for _ in 0..2 {
                            line.line().await;
                            replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        RegisteringFlood { tasks, replies }
    }

    /// Waits until the flood has had `n` replies, so that it is in full swing.
    async fn until_replies(&self, n: usize) {
        let deadline = Instant::now() + REPLY_WAIT;
        while self.replies.load(std::sync::atomic::Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the flood never got going");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RegisteringFlood {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_class_registers_at_once_while_a_registering_flood_is_cut_short() {
    // The default for every address but loopback, set explicitly so that it holds here.
    let server = TestServer::start_with(|c| {
        c.registrations_per_addr = Some(chatd::bounds::REGISTRATIONS_PER_ADDR);
    })
    .await;
    let flood = tokio::spawn({
        let addr = server.addr;
        async move {
            let mut c = Line::connect_from(addr, loopback(2)).await;
            for round in 0..10 {
                let batch: String = (0..20)
                    .map(|n| format!("REGISTER flood{round}x{n} pw\r\n"))
                    .collect();
                c.reader.get_mut().write_all(batch.as_bytes()).await.unwrap();
            }
            let mut codes = Vec::new();
            for _ in 0..200 {
                codes.push(code(&c.line().await).to_string());
            }
            codes
        }
    });
    // Thirty students behind one address register at once, while the flood goes on.
    let jobs = (0..30)
        .map(|i| (loopback(1), format!("REGISTER student{i} pw")))
        .collect();
    let class = at_once(server.addr, jobs).await;
    assert_eq!(count(&class, "OK"), 30, "{class:?}");
    let flood = flood.await.unwrap();
    assert!(
        count(&flood, "RATE_LIMITED") > 0,
        "the flood is cut short: {flood:?}"
    );
    let allowed = chatd::bounds::REGISTRATIONS_PER_ADDR as usize;
    assert_eq!(count(&flood, "OK"), allowed, "{flood:?}");
    assert_eq!(count(&flood, "RATE_LIMITED"), 200 - allowed, "{flood:?}");
    server.stop().await;
}

#[tokio::test]
async fn forty_addresses_registering_at_once_do_not_shut_out_logins() {
    // Defaults: a hash queue of 64, as many hashes per address as cores.
    let server = TestServer::start().await;
    // Alice has logged in before: her password is remembered and costs no hash.
    registered_and_logged_in(server.addr, loopback(200), "alice", "pw").await;
    // Users who have not logged in yet: each of their logins costs a hash.
    let rounds = 8;
    let mut setup = Line::connect_from(server.addr, loopback(201)).await;
    for i in 0..rounds {
        assert!(setup
            .cmd(&format!("REGISTER fresh{i} pw"))
            .await
            .starts_with("OK"));
    }

    let flood = RegisteringFlood::start(server.addr).await;
    flood.until_replies(40).await;
    let http = reqwest::Client::builder()
        .local_address(loopback(211))
        .build()
        .unwrap();
    let mut results = Vec::new();
    for i in 0..rounds {
        let mut c = Line::connect_from(server.addr, loopback(210)).await;
        let remembered = c.cmd("AUTH alice pw").await;
        let (status, _) = call(
            http.get(server.url("/get_messages"))
                .basic_auth("alice", Some("pw")),
        )
        .await;
        let mut c = Line::connect_from(server.addr, loopback(212)).await;
        let hashed = c.cmd(&format!("AUTH fresh{i} pw")).await;
        results.push((remembered, status, hashed));
    }
    let served = flood.replies.load(std::sync::atomic::Ordering::Relaxed);
    drop(flood);
    for (i, (remembered, status, hashed)) in results.iter().enumerate() {
        assert_eq!(remembered, "OK logged in as alice", "round {i}: {results:?}");
        assert_eq!(*status, StatusCode::OK, "round {i}: {results:?}");
        assert_eq!(
            hashed,
            &format!("OK logged in as fresh{i}"),
            "round {i}: {results:?}"
        );
    }
    assert!(served > 40, "the flood went on throughout: {served} replies");
    server.stop().await;
}

#[tokio::test]
async fn the_owner_logs_in_while_31_addresses_keep_guessing_her_password() {
    // Defaults: 10 failures per account within the 60 s lockout window before it backs off.
    let server = TestServer::start().await;
    registered_and_logged_in(server.addr, loopback(100), "alice", "the-right-one").await;
    // Her laptop shares its address with one of the guessers, and stays connected.
    let mut laptop = Line::connect_from(server.addr, loopback(2)).await;
    assert_eq!(
        laptop.cmd("AUTH alice the-right-one").await,
        "OK logged in as alice"
    );

    // Each address retries at once whatever it is told, on a new connection each time.
    let attackers = 31u8;
    let began = Instant::now();
    let checked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..attackers)
        .map(|a| {
            let (checked, attempts) = (checked.clone(), attempts.clone());
            let addr = server.addr;
            tokio::spawn(async move {
                for n in 0.. {
                    let mut c = Line::connect_from(addr, loopback(2 + a)).await;
                    let reply = c.cmd(&format!("AUTH alice guess{a}x{n}")).await;
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match code(&reply) {
                        "BAD_CREDENTIALS" => {
                            checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        "RATE_LIMITED" => tokio::time::sleep(Duration::from_millis(5)).await,
                        other => panic!("{other}: {reply}"),
                    }
                }
            })
        })
        .collect();
    // Until the account backs off.
    let deadline = Instant::now() + REPLY_WAIT;
    while checked.load(std::sync::atomic::Ordering::Relaxed) < 10 {
        assert!(Instant::now() < deadline, "the guessing never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The owner, from the address she logged in from before, from addresses new to the
    // server, and on the laptop's connection, over several seconds of the attack.
    let tries = 10;
    let (mut known_ok, mut fresh_ok, mut laptop_ok, mut replies) = (0, 0, 0, Vec::new());
    for i in 0..tries {
        let mut c = Line::connect_from(server.addr, loopback(100)).await;
        let known = c.cmd("AUTH alice the-right-one").await;
        known_ok += usize::from(known == "OK logged in as alice");
        let mut c = Line::connect_from(server.addr, loopback(150 + i)).await;
        let fresh = c.cmd("AUTH alice the-right-one").await;
        fresh_ok += usize::from(fresh == "OK logged in as alice");
        let again = laptop.cmd("AUTH alice the-right-one").await;
        laptop_ok += usize::from(again == "OK logged in as alice");
        replies.push((known, fresh, again));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = began.elapsed();
    for task in &tasks {
        task.abort();
    }
    let checked = checked.load(std::sync::atomic::Ordering::Relaxed);
    let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(known_ok, tries as usize, "{replies:?}");
    assert_eq!(laptop_ok, tries as usize, "{replies:?}");
    assert!(
        fresh_ok >= tries as usize - 2,
        "{fresh_ok} of {tries}: {replies:?}"
    );
    // protocol.md: per window of --auth-lockout (60 s), 10 failures from anywhere, then one
    // per address; the guesser at the laptop's address, known to the account until it has
    // failed 3 times in the window, 2 more.
    let windows = elapsed.as_secs() / 60 + 1;
    let bound = windows as usize * (10 + attackers as usize) + 2;
    assert!(
        checked <= bound,
        "{checked} guesses checked in {elapsed:?} ({attempts} tried); at most {bound} may be"
    );
    eprintln!("{checked} guesses checked of {attempts} tried in {elapsed:?}");
    server.stop().await;
}
