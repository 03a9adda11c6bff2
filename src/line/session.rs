//! One line-protocol connection from HELLO to close: reads lines, answers each with one
//! [`Reply`], and writes live `MSG` pushes between replies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::Line;
use super::command::{Command, Context};
use super::connection::Connection;
use super::reply::{msg_line, put_line, Reply};
use crate::chat::Chat;
use crate::error::{ChatError, Code};

/// Pushes written in one go before the session looks at its socket again.
const PUSH_BATCH: usize = 256;

/// What every session of a listener shares.
pub struct SessionSettings {
    pub max_line: usize,
    pub idle_timeout: Option<Duration>,
    pub greeting: String,
}

impl SessionSettings {
    pub fn new(max_line: usize, idle_timeout: Option<Duration>) -> SessionSettings {
        SessionSettings {
            max_line,
            idle_timeout,
            greeting: format!(
                "HELLO chatd/{} ready; type HELP for the commands",
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Serves one accepted connection until the client leaves, QUITs, idles out, falls behind,
/// or the server shuts down.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    chat: Chat,
    settings: Arc<SessionSettings>,
    shutdown: CancellationToken,
) {
    let _open = chat.connection_opened();
    let abort = shutdown.child_token();
    let mut conn = Connection::new(stream, settings.max_line);
    let mut cx = Context::new(chat, peer, abort.clone());
    match run(&mut conn, &mut cx, &settings, &shutdown).await {
        Ok(End::Quit | End::Eof) => tracing::debug!("connection closed"),
        Ok(End::Shutdown) => conn.close_with(b"BYE server shutting down\r\n").await,
        Ok(End::Idle) => conn.close_with(b"BYE idle timeout\r\n").await,
        Ok(End::TooSlow) => tracing::info!(user = ?cx.user, "disconnected: too slow to read its messages"),
        Err(e) => tracing::debug!(error = %e, "connection ended"),
    }
    // Dropping `cx` takes the user's session offline.
}

enum End {
    Quit,
    Eof,
    Shutdown,
    Idle,
    TooSlow,
}

async fn run(
    conn: &mut Connection,
    cx: &mut Context,
    settings: &SessionSettings,
    shutdown: &CancellationToken,
) -> io::Result<End> {
    put_line(conn.out(), &settings.greeting);
    let idle_after = settings.idle_timeout.unwrap_or(Duration::from_secs(86400 * 365));
    let idle = tokio::time::sleep(idle_after);
    tokio::pin!(idle);
    loop {
        // Answer every complete line already buffered, then write the answers in one go.
        while let Some(line) = conn.buffered_line() {
            let reply = match line {
                Line::Text(ref bytes) => {
                    let text = std::str::from_utf8(bytes).expect("the codec yields UTF-8 only");
                    match Command::parse(text) {
                        Ok(command) => command.apply(cx).await,
                        Err(e) => Reply::err(e),
                    }
                }
                Line::TooLong => Reply::err(ChatError::new(
                    Code::LineTooLong,
                    format!(
                        "lines are at most {} bytes; that one was discarded",
                        settings.max_line
                    ),
                )),
                Line::BadEncoding => Reply::err(ChatError::new(Code::BadEncoding, "lines must be UTF-8")),
            };
            reply.write_to(conn.out());
            if cx.quit {
                conn.flush(&cx.abort).await?;
                return Ok(End::Quit);
            }
            if conn.wants_flush() {
                flush(conn, cx, shutdown).await?;
            }
        }
        flush(conn, cx, shutdown).await?;
        conn.release_idle_buffers();

        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(End::Shutdown),
            pushed = next_push(cx) => {
                let Some(first) = pushed else { return Ok(End::TooSlow) };
                put_line(conn.out(), &msg_line(&first));
                if let Some(feed) = cx.feed.as_mut() {
                    for message in std::iter::from_fn(|| feed.try_recv()).take(PUSH_BATCH) {
                        put_line(conn.out(), &msg_line(&message));
                    }
                }
            }
            read = conn.read_more() => {
                if read? == 0 {
                    return Ok(End::Eof);
                }
                if let Some(timeout) = settings.idle_timeout {
                    idle.as_mut().reset(Instant::now() + timeout);
                }
            }
            _ = &mut idle, if settings.idle_timeout.is_some() => return Ok(End::Idle),
        }
    }
}

/// The next live message for this session; `None` if it was kicked for falling behind.
/// Never resolves while the session is not logged in.
async fn next_push(cx: &mut Context) -> Option<Arc<crate::store::Message>> {
    match cx.feed.as_mut() {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

async fn flush(conn: &mut Connection, cx: &Context, shutdown: &CancellationToken) -> io::Result<()> {
    match conn.flush(&cx.abort).await {
        // Aborted by shutdown: the main loop says goodbye; by a kick: the session ends.
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted && shutdown.is_cancelled() => Ok(()),
        other => other,
    }
}
