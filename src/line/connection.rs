//! A line-protocol connection: the [`Socket`] and the line codec over it.

use std::io;
use std::time::Duration;

use crate::stream::Stream;
use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::codec::{Line, LineCodec};
use crate::socket::Socket;
pub use crate::socket::{FLUSH_AT, WRITE_STALL};

pub struct Connection {
    socket: Socket,
    codec: LineCodec,
}

impl Connection {
    pub fn new(stream: Stream, max_line: usize, write_stall: Duration) -> Connection {
        Connection {
            socket: Socket::new(stream, write_stall),
            codec: LineCodec::new(max_line),
        }
    }

    /// The next complete line already buffered, without reading; its text is copied into
    /// `scratch`. Answers to the client's telnet commands, and the echo of what it typed
    /// where chatd echoes, go into the write buffer, ahead of the line's reply.
    pub fn buffered_line<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Option<Line<'s>> {
        let (rbuf, wbuf) = self.socket.buffers();
        self.codec.decode(rbuf, scratch, wbuf)
    }

    /// Registers the connection for the operator's view, and traces it (`--trace`).
    pub fn register(
        &mut self,
        conn: &std::sync::Arc<crate::conns::ConnInfo>,
        tracer: Option<&std::sync::Arc<crate::trace::Tracer>>,
    ) {
        self.socket.register(conn, tracer);
    }

    /// Who the traced connection is now.
    pub fn trace_user(&mut self, user: Option<&str>) {
        self.socket.trace_user(user);
    }

    /// Offers a telnet client character mode (`--telnet-negotiate`), before anything else is
    /// written.
    pub fn offer_character_mode(&mut self) {
        self.codec.offer_character_mode(self.socket.out());
    }

    /// Before live messages written between replies: for a person at telnet, what puts them
    /// on a fresh line.
    pub fn begin_pushes(&mut self) {
        self.codec.before_push(self.socket.out());
    }

    /// After live messages: for a person at telnet, the line typed so far, again.
    pub fn end_pushes(&mut self) {
        let (rbuf, wbuf) = self.socket.buffers();
        self.codec.after_push(rbuf, wbuf);
    }

    /// Waits for bytes from the client and buffers them. Returns 0 at end of stream.
    /// Cancel-safe: if the future is dropped, no byte is lost.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        self.socket.read_more().await
    }

    /// The buffer replies are written into; [`Connection::flush`] sends it.
    pub fn out(&mut self) -> &mut BytesMut {
        self.socket.out()
    }

    /// Whether lines wait to be answered or bytes to be written.
    pub fn has_work(&self) -> bool {
        self.socket.has_work()
    }

    pub fn wants_flush(&self) -> bool {
        self.socket.wants_flush()
    }

    /// Writes out everything gathered (see [`Socket::flush`]).
    pub async fn flush(
        &mut self,
        shutdown: &CancellationToken,
        kick: Option<&CancellationToken>,
    ) -> io::Result<()> {
        self.socket.flush(shutdown, kick).await
    }

    /// Gives back buffers that hold nothing, before the connection waits.
    pub fn release_idle_buffers(&mut self) {
        self.socket.release_idle_buffers();
    }

    /// Writes a last line (best effort, briefly) and closes our side.
    pub async fn close_with(&mut self, line: &[u8]) {
        self.socket.close_with(line).await;
    }
}
