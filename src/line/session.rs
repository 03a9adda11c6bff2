//! One line-protocol connection from HELLO to close: reads lines, answers each with one
//! [`Reply`], and writes live `MSG` pushes between replies.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::stream::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::Line;
use super::command::{Command, Context, LoggedIn};
use super::connection::{Connection, FLUSH_AT};
use super::reply::{put_line, put_push, Reply};
use crate::chat::Chat;
use crate::config::Config;
use crate::conns::ConnInfo;
use crate::error::{ChatError, Code};
use crate::hub::Ended;

/// Pushes written in one go before the session looks at its socket again.
const PUSH_BATCH: usize = 256;

/// What every session of a listener shares.
pub struct SessionSettings {
    pub max_line: usize,
    pub idle_timeout: Option<Duration>,
    /// A client that accepts none of our bytes for this long is disconnected.
    pub write_stall: Duration,
    pub greeting: String,
    /// Offer telnet's character mode on connect (`--telnet-negotiate`).
    pub telnet_negotiate: bool,
    /// `--trace`.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

impl SessionSettings {
    pub fn new(max_line: usize, idle_timeout: Option<Duration>) -> SessionSettings {
        SessionSettings {
            max_line,
            idle_timeout,
            write_stall: super::connection::WRITE_STALL,
            greeting: format!(
                "HELLO chatd/{} ready; type HELP for the commands",
                env!("CARGO_PKG_VERSION")
            ),
            telnet_negotiate: false,
            tracer: None,
        }
    }

    pub fn from_config(config: &Config) -> SessionSettings {
        SessionSettings {
            write_stall: config.write_stall(),
            telnet_negotiate: config.telnet_negotiate,
            ..SessionSettings::new(config.max_line, config.idle_timeout())
        }
    }
}

/// Serves one accepted connection until the client leaves, QUITs, idles out, falls behind,
/// or the server shuts down.
pub fn serve(
    stream: Stream,
    conn_info: Arc<ConnInfo>,
    chat: Chat,
    settings: Arc<SessionSettings>,
) -> impl Future<Output = ()> + Send {
    let peer = conn_info.peer;
    // Shutdown, or the operator's disconnect.
    let shutdown = conn_info.stop.clone();
    // Built here, not inside the future, so the task does not keep both the arguments and
    // what was made of them.
    let open = chat.connection_opened();
    let visit = crate::activity::Visit::start(peer);
    let mut conn = Connection::new(stream, settings.max_line, settings.write_stall);
    conn.register(&conn_info, settings.tracer.as_ref());
    let mut cx = Context::new(chat, peer.ip());
    // An `async move` block, not an `async fn`: its captures are used in place, whereas an
    // async fn's arguments are copied into locals and the task would hold both.
    async move {
        let _open = &open;
        match run(&mut conn, &mut cx, &settings, &shutdown).await {
            Ok(End::Quit | End::Eof) => tracing::debug!("connection closed"),
            Ok(End::Shutdown) if conn_info.by_operator() => {
                tracing::info!(user = ?cx.user(), %peer, "disconnected by the operator");
                conn.close_with(b"BYE disconnected by the operator\r\n").await
            }
            Ok(End::Shutdown) => conn.close_with(b"BYE server shutting down\r\n").await,
            Ok(End::Idle) => conn.close_with(b"BYE idle timeout\r\n").await,
            Ok(End::LoggedOut) => conn.close_with(b"BYE logged out everywhere\r\n").await,
            Ok(End::TooSlow) => {
                tracing::info!(user = ?cx.user(), peer = %cx.peer, "disconnected: too slow to read its messages")
            }
            Err(e) => tracing::debug!(error = %e, "connection ended"),
        }
        visit.end(cx.user().map(|u| u.as_str()));
        // Dropping `cx` takes the user's session offline.
    }
}

enum End {
    Quit,
    Eof,
    Shutdown,
    Idle,
    TooSlow,
    /// The user logged out everywhere (from another connection, or over HTTP).
    LoggedOut,
}

/// The connection's life. While it waits, its task holds only the socket, the context and
/// the few small futures below — answering commands happens in a future of its own
/// ([`answer_buffered`]), allocated only while there is work, so tens of thousands of idle
/// connections cost little memory.
async fn run(
    conn: &mut Connection,
    cx: &mut Context,
    settings: &SessionSettings,
    shutdown: &CancellationToken,
) -> io::Result<End> {
    if settings.telnet_negotiate {
        conn.offer_character_mode();
    }
    put_line(conn.out(), &settings.greeting);
    // A timer only where there is an idle timeout: each one costs memory per connection.
    let mut idle = settings
        .idle_timeout
        .map(|after| Box::pin(tokio::time::sleep(after)));
    loop {
        if conn.has_work() {
            if let Some(end) = Box::pin(answer_buffered(conn, cx, settings, shutdown)).await? {
                return Ok(end);
            }
        }
        conn.release_idle_buffers();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(End::Shutdown),
            pushed = next_push(&mut cx.session) => {
                // `None`: the hub ended this session, because it fell too far behind or its
                // user logged out everywhere.
                let Some(first) = pushed else {
                    let ended = cx.session.as_ref().and_then(|s| s.feed.ended());
                    return Ok(if ended == Some(Ended::LoggedOut) { End::LoggedOut } else { End::TooSlow });
                };
                if let Some(session) = cx.session.as_mut() {
                    write_pushes(conn, session, &first);
                }
            }
            read = conn.read_more() => {
                if read? == 0 {
                    return Ok(End::Eof);
                }
                if let (Some(idle), Some(after)) = (idle.as_mut(), settings.idle_timeout) {
                    idle.as_mut().reset(Instant::now() + after);
                }
            }
            _ = idle_expired(&mut idle) => return Ok(End::Idle),
        }
    }
}

