//! `--trace`: every protocol line, in and out, on the console, for learners to see what their
//! clients really send: `10:02:03.120 #12 192.168.1.31 alice <- SEND bob hi`.
//!
//! - **Where.** A door that speaks lines traces at its socket's one read point and one write
//!   point ([`crate::socket::Socket`]): what arrived, split into lines, and what was written.
//!   HTTP traces each request and response whole, as a middleware (`http::trace`).
//! - **What it shows.** Telnet commands decoded (`IAC DO TIMING-MARK`), each on its own trace
//!   line as it arrives; other control bytes and bytes that are not UTF-8 escaped (`\x03`),
//!   never raw. Passwords and tokens are masked, always (`AUTH alice ****`), by [`mask`].
//! - **Which.** `--trace-user` and `--trace-addr` narrow it: a connection from another address
//!   is never traced; with a user named, a connection's lines are shown once it is that user.
//! - **Never in the way.** Lines go to the console through a bounded queue. When the console
//!   cannot keep up, lines are dropped and the count is said once a second
//!   (`trace: 1,204 lines dropped`); a connection never waits for the trace.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::conns::ConnInfo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Trace lines waiting for the console at most; past it they are dropped and counted.
pub const QUEUE_LINES: usize = 8192;
/// A line longer than this is shown cut, with `...`.
const MAX_SHOWN: usize = 1024;

/// Which door a connection came through: how its bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The line protocol: telnet commands are decoded.
    Line,
    Irc,
    /// HTTP: what is shown is given whole ([`ConnTrace::show`]).
    Http,
    /// RFC 862 echo: lines as they are (its clients are mostly telnet: its commands are
    /// decoded too).
    Echo,
}

/// Where trace lines go: the console, or (for tests) a list.
#[derive(Debug, Clone, Default)]
pub enum Sink {
    #[default]
    Console,
    Capture(Arc<Mutex<Vec<String>>>),
}

/// What the trace shows: `--trace` with its filters.
#[derive(Debug, Clone, Default)]
pub struct TraceConfig {
    pub user: Option<String>,
    pub addr: Option<IpAddr>,
    pub sink: Sink,
}

/// The server's trace: its queue to the console and its filters.
#[derive(Debug)]
pub struct Tracer {
    queue: std::sync::mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
    user: Option<Arc<str>>,
    addr: Option<IpAddr>,
}

impl Tracer {
    /// Starts the thread that writes trace lines out; it ends when the tracer is dropped. A
    /// thread of its own, not a task: a console that cannot keep up blocks its writes, and
    /// must not block a thread that serves connections.
    pub fn start(config: TraceConfig) -> Arc<Tracer> {
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let sink = config.sink;
        std::thread::Builder::new()
            .name("chatd-trace".into())
            .spawn(move || write_out(lines, counted, sink))
            .expect("a thread for the trace");
        Arc::new(Tracer {
            queue,
            dropped,
            user: config.user.map(Arc::from),
            addr: config.addr,
        })
    }

    /// A connection's trace, or `None` if its address is filtered out. It is also shown
    /// to whoever watches the connection live (the admin listener).
    pub fn connection(self: &Arc<Tracer>, conn: &Arc<ConnInfo>) -> Option<Box<ConnTrace>> {
        if self.addr.is_some_and(|addr| addr != conn.peer.ip()) {
            return None;
        }
        let mut trace = ConnTrace::watching(conn);
        trace.tracer = Some(self.clone());
        Some(trace)
    }

    /// The trace of `conn` when the server traces it (`--trace`, its filters), otherwise
    /// none until someone watches it live.
    pub fn of(tracer: Option<&Arc<Tracer>>, conn: &Arc<ConnInfo>) -> Option<Box<ConnTrace>> {
        tracer.and_then(|t| t.connection(conn))
    }

