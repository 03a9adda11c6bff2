//! Connections and the connect phase every scenario shares: open N connections at bounded
//! concurrency, read the greeting, back off on `SERVER_BUSY`, optionally register and log in
//! each as its own user, and count what failed by cause.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::Stream;
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::net::{self, Failure, Failures};
use crate::report::ConnectRaw;
use crate::stats::{Live, Series};

/// The most of one reply a connection holds before it counts as broken: a server, broken or
/// hostile, that never ends a line or a response head cannot make the generator buffer more.
/// Replies are parsed where they were read, so this bounds the whole read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub bytes: usize,
    /// What must fit, for the error: "a reply line".
    pub what: &'static str,
}

impl Bound {
    /// A line-protocol reply: chatd's longest is a `MSG` line, 64 KiB of message text
    /// (protocol.md) after its id, sender and time.
    pub const LINE: Bound = Bound {
        bytes: 65 * 1024,
        what: "a reply line",
    };
    /// An HTTP response head (status line and headers); bodies are read through, never held
    /// ([`crate::framer::HttpReply`]).
    pub const HTTP_HEAD: Bound = Bound {
        bytes: 64 * 1024,
        what: "an HTTP response head",
    };
}
/// The bucket width of the connect phase's series.
const CONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// How long the first connection waits for a greeting before it asks whether an HTTP server
/// answers instead.
const GREETING_HINT_AFTER: Duration = Duration::from_secs(2);

/// A read buffer that hands out complete lines or frames as slices of itself: replies are
/// parsed where they were read, with no allocation per reply.
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    bound: Bound,
}

impl ReadBuf {
    /// A buffer of `capacity` bytes that grows, for one long reply, up to `bound`.
    pub fn new(capacity: usize, bound: Bound) -> ReadBuf {
        ReadBuf {
            data: vec![0; capacity.clamp(64, bound.bytes.max(64))],
            start: 0,
            end: 0,
            bound,
        }
    }

    /// The bytes read but not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
    }

    /// The range of the next complete line (without CR LF) in `bytes()`, consuming it.
    pub fn line_range(&mut self) -> Option<Range<usize>> {
        let i = memchr::memchr(b'\n', self.pending())?;
        let from = self.start;
        let mut to = from + i;
        self.start = to + 1;
        if to > from && self.data[to - 1] == b'\r' {
            to -= 1;
        }
        Some(from..to)
    }

    /// The next complete line without its line end, consuming it.
    pub fn next_line(&mut self) -> Option<&[u8]> {
        let range = self.line_range()?;
        Some(&self.data[range])
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Reads more bytes from `reader`, making room first. Returns 0 at end of stream, and an
    /// error when the unparsed bytes (the start of one reply) fill the bound.
    /// Cancel-safe: a dropped read loses nothing.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < self.bound.bytes {
                let grown = (self.data.len() * 2).min(self.bound.bytes);
                self.data.resize(grown, 0);
            } else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} over {} KiB, the most chatd load holds of one reply",
                        self.bound.what,
                        self.bound.bytes / 1024
                    ),
                ));
            }
        }
        let n = reader.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// One open connection: which one it is (its user, if any), the socket and its read buffer.
pub struct Conn {
    pub index: usize,
    /// Which `--addr` it is connected to.
    pub node: usize,
    pub stream: Stream,
    pub rbuf: ReadBuf,
}

