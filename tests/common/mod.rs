//! Helpers for the end-to-end tests: a real server on ephemeral ports with a temporary
//! database, and a line-protocol client over a real socket.
#![allow(dead_code)]

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

pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP facade's address.
    pub http: SocketAddr,
    pub echo: Option<SocketAddr>,
    pub db_url: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server on 127.0.0.1 with a fresh SQLite database, after `adjust` had its say.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("chatd.db").display());
        let mut config = Config::for_tests(db_url.clone());
        adjust(&mut config);
        let server = Server::bind(config).await.expect("the server starts");
        let addr = server.line_addr();
        let http = server.http_addr().expect("tests serve HTTP");
        let echo = server.echo_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
            http,
            echo,
            db_url,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
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

/// Splits a `MSG <id> <from> <time> <text>` line.
pub fn parse_msg(line: &str) -> (i64, String, String, String) {
    let mut parts = line.splitn(5, ' ');
    assert_eq!(parts.next(), Some("MSG"), "{line:?}");
    let id = parts.next().unwrap().parse().unwrap();
    let from = parts.next().unwrap().to_string();
    let time = parts.next().unwrap().to_string();
    let text = parts.next().unwrap_or("").to_string();
    (id, from, time, text)
}
