//! The handlers: each reads its fields, calls the chat domain, and shapes the JSON answer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::extract::{HeaderAuth, HeaderCredentials, Payload};
use super::status::{HttpError, HttpResult};
use super::{success, AppState, PAGE};
use crate::chat::{Username, INBOX_PAGE};
use crate::error::{ChatError, ChatResult, Code};
use crate::line::reply::rfc3339;
use crate::store::{Message, Page};

type Peer = ConnectInfo<SocketAddr>;

/// Most bytes of messages one `/get_messages` or `/conversation` reply carries (at least one
/// message, whatever its size); the reply then says `"more": true` and the client asks again
/// with `after` set to the last id.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Most messages a reply may be asked for (`limit`).
const MAX_LIMIT: u64 = 1000;
/// Messages read from the chat domain at once while a reply is built: what one reply holds in
/// memory beyond its own bytes.
const FETCH: u32 = 32;
/// A batch of messages with at most this much text is serialised where it is, at once: the
/// hand-off to the reply builder would cost more than the work.
const BUILD_INLINE_BYTES: usize = 64 * 1024;
/// Longest client `timestamp` of `POST /`, as JSON text.
pub const MAX_TIMESTAMP_BYTES: usize = 64;

/// `GET /`: the chat page for browsers, a short JSON guide for programs. A GET that carries a
/// message is a mistake for `POST /`, and is told so.
pub async fn index(headers: HeaderMap, payload: Payload) -> HttpResult<Response> {
    if !payload.is_empty() {
        return Err(wrong_method(
            "GET / does not send anything; send the message with POST / \
             (requests.post(url, json={...}))",
        ));
    }
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        return Ok(Html(PAGE).into_response());
    }
    Ok(success(
        StatusCode::OK,
        json!({
            "name": "chatd",
            "version": env!("CARGO_PKG_VERSION"),
            "routes": ["GET /info", "GET|POST /api", "POST /register", "GET|POST /auth", "POST /logout",
                       "POST /", "GET|POST /get_messages", "GET /conversation", "GET /who", "GET /events",
                       "GET /rooms", "GET /rooms/<name>", "POST /rooms/<name>/join|leave|read|topic|invite|kick|mode",
                       "GET|POST /rooms/<name>/messages"],
        }),
    ))
}

/// `GET /register`: registering needs POST.
pub async fn register_with_get() -> HttpError {
    wrong_method("register with POST /register (requests.post(url, json={...}))")
}

fn wrong_method(hint: &'static str) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::UnknownCommand.as_str(),
        hint,
    )
}

/// `GET /info`.
pub async fn info(State(app): State<Arc<AppState>>) -> HttpResult<Response> {
    let counts = app.chat.counts().await?;
    let online = app.chat.online_count().await?;
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
            "online": online,
            "listeners": app.listeners,
            "lab": app.lab,
        }),
    ))
}

/// `GET /who {"after"?}`, logged in: the users online on any node, as WHO lists them, a page
/// of at most [`crate::chat::WHO_PAGE`] names after `after`; `"more": true` when there are
/// more.
pub async fn who(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header_user): HeaderAuth,
    payload: Payload,
) -> HttpResult<Response> {
    acting_user(&app, header_user, &payload, "username", peer, false).await?;
    let after = optional_text(&payload, "after")?.unwrap_or_default();
    let page = app.chat.who(&after).await?;
    let users: Vec<&str> = page.users.iter().map(|u| &**u).collect();
    Ok(success(
        StatusCode::OK,
        json!({ "count": users.len(), "more": page.more, "users": users }),
    ))
}

