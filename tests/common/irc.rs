//! An IRC client for the tests: a real socket, lines parsed into tags, source, command and
//! parameters, and waits that say what they were waiting for when they fail.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::LINE_WAIT;

/// One line from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub raw: String,
    pub tags: Vec<(String, String)>,
    /// The source without its `:`: `server.name` or `nick!user@host`.
    pub source: String,
    pub command: String,
    pub params: Vec<String>,
}

impl Line {
    pub fn parse(raw: &str) -> Line {
        let mut rest = raw;
        let mut tags = Vec::new();
        if let Some(after) = rest.strip_prefix('@') {
            let (t, r) = after.split_once(' ').expect("tags, then the rest");
            tags = t
                .split(';')
                .map(|tag| {
                    let (k, v) = tag.split_once('=').unwrap_or((tag, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            rest = r;
        }
        let mut source = String::new();
        if let Some(after) = rest.strip_prefix(':') {
            let (s, r) = after.split_once(' ').expect("a source, then a command");
            source = s.to_string();
            rest = r;
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut params = Vec::new();
        while !rest.is_empty() {
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_string());
                break;
            }
            let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(p.to_string());
            rest = r;
        }
        Line {
            raw: raw.to_string(),
            tags,
            source,
            command: command.to_string(),
            params,
        }
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The nick of the source: `alice` of `alice!alice@chatd`.
    pub fn nick(&self) -> &str {
        self.source.split('!').next().unwrap_or("")
    }

    /// The last parameter (the text of a message or numeric).
    pub fn text(&self) -> &str {
        self.params.last().map_or("", String::as_str)
    }
}

pub struct Irc {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Lines read while waiting for another, in order.
    pub seen: Vec<Line>,
}

impl Irc {
    pub async fn connect(addr: SocketAddr) -> Irc {
        let stream = TcpStream::connect(addr).await.expect("the IRC door accepts");
        let (r, w) = stream.into_split();
        Irc {
            reader: BufReader::new(r),
            writer: w,
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("the server reads");
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("the server reads");
    }

    /// The next line; fails after [`LINE_WAIT`].
    pub async fn line(&mut self) -> Line {
        self.try_line(LINE_WAIT)
            .await
            .unwrap_or_else(|| panic!("no line from the server; before: {:#?}", self.last_seen()))
    }

    /// The next line within `wait`, `None` if none came or the server closed.
    pub async fn try_line(&mut self, wait: Duration) -> Option<Line> {
        let mut raw = String::new();
        match tokio::time::timeout(wait, self.reader.read_line(&mut raw)).await {
            Ok(Ok(0)) | Err(_) => None,
            Ok(Ok(_)) => {
                assert!(raw.ends_with("\r\n"), "lines end in CR LF: {raw:?}");
                assert!(
                    raw.len() <= 512 || raw.starts_with('@'),
                    "over 512 bytes: {raw:?}"
                );
                let line = Line::parse(raw.trim_end_matches("\r\n"));
                self.seen.push(line.clone());
                Some(line)
            }
            Ok(Err(e)) => panic!("reading: {e}"),
        }
    }

    fn last_seen(&self) -> Vec<&str> {
        self.seen
            .iter()
            .rev()
            .take(8)
            .rev()
            .map(|l| l.raw.as_str())
            .collect()
    }

    /// Reads until a line with this command (a numeric or a word); the lines before it are
    /// returned with it, in order.
    pub async fn until(&mut self, command: &str) -> (Line, Vec<Line>) {
        let mut before = Vec::new();
        loop {
            let line = self.line().await;
            if line.command == command {
                return (line, before);
            }
            if line.command == "PING" {
                let token = line.text().to_string();
                self.send(&format!("PONG :{token}")).await;
            }
            before.push(line);
        }
    }

    /// The next line with this command.
    pub async fn expect(&mut self, command: &str) -> Line {
        self.until(command).await.0
    }

    /// The very next line, which must have this command.
    pub async fn next_is(&mut self, command: &str) -> Line {
        let line = self.line().await;
        assert_eq!(line.command, command, "expected {command}, got {:?}", line.raw);
        line
    }

    /// Whether the server closed the connection within `wait` (lines before it are kept).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut raw = String::new();
            match tokio::time::timeout(left, self.reader.read_line(&mut raw)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => self.seen.push(Line::parse(raw.trim_end_matches("\r\n"))),
            }
        }
    }

    /// Registers as `nick` with no credentials, up to the end of the MOTD.
    pub async fn register(addr: SocketAddr, nick: &str) -> Irc {
        let mut irc = Irc::connect(addr).await;
        irc.send(&format!("NICK {nick}")).await;
        irc.send(&format!("USER {nick} 0 * :{nick} at a test")).await;
        irc.until("376").await;
        irc
    }

    /// Logs in to `account` with SASL PLAIN while registering, asking for `caps` too.
    pub async fn sasl(addr: SocketAddr, account: &str, password: &str, caps: &str) -> Irc {
        let mut irc = Irc::connect(addr).await;
        irc.send("CAP LS 302").await;
        irc.expect("CAP").await;
        let wanted = format!("sasl {caps}");
        irc.send(&format!("CAP REQ :{}", wanted.trim())).await;
        let ack = irc.expect("CAP").await;
        assert_eq!(ack.params[1], "ACK", "{ack:?}");
        irc.send("AUTHENTICATE PLAIN").await;
        let plus = irc.expect("AUTHENTICATE").await;
        assert_eq!(plus.params, ["+"]);
        let response = base64::engine::general_purpose::STANDARD.encode(format!("\0{account}\0{password}"));
        irc.send(&format!("AUTHENTICATE {response}")).await;
        irc.expect("903").await;
        irc.send("CAP END").await;
        irc.send(&format!("NICK {account}")).await;
        irc.send(&format!("USER {account} 0 * :{account}")).await;
        irc.until("376").await;
        irc
    }

    /// Answers PINGs and reads whatever comes for `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Line> {
        let mut got = Vec::new();
        while let Some(line) = self.try_line(wait).await {
            got.push(line);
        }
        got
    }
}
