//! The closed-loop request driver shared by `ping` and `http`: keeps `pipeline` requests in
//! flight on every connection until the deadline, writing each batch of requests with one
//! write and parsing replies in place, and records replies per second and their latency.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;
use tokio::io::AsyncWriteExt;

use crate::conn::Conn;
use crate::report::RunReport;
use crate::stats::{secs, Live, Series};

/// How long after the deadline replies still in flight are waited for.
const DRAIN: Duration = Duration::from_secs(2);

/// Splits a byte stream into replies.
pub trait Framer: Send + 'static {
    /// Looks at the unparsed bytes: `Ok(Some((len, success)))` for one whole reply of `len`
    /// bytes at the start, `Ok(None)` if more bytes are needed, `Err` if the stream makes no
    /// sense (the connection is then dropped).
    fn frame(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, String>;
}

/// One line per reply; a success starts with `expect` (`OK PONG` for chatd, `+PONG` for Redis).
pub struct LineReply {
    pub expect: Vec<u8>,
}

impl Framer for LineReply {
    fn frame(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        Ok(memchr::memchr(b'\n', buf).map(|i| (i + 1, buf.starts_with(&self.expect))))
    }
}

/// One HTTP/1.1 response per reply (Content-Length or chunked body); a success is a 2xx.
pub struct HttpReply {
    header_end: memmem::Finder<'static>,
}

impl HttpReply {
    pub fn new() -> HttpReply {
        HttpReply {
            header_end: memmem::Finder::new(b"\r\n\r\n"),
        }
    }
}

impl Default for HttpReply {
    fn default() -> Self {
        HttpReply::new()
    }
}

impl Framer for HttpReply {
    fn frame(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        let Some(end) = self.header_end.find(buf) else {
            return if buf.len() > 64 * 1024 {
                Err("an HTTP header over 64 KiB".into())
            } else {
                Ok(None)
            };
        };
        let head = &buf[..end];
        if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
            return Err(format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&head[..head.len().min(40)])
            ));
        }
        let success = head[9] == b'2';
        let body = end + 4;
        let mut length = None;
        let mut chunked = false;
        for field in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = memchr::memchr(b':', field) else {
                continue;
            };
            let (name, value) = (&field[..colon], field[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            }
        }
        if chunked {
            return Ok(chunked_end(buf, body)?.map(|len| (len, success)));
        }
        let len = body + length.unwrap_or(0);
        Ok((buf.len() >= len).then_some((len, success)))
    }
}

/// Where a chunked body that starts at `at` ends (trailers are not expected), if it is all here.
fn chunked_end(buf: &[u8], mut at: usize) -> Result<Option<usize>, String> {
    loop {
        let Some(eol) = memchr::memchr(b'\n', &buf[at..]) else {
            return Ok(None);
        };
        let line = buf[at..at + eol].trim_ascii();
        let hex = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad chunk size {:?}", String::from_utf8_lossy(line)))?;
        at += eol + 1;
        // The chunk's data, then CR LF (for the last, empty chunk: just the CR LF).
        let next = at + size + 2;
        if buf.len() < next {
            return Ok(None);
        }
        at = next;
        if size == 0 {
            return Ok(Some(at));
        }
    }
}

/// The timed phase of a closed-loop run.
pub struct Load {
    /// One request, with its line end.
    pub request: Vec<u8>,
    /// Requests in flight per connection.
    pub pipeline: usize,
    pub deadline: Instant,
}

/// Runs the closed loop on every connection for `duration`, starting them together; returns
/// the figures (`what` names the replies) and the series of reply latencies.
pub async fn run_all<F: Framer>(
    conns: Vec<Conn>,
    framer: impl Fn() -> F,
    request: Vec<u8>,
    pipeline: usize,
    duration: Duration,
    what: &'static str,
    live: Arc<Live>,
) -> (RunReport, Arc<Series>) {
    let start = Instant::now();
    let load = Arc::new(Load {
        request,
        pipeline,
        deadline: start + duration,
    });
    let series = Arc::new(Series::new(start));
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(closed_loop(
            conn,
            framer(),
            load.clone(),
            series.clone(),
            live.clone(),
        ));
    }
    let (mut broken, mut broken_example) = (0, None);
    while let Some(end) = tasks.join_next().await {
        if let End::Broken(why) = end.expect("driver tasks do not panic") {
            broken += 1;
            broken_example.get_or_insert(why);
        }
    }
    let (ok, errors) = series.counts();
    let report = RunReport {
        what,
        secs: secs(duration),
        ok,
        errors,
        per_sec: ok as f64 / secs(duration).max(1e-9),
        latency: series.latency(),
        broken,
        broken_example,
    };
    (report, series)
}

