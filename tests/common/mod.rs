//! Helpers for the end-to-end tests: a real server on ephemeral ports with a temporary
//! database, and a line-protocol client over a real socket.
#![allow(dead_code)]

pub mod irc;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use chatd::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for any one line before failing.
pub const LINE_WAIT: Duration = Duration::from_secs(10);

/// The store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The environment variable naming the PostgreSQL server tests may use, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`. Each test gets a database of its own there.
pub const PG_ENV: &str = "CHATD_TEST_DATABASE_URL";

impl Backend {
    /// PostgreSQL, when the tests were given one; otherwise says loudly that the test is skipped.
    pub fn postgres(test: &str) -> Option<Backend> {
        match std::env::var(PG_ENV) {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres),
            _ => {
                eprintln!(
                    "SKIPPED {test} on PostgreSQL: set {PG_ENV}=postgres://USER@HOST:PORT/DB to run it"
                );
                None
            }
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` once per store: as `sqlite::name` and
/// `postgres::name` (skipped, loudly, without a PostgreSQL server to use).
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(backend) = super::common::Backend::postgres(stringify!($name)) {
                        super::$name(backend).await
                    }
                }
            )*
        }
    };
}

/// A fresh, empty database for one test: a SQLite file in a temporary directory, or a
/// PostgreSQL database created for the test and dropped after it.
pub struct TestDb {
    pub url: String,
    postgres: Option<PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

/// A database created on the test PostgreSQL server: its name, and the server's own URL that
/// dropping it goes through.
struct PgDatabase {
    admin: String,
    name: String,
}

impl TestDb {
    pub async fn create(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                TestDb {
                    url: format!("sqlite://{}", dir.path().join("chatd.db").display()),
                    postgres: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                use sqlx::Connection;
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let admin = std::env::var(PG_ENV).expect("a PostgreSQL URL");
                let name = format!(
                    "chatd_test_{}_{}_{}",
                    std::process::id(),
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_micros()
                        % 1_000_000
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to the test PostgreSQL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.ok();
                TestDb {
                    url: with_database(&admin, &name),
                    postgres: Some(PgDatabase { admin, name }),
                    _dir: None,
                }
            }
        }
    }

    /// The PostgreSQL database's name, if this is one.
    pub fn pg_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|pg| pg.name.as_str())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(PgDatabase { admin, name }) = self.postgres.take() {
            // Drop runs outside any runtime's async context: use a small one of its own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP facade's address.
    pub http: SocketAddr,
    pub echo: Option<SocketAddr>,
    /// The IRC door's address, unless a test closed it.
    pub irc: Option<SocketAddr>,
    /// The operator's listener, unless a test closed it.
    pub admin: Option<SocketAddr>,
    /// With `--tls`: the line protocol's, HTTPS and IRC's TLS doors.
    pub tls: (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>),
    pub db_url: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    pub db: std::sync::Arc<TestDb>,
}

impl TestServer {
    /// A server on a fresh SQLite database.
    pub async fn start() -> TestServer {
        TestServer::on(Backend::Sqlite).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::on_with(Backend::Sqlite, adjust).await
    }

    /// A server with `--trace` on and its trace lines captured; `adjust` sets the rest.
    pub async fn traced(adjust: impl FnOnce(&mut Config)) -> (TestServer, TraceLines) {
        let lines = TraceLines::default();
        let sink = chatd::trace::Sink::Capture(lines.clone());
        let server = TestServer::start_with(|c| {
            c.trace = true;
            c.trace_sink = sink;
            adjust(c);
        })
        .await;
        (server, lines)
    }

    /// A server on a fresh database of the given store.
    pub async fn on(backend: Backend) -> TestServer {
        TestServer::on_with(backend, |_| {}).await
    }

    /// Starts a server on 127.0.0.1 with a fresh database, after `adjust` had its say.
    pub async fn on_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let db = TestDb::create(backend).await;
        TestServer::on_db(std::sync::Arc::new(db), adjust).await
    }

    /// Starts a server on an existing test database (e.g. a second node on the same one).
    pub async fn on_db(db: std::sync::Arc<TestDb>, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let db_url = db.url.clone();
        let mut config = Config::for_tests(db_url.clone());
        adjust(&mut config);
        let server = Server::bind(config).await.expect("the server starts");
        let addr = server.line_addr();
        let http = server.http_addr().expect("tests serve HTTP");
        let echo = server.echo_addr();
        let irc = server.irc_addr();
        let admin = server.admin_addr();
        let tls = server.tls_addrs();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
            http,
            echo,
            irc,
            admin,
            tls,
            db_url,
            shutdown,
            task,
            db,
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://<admin listener>` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("the admin listener is open"))
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A client logged in as a freshly registered `user` (password "pw").
    pub async fn user(&self, user: &str) -> Client {
        let mut client = self.client().await;
        client.ok(&format!("REGISTER {user} pw")).await;
        client.ok(&format!("AUTH {user} pw")).await;
        client
    }

