//! One HTTP connection, served by hyper with chatd's limits: the request head must arrive
//! within [`HEADER_TIMEOUT`] (which also ends an idle keep-alive connection), a response that
//! makes no progress for [`WRITE_STALL`] is abandoned, and shutdown lets the request in flight
//! finish. Request bodies are bounded where they are read (`extract.rs`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::stall::StallGuard;
use crate::conns::{ConnInfo, Counted};
use crate::limits::Refusal;
use crate::stream::Stream;
use crate::trace::{ConnTrace, Tracer};

/// Time for a request head, from the moment the server waits for it: for the first request,
/// and between requests on a keep-alive connection (so it is also the keep-alive idle time).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A response the client accepts no byte of for this long is abandoned (connection closed).
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// hyper's read buffer, at most (a body is read through it in pieces of this size).
const READ_BUFFER: usize = 64 * 1024;

/// Serves HTTP/1.1 on `stream` until the client leaves, a limit ends it, or `shutdown`.
pub async fn serve(stream: Stream, conn: Arc<ConnInfo>, app: Router, tracer: Option<Arc<Tracer>>) {
    let peer = conn.peer;
    // Shutdown, or the operator's disconnect.
    let shutdown = conn.stop.clone();
    // hyper's connection state and read buffer (~10 KiB) are made once the client has sent
    // something: thousands of connections that send nothing cost what idle line connections
    // do. The first request head still has [`HEADER_TIMEOUT`] from now, not from its first byte.
    // (`peek`, not `readable`: readiness may be reported before any byte has arrived.)
    let first_head_by = Instant::now() + HEADER_TIMEOUT;
    // (TLS: the client has spoken already, its handshake.)
    if let Stream::Plain(tcp) = &stream {
        let mut first = [0u8; 1];
        tokio::select! {
            peeked = tokio::time::timeout_at(first_head_by, tcp.peek(&mut first)) => {
                if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                    tracing::debug!(%peer, "HTTP connection sent nothing in time");
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
    // Boxed, so the future of a connection still waiting for its first byte stays small.
    let trace = Tracer::of(tracer.as_ref(), &conn).map(super::trace::HttpTrace::new);
    Box::pin(serve_requests(stream, conn, app, shutdown, first_head_by, trace)).await
}

/// hyper's half of [`serve`], once the client has sent something. hyper times each request
/// head from when it starts reading it; the first one must also be in by `first_head_by`.
async fn serve_requests(
    stream: Stream,
    conn: Arc<ConnInfo>,
    app: Router,
    shutdown: CancellationToken,
    first_head_by: Instant,
    trace: Option<super::trace::HttpTrace>,
) {
    let peer = conn.peer;
    let io = TokioIo::new(StallGuard::new(Counted::new(stream, conn.clone()), WRITE_STALL));
    let got_a_head = Arc::new(AtomicBool::new(false));
    let got = got_a_head.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        got.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(peer));
        conn.set_last(super::trace::request_line(&request).as_bytes());
        // Traced by `--trace`, or while the operator watches this connection.
        let watched = || {
            conn.is_watched()
                .then(|| super::trace::HttpTrace::new(ConnTrace::watching(&conn)))
        };
        if let Some(trace) = trace.clone().or_else(watched) {
            request.extensions_mut().insert(trace);
        }
        request.extensions_mut().insert(conn.clone());
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(
                app.oneshot(request.map(Body::new))
                    .await
                    .unwrap_or_else(|e| match e {}),
            )
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .max_buf_size(READ_BUFFER);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = no_head_by(first_head_by, &got_a_head) => {
            tracing::debug!(%peer, "HTTP request head not complete in time");
            return;
        }
        _ = shutdown.cancelled() => {
            // Finish the request in flight (live event streams end on the same signal), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// Ends at `deadline` if no request head has been read by then; otherwise never.
async fn no_head_by(deadline: Instant, got_a_head: &AtomicBool) {
    tokio::time::sleep_until(deadline).await;
    if got_a_head.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// What a connection over the limit gets: `503 SERVER_BUSY` as JSON, then the connection closes.
pub fn busy_answer(refusal: Refusal) -> Option<Vec<u8>> {
    let body = serde_json::json!({ "status": "SERVER_BUSY", "message": refusal.reason() }).to_string();
    Some(
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}
