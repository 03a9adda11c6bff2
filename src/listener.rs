//! The accept loop shared by every TCP listener: admits connections through its [`Door`],
//! refuses the ones over the limit with a word instead of leaving them hanging, survives accept
//! errors, and stops on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::limits::{Admission, Door, Refusal, MAX_REFUSING};

/// What a refused connection is told before it is closed (nothing, for echo).
pub type BusyAnswer = fn(Refusal) -> Option<Vec<u8>>;

/// How long a refused connection is kept to read what the client sent before it is closed.
const LINGER: Duration = Duration::from_millis(250);

/// Accepts connections on `listener` until `shutdown`, running `handle` for each one inside
/// `tracker`. Connections the `door` does not admit get `busy` (if any) and are closed.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    door: Door,
    busy: BusyAnswer,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Admission) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(5);
                conn
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Typically EMFILE/ENFILE (out of file descriptors) or ENOBUFS: wait for
                // connections to close, and never give up.
                tracing::warn!(listener = name, error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match door.try_admit(peer.ip()) {
            Ok(permit) => {
                // A span per connection when debug logging is on; otherwise not even its
                // (empty) handle is kept in every connection's task.
                let span = tracing::debug_span!("conn", listener = name, %peer);
                if span.is_disabled() {
                    tracker.spawn(handle(stream, peer, permit));
                } else {
                    tracker.spawn(handle(stream, peer, permit).instrument(span));
                }
            }
            Err(refusal) => {
                tracing::debug!(listener = name, %peer, ?refusal, "refused: server busy");
                let reason = match refusal {
                    Refusal::Full => "server_full",
                    Refusal::PerAddress => "address_full",
                };
                crate::metrics::METRICS.refused(name, reason);
                refuse(stream, busy(refusal), &refusing);
            }
        }
    }
}

/// Tells a connection over the limit why it is being closed, then closes it. The answer is
/// written at once, before anything else: a fresh socket's send buffer always has room for it,
/// so every refused client is told, however many arrive at once. Then the connection is closed
/// in stages (RFC 9112, 9.6): our side first, and what the client sends is read and dropped for
/// a moment, so that its request arriving after the close does not turn into a reset that
/// makes the client's system throw the answer away unread. That moment is short and holds one
/// of [`MAX_REFUSING`] places; with none free, the connection is closed at once instead.
fn refuse(stream: TcpStream, answer: Option<Vec<u8>>, lingering: &Arc<Semaphore>) {
    if let Some(answer) = &answer {
        let _ = stream.try_write(answer);
    }
    let mut sink = [0u8; 1024];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let Ok(place) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let goodbye = async {
            stream.shutdown().await?;
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(LINGER, goodbye).await;
        drop(place);
    });
}

/// Errors that concern one connection only (it was reset before we accepted it, say).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}
