//! The operator's listener: the teacher's live view (`/admin`), the connections as JSON
//! (`/admin/connections`, paged, sorted and filtered like NATS' `/connz`), one connection's
//! live trace (`/admin/trace?conn=<id>`), the operator's actions, and `/metrics`.
//!
//! It is a listener of its own, on loopback by default, so that nothing here is reachable
//! from the class network unless the operator decides so; bound elsewhere it needs a token
//! (`--admin-token`), which every request then carries as `Authorization: Bearer <token>`.
//! It reads the core (the table of open connections, the domain) and never sits in the way of
//! a client: its connections have places of their own ([`MAX_CONNECTIONS`]).

mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::chat::Chat;
use crate::conns::{ConnView, Conns};
use crate::error::{ChatError, Code};

pub use metrics::Metrics;

/// Connections the operator's listener serves at once (browsers open a few each).
pub const MAX_CONNECTIONS: usize = 64;
/// Connections the live page lists at most; the count says how many more there are.
const PAGE_ROWS: usize = 500;
/// The live page is redrawn at most this often, and at least once a second.
const REDRAW_EVERY: Duration = Duration::from_millis(250);
/// `/admin/connections` returns this many by default, and at most [`MAX_LIMIT`].
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What the operator's routes share.
pub struct AdminState {
    pub chat: Chat,
    pub conns: Arc<Conns>,
    pub metrics: Arc<Metrics>,
    pub node_id: String,
    /// The SHA-256 of `--admin-token`: requests are compared with it in constant time.
    pub token: Option<[u8; 32]>,
    pub stop: CancellationToken,
    pub started: Instant,
}

impl AdminState {
    pub fn token_digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/admin") }))
        .route("/admin", get(page))
        .route("/admin/events", get(events))
        .route("/admin/connections", get(connections))
        .route("/admin/connections/{id}/disconnect", post(disconnect))
        .route("/admin/trace", get(trace))
        .route("/admin/users/{name}/reset-password", post(reset_password))
        .route("/admin/users/{name}", delete(remove_user))
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"status": "NOT_FOUND", "message": "no such page; see /admin"})),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// With a token set, every request carries it: `Authorization: Bearer <token>`.
async fn authorize(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let Some(wanted) = &state.token else {
        return next.run(request).await;
    };
    let given = bearer(request.headers()).map(AdminState::token_digest);
    // Compared whole, without an early exit: the time does not tell how much matched.
    let matches = given.is_some_and(|given| given.iter().zip(wanted).fold(0, |d, (a, b)| d | (a ^ b)) == 0);
    if matches {
        return next.run(request).await;
    }
    // The page itself loads without it, and asks for the token.
    if request.uri().path() == "/admin" && given.is_none() {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    tracing::info!(peer = ?peer, path = %request.uri().path(), "admin: request without the right token refused");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"chatd admin\"")],
        Json(json!({"status": "UNAUTHORIZED", "message": "send the admin token: Authorization: Bearer <token>"})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(include_str!("page.html")),
    )
}

