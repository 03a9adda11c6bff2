//! A client's socket with its read and write buffers, shared by the doors that speak lines
//! (the line protocol, IRC): each door frames lines its own way over the bytes read here, and
//! writes its answers into [`Socket::out`], which [`Socket::flush`] sends with one syscall per
//! batch. Both buffers are released while the connection is idle, so an idle connection holds
//! no buffer memory at all; [`pool`] recycles them for busy ones.

pub mod pool;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::conns::ConnInfo;
use crate::stream::Stream;
use crate::trace::{ConnTrace, Tracer};

/// Bytes read per syscall at most.
const READ_CHUNK: usize = 4096;
/// A client that accepts none of our bytes for this long is gone (`--write-stall`).
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a last line may take to be written before the connection closes anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Write out what is gathered once it reaches this size, even mid-batch.
pub const FLUSH_AT: usize = 64 * 1024;

pub struct Socket {
    stream: Stream,
    /// Bytes read and not yet framed into lines.
    pub rbuf: BytesMut,
    wbuf: BytesMut,
    write_stall: Duration,
    /// With `--trace`, or while the operator watches: what is read and written is shown
    /// (see [`crate::trace`]).
    trace: Option<Box<ConnTrace>>,
    /// The connection as the operator sees it: bytes, last line, user.
    conn: Option<Arc<ConnInfo>>,
}

impl Socket {
    pub fn new(stream: Stream, write_stall: Duration) -> Socket {
        Socket {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            write_stall,
            trace: None,
            conn: None,
        }
    }

    /// Keeps `conn`'s counts and last line, and traces the connection where `--trace` says
    /// (or once the operator watches it).
    pub fn register(&mut self, conn: &Arc<ConnInfo>, tracer: Option<&Arc<Tracer>>) {
        self.trace = Tracer::of(tracer, conn);
        self.conn = Some(conn.clone());
    }

    /// Starts tracing for the operator's live view when it starts watching.
    fn watch(&mut self) {
        if let (None, Some(conn)) = (&self.trace, &self.conn) {
            if conn.is_watched() {
                self.trace = Some(ConnTrace::watching(conn));
            }
        }
    }