/// Answers every complete line already buffered, in order, and writes the answers in one go
/// (and pending pushes with them). `Some(End::Quit)` once QUIT was answered.
async fn answer_buffered(
    conn: &mut Connection,
    cx: &mut Context,
    settings: &SessionSettings,
    shutdown: &CancellationToken,
) -> io::Result<Option<End>> {
    let mut scratch = Vec::new();
    while let Some(line) = conn.buffered_line(&mut scratch) {
        let reply = match line {
            Line::Text(text) => match Command::parse(text) {
                Ok(command) => {
                    command.apply(cx, conn, shutdown).await?;
                    None
                }
                Err(e) => Some(Reply::err(e)),
            },
            Line::TooLong => Some(Reply::err(ChatError::new(
                Code::LineTooLong,
                format!(
                    "lines are at most {} bytes; that one was discarded",
                    settings.max_line
                ),
            ))),
            Line::BadEncoding => Some(Reply::err(ChatError::new(
                Code::BadEncoding,
                "lines must be UTF-8",
            ))),
        };
        if let Some(reply) = reply {
            reply.write_to(conn.out());
        }
        if cx.quit {
            flush(conn, cx, shutdown).await?;
            return Ok(Some(End::Quit));
        }
        if conn.wants_flush() {
            flush(conn, cx, shutdown).await?;
        }
    }
    flush(conn, cx, shutdown).await?;
    Ok(None)
}

/// Resolves when the idle timer (if any) runs out.
async fn idle_expired(idle: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match idle {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// The next live message for this session; `None` if the hub ended it.
/// Never resolves while the session is not logged in.
async fn next_push(session: &mut Option<Box<LoggedIn>>) -> Option<Arc<crate::store::Message>> {
    match session.as_mut() {
        Some(session) => std::future::poll_fn(|cx| session.feed.poll_recv(cx)).await,
        None => std::future::pending().await,
    }
}

/// Writes live messages: `first` and whatever else is queued, up to a batch (in messages and
/// in bytes). For a person at a telnet client a push must not garble the line being typed: it
/// starts on a fresh line, and the part of a line typed so far is written again after it, so
/// typing goes on where it was (see [`super::codec::LineCodec::before_push`]). Other clients
/// get exactly the `MSG` lines.
fn write_pushes(conn: &mut Connection, session: &mut LoggedIn, first: &crate::store::Message) {
    conn.begin_pushes();
    put_push(conn.out(), first);
    let mut batch = 1;
    while batch < PUSH_BATCH && conn.out().len() < FLUSH_AT {
        let Some(message) = session.feed.try_recv() else {
            break;
        };
        put_push(conn.out(), &message);
        batch += 1;
    }
    conn.end_pushes();
}

pub(super) async fn flush(
    conn: &mut Connection,
    cx: &Context,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    conn.trace_user(cx.user().map(|u| u.as_str()));
    match conn.flush(shutdown, cx.session.as_ref().map(|s| &s.kick)).await {
        // Aborted by shutdown: the main loop says goodbye; by a kick: the session ends.
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted && shutdown.is_cancelled() => Ok(()),
        other => other,
    }
}