impl Conn {
    /// The next line, reading until `deadline`; `Ok(None)` if the server closed the connection.
    pub async fn line_before(&mut self, deadline: Instant) -> Result<Option<&[u8]>, Failure> {
        loop {
            if let Some(range) = self.rbuf.line_range() {
                return Ok(Some(&self.rbuf.bytes()[range]));
            }
            match timeout_at(deadline, self.rbuf.fill(&mut self.stream)).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Writes out the requests gathered in `wbuf` in one write, and empties it.
    pub async fn flush(&mut self, wbuf: &mut Vec<u8>) -> Result<(), String> {
        if !wbuf.is_empty() {
            self.stream.write_all(wbuf).await.map_err(|e| e.to_string())?;
            wbuf.clear();
        }
        Ok(())
    }

    /// Writes `request` (with its line end) and reads one reply line before `deadline`.
    pub async fn command(&mut self, request: &[u8], deadline: Instant) -> Result<&[u8], Failure> {
        self.stream.write_all(request).await?;
        match self.line_before(deadline).await? {
            Some(line) => Ok(line),
            None => Err(Failure::Other("the server closed the connection".into())),
        }
    }
}

/// The user names of a run: a prefix, then the user's index. By default the prefix is unique
/// to the run, so runs never collide with each other's (or anyone's) users; `--user-prefix`
/// picks one, so that a later run logs the same users in again instead of registering more.
pub struct Users {
    prefix: String,
    pub password: String,
}

impl Users {
    /// A prefix no other run has.
    pub fn fresh_prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mixed = (nanos ^ (u64::from(std::process::id()) << 40) ^ OsRng.next_u64()) as u32;
        format!("l{mixed:08x}")
    }

    pub fn for_this_run() -> Users {
        Users::with_prefix(Users::fresh_prefix())
    }

    pub fn with_prefix(prefix: String) -> Users {
        Users {
            prefix,
            password: "load-pw".into(),
        }
    }

    /// The users of a run: `--user-prefix` if given, else the run's own prefix.
    pub fn of_run(user_prefix: Option<&str>, run_id: &str) -> anyhow::Result<Users> {
        let prefix = user_prefix.unwrap_or(run_id);
        Users::check_prefix(prefix)?;
        Ok(Users::with_prefix(prefix.to_string()))
    }

    /// Checks a `--user-prefix`: letters, digits and `_`, short enough for user names.
    pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
        if prefix.is_empty()
            || prefix.len() > 20
            || !prefix.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            anyhow::bail!("--user-prefix takes 1-20 letters, digits or _, not {prefix:?}");
        }
        Ok(())
    }

    /// Appends user `i`'s name to `out` (no allocation once `out` has room).
    pub fn write_name(&self, out: &mut Vec<u8>, i: usize) {
        let _ = write!(out, "{}_{i}", self.prefix);
    }

    pub fn name(&self, i: usize) -> String {
        format!("{}_{i}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Logging each connection in as its own user (registering it first if it does not exist).
pub struct Auth {
    pub users: Arc<Users>,
    /// Registrations in flight at once: each costs the server an argon2 hash or two.
    pub concurrency: usize,
    /// How long one REGISTER or AUTH may take (they queue for the server's hashing threads).
    pub timeout: Duration,
}

/// A request each new connection must answer before it counts as open (e.g. PING to a server
/// that sends no greeting, to know it really serves the connection).
pub struct Probe {
    pub line: Vec<u8>,
    pub expect: Vec<u8>,
}

/// How to open the connections of a run (made by [`crate::Ctx::setup`]).
pub struct Setup {
    /// The servers; connection `i` goes to `targets[i % targets.len()]`.
    pub targets: Vec<SocketAddr>,
    /// The run's indices of the connections to open (this process's share).
    pub indices: Range<usize>,
    pub concurrency: usize,
    /// Connections started per second at most.
    pub connect_rate: Option<f64>,
    /// Connect, greeting and probe together.
    pub timeout: Duration,
    /// Tries after `SERVER_BUSY` before a connection counts as failed.
    pub busy_retries: u32,
    pub greeting: bool,
    /// IRC: each connection registers as this prefix and its index (`NICK`, `USER`), and is
    /// open at the end of its MOTD.
    pub irc: Option<String>,
    pub probe: Option<Probe>,
    pub auth: Option<Auth>,
    /// Read buffer per connection, and the most it may grow to.
    pub buf_size: usize,
    pub bound: Bound,
    pub sources: Option<Vec<IpAddr>>,
    /// `--tls`: each connection's handshake, after its connect.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Stops opening more (a signal).
    pub stop: CancellationToken,
}

impl Setup {
    pub fn node(&self, i: usize) -> usize {
        i % self.targets.len().max(1)
    }
}

/// Opens every connection of `setup`; returns the open ones (in no particular order;
/// `Conn::index` says which is which) and what the phase did.
pub async fn open_all(setup: Setup, live: Arc<Live>, epoch: std::time::Instant) -> (Vec<Conn>, ConnectRaw) {
    let indices = setup.indices.clone();
    let mut opener = Opener::new(Arc::new(setup), live, epoch);
    opener.open(indices).await;
    opener.finish()
}

/// The connect phase in steps: [`Opener::open`] opens a range of connections and returns once
/// each is open or has failed, so that a caller can look at the server in between.
pub struct Opener {
    setup: Arc<Setup>,
    live: Arc<Live>,
    epoch: std::time::Instant,
    started: f64,
    series: Arc<Series>,
    auth_gate: Arc<Semaphore>,
    /// Cancelled once a connection found that no line protocol answers there.
    wrong_protocol: CancellationToken,
    conns: Vec<Conn>,
    per_node: Vec<u64>,
    failures: Failures,
    busy_retries: u64,
    /// Connections not tried, or given up, because the run was stopped.
    stopped: u64,
}

impl Opener {
    pub fn new(setup: Arc<Setup>, live: Arc<Live>, epoch: std::time::Instant) -> Opener {
        live.set_phase(
            if setup.auth.is_some() {
                "logging in"
            } else {
                "connecting"
            },
            setup.indices.len() as u64,
            None,
        );
        Opener {
            auth_gate: Arc::new(Semaphore::new(
                setup.auth.as_ref().map_or(1, |a| a.concurrency.max(1)),
            )),
            conns: Vec::with_capacity(setup.indices.len()),
            per_node: vec![0; setup.targets.len()],
            live,
            epoch,
            started: epoch.elapsed().as_secs_f64(),
            // Connect phases often last a second or less: a finer series shows their shape.
            series: Arc::new(Series::with_interval(
                epoch,
                std::time::Instant::now(),
                CONNECT_INTERVAL,
            )),
            wrong_protocol: CancellationToken::new(),
            failures: Failures::default(),
            busy_retries: 0,
            stopped: 0,
            setup,
        }
    }

    /// Opens the connections with these indices, at most `setup.concurrency` at a time and at
    /// most `setup.connect_rate` a second.
    pub async fn open(&mut self, indices: Range<usize>) {
        let gate = Arc::new(Semaphore::new(self.setup.concurrency.max(1)));
        let mut ramp = self.setup.connect_rate.filter(|r| *r > 0.0).map(|r| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        let mut tasks = JoinSet::new();
        let stop = self.setup.stop.clone();
        let asked = indices.len() as u64;
        let mut started = 0;
        for i in indices {
            if stop.is_cancelled() {
                break;
            }
            if let Some(t) = ramp.as_mut() {
                tokio::select! {
                    _ = t.tick() => {}
                    _ = stop.cancelled() => break,
                }
            }
            let permit = tokio::select! {
                p = gate.clone().acquire_owned() => p.expect("never closed"),
                _ = stop.cancelled() => break,
            };
            while let Some(done) = tasks.try_join_next() {
                self.collect(done.expect("connect tasks do not panic"));
            }
            let (setup, series, live, auth_gate, wrong, stop) = (
                self.setup.clone(),
                self.series.clone(),
                self.live.clone(),
                self.auth_gate.clone(),
                self.wrong_protocol.clone(),
                stop.clone(),
            );
            started += 1;
            tasks.spawn(async move {
                // A stopped run reports at once, rather than wait out logins in a queue.
                let done = tokio::select! {
                    done = open_one(i, &setup, &series, &live, &auth_gate, &wrong) => Some(done),
                    _ = stop.cancelled() => None,
                };
                drop(permit);
                done
            });
        }
        self.stopped += asked - started;
        while let Some(done) = tasks.join_next().await {
            self.collect(done.expect("connect tasks do not panic"));
        }
    }

    fn collect(&mut self, done: Option<(Result<Conn, Failure>, u32)>) {
        let Some((result, retries)) = done else {
            self.stopped += 1;
            return;
        };
        self.busy_retries += u64::from(retries);
        match result {
            Ok(conn) => {
                self.per_node[conn.node] += 1;
                self.conns.push(conn);
            }
            Err(failure) => self.failures.add(failure),
        }
    }

    /// How many connections are open so far, on each node.
    pub fn opened(&self) -> Vec<u64> {
        self.per_node.clone()
    }

    /// The open connections and what the phase did.
    pub fn finish(self) -> (Vec<Conn>, ConnectRaw) {
        let series = Arc::into_inner(self.series).expect("every connect task has finished");
        let report = ConnectRaw {
            attempted: self.setup.indices.len() as u64,
            opened: self.conns.len() as u64,
            stopped: self.stopped,
            per_node: self.per_node,
            failures: self.failures,
            busy_retries: self.busy_retries,
            started: self.started,
            ended: self.epoch.elapsed().as_secs_f64(),
            auth: self.setup.auth.is_some(),
            requested_rate: self.setup.connect_rate,
            series: Some(series.snapshot_until(std::time::Instant::now())),
        };
        (self.conns, report)
    }
}

/// Opens connection `i`, retrying with backoff while the server is busy. Returns the
/// connection or why it failed, and how many retries it took.
async fn open_one(
    i: usize,
    setup: &Setup,
    series: &Series,
    live: &Live,
    auth_gate: &Semaphore,
    wrong_protocol: &CancellationToken,
) -> (Result<Conn, Failure>, u32) {
    let mut retries = 0;
    loop {
        let began = Instant::now();
        let result = tokio::select! {
            r = try_open(i, setup, auth_gate, began) => r,
            _ = wrong_protocol.cancelled() => Err(http_hint()),
        };
        if matches!(result, Err(Failure::Hinted { .. })) {
            wrong_protocol.cancel();
        }
        match result {
            Ok((conn, ready)) => {
                series.record(std::time::Instant::now(), &[ready.as_nanos() as u64], 0);
                live.opened();
                return (Ok(conn), retries);
            }
            Err(Failure::ServerBusy) if retries < setup.busy_retries => {
                tokio::time::sleep(backoff(retries)).await;
                retries += 1;
            }
            Err(failure) => {
                series.record(std::time::Instant::now(), &[], 1);
                live.add(0, 1);
                return (Err(failure), retries);
            }
        }
    }
}

/// The pause before retry `attempt` (0-based) after `SERVER_BUSY`: exponential from 50 ms up
/// to 5 s, with "equal jitter" (half fixed, half random) so refused clients spread out instead
/// of coming back in a storm.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling_ms = (50u64 << attempt.min(10)).min(5_000);
    let half = ceiling_ms / 2;
    Duration::from_millis(half + OsRng.next_u64() % (half + 1))
}

/// One attempt: connect, greeting, probe, then REGISTER (if missing) and AUTH if asked.
/// Returns the open connection and how long it took to be ready (before logging in).
async fn try_open(
    i: usize,
    setup: &Setup,
    auth_gate: &Semaphore,
    began: Instant,
) -> Result<(Conn, Duration), Failure> {
    let deadline = began + setup.timeout;
    let source = setup.sources.as_ref().map(|s| s[i % s.len()]);
    let node = setup.node(i);
    let tcp = match timeout_at(deadline, net::connect(setup.targets[node], source)).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(stream) => stream?,
    };
    let stream = match &setup.tls {
        None => Stream::Plain(tcp),
        Some(connector) => match timeout_at(deadline, crate::tls::handshake(connector, tcp)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(stream) => stream?,
        },
    };
    let mut conn = Conn {
        index: i,
        node,
        stream,
        rbuf: ReadBuf::new(setup.buf_size, setup.bound),
    };
    if setup.greeting {
        // The first connection that hears no greeting soon asks whether an HTTP server listens
        // there, rather than have every connection wait out the connect timeout.
        let line = if i == setup.indices.start {
            let soon = deadline.min(Instant::now() + GREETING_HINT_AFTER);
            match conn.line_before(soon).await {
                Err(Failure::Timeout) if deadline > Instant::now() => {
                    conn.stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
                    conn.line_before(deadline).await?.map(<[u8]>::to_vec)
                }
                other => other?.map(<[u8]>::to_vec),
            }
        } else {
            conn.line_before(deadline).await?.map(<[u8]>::to_vec)
        };
        match line {
            Some(line) if line.starts_with(b"HELLO") => {}
            Some(line) if line.starts_with(b"HTTP/") => return Err(http_hint()),
            Some(line) => return Err(refusal(&line)),
            None => return Err(Failure::Other("closed before the greeting".into())),
        }
    }
    if let Some(prefix) = &setup.irc {
        register_irc(&mut conn, prefix, i, deadline).await?;
    }
    if let Some(probe) = &setup.probe {
        let reply = conn.command(&probe.line, deadline).await?;
        if reply.starts_with(b"HTTP/") {
            return Err(http_hint());
        }
        if !reply.starts_with(&probe.expect) {
            return Err(refusal(reply));
        }
    }
    let ready = began.elapsed();
    if let (Some(auth), Some(_)) = (&setup.auth, &setup.irc) {
        // IRC (chatd's door): the nick's account is made with NickServ, which logs in.
        let _hashing = auth_gate.acquire().await.expect("never closed");
        let line = format!("PRIVMSG NickServ :REGISTER {}\r\n", auth.users.password);
        conn.stream.write_all(line.as_bytes()).await?;
        irc_until(&mut conn, &["900"], Instant::now() + auth.timeout).await?;
    } else if let Some(auth) = &setup.auth {
        let _hashing = auth_gate.acquire().await.expect("never closed");
        let mut line = Vec::with_capacity(96);
        for verb in [&b"REGISTER "[..], b"AUTH "] {
            line.clear();
            line.extend_from_slice(verb);
            auth.users.write_name(&mut line, i);
            let _ = write!(line, " {}\r\n", auth.users.password);
            let reply = conn.command(&line, Instant::now() + auth.timeout).await?;
            // Register if missing: a user an earlier run made with this prefix just logs in.
            let exists = verb == b"REGISTER " && reply.starts_with(b"ERR USER_EXISTS");
            if !reply.starts_with(b"OK") && !exists {
                return Err(refusal(reply));
            }
        }
    }
    Ok((conn, ready))
}

/// A prefix for this run's IRC nicks: two letters that differ between runs, so that the
/// nicks of a run that just ended do not collide; with the index, at most 9 characters (the
/// RFC 1459 nick length, which some servers keep) for up to 100,000 connections.
pub fn irc_nick_prefix() -> String {
    let n = OsRng.next_u32();
    let letter = |k: u32| char::from(b'a' + (k % 26) as u8);
    format!("l{}{}", letter(n), letter(n / 26))
}

/// Registers an IRC connection: NICK and USER, then the lines up to the end of the MOTD
/// (`376`, or `422` for none), answering the server's PINGs; an `ERROR` or a refused nick
/// fails the connection.
async fn register_irc(conn: &mut Conn, prefix: &str, i: usize, deadline: Instant) -> Result<(), Failure> {
    let nick = format!("{prefix}{i}");
    let hello = format!("NICK {nick}\r\nUSER {nick} 0 * :chatd load\r\n");
    conn.stream.write_all(hello.as_bytes()).await?;
    irc_until(conn, &["001", "376|422"], deadline).await
}

/// Reads IRC lines until each of `wanted` was seen in turn (a `|` between alternatives),
/// answering PINGs; an `ERROR`, a refused nick or login, or NickServ refusing fails it.
async fn irc_until(conn: &mut Conn, wanted: &[&str], deadline: Instant) -> Result<(), Failure> {
    let mut next = 0;
    loop {
        let Some(line) = conn.line_before(deadline).await? else {
            return Err(Failure::Other("closed before the welcome".into()));
        };
        let line = line.to_vec();
        let text = String::from_utf8_lossy(&line);
        let mut words = text.split(' ');
        let first = words.next().unwrap_or("");
        let command = if first.starts_with(':') {
            words.next().unwrap_or("")
        } else {
            first
        };
        match command {
            "PING" => {
                let token = text.split_once(' ').map_or("", |(_, t)| t);
                conn.stream
                    .write_all(format!("PONG {token}\r\n").as_bytes())
                    .await?;
            }
            _ if wanted[next].split('|').any(|w| w == command) => {
                next += 1;
                if next == wanted.len() {
                    return Ok(());
                }
            }
            "ERROR" => return Err(refusal(&line)),
            "432" | "433" | "436" | "451" | "464" | "465" | "904" => return Err(refusal(&line)),
            "NOTICE"
                if text.contains("NickServ!")
                    && (text.contains(" refused") || text.contains("not registered")) =>
            {
                return Err(refusal(&line))
            }
            _ => {}
        }
    }
}

/// An HTTP server answered where a line protocol was expected.
fn http_hint() -> Failure {
    Failure::Hinted {
        what: "an HTTP server answered, not a line protocol".into(),
        hint: "this is an HTTP port: load it with `chatd load http`, or give chatd's line port \
               (8000 by default)"
            .into(),
    }
}

/// What an unexpected line says: the server is full (chatd's `SERVER_BUSY`, Redis's "max
/// number of clients"), or something else.
fn refusal(line: &[u8]) -> Failure {
    let text = String::from_utf8_lossy(line);
    let busy_irc = text.starts_with("ERROR") && (text.contains("busy") || text.contains("Too many"));
    if text.contains("SERVER_BUSY") || text.contains("max number of clients") || busy_irc {
        Failure::ServerBusy
    } else {
        Failure::Other(format!(
            "unexpected reply {:?}",
            text.chars().take(120).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_without_line_ends() {
        let mut buf = ReadBuf::new(64, Bound::LINE);
        buf.data[..16].copy_from_slice(b"OK PONG\r\nOK\nOK P");
        buf.end = 16;
        assert_eq!(buf.next_line(), Some(&b"OK PONG"[..]));
        assert_eq!(buf.next_line(), Some(&b"OK"[..]));
        assert_eq!(buf.next_line(), None);
        assert_eq!(buf.pending(), b"OK P");
    }

    #[tokio::test]
    async fn fill_compacts_then_grows() {
        let mut buf = ReadBuf::new(64, Bound::LINE);
        let mut input: &[u8] = &[b'x'; 200];
        while buf.end < 64 {
            buf.fill(&mut input).await.unwrap();
        }
        buf.consume(60);
        buf.fill(&mut input).await.unwrap();
        assert_eq!(buf.start, 0, "compacted");
        while buf.end < buf.data.len() {
            buf.fill(&mut input).await.unwrap();
        }
        buf.fill(&mut input).await.unwrap();
        assert_eq!(buf.data.len(), 128, "grown when full");
    }

    /// A reply that never ends fills the buffer up to its bound, and no further.
    #[tokio::test]
    async fn an_endless_reply_stops_at_the_bound() {
        let bound = Bound {
            bytes: 2048,
            what: "a reply line",
        };
        let mut buf = ReadBuf::new(64, bound);
        let endless = vec![b'x'; 10_000];
        let mut input = &endless[..];
        let err = loop {
            match buf.fill(&mut input).await {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(buf.data.len(), 2048);
        assert_eq!(buf.pending().len(), 2048);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().starts_with("a reply line over 2 KiB"), "{err}");
        // Consumed replies make room again: only one unfinished reply is bounded.
        buf.consume(2048);
        assert!(buf.fill(&mut input).await.unwrap() > 0);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_ceiling() {
        for attempt in 0..20 {
            let d = backoff(attempt).as_millis() as u64;
            let ceiling = (50u64 << attempt.min(10)).min(5_000);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d}");
        }
    }

    #[test]
    fn busy_lines_are_told_apart() {
        assert_eq!(
            refusal(b"ERR SERVER_BUSY too many connections; try again later"),
            Failure::ServerBusy
        );
        assert_eq!(
            refusal(b"-ERR max number of clients reached"),
            Failure::ServerBusy
        );
        assert!(matches!(refusal(b"ERR INTERNAL"), Failure::Other(_)));
    }

    #[test]
    fn user_names_are_valid_and_unique_per_run() {
        let (a, b) = (Users::for_this_run(), Users::for_this_run());
        assert!(Users::check_prefix(a.prefix()).is_ok());
        assert!(Users::check_prefix("bad-prefix").is_err());
        assert!(Users::check_prefix("").is_err());
        assert_ne!(a.prefix(), b.prefix());
        let name = a.name(1_000_000);
        assert!(name.len() <= 32);
        assert!(name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
        let mut out = Vec::new();
        a.write_name(&mut out, 7);
        assert_eq!(out, a.name(7).into_bytes());
    }
}