/// `GET|POST /api`: the fields the request carried, as a JSON object.
pub async fn api(method: Method, payload: Payload) -> HttpResult<Response> {
    if payload.0.contains_key("status") {
        return Err(ChatError::bad_args("\"status\" is reserved in replies; use another field name").into());
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
) -> HttpResult<Response> {
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
) -> HttpResult<Response> {
    let user = app
        .chat
        .authenticate(
            &payload.require("username")?,
            &payload.require("password")?,
            peer.ip(),
            None,
        )
        .await?;
    let issued = app.chat.issue_token(&user).await?;
    Ok(success(
        StatusCode::OK,
        json!({
            "username": user.as_str(),
            "token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.lifetime.as_secs(),
        }),
    ))
}

/// `POST /logout` with `Authorization: Bearer <token>`: the token ends, on every node, and
/// its event streams with it. With `{"all": true}` and any credentials: every token and every
/// session of the user end, on every node.
pub async fn logout(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    HeaderAuth(header_user): HeaderAuth,
    payload: Payload,
) -> HttpResult<Response> {
    if everywhere(&payload)? {
        let user = acting_user(&app, header_user, &payload, "username", peer, false).await?;
        let ended = app.chat.log_out_everywhere(&user).await?;
        return Ok(success(
            StatusCode::OK,
            json!({ "username": user.as_str(), "all": true, "tokens_ended": ended.tokens }),
        ));
    }
    let HeaderCredentials::Token(token) = HeaderCredentials::of(&headers) else {
        return Err(ChatError::new(
            Code::AuthRequired,
            "log out with the token to end: Authorization: Bearer <token> \
             (or end every session and token of the user with {\"all\": true})",
        )
        .into());
    };
    let user = app.chat.log_out_token(&token).await?;
    Ok(success(StatusCode::OK, json!({ "username": user.as_str() })))
}

/// The `all` field of `/logout`: `true` (or the text `true` or `1`, from a form or a query).
fn everywhere(payload: &Payload) -> ChatResult<bool> {
    match payload.0.get("all") {
        None | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(Value::String(s)) if matches!(s.as_str(), "true" | "1") => Ok(true),
        Some(Value::String(s)) if matches!(s.as_str(), "false" | "0" | "") => Ok(false),
        Some(_) => Err(ChatError::bad_args("the field \"all\" must be true or false")),
    }
}

/// `POST / {"sender", "recipient", "message", "timestamp"}`.
pub async fn send(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header_user): HeaderAuth,
    payload: Payload,
) -> HttpResult<Response> {
    let user = acting_user(&app, header_user, &payload, "sender", peer, true).await?;
    let recipient = payload.require("recipient")?;
    let text = payload.require("message")?;
    let timestamp = client_timestamp(&payload)?;
    let message = app.chat.send(&user, &recipient, &text, timestamp).await?;
    Ok(success(
        StatusCode::CREATED,
        json!({ "id": message.id, "server_time": rfc3339(message.created_at_us) }),
    ))
}

/// The client's `timestamp`, kept as the JSON text it was: a string or a number of at most
/// [`MAX_TIMESTAMP_BYTES`].
fn client_timestamp(payload: &Payload) -> ChatResult<Option<String>> {
    let value = match payload.0.get("timestamp") {
        None | Some(Value::Null) => return Ok(None),
        Some(value @ (Value::String(_) | Value::Number(_))) => value,
        Some(_) => return Err(ChatError::bad_args("the timestamp must be a string or a number")),
    };
    let text = value.to_string();
    if text.len() > MAX_TIMESTAMP_BYTES {
        return Err(ChatError::bad_args(format!(
            "the timestamp is over {MAX_TIMESTAMP_BYTES} bytes"
        )));
    }
    Ok(Some(text))
}

/// `GET|POST /get_messages {"username", "after"?, "limit"?}`.
pub async fn get_messages(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header_user): HeaderAuth,
    payload: Payload,
) -> HttpResult<Response> {
    let user = acting_user(&app, header_user, &payload, "username", peer, true).await?;
    messages_reply(&app, &user, Source::Inbox, &payload).await
}

/// `GET /conversation?with=<user>`: both sides of the logged-in user's conversation with one
/// person, oldest first, paged as `/get_messages` is.
pub async fn conversation(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header_user): HeaderAuth,
    payload: Payload,
) -> HttpResult<Response> {
    let user = acting_user(&app, header_user, &payload, "username", peer, false).await?;
    let with = payload.require("with")?;
    messages_reply(&app, &user, Source::Conversation(&with), &payload).await
}