    /// Shuts the server down and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .unwrap();
    }
}

/// A reply: its data lines and the final `OK`/`ERR` line.
#[derive(Debug)]
pub struct Reply {
    pub data: Vec<String>,
    pub last: String,
}

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    pub hello: String,
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut client = Client::connect_raw(addr).await;
        client.hello = client.line().await;
        assert!(
            client.hello.starts_with("HELLO chatd/"),
            "greeting: {:?}",
            client.hello
        );
        client
    }

    /// Connects without reading anything.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (read, write) = stream.into_split();
        Client {
            reader: BufReader::new(read),
            writer: write,
            hello: String::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next line, without its CR LF (which every server line must end with).
    pub async fn line(&mut self) -> String {
        self.try_line()
            .await
            .expect("the server closed the connection while a line was expected")
    }

    /// The next line, or `None` once the server closed the connection.
    pub async fn try_line(&mut self) -> Option<String> {
        let mut raw = Vec::new();
        let n = tokio::time::timeout(LINE_WAIT, self.reader.read_until(b'\n', &mut raw))
            .await
            .expect("no line from the server in time")
            .expect("read");
        if n == 0 {
            return None;
        }
        let line = String::from_utf8(raw).expect("server lines are UTF-8");
        assert!(line.ends_with("\r\n"), "server lines end with CR LF: {line:?}");
        Some(line.trim_end_matches("\r\n").to_string())
    }

    /// Reads lines up to and including the next final line.
    pub async fn reply(&mut self) -> Reply {
        let mut data = Vec::new();
        loop {
            let line = self.line().await;
            if line == "OK" || line.starts_with("OK ") || line.starts_with("ERR ") {
                return Reply { data, last: line };
            }
            data.push(line);
        }
    }

    /// Sends one command line (LF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.write(format!("{line}\n").as_bytes()).await;
        self.reply().await
    }

    /// Runs a command that must succeed; returns the text after `OK `.
    pub async fn ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line).await;
        assert!(
            reply.last == "OK" || reply.last.starts_with("OK "),
            "{line:?} -> {reply:?}"
        );
        reply.last.trim_start_matches("OK").trim_start().to_string()
    }

    /// Runs a command that must fail; returns the error code.
    pub async fn err(&mut self, line: &str) -> String {
        let reply = self.cmd(line).await;
        assert!(reply.last.starts_with("ERR "), "{line:?} -> {reply:?}");
        reply.last.split(' ').nth(1).unwrap().to_string()
    }

    /// Reads a reply that must be an error; returns its code.
    pub async fn err_code(&mut self) -> String {
        let reply = self.reply().await;
        assert!(reply.last.starts_with("ERR "), "{reply:?}");
        reply.last.split(' ').nth(1).unwrap().to_string()
    }

    /// Reads a reply that must be OK; returns its text.
    pub async fn ok_reply(&mut self) -> String {
        let reply = self.reply().await;
        assert!(reply.last.starts_with("OK "), "{reply:?}");
        reply.last[3..].to_string()
    }

    /// Reads exactly `n` raw bytes.
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; n];
        tokio::time::timeout(LINE_WAIT, self.reader.read_exact(&mut got))
            .await
            .expect("no bytes from the server in time")
            .expect("read");
        got
    }

    /// Reads raw bytes until the server closes the connection.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), self.reader.read_to_end(&mut all))
            .await
            .expect("the server closes the connection in time")
            .expect("read");
        all
    }

    /// Waits until the server closes the connection, returning any lines it sent first.
    pub async fn closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.try_line().await {
            lines.push(line);
        }
        lines
    }
}

