//! The HTTP facade: the lab's JSON routes, live events and the chat page, over the very same
//! chat domain as the line protocol. Handlers are thin; errors get their statuses in
//! [`status`]; the connection's limits and timeouts live in [`conn`], the bounds on request
//! bodies in [`extract`].

mod access_log;
mod bodies;
mod conn;
mod events;
mod extract;
mod guard;
mod rooms;
mod routes;
mod stall;
pub mod status;
pub mod trace;

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::chat::{Chat, Tokens};
use crate::store::Store;

pub use bodies::{
    BODIES_AT_ONCE, BODIES_PER_ADDR, BODY_GRACE, BODY_WAIT, MIN_BODY_RATE, SMALL_BODIES_AT_ONCE,
    SMALL_BODIES_PER_ADDR, SMALL_BODY,
};
pub use conn::{busy_answer, serve as serve_connection, HEADER_TIMEOUT, MAX_HEAD, WRITE_STALL};
pub use extract::{BODY_STALL, BODY_TIME, MAX_BODY};
pub use routes::MAX_REPLY_BYTES;

/// Batches of large messages serialised for `/get_messages` and `/conversation` at once: one,
/// so that a crowd of large replies keeps at most one core busy.
const REPLY_BUILDERS: usize = 1;

/// The chat page, embedded in the binary.
pub const PAGE: &str = include_str!("page.html");

/// What every handler shares.
pub struct AppState {
    pub chat: Chat,
    pub store: Store,
    /// The domain's bearer tokens (the same memory of them as [`Chat`]'s).
    pub tokens: Tokens,
    pub node_id: String,
    pub started: Instant,
    /// The listeners' addresses, as `/info` reports them.
    pub listeners: Value,
    /// Ends live event streams on shutdown.
    pub shutdown: CancellationToken,
    /// Classroom mode: `POST /` and `/get_messages` take the user named in the payload without
    /// credentials, as the lab's client sends them.
    pub lab: bool,
    /// Room for request bodies being received at once.
    pub bodies: bodies::Bodies,
    /// Large replies being built at once.
    pub reply_builders: Semaphore,
    /// The names in `Host` this server answers to.
    pub hosts: guard::Hosts,
}

impl AppState {
    pub fn new(
        chat: Chat,
        store: Store,
        node_id: String,
        listeners: Value,
        shutdown: CancellationToken,
        lab: bool,
        allowed_hosts: &[String],
    ) -> AppState {
        AppState {
            tokens: chat.tokens().clone(),
            chat,
            store,
            node_id,
            started: Instant::now(),
            listeners,
            shutdown,
            lab,
            bodies: bodies::Bodies::default(),
            reply_builders: Semaphore::new(REPLY_BUILDERS),
            hosts: guard::Hosts::new(&crate::net::hostname(), allowed_hosts, lab),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(routes::index).post(routes::send))
        .route("/info", get(routes::info))
        .route("/api", get(routes::api).post(routes::api))
        .route("/register", post(routes::register).get(routes::register_with_get))
        .route("/auth", get(routes::auth).post(routes::auth))
        .route("/logout", post(routes::logout))
        .route(
            "/get_messages",
            get(routes::get_messages).post(routes::get_messages),
        )
        .route("/conversation", get(routes::conversation))
        .route("/who", get(routes::who))
        .route("/events", get(events::events))
        .route("/rooms", get(rooms::list))
        .route("/rooms/{name}", get(rooms::show))
        .route("/rooms/{name}/join", post(rooms::join))
        .route("/rooms/{name}/leave", post(rooms::leave))
        .route("/rooms/{name}/messages", get(rooms::messages).post(rooms::say))
        .route("/rooms/{name}/read", post(rooms::read))
        .route("/rooms/{name}/topic", post(rooms::topic))
        .route("/rooms/{name}/invite", post(rooms::invite))
        .route("/rooms/{name}/kick", post(rooms::kick))
        .route("/rooms/{name}/mode", post(rooms::mode))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(axum::middleware::from_fn(access_log::log))
        .layer(axum::middleware::from_fn(trace::trace))
        .with_state(state)
}

/// A success: `{"status": "SUCCESS", ...fields}`.
pub fn success(status: StatusCode, fields: Value) -> Response {
    let mut body = match fields {
        Value::Object(map) => map,
        other => {
            let mut map = serde_json::Map::new();
            map.insert("data".into(), other);
            map
        }
    };
    body.insert("status".into(), "SUCCESS".into());
    (status, Json(Value::Object(body))).into_response()
}
