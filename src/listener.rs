//! The accept loop shared by every TCP listener: bounds connections, refuses the ones over the
//! bound with a word instead of leaving them hanging, survives accept errors, and stops on
//! shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Accepts connections on `listener` until `shutdown`, running `handle` for each one inside
/// `tracker`. Connections over `limit` get `busy_line` (if any) and are closed.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    busy_line: Option<&'static [u8]>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        match limit.clone().try_acquire_owned() {
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
            Err(_) => {
                tracing::debug!(listener = name, %peer, "refused: server busy");
                tokio::spawn(refuse(stream, busy_line));
            }
        }
    }
}

/// Tells a connection over the limit why it is being closed, then closes it.
async fn refuse(mut stream: TcpStream, line: Option<&'static [u8]>) {
    let goodbye = async {
        if let Some(line) = line {
            stream.write_all(line).await?;
        }
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}

/// Errors that concern one connection only (it was reset before we accepted it, say).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}
