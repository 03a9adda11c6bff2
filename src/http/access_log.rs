//! The HTTP access log, at debug: method, path (never the query string, which may carry
//! credentials), status and time to the response head, one line per request.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Logs each request once its response head is ready. With debug logging off it costs one
/// check of the log level.
pub async fn log(request: Request, next: Next) -> Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match peer {
        Some(peer) => tracing::debug!("{peer} {method} {path} {status} {ms:.1} ms"),
        None => tracing::debug!("{method} {path} {status} {ms:.1} ms"),
    }
    response
}
