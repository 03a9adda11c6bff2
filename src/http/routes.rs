//! The handlers: each reads its fields, calls the chat domain, and shapes the JSON answer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::extract::{Credentials, Payload};
use super::{success, AppState, PAGE};
use crate::chat::{Username, INBOX_PAGE};
use crate::error::{ChatError, ChatResult, Code};
use crate::line::reply::rfc3339;
use crate::store::Message;

type Peer = ConnectInfo<SocketAddr>;

/// `GET /`: the chat page for browsers, a short JSON guide for programs.
pub async fn index(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        return Html(PAGE).into_response();
    }
    success(
        StatusCode::OK,
        json!({
            "name": "chatd",
            "version": env!("CARGO_PKG_VERSION"),
            "routes": ["GET /info", "GET|POST /api", "POST /register", "GET|POST /auth", "POST /",
                       "GET|POST /get_messages", "GET /events"],
        }),
    )
}

/// `GET /info`.
pub async fn info(State(app): State<Arc<AppState>>) -> ChatResult<Response> {
    let counts = app.chat.counts().await?;
    let online = app.chat.who().await?;
    Ok(success(
        StatusCode::OK,
        json!({
            "name": "chatd",
            "version": env!("CARGO_PKG_VERSION"),
            "node_id": app.node_id,
            "uptime_secs": app.started.elapsed().as_secs(),
            "users": counts.users,
            "messages": counts.messages,
            "connections": app.chat.connections(),
            "online": online.len(),
            "listeners": app.listeners,
        }),
    ))
}

/// `GET|POST /api`: the fields the request carried, as a JSON object.
pub async fn api(method: Method, payload: Payload) -> ChatResult<Response> {
    if payload.0.contains_key("status") {
        return Err(ChatError::bad_args(
            "\"status\" is reserved in replies; use another field name",
        ));
    }
    let mut fields = payload.0;
    fields.insert("method".into(), method.as_str().into());
    Ok(success(StatusCode::OK, Value::Object(fields)))
}

/// `POST /register {"username", "password"}`.
pub async fn register(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    payload: Payload,
) -> ChatResult<Response> {
    let user = app
        .chat
        .register(
            &payload.require("username")?,
            &payload.require("password")?,
            peer.ip(),
        )
        .await?;
    Ok(success(StatusCode::CREATED, json!({ "username": user.as_str() })))
}

/// `GET|POST /auth {"username", "password"}`: a bearer token.
pub async fn auth(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    payload: Payload,
) -> ChatResult<Response> {
    let user = app
        .chat
        .authenticate(
            &payload.require("username")?,
            &payload.require("password")?,
            peer.ip(),
            None,
        )
        .await?;
    let (token, lifetime) = app.chat.issue_token(&user).await?;
    Ok(success(
        StatusCode::OK,
        json!({
            "username": user.as_str(),
            "token": token,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
        }),
    ))
}

/// `POST / {"sender", "recipient", "message", "timestamp"}`.
pub async fn send(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    payload: Payload,
) -> ChatResult<Response> {
    let user = authenticated(&app, &headers, &payload, "sender", peer).await?;
    let recipient = payload.require("recipient")?;
    let text = payload.require("message")?;
    let timestamp = match payload.0.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.to_string()),
    };
    let message = app.chat.send(&user, &recipient, &text, timestamp).await?;
    Ok(success(
        StatusCode::CREATED,
        json!({ "id": message.id, "server_time": rfc3339(message.created_at_us) }),
    ))
}

/// `GET|POST /get_messages {"username", "after"?, "limit"?}`.
pub async fn get_messages(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    payload: Payload,
) -> ChatResult<Response> {
    let user = authenticated(&app, &headers, &payload, "username", peer).await?;
    let after = payload.count("after")?.unwrap_or(0).min(i64::MAX as u64) as i64;
    let limit = payload
        .count("limit")?
        .unwrap_or(INBOX_PAGE as u64)
        .clamp(1, 1000) as u32;
    let messages = app.chat.inbox(&user, after, limit).await?;
    let reply = MessagesReply {
        status: "SUCCESS",
        count: messages.len(),
        messages: messages.iter().map(|m| MessageView::of(m)).collect(),
    };
    Ok(Json(reply).into_response())
}

/// A message as the HTTP facade shows it. `timestamp` is the client's, as it was given (the
/// server's time when there was none); `server_time` is authoritative for ordering.
/// Serialised straight from the stored message: no intermediate JSON tree per message.
#[derive(Serialize)]
pub struct MessageView<'a> {
    id: i64,
    sender: &'a str,
    recipient: &'a str,
    message: &'a str,
    timestamp: Timestamp<'a>,
    server_time: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Timestamp<'a> {
    /// The JSON value the client sent, verbatim.
    Client(&'a RawValue),
    Server(String),
}

impl<'a> MessageView<'a> {
    pub fn of(message: &'a Message) -> MessageView<'a> {
        let server_time = rfc3339(message.created_at_us);
        let client = message
            .client_timestamp
            .as_deref()
            .and_then(|raw| serde_json::from_str::<&RawValue>(raw).ok());
        MessageView {
            id: message.id,
            sender: &message.sender,
            recipient: &message.recipient,
            message: &message.body,
            timestamp: client.map_or_else(|| Timestamp::Server(server_time.clone()), Timestamp::Client),
            server_time,
        }
    }
}

#[derive(Serialize)]
struct MessagesReply<'a> {
    status: &'static str,
    count: usize,
    messages: Vec<MessageView<'a>>,
}

/// The user the request's credentials prove; `AUTH_REQUIRED` without any. The request acts
/// for the user named in `user_field` (`sender`, `username`), which, when given, must be that
/// same user: nobody reads or sends as someone else.
pub async fn authenticated(
    app: &AppState,
    headers: &HeaderMap,
    payload: &Payload,
    user_field: &str,
    peer: SocketAddr,
) -> ChatResult<Username> {
    let user = match Credentials::of(headers, payload, user_field) {
        Credentials::Token(token) => app.chat.token_user(&token).await?,
        Credentials::Password { user, password } => {
            app.chat.authenticate(&user, &password, peer.ip(), None).await?
        }
        Credentials::None => return Err(ChatError::new(
            Code::AuthRequired,
            "credentials needed: Authorization: Bearer <token from /auth>, HTTP Basic, or a password field",
        )),
    };
    match payload.text(user_field) {
        Some(named) if named != user.as_str() => Err(ChatError::new(
            Code::BadCredentials,
            format!("these credentials are {user}'s; they cannot act as {named:?} ({user_field})"),
        )),
        _ => Ok(user),
    }
}

/// Any route that does not exist.
pub async fn not_found(uri: Uri) -> ChatError {
    ChatError::new(Code::UnknownCommand, format!("no route {}", uri.path()))
}

/// A route that exists, with a method it does not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let error = ChatError::new(
        Code::UnknownCommand,
        format!("{} does not take {method}", uri.path()),
    );
    let mut response = error.into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