/// A page of messages after `after`, at most `limit` of them and about [`MAX_REPLY_BYTES`]:
/// `{"status", "count", "more", "messages"}`. Messages are serialised as they are read, a few
/// at a time, so a reply never holds more than its bytes and one small batch.
pub(super) async fn messages_reply(
    app: &AppState,
    user: &Username,
    source: Source<'_>,
    payload: &Payload,
) -> HttpResult<Response> {
    let mut after = payload.count("after")?.unwrap_or(0).min(i64::MAX as u64) as i64;
    let limit = payload
        .count("limit")?
        .unwrap_or(INBOX_PAGE as u64)
        .clamp(1, MAX_LIMIT) as usize;
    let view = source.view();
    let mut messages = Vec::with_capacity(1024);
    let (mut count, mut more) = (0usize, false);
    while count < limit {
        let want = (limit - count).min(FETCH as usize) as u32;
        let batch = match source {
            Source::Inbox => app.chat.inbox(user, after, want).await?,
            Source::Conversation(peer) => app.chat.conversation(user, peer, after, want).await?,
            Source::Room(room) => {
                app.chat
                    .room_history(user, room, Page::After(after, want))
                    .await?
                    .1
            }
        };
        let full = batch.len() == want as usize;
        let Some(last) = batch.last().map(|m| m.id) else {
            break;
        };
        let text: usize = batch.iter().map(|m| m.body.len()).sum();
        let (buffer, added) = if text <= BUILD_INLINE_BYTES {
            append_messages(messages, count, &batch, view)
        } else {
            // Serialising large messages is real work: one batch at a time, off the threads
            // that serve connections, so that a crowd of large replies cannot slow anyone's
            // PING. (Held for the serialising only, never across a store read.)
            let _builder = app
                .reply_builders
                .acquire()
                .await
                .map_err(|e| ChatError::internal("waiting to build a reply", e))?;
            tokio::task::spawn_blocking(move || append_messages(messages, count, &batch, view))
                .await
                .map_err(|e| ChatError::internal("building a reply", e))?
        };
        messages = buffer;
        count += added.count;
        after = added.last_id.unwrap_or(last);
        if added.cut {
            more = true;
            break;
        }
        if !full {
            break;
        }
        more = count == limit;
    }
    Ok(page_reply(count, more, &messages))
}

