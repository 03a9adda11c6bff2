//! Rooms over HTTP: `/rooms` and `/rooms/<name>/...`, over the same domain calls as the line
//! protocol's room verbs. A room's name in a path has no `#` (`/rooms/class` is `#class`), since
//! a `#` in a URL starts its fragment; replies name rooms with their `#`, as everywhere else.
//!
//! The credentials are those of every other route: bearer, Basic, a password field, and on a
//! `--lab` server the user named in `username` (or `sender`, to send) alone. There is no live
//! session behind a request, so every change is made with origin 0: the user's own live
//! sessions (the page's `/events`) get it too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::extract::{HeaderAuth, Payload};
use super::routes::{acting_user, messages_reply, optional_text, page_reply, RoomMessageView, Source};
use super::status::HttpResult;
use super::{success, AppState, MAX_REPLY_BYTES};
use crate::chat::rooms::HISTORY_LATEST;
use crate::chat::Username;
use crate::error::{ChatError, ChatResult};
use crate::line::reply::rfc3339;
use crate::store::Page;

type Peer = ConnectInfo<SocketAddr>;

/// The room named by the path, as the domain names it: `#` then the path's segment. A segment
/// that already starts with `#` (sent as `%23`) is refused: the path's name has none.
pub struct RoomPath(String);

impl FromRequestParts<Arc<AppState>> for RoomPath {
    type Rejection = ChatError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<RoomPath, ChatError> {
        let Path(name) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|e| ChatError::bad_args(format!("the room's name in the path: {e}")))?;
        if name.starts_with('#') {
            return Err(ChatError::bad_args(format!(
                "a room's name in a path has no '#': /rooms/{} is {name}",
                name.trim_start_matches('#')
            )));
        }
        Ok(RoomPath(format!("#{name}")))
    }
}

/// Who a room request acts as: the credentials, or on a `--lab` server the user named in
/// `field`.
async fn user(
    app: &AppState,
    header: Option<Username>,
    payload: &Payload,
    field: &str,
    peer: SocketAddr,
) -> ChatResult<Username> {
    acting_user(app, header, payload, field, peer, true).await
}

/// `POST /rooms/<name>/join`: joins the room, creating it (and owning it) if there is none.
pub async fn join(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let (room, members) = app.chat.join(&me, &room, 0).await?;
    Ok(success(
        StatusCode::OK,
        json!({ "room": &*room, "members": members }),
    ))
}

/// `POST /rooms/<name>/leave`.
pub async fn leave(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let room = app.chat.leave(&me, &room, 0).await?;
    Ok(success(StatusCode::OK, json!({ "room": &*room })))
}

/// `POST /rooms/<name>/messages {"message"}`: `201` once it is committed.
pub async fn say(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "sender", peer).await?;
    let text = payload.require("message")?;
    let message = app.chat.say(&me, &room, &text, None, 0).await?;
    Ok(success(
        StatusCode::CREATED,
        json!({ "id": message.id, "server_time": rfc3339(message.created_at_us) }),
    ))
}

/// `GET /rooms/<name>/messages?after=&before=&limit=`: a page of the room's stream, oldest
/// first, within [`MAX_REPLY_BYTES`]. `after`: the rows after that id (`more`: newer ones
/// remain). `before`, or neither (the latest): the newest rows before that id (`more`: older
/// ones remain), which is how a page loads history as its reader scrolls up.
pub async fn messages(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let before = payload.count("before")?;
    if payload.count("after")?.is_some() {
        if before.is_some() {
            return Err(ChatError::bad_args("ask for messages after an id or before one, not both").into());
        }
        return messages_reply(&app, &me, Source::Room(&room), &payload).await;
    }
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let limit = payload
        .count("limit")?
        .unwrap_or(u64::from(HISTORY_LATEST))
        .clamp(1, u64::from(crate::chat::rooms::HISTORY_PAGE)) as u32;
    let (_, rows) = app
        .chat
        .room_history(&me, &room, Page::Before(before, limit))
        .await?;
    // Newest first until the reply is full (the newest always goes in), then oldest first.
    let mut items: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    for row in rows.iter().rev() {
        let item = serde_json::to_vec(&RoomMessageView::of(row)).expect("a message serialises");
        if !items.is_empty() && bytes + item.len() + 1 > MAX_REPLY_BYTES {
            break;
        }
        bytes += item.len() + 1;
        items.push(item);
    }
    let more = items.len() < rows.len() || rows.len() == limit as usize;
    let mut out = Vec::with_capacity(bytes);
    for (i, item) in items.iter().rev().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    Ok(page_reply(items.len(), more, &out))
}