impl Client {
    /// The next line, which must be a `MSG` push.
    pub async fn msg(&mut self) -> Msg {
        Msg::parse(&self.line().await)
    }

    /// Every message in the logged-in user's inbox, oldest first, paging INBOX to the end.
    pub async fn whole_inbox(&mut self) -> Vec<Msg> {
        let mut all: Vec<Msg> = Vec::new();
        loop {
            let after = all.last().map_or(0, |m| m.id);
            let page = self.cmd(&format!("INBOX {after}")).await;
            if page.data.is_empty() {
                return all;
            }
            all.extend(page.data.iter().map(|l| Msg::parse(l)));
        }
    }

    /// Every message id in the logged-in user's inbox, oldest first.
    pub async fn inbox_ids(&mut self) -> Vec<i64> {
        self.whole_inbox().await.iter().map(|m| m.id).collect()
    }
}

/// Registers `user` with password "pw" over HTTP at `base` (`http://host:port`; a name
/// already taken is fine) and returns a bearer token from `/auth`.
pub async fn http_token(base: &str, user: &str) -> String {
    let http = reqwest::Client::new();
    let creds = serde_json::json!({"username": user, "password": "pw"});
    let registered = http
        .post(format!("{base}/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(registered.status().as_u16(), 201 | 409),
        "register {user}: {}",
        registered.status()
    );
    let reply = http
        .post(format!("{base}/auth"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200, "auth {user}");
    let reply: serde_json::Value = reply.json().await.unwrap();
    reply["token"].as_str().expect("a token").to_string()
}

/// A message as a client is shown it, read by field rather than by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub id: i64,
    /// The room, `#` and all, for a `ROOM` line; `None` for a direct message's `MSG` line.
    pub room: Option<String>,
    /// The sender; `*` for a room's own events.
    pub from: String,
    /// The server's commit time, RFC 3339 UTC with milliseconds, as sent.
    pub time: String,
    /// The text, escaped as the server wrote it.
    pub text: String,
}

impl Msg {
    /// Reads a `MSG <id> <from> <time> <text>` line: a direct message.
    pub fn parse(line: &str) -> Msg {
        Msg::split(line, "MSG")
    }

    /// Reads a `ROOM <id> <#room> <from> <time> <text>` line: a room's message or event.
    pub fn parse_room(line: &str) -> Msg {
        Msg::split(line, "ROOM")
    }

    fn split(line: &str, verb: &str) -> Msg {
        let in_room = verb == "ROOM";
        let mut parts = line.splitn(if in_room { 6 } else { 5 }, ' ');
        assert_eq!(parts.next(), Some(verb), "{line:?}");
        let mut field = || {
            parts
                .next()
                .unwrap_or_else(|| panic!("a {verb} line too short: {line:?}"))
        };
        let id = field()
            .parse()
            .unwrap_or_else(|_| panic!("a {verb} line without an id: {line:?}"));
        let room = in_room.then(|| field().to_string());
        let from = field().to_string();
        let time = field().to_string();
        let text = parts.next().unwrap_or("").to_string();
        Msg {
            id,
            room,
            from,
            time,
            text,
        }
    }
}

/// What a server's `--trace` showed, captured.
pub type TraceLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Waits (10 s at most) until a trace line contains `text`; returns every line so far.
pub async fn until_traced(lines: &TraceLines, text: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = lines.lock().unwrap().clone();
        if now.iter().any(|l| l.contains(text)) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trace line with {text:?} in {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