/// `{"status", "count", "more", "messages"}` around `messages`, a JSON array's items.
pub(super) fn page_reply(count: usize, more: bool, messages: &[u8]) -> Response {
    let mut body = Vec::with_capacity(messages.len() + 64);
    body.extend_from_slice(
        format!("{{\"status\":\"SUCCESS\",\"count\":{count},\"more\":{more},\"messages\":[").as_bytes(),
    );
    body.extend_from_slice(messages);
    body.extend_from_slice(b"]}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Where a page of messages comes from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// The user's inbox.
    Inbox,
    /// Both sides of the conversation with this user.
    Conversation(&'a str),
    /// A room's stream (its name, `#` first).
    Room(&'a str),
}

impl Source<'_> {
    /// How each of its messages is written as JSON.
    fn view(self) -> WriteView {
        match self {
            Source::Inbox | Source::Conversation(_) => {
                |m, out| serde_json::to_writer(out, &MessageView::of(m)).expect("a message serialises")
            }
            Source::Room(_) => {
                |m, out| serde_json::to_writer(out, &RoomMessageView::of(m)).expect("a message serialises")
            }
        }
    }
}

/// Writes one message as JSON.
pub(super) type WriteView = fn(&Message, &mut Vec<u8>);

struct Appended {
    count: usize,
    last_id: Option<i64>,
    /// The reply reached [`MAX_REPLY_BYTES`] before the batch was all in.
    cut: bool,
}

/// Appends `batch` to the JSON array being built in `out` (which holds `before` messages), as
/// long as the reply stays within [`MAX_REPLY_BYTES`] (the first message always goes in).
fn append_messages(
    mut out: Vec<u8>,
    before: usize,
    batch: &[Arc<Message>],
    view: WriteView,
) -> (Vec<u8>, Appended) {
    let mut added = Appended {
        count: 0,
        last_id: None,
        cut: false,
    };
    for message in batch {
        let start = out.len();
        if before + added.count > 0 {
            out.push(b',');
        }
        view(message, &mut out);
        if before + added.count > 0 && out.len() > MAX_REPLY_BYTES {
            out.truncate(start);
            added.cut = true;
            break;
        }
        added.count += 1;
        added.last_id = Some(message.id);
    }
    (out, added)
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

/// A row of a room's stream as the HTTP facade shows it: `room` is its name (`#` first),
/// `sender` who said it or made the change; an event (a join, a removal...) also has `event`,
/// what happened, and `subject`, to whom.
#[derive(Serialize)]
pub struct RoomMessageView<'a> {
    id: i64,
    room: &'a str,
    sender: &'a str,
    message: &'a str,
    server_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
}

impl<'a> RoomMessageView<'a> {
    pub fn of(message: &'a Message) -> RoomMessageView<'a> {
        let event = message.event.as_deref();
        RoomMessageView {
            id: message.id,
            room: &message.recipient,
            sender: &message.sender,
            message: &message.body,
            server_time: rfc3339(message.created_at_us),
            event: event.map(|e| e.kind.as_str()),
            subject: event.map(|e| &*e.subject),
        }
    }
}

/// The user a request acts as. The `Authorization` header (already checked) wins; else a
/// `token` field in the body, or a `password` field for the user named in `user_field`. On a
/// `lab_route` of a server in classroom mode (`--lab`), the user named in `user_field` without
/// any credentials. Whoever the credentials prove, the user named in `user_field`, when given,
/// must be that same user: nobody reads or sends as someone else. A field of the wrong type
/// (`"sender": ["bob"]`, `null`) is refused, never read as absent.
pub async fn acting_user(
    app: &AppState,
    header_user: Option<Username>,
    payload: &Payload,
    user_field: &str,
    peer: SocketAddr,
    lab_route: bool,
) -> ChatResult<Username> {
    let named = optional_text(payload, user_field)?;
    let token = optional_text(payload, "token")?;
    let password = optional_text(payload, "password")?;
    let user = match (header_user, token, &named, password) {
        (Some(user), ..) => user,
        (None, Some(token), ..) => app.tokens.user(&token).await?,
        (None, None, Some(name), Some(password)) => {
            app.chat.authenticate(name, &password, peer.ip(), None).await?
        }
        (None, None, Some(name), None) if lab_route && app.lab => return lab_user(app, name).await,
        (None, None, named, _) => {
            let mut message = String::from(
                "credentials needed: Authorization: Bearer <token from /auth>, HTTP Basic, or a password field",
            );
            if lab_route && named.is_some() {
                message.push_str(&format!(
                    "; a {user_field:?} alone is enough only on a server started with --lab \
                     (classroom mode, for the lab's client)"
                ));
            }
            return Err(ChatError::new(Code::AuthRequired, message));
        }
    };
    match named {
        Some(named) if named != user.as_str() => Err(ChatError::new(
            Code::BadCredentials,
            format!("these credentials are {user}'s; they cannot act as {named:?} ({user_field})"),
        )),
        _ => Ok(user),
    }
}

/// An optional text field (a number counts as its decimal text); present with any other
/// type, `null` included, it is `400 BAD_ARGS`.
pub(super) fn optional_text(payload: &Payload, name: &str) -> ChatResult<Option<String>> {
    match payload.0.get(name) {
        None => Ok(None),
        Some(_) => payload
            .text(name)
            .map(Some)
            .ok_or_else(|| ChatError::bad_args(format!("the field {name:?} must be text"))),
    }
}

/// Classroom mode: the named user, who must exist.
async fn lab_user(app: &AppState, name: &str) -> ChatResult<Username> {
    let unknown = || {
        ChatError::new(
            Code::NoSuchUser,
            format!("there is no user {name:?}; register first"),
        )
    };
    let user = Username::parse(name).map_err(|_| unknown())?;
    if app.store.user_exists(user.as_str()).await? {
        Ok(user)
    } else {
        Err(unknown())
    }
}

/// Any route that does not exist.
pub async fn not_found(uri: Uri) -> ChatError {
    ChatError::new(Code::UnknownCommand, format!("no route {}", uri.path()))
}

/// A route that exists, with a method it does not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::UnknownCommand.as_str(),
        format!("{} does not take {method}", uri.path()),
    )
}
