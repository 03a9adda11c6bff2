//! `GET /events`: a Server-Sent Events stream of the authenticated user's new messages, with
//! the same ids as the line protocol. With `Last-Event-ID` (sent by browsers on reconnect) or
//! `?after=ID`, the messages after that id are replayed first, so a reconnecting client misses
//! nothing. The stream holds its connection's place in the connection budget while it lives,
//! and ends when its user logs out everywhere or the token it was opened with ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use super::extract::{HeaderAuth, HeaderCredentials, Payload};
use super::routes::{acting_user, MessageView};
use super::status::HttpResult;
use super::AppState;
use crate::chat::{ConnectionGuard, Username, INBOX_PAGE};
use crate::hub::Subscription;
use crate::store::Message;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Feed {
    app: Arc<AppState>,
    user: Username,
    live: Subscription,
    replay: VecDeque<Arc<Message>>,
    /// Replay the inbox after this id before going live; `None` once caught up.
    catch_up_after: Option<i64>,
    /// The newest id sent; live messages at or below it were already replayed.
    last_sent: i64,
    _open: ConnectionGuard,
}

pub async fn events(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    HeaderAuth(header_user): HeaderAuth,
    payload: Payload,
) -> HttpResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let user = acting_user(&app, header_user, &payload, "username", peer, false).await?;
    // The token the stream was opened with, if one was (the header's wins, as in acting_user).
    let token = match HeaderCredentials::of(&headers) {
        HeaderCredentials::Token(token) => Some(token),
        HeaderCredentials::None => payload.text("token"),
        HeaderCredentials::Password { .. } => None,
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = match last_event_id {
        Some(id) => Some(id),
        None => payload.count("after")?,
    };
    // Go live before reading the inbox, so nothing committed in between is missed.
    let live = app
        .chat
        .go_online(&user, app.shutdown.child_token(), token.as_deref())
        .await?;
    let feed = Feed {
        _open: app.chat.connection_opened(),
        app,
        user,
        live,
        replay: VecDeque::new(),
        catch_up_after: after.map(|a| a.min(i64::MAX as u64) as i64),
        last_sent: after.map_or(0, |a| a.min(i64::MAX as u64) as i64),
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let message = feed.next().await?;
        let event = Event::default()
            .event("message")
            .id(message.id.to_string())
            .json_data(MessageView::of(&message))
            .expect("a message serialises");
        Some((Ok(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

impl Feed {
    /// The next message to send; `None` ends the stream (shutdown, too far behind, or logged
    /// out).
    async fn next(&mut self) -> Option<Arc<Message>> {
        loop {
            if self.live.ended().is_some() {
                return None;
            }
            if let Some(message) = self.replay.pop_front() {
                self.last_sent = message.id;
                return Some(message);
            }
            if let Some(after) = self.catch_up_after {
                match self.app.chat.inbox(&self.user, after, INBOX_PAGE).await {
                    Ok(page) if page.is_empty() => self.catch_up_after = None,
                    Ok(page) => {
                        self.catch_up_after = page.last().map(|m| m.id);
                        self.replay.extend(page);
                    }
                    // The client reconnects with Last-Event-ID and catches up then.
                    Err(_) => return None,
                }
                continue;
            }
            let message = self.live.next().await?;
            if message.id > self.last_sent {
                self.last_sent = message.id;
                return Some(message);
            }
        }
    }
}