/// `GET /rooms`: the rooms you are in, with members, unread messages and topic. With
/// `?all=1`: the rooms anyone may join (not invite-only), by name after `after`, with members
/// and topic, so a newcomer finds the class's rooms.
pub async fn list(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    if all(&payload)? {
        let after = optional_text(&payload, "after")?.unwrap_or_default();
        let rooms = app.chat.open_rooms(&after).await?;
        let more = rooms.len() == crate::chat::rooms::OPEN_ROOMS_PAGE as usize;
        let rooms: Vec<_> = rooms
            .iter()
            .map(|r| json!({ "name": &*r.name, "members": r.members, "topic": r.topic }))
            .collect();
        return Ok(success(
            StatusCode::OK,
            json!({ "count": rooms.len(), "more": more, "rooms": rooms }),
        ));
    }
    let rooms = app.chat.rooms(&me).await?;
    let rooms: Vec<_> = rooms
        .iter()
        .map(|r| json!({ "name": &*r.name, "members": r.members, "unread": r.unread, "topic": r.topic }))
        .collect();
    Ok(success(
        StatusCode::OK,
        json!({ "count": rooms.len(), "rooms": rooms }),
    ))
}

/// The `all` field of `GET /rooms`: `1` or `true`.
fn all(payload: &Payload) -> ChatResult<bool> {
    match payload.text("all").as_deref() {
        None if !payload.0.contains_key("all") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some("0" | "false" | "") => Ok(false),
        _ if payload.0.get("all") == Some(&serde_json::Value::Bool(true)) => Ok(true),
        _ if payload.0.get("all") == Some(&serde_json::Value::Bool(false)) => Ok(false),
        _ => Err(ChatError::bad_args("the field \"all\" must be 1 or 0")),
    }
}

/// `GET /rooms/<name>`: the room's topic, flags, and members with their roles and whether
/// they are online. An invite-only room shows itself to its members only.
pub async fn show(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let view = app.chat.room(&me, &room).await?;
    let members: Vec<_> = view
        .members
        .iter()
        .map(|m| json!({ "name": m.name, "role": m.role.as_str(), "online": m.online }))
        .collect();
    let info = &view.info;
    Ok(success(
        StatusCode::OK,
        json!({
            "room": &*info.name,
            "topic": info.topic,
            "flags": {
                "invite_only": info.invite_only,
                "moderated": info.moderated,
                "topic_locked": info.topic_locked,
            },
            "members": members,
        }),
    ))
}

/// `POST /rooms/<name>/read {"id"?}`: marks the room read up to `id` (its newest row without
/// one), for every session and node of the user; `GET /rooms` counts unread from there.
pub async fn read(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let id = payload.count("id")?.map(|id| id.min(i64::MAX as u64) as i64);
    let room = app.chat.mark_read(&me, &room, id).await?;
    Ok(success(StatusCode::OK, json!({ "room": &*room })))
}

/// `POST /rooms/<name>/topic {"topic"}`.
pub async fn topic(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let topic = payload.require("topic")?;
    let room = app.chat.set_topic(&me, &room, &topic, 0).await?;
    Ok(success(
        StatusCode::OK,
        json!({ "room": &*room, "topic": topic.trim() }),
    ))
}

/// `POST /rooms/<name>/invite {"user"}`.
pub async fn invite(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let target = payload.require("user")?;
    let room = app.chat.invite(&me, &room, &target).await?;
    Ok(success(StatusCode::OK, json!({ "room": &*room, "user": target })))
}

/// `POST /rooms/<name>/kick {"user", "reason"?}`.
pub async fn kick(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let target = payload.require("user")?;
    let reason = optional_text(&payload, "reason")?;
    let room = app.chat.kick(&me, &room, &target, reason.as_deref(), 0).await?;
    Ok(success(StatusCode::OK, json!({ "room": &*room, "user": target })))
}

/// `POST /rooms/<name>/mode {"mode"}`: `+i`/`-i`, `+m`/`-m`, `+t`/`-t`, or `+o bob`/`-o bob`
/// (the user may also come as `{"mode": "+o", "user": "bob"}`).
pub async fn mode(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): Peer,
    HeaderAuth(header): HeaderAuth,
    RoomPath(room): RoomPath,
    payload: Payload,
) -> HttpResult<Response> {
    let me = user(&app, header, &payload, "username", peer).await?;
    let typed = payload.require("mode")?;
    let mut words = typed.split_whitespace();
    let mode = words.next().unwrap_or_default();
    let target = match (words.next(), optional_text(&payload, "user")?) {
        (Some(user), _) => Some(user.to_owned()),
        (None, user) => user,
    };
    if words.next().is_some() {
        return Err(ChatError::bad_args("a mode is one change: +m, or +o <user>").into());
    }
    let room = app.chat.set_mode(&me, &room, mode, target.as_deref(), 0).await?;
    let shown = crate::chat::rooms::parse_mode(mode, target.as_deref())
        .map(|(flag, on)| crate::chat::rooms::mode_text(&flag, on))?;
    Ok(success(StatusCode::OK, json!({ "room": &*room, "mode": shown })))
}