/// What became of one connection's run.
pub enum End {
    /// Ran to the deadline and got every reply.
    Done,
    /// The server closed the connection, or a reply made no sense.
    Broken(String),
}

/// Runs `load` on `conn` until the deadline: keeps `pipeline` requests in flight, replacing
/// every batch of replies read with as many new requests in one write.
pub async fn closed_loop<F: Framer>(
    mut conn: Conn,
    mut framer: F,
    load: Arc<Load>,
    series: Arc<Series>,
    live: Arc<Live>,
) -> End {
    let result = run(&mut conn, &mut framer, &load, &series, &live).await;
    live.closed();
    match result {
        Ok(()) => End::Done,
        Err(why) => End::Broken(why),
    }
}

async fn run<F: Framer>(
    conn: &mut Conn,
    framer: &mut F,
    load: &Load,
    series: &Series,
    live: &Live,
) -> Result<(), String> {
    let batch = load.request.repeat(load.pipeline.max(1));
    let one = load.request.len();
    // When each request in flight was written, oldest first (replies come back in order).
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(load.pipeline);
    let mut latencies: Vec<u64> = Vec::with_capacity(load.pipeline.max(64));
    let io_error = |e: std::io::Error| e.to_string();

    let now = Instant::now();
    conn.stream.write_all(&batch).await.map_err(io_error)?;
    sent.extend(std::iter::repeat_n(now, load.pipeline.max(1)));
    let give_up = tokio::time::Instant::from_std(load.deadline + DRAIN);
    loop {
        match tokio::time::timeout_at(give_up, conn.rbuf.fill(&mut conn.stream)).await {
            Err(_) => return Err(format!("{} replies still missing after the deadline", sent.len())),
            Ok(Err(e)) => return Err(io_error(e)),
            Ok(Ok(0)) => return Err("the server closed the connection".into()),
            Ok(Ok(_)) => {}
        }
        let now = Instant::now();
        let mut errors = 0;
        latencies.clear();
        while let Some((len, success)) = framer.frame(conn.rbuf.pending())? {
            conn.rbuf.consume(len);
            let at = sent.pop_front().ok_or("a reply to no request")?;
            if success {
                latencies.push((now - at).as_nanos() as u64);
            } else {
                errors += 1;
            }
        }
        let replies = latencies.len() + errors as usize;
        if now >= load.deadline {
            // Replies after the deadline are not counted; stop once every one is in.
            if sent.is_empty() {
                return Ok(());
            }
            continue;
        }
        series.record(now, &latencies, errors);
        live.add(latencies.len() as u64, errors);
        if replies > 0 {
            let at = Instant::now();
            conn.stream
                .write_all(&batch[..replies * one])
                .await
                .map_err(io_error)?;
            sent.extend(std::iter::repeat_n(at, replies));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_replies() {
        let mut f = LineReply {
            expect: b"OK PONG".to_vec(),
        };
        assert_eq!(f.frame(b"OK PONG\r\nOK PO").unwrap(), Some((9, true)));
        assert_eq!(f.frame(b"ERR BAD_ARGS x\r\n").unwrap(), Some((16, false)));
        assert_eq!(f.frame(b"OK PO").unwrap(), None);
    }

    #[test]
    fn http_content_length() {
        let mut f = HttpReply::new();
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(f.frame(r).unwrap(), Some((r.len(), true)));
        assert_eq!(f.frame(&r[..r.len() - 1]).unwrap(), None);
        let mut two = r.to_vec();
        two.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(f.frame(&two).unwrap(), Some((r.len(), true)));
        assert_eq!(
            f.frame(&two[r.len()..]).unwrap(),
            Some((two.len() - r.len(), false))
        );
        assert!(f.frame(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn http_chunked() {
        let mut f = HttpReply::new();
        let r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n";
        assert_eq!(f.frame(r).unwrap(), Some((r.len(), true)));
        for cut in 1..40 {
            assert_eq!(f.frame(&r[..r.len() - cut]).unwrap(), None, "cut {cut}");
        }
    }
}
