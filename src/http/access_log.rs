//! The HTTP access log, at debug: method, path (never the query string, which may carry
//! credentials), status and time to the response head, one line per request. Every request is
//! also counted in `chatd_http_requests_total{method,route,status}`, by its route's pattern
//! (`/rooms/{name}`), never by a name in its path.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Logs each request once its response head is ready. With debug logging off it costs one
/// check of the log level.
pub async fn log(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", |p| p.as_str())
        .to_string();
    let method = request.method().as_str().to_string();
    if !tracing::enabled!(tracing::Level::DEBUG) {
        let response = next.run(request).await;
        count(method, route, &response);
        return response;
    }
    let counted = method.clone();
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let response = next.run(request).await;
    count(counted, route, &response);
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match peer {
        Some(peer) => tracing::debug!("{peer} {method} {path} {status} {ms:.1} ms"),
        None => tracing::debug!("{method} {path} {status} {ms:.1} ms"),
    }
    response
}

fn count(method: String, route: String, response: &Response) {
    let status = response.status().as_u16();
    let label = crate::metrics::RouteLabel {
        method,
        route,
        status,
    };
    crate::metrics::METRICS.http_requests.get_or_create(&label).inc();
}
