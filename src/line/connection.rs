//! A line-protocol connection: the socket, its read and write buffers, and the codec.
//!
//! Replies are gathered in the write buffer and written with one syscall per batch of
//! pipelined commands. Both buffers are released while the connection is idle, so an idle
//! connection holds no buffer memory at all.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::codec::{Line, LineCodec};
use super::pool;

/// Bytes read per syscall at most.
const READ_CHUNK: usize = 4096;
/// A client that accepts none of our bytes for this long is gone (`--write-stall`).
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// Write out what is gathered once it reaches this size, even mid-batch.
pub const FLUSH_AT: usize = 64 * 1024;

pub struct Connection {
    stream: TcpStream,
    codec: LineCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    write_stall: Duration,
}

impl Connection {
    pub fn new(stream: TcpStream, max_line: usize, write_stall: Duration) -> Connection {
        Connection {
            stream,
            codec: LineCodec::new(max_line),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            write_stall,
        }
    }

    /// The next complete line already buffered, without reading; its text is copied into
    /// `scratch`. Answers to the client's telnet commands, and the echo of what it typed
    /// where chatd echoes, go into the write buffer, ahead of the line's reply.
    pub fn buffered_line<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Option<Line<'s>> {
        self.codec.decode(&mut self.rbuf, scratch, &mut self.wbuf)
    }

    /// Offers a telnet client character mode (`--telnet-negotiate`), before anything else is
    /// written.
    pub fn offer_character_mode(&mut self) {
        self.out();
        self.codec.offer_character_mode(&mut self.wbuf);
    }

    /// Before live messages written between replies: for a person at telnet, what puts them
    /// on a fresh line.
    pub fn begin_pushes(&mut self) {
        self.out();
        self.codec.before_push(&mut self.wbuf);
    }

    /// After live messages: for a person at telnet, the line typed so far, again.
    pub fn end_pushes(&mut self) {
        self.out();
        self.codec.after_push(&self.rbuf, &mut self.wbuf);
    }

    /// Waits for bytes from the client and buffers them. Returns 0 at end of stream.
    /// Cancel-safe: if the future is dropped, no byte is lost.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        loop {
            // Waits for readiness without a waiter of its own inside this future (the socket
            // keeps the one waker), which keeps an idle connection's task small.
            std::future::poll_fn(|cx| self.stream.poll_read_ready(cx)).await?;
            // Read into the stack, not the heap: readiness can be spurious, and a buffer
            // reserved for a read that would block stays allocated while the connection idles.
            // Only the bytes that arrived are kept.
            let mut chunk = [0u8; READ_CHUNK];
            match self.stream.try_read(&mut chunk) {
                Ok(n) => {
                    if self.rbuf.capacity() == 0 {
                        self.rbuf = pool::take();
                    }
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The buffer replies are written into; [`Connection::flush`] sends it.
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

    /// Writes out everything gathered. Gives up on shutdown, when `kick` fires (the session
    /// fell too far behind its live messages), or when the client accepts nothing for a while.
    pub async fn flush(
        &mut self,
        shutdown: &CancellationToken,
        kick: Option<&CancellationToken>,
    ) -> io::Result<()> {
        // Usually the socket takes everything at once: no timer, no waiting.
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
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
        while !self.wbuf.is_empty() {
            tokio::select! {
                written = self.stream.write(&self.wbuf) => {
                    let written = written?;
                    if written == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    self.wbuf.advance(written);
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
            let ok = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } == 0;
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

    /// Writes a last line (best effort, briefly) and closes our side.
    pub async fn close_with(&mut self, line: &[u8]) {
        self.wbuf.extend_from_slice(line);
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.shutdown().await
        };
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), write)).await;
        self.wbuf.clear();
    }
}