    fn send(&self, line: String) {
        if self.queue.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes trace lines as they come, and once a second says how many were dropped.
fn write_out(lines: std::sync::mpsc::Receiver<String>, dropped: Arc<AtomicU64>, sink: Sink) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut next_report = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let wait = next_report.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) => emit(&sink, &line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if std::time::Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                emit(&sink, &format!("trace: {} lines dropped", thousands(lost)));
            }
        }
    }
}

fn emit(sink: &Sink, line: &str) {
    match sink {
        Sink::Console => crate::logging::print_line(line),
        Sink::Capture(lines) => lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.to_string()),
    }
}

/// `1204` as `1,204`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// One connection's trace: what arrived of a line not ended yet, and who it is. Its lines go
/// to the console (`--trace`, when its filters let them) and to the connection's live
/// watchers (the admin listener's `/admin/trace`).
pub struct ConnTrace {
    /// The console's, with `--trace`.
    tracer: Option<Arc<Tracer>>,
    /// The connection: its number, door and address.
    conn: Arc<ConnInfo>,
    user: Option<Arc<str>>,
    /// Input of a line not ended yet (at most [`MAX_SHOWN`] bytes are kept).
    partial: Vec<u8>,
    /// The line being read was shown in part already (a telnet command came in its middle);
    /// it is kept whole, and shown whole at its end.
    cut: bool,
}

impl std::fmt::Debug for ConnTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnTrace(#{})", self.conn.id)
    }
}

impl ConnTrace {
    /// A trace shown only to the connection's live watchers.
    pub fn watching(conn: &Arc<ConnInfo>) -> Box<ConnTrace> {
        Box::new(ConnTrace {
            tracer: None,
            conn: conn.clone(),
            user: conn.user(),
            partial: Vec::new(),
            cut: false,
        })
    }

    /// The connection is now `user` (logged in; a guest's nick), or no one.
    pub fn set_user(&mut self, user: Option<&str>) {
        if self.user.as_deref() != user {
            self.user = user.map(Arc::from);
        }
    }

    fn decodes_telnet(&self) -> bool {
        matches!(self.conn.door, Door::Line | Door::Echo)
    }

    /// Whether the console shows this connection's lines now.
    fn on_console(&self) -> bool {
        match self.tracer.as_ref().map(|t| &t.user) {
            None => false,
            Some(Some(wanted)) => self.user.as_deref() == Some(&**wanted),
            Some(None) => true,
        }
    }

    /// Whether anyone (the console, a watcher) sees this connection's lines now.
    fn shown(&self) -> bool {
        self.on_console() || self.conn.is_watched()
    }

    /// Bytes that arrived: each line ended in them, and each telnet command, is a trace line.
    pub fn input(&mut self, bytes: &[u8]) {
        if !self.shown() {
            // Filtered out (not the user asked for, or not logged in yet): nothing is kept.
            self.partial.clear();
            self.cut = false;
            return;
        }
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            if self.decodes_telnet() && byte == IAC {
                // What was typed before it shows first, as far as it goes (`...`).
                if !self.partial.is_empty() && !self.cut {
                    let text = mask(self.conn.door, &render(&self.partial));
                    self.line("<-", &format!("{text}..."));
                    self.cut = true;
                }
                let len = telnet_len(&bytes[i..]);
                self.line("<-", &decode_telnet(&bytes[i..i + len]));
                i += len;
                continue;
            }
            if byte == b'\n' {
                // A line shown in part already (`SEND bob hi...`) is shown whole as it ends
                // (`...SEND bob hi there`), masked as a whole.
                let taken = std::mem::take(&mut self.partial);
                let text = mask(self.conn.door, &render(strip_cr(&taken)));
                let text = if self.cut { format!("...{text}") } else { text };
                self.line("<-", &text);
                self.cut = false;
            } else if self.partial.len() < MAX_SHOWN {
                self.partial.push(byte);
            }
            i += 1;
        }
    }

    /// Bytes written to the client, as lines (telnet commands decoded).
    pub fn output(&mut self, bytes: &[u8]) {
        if !self.shown() {
            return;
        }
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if self.decodes_telnet() && bytes[i] == IAC {
                if start < i {
                    self.out_text(&bytes[start..i]);
                }
                let len = telnet_len(&bytes[i..]);
                self.line("->", &decode_telnet(&bytes[i..i + len]));
                i += len;
                start = i;
                continue;
            }
            if bytes[i] == b'\n' {
                self.out_text(&bytes[start..i]);
                start = i + 1;
            }
            i += 1;
        }
        if start < bytes.len() {
            self.out_text(&bytes[start..]);
        }
    }

    fn out_text(&self, bytes: &[u8]) {
        let bytes = strip_cr(bytes);
        if !bytes.is_empty() {
            self.line("->", &render(bytes));
        }
    }

    /// Shows `text` (already masked and escaped) as one trace line.
    pub fn show(&self, arrow: &str, text: &str) {
        self.line(arrow, text);
    }

    fn line(&self, arrow: &str, text: &str) {
        if !self.shown() {
            return;
        }
        let now = chrono::Local::now().format("%H:%M:%S%.3f");
        let user = self.user.as_deref().unwrap_or("-");
        let mut out = String::with_capacity(48 + text.len());
        let _ = write!(
            out,
            "{now} #{} {} {user} {arrow} {text}",
            self.conn.id,
            self.conn.peer.ip()
        );
        if self.conn.is_watched() {
            self.conn.to_watchers(&out);
        }
        if let (true, Some(tracer)) = (self.on_console(), &self.tracer) {
            tracer.send(out);
        }
    }
}