    /// Who the connection is now (a login, a guest's nick), for the trace and the operator.
    pub fn trace_user(&mut self, user: Option<&str>) {
        if let Some(conn) = &self.conn {
            conn.set_user(user);
        }
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.set_user(user);
        }
    }

    /// The first `n` gathered bytes are written: the trace shows them.
    fn written(&mut self, n: usize) {
        if let Some(conn) = &self.conn {
            conn.sent(n);
        }
        self.watch();
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.output(&self.wbuf[..n]);
        }
        self.wbuf.advance(n);
    }

    /// Both buffers at once: framing reads one and may answer into the other.
    pub fn buffers(&mut self) -> (&mut BytesMut, &mut BytesMut) {
        self.out();
        (&mut self.rbuf, &mut self.wbuf)
    }

    /// Waits for bytes from the client and buffers them. Returns 0 at end of stream.
    /// Cancel-safe: if the future is dropped, no byte is lost.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        let Stream::Plain(tcp) = &self.stream else {
            // TLS: rustls may hold decrypted bytes the socket no longer signals, so it is read
            // the ordinary way, in a future of its own (a TLS connection's buffers are larger
            // than this chunk anyway; a plain connection's task does not grow by it).
            return Box::pin(self.read_tls()).await;
        };
        loop {
            // Waits for readiness without a waiter of its own inside this future (the socket
            // keeps the one waker), which keeps an idle connection's task small.
            std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
            // Read into the stack, not the heap: readiness can be spurious, and a buffer
            // reserved for a read that would block stays allocated while the connection idles.
            // Only the bytes that arrived are kept.
            let mut chunk = [0u8; READ_CHUNK];
            match tcp.try_read(&mut chunk) {
                Ok(n) => {
                    self.arrived(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_tls(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.stream.read(&mut chunk).await?;
        self.arrived(&chunk[..n]);
        Ok(n)
    }

    /// Bytes read: buffered for framing, counted, traced.
    fn arrived(&mut self, bytes: &[u8]) {
        if self.rbuf.capacity() == 0 {
            self.rbuf = pool::take();
        }
        self.rbuf.extend_from_slice(bytes);
        if let Some(conn) = &self.conn {
            conn.received(bytes.len(), &self.rbuf);
        }
        self.watch();
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.input(bytes);
        }
    }

    /// The buffer replies are written into; [`Socket::flush`] sends it.
    pub fn out(&mut self) -> &mut BytesMut {
        if self.wbuf.capacity() == 0 {
            self.wbuf = pool::take();
        }
        &mut self.wbuf
    }

    /// Whether lines wait to be answered or bytes to be written.
    pub fn has_work(&self) -> bool {
        !self.rbuf.is_empty() || !self.wbuf.is_empty()
    }

    pub fn wants_flush(&self) -> bool {
        self.wbuf.len() >= FLUSH_AT
    }

    /// Bytes gathered and not yet written.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes out everything gathered. Gives up on shutdown, when `kick` fires (the session
    /// fell too far behind its live messages), or when the client accepts nothing for a while.
    pub async fn flush(
        &mut self,
        shutdown: &CancellationToken,
        kick: Option<&CancellationToken>,
    ) -> io::Result<()> {
        // Usually the socket takes everything at once: no timer, no waiting. (TLS always
        // takes the path that writes its records out and flushes them.)
        while !self.wbuf.is_empty() {
            let tried = match &self.stream {
                Stream::Plain(tcp) => tcp.try_write(&self.wbuf),
                Stream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
            };
            match tried {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A client that reads slowly: the rare path gets a future of its own, so
                    // its timer does not make every connection's task bigger.
                    return Box::pin(self.flush_slowly(shutdown, kick)).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    async fn flush_slowly(
        &mut self,
        shutdown: &CancellationToken,
        kick: Option<&CancellationToken>,
    ) -> io::Result<()> {
        let kicked = async {
            match kick {
                Some(kick) => kick.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(kicked);
        // The stall timer bounds the time without progress, not the whole write: a client
        // that takes bytes, however slowly, is served to the end. Progress is the client
        // taking bytes from the socket, not our writes succeeding: the kernel says a socket
        // with a large send buffer is writable again only once much of it has drained.
        let mut queued = self.unsent();
        let stall = tokio::time::sleep(self.write_stall);
        tokio::pin!(stall);
        // TLS: once the bytes are handed over, their records are flushed to the socket too.
        let mut flushed = matches!(self.stream, Stream::Plain(_));
        while !self.wbuf.is_empty() || !flushed {
            let (stream, wbuf) = (&mut self.stream, &self.wbuf);
            let step = async move {
                if wbuf.is_empty() {
                    stream.flush().await.map(|()| None)
                } else {
                    stream.write(wbuf).await.map(Some)
                }
            };
            tokio::select! {
                step = step => {
                    let Some(written) = step? else {
                        flushed = true;
                        continue;
                    };
                    if written == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    self.written(written);
                    flushed = matches!(self.stream, Stream::Plain(_));
                    queued = self.unsent();
                    stall.as_mut().reset(tokio::time::Instant::now() + self.write_stall);
                }
                _ = &mut stall => {
                    let now = self.unsent();
                    match (now, queued) {
                        (Some(now), Some(before)) if now < before => {
                            queued = Some(now);
                            stall.as_mut().reset(tokio::time::Instant::now() + self.write_stall);
                        }
                        _ => return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")),
                    }
                }
                _ = shutdown.cancelled() => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "shutting down while writing"));
                }
                _ = &mut kicked => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "too far behind"));
                }
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Bytes written to the socket that the client has not acknowledged yet, where the
    /// system tells (Linux); `None` elsewhere, where only our own writes count as progress.
    fn unsent(&self) -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int for a socket this connection owns.
            let fd = self.stream.tcp().as_raw_fd();
            let ok = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } == 0;
            ok.then_some(queued.max(0) as usize)
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// Gives back buffers that hold nothing, before the connection waits.
    pub fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            pool::give(std::mem::take(&mut self.rbuf));
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            pool::give(std::mem::take(&mut self.wbuf));
        }
    }

    /// Drops what is gathered after its first line end: the rest of a line already partly
    /// written is kept, so that a last line written after it starts on a line of its own.
    pub fn keep_first_line(&mut self) {
        let end = self
            .wbuf
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |i| i + 2);
        self.wbuf.truncate(end);
    }

    /// Writes what is gathered and a last line (best effort, briefly), and closes our side.
    pub async fn close_with(&mut self, line: &[u8]) {
        self.close_within(line, CLOSE_GRACE).await;
    }

    /// [`Socket::close_with`], giving the client up to `grace` to take the bytes.
    pub async fn close_within(&mut self, line: &[u8], grace: Duration) {
        self.out().extend_from_slice(line);
        if let Some(conn) = &self.conn {
            conn.sent(self.wbuf.len());
        }
        self.watch();
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.output(&self.wbuf);
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            // TLS: close_notify, then the TCP shutdown.
            self.stream.shutdown().await
        };
        let _ = Box::pin(tokio::time::timeout(grace, write)).await;
        self.wbuf.clear();
    }
}
