//! The HTTP facade: the lab's JSON routes, live events and the chat page, over the very same
//! chat domain as the line protocol. Handlers are thin; [`ChatError`] maps to statuses here.

mod access_log;
mod events;
mod extract;
mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::chat::Chat;
use crate::error::ChatError;

pub use extract::MAX_BODY;

/// The chat page, embedded in the binary.
pub const PAGE: &str = include_str!("page.html");

/// What every handler shares.
pub struct AppState {
    pub chat: Chat,
    pub node_id: String,
    pub started: Instant,
    /// The listeners' addresses, as `/info` reports them.
    pub listeners: Value,
    /// Ends live event streams on shutdown.
    pub shutdown: CancellationToken,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(routes::index).post(routes::send))
        .route("/info", get(routes::info))
        .route("/api", get(routes::api).post(routes::api))
        .route("/register", axum::routing::post(routes::register))
        .route("/auth", get(routes::auth).post(routes::auth))
        .route(
            "/get_messages",
            get(routes::get_messages).post(routes::get_messages),
        )
        .route("/events", get(events::events))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(access_log::log))
        .with_state(state)
}

/// Serves HTTP on `listener` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
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

/// An error: `{"status": "<CODE>", "message": "..."}` with the code's HTTP status.
impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        self.log();
        let code = if self.unavailable {
            503
        } else {
            self.code.http_status()
        };
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "status": self.code.as_str(), "message": self.message });
        (status, Json(body)).into_response()
    }
}