fn strip_cr(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    // A telnet client's CR NUL (RFC 854) ends a line too.
    bytes.strip_suffix(b"\r\0").unwrap_or(bytes)
}

/// Bytes as text, control bytes and bytes that are not UTF-8 escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A line read, escaped, with `...` where it was cut at [`MAX_SHOWN`].
fn render(bytes: &[u8]) -> String {
    let mut out = escape(bytes);
    if bytes.len() >= MAX_SHOWN {
        out.push_str("...");
    }
    out
}

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;

/// How many bytes the telnet command at the start of `bytes` takes: `IAC x`, `IAC <verb>
/// <option>`, or `IAC SB ... IAC SE` (what arrived of it).
fn telnet_len(bytes: &[u8]) -> usize {
    match bytes.get(1) {
        None => 1,
        Some(&SB) => bytes
            .windows(2)
            .position(|w| w == [IAC, SE])
            .map_or(bytes.len(), |at| at + 2),
        Some(251..=254) => bytes.len().min(3),
        Some(_) => 2,
    }
}

/// `IAC DO TIMING-MARK`, `IAC IP`, `IAC SB NAWS ... IAC SE` (RFC 854, 855 and the options'
/// own RFCs).
fn decode_telnet(command: &[u8]) -> String {
    let mut words = vec!["IAC".to_string()];
    let mut rest = command.iter().skip(1).copied();
    let Some(verb) = rest.next() else {
        return "IAC".to_string();
    };
    words.push(verb_name(verb));
    if matches!(verb, 250..=254) {
        if let Some(option) = rest.next() {
            words.push(option_name(option));
        }
    }
    if verb == SB {
        let data: Vec<u8> = rest.collect();
        let data = data.strip_suffix(&[IAC, SE]).unwrap_or(&data);
        for byte in data {
            words.push(byte.to_string());
        }
        words.push("IAC SE".to_string());
    }
    words.join(" ")
}

fn verb_name(verb: u8) -> String {
    match verb {
        240 => "SE",
        241 => "NOP",
        242 => "DM",
        243 => "BRK",
        244 => "IP",
        245 => "AO",
        246 => "AYT",
        247 => "EC",
        248 => "EL",
        249 => "GA",
        250 => "SB",
        251 => "WILL",
        252 => "WONT",
        253 => "DO",
        254 => "DONT",
        255 => "IAC",
        other => return other.to_string(),
    }
    .to_string()
}

