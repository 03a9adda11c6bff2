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

/// How long a refused connection may take to hear why.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

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
                // Refusals are bounded too: beyond that many at once, a connection is just closed.
                if let Ok(slot) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream, busy(refusal)).await;
                        drop(slot);
                    });
                }
            }
        }
    }
}

/// Tells a connection over the limit why it is being closed, then closes it. What the client
/// already sent is read and dropped for a moment, so that closing does not reset the
/// connection before the client has read the answer.
async fn refuse(mut stream: TcpStream, answer: Option<Vec<u8>>) {
    let goodbye = async {
        if let Some(answer) = answer {
            stream.write_all(&answer).await?;
        }
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, goodbye).await;
}

/// Errors that concern one connection only (it was reset before we accepted it, say).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}