/// What the live page shows at one moment.
async fn snapshot(state: &AdminState) -> serde_json::Value {
    let mut all: Vec<ConnView> = state.conns.all().iter().map(|c| c.view()).collect();
    all.sort_by_key(|c| c.id);
    let total = all.len();
    all.truncate(PAGE_ROWS);
    let online = state.chat.who("").await;
    let rooms = state.chat.open_rooms("").await;
    let counters = state.metrics.counters(&state.conns, &state.chat);
    json!({
        "node": state.node_id,
        "now": unix_now(),
        "connections": all,
        "connections_total": total,
        "online": online.as_ref().map(|p| p.users.iter().map(|u| u.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
        "online_more": online.as_ref().is_ok_and(|p| p.more),
        "rooms": rooms.unwrap_or_default().iter().map(|r| json!({"name": &*r.name, "members": r.members, "topic": r.topic})).collect::<Vec<_>>(),
        "counters": counters,
        "uptime_seconds": state.started.elapsed().as_secs(),
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The live page's feed: a snapshot at once, then one at each change (a connection opened,
/// closed or logged in) and at least once a second, at most every [`REDRAW_EVERY`].
async fn events(State(state): State<Arc<AdminState>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = state.conns.changes();
    let stream = futures::stream::unfold((state, changes, true), |(state, mut changes, first)| async move {
        if !first {
            tokio::select! {
                _ = state.stop.cancelled() => return None,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Several changes close together are one redraw.
            tokio::time::sleep(REDRAW_EVERY).await;
            changes.borrow_and_update();
        }
        if state.stop.is_cancelled() {
            return None;
        }
        let event = Event::default()
            .event("snapshot")
            .data(snapshot(&state).await.to_string());
        Some((Ok(event), (state, changes, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
struct ConnQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    sort: Option<String>,
    order: Option<String>,
    door: Option<String>,
    user: Option<String>,
    addr: Option<String>,
}

/// The open connections as JSON, NATS `/connz` style: `offset`, `limit` (default 100, at
/// most 1000), `sort` (`id`, `since`, `bytes_in`, `bytes_out`, `user`, `addr`, `door`),
/// `order` (`asc` or `desc`), and filters `door`, `user` and `addr` (an IP address).
async fn connections(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ConnQuery>,
) -> Result<Json<serde_json::Value>, Response> {
    let mut rows: Vec<ConnView> = state
        .conns
        .all()
        .iter()
        .filter(|c| {
            query
                .door
                .as_deref()
                .is_none_or(|d| crate::conns::door_name(c.door) == d)
        })
        .filter(|c| query.addr.as_deref().is_none_or(|a| c.peer.ip().to_string() == a))
        .map(|c| c.view())
        .filter(|c| query.user.as_deref().is_none_or(|u| c.user.as_deref() == Some(u)))
        .collect();
    let sort = query.sort.as_deref().unwrap_or("id");
    match sort {
        "id" => rows.sort_by_key(|c| c.id),
        "since" => rows.sort_by_key(|c| (c.since, c.id)),
        "bytes_in" => rows.sort_by_key(|c| (c.bytes_in, c.id)),
        "bytes_out" => rows.sort_by_key(|c| (c.bytes_out, c.id)),
        "user" => rows.sort_by(|a, b| (&a.user, a.id).cmp(&(&b.user, b.id))),
        "addr" => rows.sort_by(|a, b| (&a.addr, a.id).cmp(&(&b.addr, b.id))),
        "door" => rows.sort_by_key(|c| (c.door, c.id)),
        other => {
            return Err(bad_args(format!(
                "cannot sort by {other:?}: sort by id, since, bytes_in, bytes_out, user, addr or door"
            )))
        }
    }
    match query.order.as_deref().unwrap_or("asc") {
        "asc" => {}
        "desc" => rows.reverse(),
        other => return Err(bad_args(format!("order is asc or desc, not {other:?}"))),
    }
    let total = rows.len();
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let page: Vec<ConnView> = rows.into_iter().skip(offset).take(limit).collect();
    Ok(Json(json!({
        "now": unix_now(),
        "node": state.node_id,
        "total": total,
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "num_connections": page.len(),
        "connections": page,
    })))
}

fn no_connection(id: u64) -> Response {
    let message = format!("there is no open connection #{id}");
    (
        StatusCode::NOT_FOUND,
        Json(json!({"status": "NOT_FOUND", "message": message})),
    )
        .into_response()
}

fn bad_args(message: String) -> Response {
    ChatError::new(Code::BadArgs, message).into_response()
}

fn operator(peer: &ConnectInfo<SocketAddr>) -> String {
    format!("the operator at {}", peer.0)
}

async fn disconnect(
    State(state): State<Arc<AdminState>>,
    peer: ConnectInfo<SocketAddr>,
    Path(id): Path<u64>,
) -> Result<Json<serde_json::Value>, Response> {
    let conn = state.conns.get(id).ok_or_else(|| no_connection(id))?;
    tracing::info!(by = %operator(&peer), conn = id, peer = %conn.peer, user = ?conn.user(), "admin: disconnecting a connection");
    conn.disconnect();
    Ok(Json(json!({"status": "OK", "disconnected": id})))
}

#[derive(Debug, Deserialize)]
struct NewPassword {
    password: String,
}

async fn reset_password(
    State(state): State<Arc<AdminState>>,
    peer: ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Json(body): Json<NewPassword>,
) -> Result<Json<serde_json::Value>, Response> {
    let ended = state
        .chat
        .reset_password(&name, &body.password)
        .await
        .map_err(IntoResponse::into_response)?;
    let connections = state.conns.disconnect_user(&name);
    tracing::info!(by = %operator(&peer), user = %name, tokens = ended.tokens, sessions = ended.sessions, "admin: password reset");
    Ok(Json(json!({
        "status": "OK",
        "user": name,
        "tokens_ended": ended.tokens,
        "sessions_ended": ended.sessions,
        "connections_closed": connections,
    })))
}

async fn remove_user(
    State(state): State<Arc<AdminState>>,
    peer: ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Response> {
    let rooms = state
        .chat
        .remove_user(&name)
        .await
        .map_err(IntoResponse::into_response)?;
    let connections = state.conns.disconnect_user(&name);
    tracing::info!(by = %operator(&peer), user = %name, rooms = rooms.len(), "admin: user removed");
    Ok(Json(json!({
        "status": "OK",
        "removed": name,
        "rooms_left": rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "connections_closed": connections,
    })))
}

#[derive(Debug, Deserialize)]
struct TraceQuery {
    conn: u64,
}

/// One connection's trace, live (SSE): each trace line an event, until it closes.
async fn trace(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<TraceQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    let conn = state
        .conns
        .get(query.conn)
        .ok_or_else(|| no_connection(query.conn))?;
    let start = format!(
        "tracing #{} ({} from {}); passwords are shown as ****",
        conn.id,
        crate::conns::door_name(conn.door),
        conn.peer
    );
    let lines = conn.watch();
    drop(conn);
    let stop = state.stop.clone();
    let first = Event::default().data(start);
    let stream = futures::stream::unfold(
        (Some(first), lines, stop, false),
        |(first, mut lines, stop, done)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, lines, stop, false)));
            }
            if done {
                return None;
            }
            use tokio::sync::broadcast::error::RecvError;
            let event = tokio::select! {
                _ = stop.cancelled() => return None,
                line = lines.recv() => match line {
                    Ok(line) => Event::default().data(&*line),
                    Err(RecvError::Lagged(n)) => Event::default().data(format!("trace: {n} lines skipped (this page could not keep up)")),
                    Err(RecvError::Closed) => {
                        return Some((Ok(Event::default().event("closed").data("the connection closed")), (None, lines, stop, true)));
                    }
                },
            };
            Some((Ok(event), (None, lines, stop, false)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