fn option_name(option: u8) -> String {
    match option {
        0 => "BINARY",
        1 => "ECHO",
        3 => "SUPPRESS-GO-AHEAD",
        5 => "STATUS",
        6 => "TIMING-MARK",
        24 => "TERMINAL-TYPE",
        31 => "NAWS",
        32 => "TERMINAL-SPEED",
        33 => "TOGGLE-FLOW-CONTROL",
        34 => "LINEMODE",
        35 => "X-DISPLAY-LOCATION",
        36 => "OLD-ENVIRON",
        39 => "NEW-ENVIRON",
        other => return other.to_string(),
    }
    .to_string()
}

/// A line a client sent, with its passwords and tokens shown as `****`.
pub fn mask(door: Door, line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let Some(first) = words.first() else {
        return line.to_string();
    };
    let verb = first.to_ascii_uppercase();
    match door {
        // `AUTH <user> <password>`, `REGISTER <user> <password>`.
        Door::Line if matches!(verb.as_str(), "AUTH" | "REGISTER") => keep_words(&words, 2),
        Door::Line | Door::Http | Door::Echo => line.to_string(),
        Door::Irc => mask_irc(line),
    }
}

/// The first `keep` words, then `****` for the rest, if there is a rest.
fn keep_words(words: &[&str], keep: usize) -> String {
    let mut out = words[..words.len().min(keep)].join(" ");
    if words.len() > keep {
        out.push_str(" ****");
    }
    out
}

/// IRC: `PASS`, `AUTHENTICATE` (all but its mechanism and `+`/`*`), `OPER`'s password, and
/// NickServ's `IDENTIFY`/`REGISTER` (by PRIVMSG or NOTICE).
fn mask_irc(line: &str) -> String {
    // The tags and the source, if any, come before the command.
    let mut rest = line;
    let mut prefix = String::new();
    for marker in ['@', ':'] {
        if rest.starts_with(marker) {
            let (head, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            prefix.push_str(head);
            prefix.push(' ');
            rest = tail;
        }
    }
    let words: Vec<&str> = rest.split(' ').collect();
    let verb = words[0].to_ascii_uppercase();
    let masked = match verb.as_str() {
        "PASS" => keep_words(&words, 1),
        "OPER" => keep_words(&words, 2),
        "AUTHENTICATE" => match words.get(1).map(|w| w.to_ascii_uppercase()) {
            Some(arg) if matches!(arg.as_str(), "PLAIN" | "EXTERNAL" | "+" | "*") => rest.to_string(),
            _ => keep_words(&words, 1),
        },
        "PRIVMSG" | "NOTICE" if words.get(1).is_some_and(|t| t.eq_ignore_ascii_case("NickServ")) => {
            let text = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            let said: Vec<&str> = text.trim_start_matches(':').split(' ').collect();
            let command = said[0].to_ascii_uppercase();
            if matches!(command.as_str(), "IDENTIFY" | "REGISTER" | "ID") && said.len() > 1 {
                // `IDENTIFY <password>` or `IDENTIFY <account> <password>`: the last word.
                let keep = if said.len() > 2 { said.len() - 1 } else { 1 };
                format!("{} {} :{}", words[0], words[1], keep_words(&said, keep))
            } else {
                rest.to_string()
            }
        }
        _ => rest.to_string(),
    };
    prefix + &masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_masked_always() {
        assert_eq!(mask(Door::Line, "AUTH alice wonderland"), "AUTH alice ****");
        assert_eq!(mask(Door::Line, "register bob s3cret"), "register bob ****");
        assert_eq!(mask(Door::Line, "AUTH alice"), "AUTH alice");
        assert_eq!(mask(Door::Line, "SEND bob AUTH x y"), "SEND bob AUTH x y");
        assert_eq!(mask(Door::Irc, "PASS hunter2"), "PASS ****");
        assert_eq!(mask(Door::Irc, "PASS alice:hunter2"), "PASS ****");
        assert_eq!(mask(Door::Irc, "AUTHENTICATE PLAIN"), "AUTHENTICATE PLAIN");
        assert_eq!(mask(Door::Irc, "AUTHENTICATE AGFsaWNlAHB3"), "AUTHENTICATE ****");
        assert_eq!(mask(Door::Irc, "OPER teacher pw"), "OPER teacher ****");
        assert_eq!(
            mask(Door::Irc, "PRIVMSG NickServ :IDENTIFY pw"),
            "PRIVMSG NickServ :IDENTIFY ****"
        );
        assert_eq!(
            mask(Door::Irc, "@label=1 PRIVMSG nickserv :identify alice pw"),
            "@label=1 PRIVMSG nickserv :identify alice ****"
        );
        assert_eq!(
            mask(Door::Irc, "PRIVMSG NickServ :REGISTER pw"),
            "PRIVMSG NickServ :REGISTER ****"
        );
        assert_eq!(
            mask(Door::Irc, "PRIVMSG #lab :PASS me the salt"),
            "PRIVMSG #lab :PASS me the salt"
        );
    }

    #[test]
    fn a_full_queue_drops_lines_and_counts_them_and_a_filter_keeps_others_out() {
        let (queue, _console) = std::sync::mpsc::sync_channel(1);
        let tracer = Arc::new(Tracer {
            queue,
            dropped: Arc::default(),
            user: Some(Arc::from("alice")),
            addr: Some("127.0.0.1".parse().unwrap()),
        });
        let conns = crate::conns::Conns::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let elsewhere = conns.open(Door::Line, false, "10.0.0.1:1".parse().unwrap(), &stop);
        assert!(tracer.connection(&elsewhere).is_none());
        let here = conns.open(Door::Line, false, "127.0.0.1:1".parse().unwrap(), &stop);
        let mut conn = tracer.connection(&here).unwrap();
        conn.input(b"before login\n");
        assert_eq!(tracer.dropped.load(Ordering::Relaxed), 0, "not shown, not queued");
        conn.set_user(Some("alice"));
        conn.input(b"a\nb\nc\n");
        assert_eq!(tracer.dropped.load(Ordering::Relaxed), 2, "the queue held one");
    }

    #[test]
    fn a_line_cut_by_a_telnet_command_is_masked_whole() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let (queue, console) = std::sync::mpsc::sync_channel(16);
        let tracer = Arc::new(Tracer {
            queue,
            dropped: Arc::default(),
            user: None,
            addr: None,
        });
        let conns = crate::conns::Conns::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let here = conns.open(Door::Line, false, "127.0.0.1:1".parse().unwrap(), &stop);
        let mut conn = tracer.connection(&here).unwrap();
        conn.input(b"AUTH zed");
        conn.input(&[IAC, 241]);
        conn.input(b" secret\r\n");
        while let Ok(line) = console.try_recv() {
            sink.lock().unwrap().push(line);
        }
        let lines = sink.lock().unwrap();
        let shown: Vec<&str> = lines.iter().map(|l| l.split(" - <- ").nth(1).unwrap()).collect();
        assert_eq!(shown, ["AUTH zed...", "IAC NOP", "...AUTH zed ****"]);
    }

    #[test]
    fn telnet_commands_are_named_and_control_bytes_escaped() {
        assert_eq!(decode_telnet(&[IAC, 244]), "IAC IP");
        assert_eq!(decode_telnet(&[IAC, 253, 6]), "IAC DO TIMING-MARK");
        assert_eq!(decode_telnet(&[IAC, 252, 1]), "IAC WONT ECHO");
        assert_eq!(
            decode_telnet(&[IAC, SB, 31, 0, 80, 0, 24, IAC, SE]),
            "IAC SB NAWS 0 80 0 24 IAC SE"
        );
        assert_eq!(telnet_len(&[IAC, 244, IAC, 253, 6]), 2);
        assert_eq!(telnet_len(&[IAC, 253, 6, b'x']), 3);
        assert_eq!(render(b"a\x03b\tc\xff"), "a\\x03b\\tc\\xff");
        assert_eq!(thousands(1204), "1,204");
        assert_eq!(thousands(12), "12");
    }
}
