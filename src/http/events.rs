//! `GET /events`: a Server-Sent Events stream of what the authenticated user receives: their
//! direct messages (`event: message`) and the messages and events of the rooms they are in
//! (`event: room`), with the same ids as the line protocol.
//!
//! Streams are ordered independently (within a stream ids only grow; across streams, and
//! across nodes, a room's id 100 may arrive after the inbox's 101), so the feed keeps a place
//! per stream, and each event's `id:` is a [`Cursor`] of all of them. A reconnecting browser
//! sends it back as `Last-Event-ID` (a client may also send it as `?after=`): every stream is
//! then replayed after its own place before the feed goes live, so nothing is missed and
//! nothing comes twice. The stream holds its connection's place in the connection budget while
//! it lives, and ends when its user logs out everywhere or the token it was opened with ends.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use super::extract::{HeaderAuth, HeaderCredentials, Payload};
use super::routes::{acting_user, MessageView, RoomMessageView};
use super::status::HttpResult;
use super::AppState;
use crate::chat::rooms::HISTORY_PAGE;
use crate::chat::{ConnectionGuard, Username, INBOX_PAGE};
use crate::error::{ChatError, Code};
use crate::hub::Subscription;
use crate::store::{rooms::room_key, Message, Page};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a feed stands in each stream it follows: the last id sent (or, before anything was
/// sent, where it started). Written as the events' `id:`:
///
/// `<inbox>[,<room>:<id>]...`, e.g. `812,class:790,team3:801`
///
/// - `<inbox>`: the last id of the inbox; a plain integer (`812`) is the whole cursor of a user
///   in no room, the same as before rooms, and it is accepted from any client.
/// - `<room>:<id>`: a room's name without its `#` (names hold no `,` or `:`), and its last id.
/// - A room the user is in but the cursor does not name (joined since, or a plain integer)
///   resumes after the smallest id the cursor holds.
///
/// A user is in at most `--max-rooms-per-user` rooms (100 by default), so a cursor is at most
/// about 5 KiB, within a request head's 16 KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub inbox: i64,
    /// By the room's key (lower case, `#` first): its name as shown, and its place.
    pub rooms: BTreeMap<String, (Arc<str>, i64)>,
}

impl Cursor {
    /// A cursor as written by [`Cursor::to_string`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Cursor> {
        let mut parts = text.trim().split(',');
        let inbox = parts.next()?.parse::<u64>().ok()?.min(i64::MAX as u64) as i64;
        let mut rooms = BTreeMap::new();
        for part in parts {
            let (name, id) = part.split_once(':')?;
            let name = crate::chat::rooms::RoomName::parse(&format!("#{name}")).ok()?;
            let id = id.parse::<u64>().ok()?.min(i64::MAX as u64) as i64;
            rooms.insert(room_key(name.as_str()), (name.as_arc().clone(), id));
        }
        Some(Cursor { inbox, rooms })
    }

    /// Where a room the cursor does not name resumes: after the smallest id it holds.
    pub fn floor(&self) -> i64 {
        self.rooms.values().map(|(_, id)| *id).fold(self.inbox, i64::min)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inbox)?;
        for (name, id) in self.rooms.values() {
            write!(f, ",{}:{id}", name.trim_start_matches('#'))?;
        }
        Ok(())
    }
}

/// A stream still to be replayed: the inbox (`None`) or a room, after an id.
struct Behind {
    room: Option<Arc<str>>,
    after: i64,
}

struct Feed {
    app: Arc<AppState>,
    user: Username,
    live: Subscription,
    replay: VecDeque<Arc<Message>>,
    /// Streams to replay after their place before going live, one page at a time.
    behind: VecDeque<Behind>,
    /// Where the feed stands in each stream.
    at: Cursor,
    /// Whether a live message at or below a stream's place was already sent (replayed) and is
    /// dropped: so once anything was replayed or sent in it. A feed opened without a cursor
    /// starts where each stream stood when it opened, and sends whatever comes live. By room
    /// key; the inbox is `""`.
    settled: std::collections::HashSet<String>,
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
        .and_then(Cursor::parse);
    let resume = match last_event_id {
        Some(cursor) => Some(cursor),
        None => match payload.0.get("after") {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => match payload.text("after") {
                Some(after) if after.is_empty() => None,
                Some(after) => Some(Cursor::parse(&after).ok_or_else(bad_cursor)?),
                None => return Err(bad_cursor().into()),
            },
        },
    };
    // Go live before reading any stream, so nothing committed in between is missed.
    let live = app
        .chat
        .go_online(&user, app.shutdown.child_token(), token.as_deref())
        .await?;
    let rooms = app.chat.followed(&user).await?;
    let mut feed = Feed {
        _open: app.chat.connection_opened(),
        app,
        user,
        live,
        replay: VecDeque::new(),
        behind: VecDeque::new(),
        at: Cursor {
            inbox: 0,
            rooms: BTreeMap::new(),
        },
        settled: Default::default(),
    };
    match resume {
        Some(cursor) => feed.resume(cursor, &rooms),
        None => feed.start_now(&rooms).await?,
    }
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let message = feed.next().await?;
        let event = match message.room() {
            None => Event::default()
                .event("message")
                .json_data(MessageView::of(&message)),
            Some(_) => Event::default()
                .event("room")
                .json_data(RoomMessageView::of(&message)),
        };
        let event = event.expect("a message serialises").id(feed.at.to_string());
        Some((Ok(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn bad_cursor() -> ChatError {
    ChatError::new(
        Code::BadArgs,
        "\"after\" is a message id, or an event's id as /events sent it (e.g. 812,class:790)",
    )
}

impl Feed {
    /// Resumes every stream after its place in `cursor`: the inbox, and each room the user is
    /// in now (rooms they left are no longer theirs to read).
    fn resume(&mut self, cursor: Cursor, rooms: &[Arc<str>]) {
        let floor = cursor.floor();
        self.at.inbox = cursor.inbox;
        self.settled.insert(String::new());
        self.behind.push_back(Behind {
            room: None,
            after: cursor.inbox,
        });
        for room in rooms {
            let key = room_key(room);
            let after = cursor.rooms.get(&key).map_or(floor, |(_, id)| *id);
            self.at.rooms.insert(key.clone(), (room.clone(), after));
            self.settled.insert(key);
            self.behind.push_back(Behind {
                room: Some(room.clone()),
                after,
            });
        }
    }

    /// Starts where every stream stands now: nothing is replayed, and each stream's place is its
    /// newest id, so that the first event's cursor already names every stream.
    async fn start_now(&mut self, rooms: &[Arc<str>]) -> Result<(), ChatError> {
        let chat = &self.app.chat;
        self.at.inbox = chat.newest_in(&self.user, self.user.as_str()).await?;
        for room in rooms {
            match chat.newest_in(&self.user, room).await {
                Ok(id) => {
                    self.at.rooms.insert(room_key(room), (room.clone(), id));
                }
                // Left since: not followed.
                Err(e) if matches!(e.code, Code::NotMember | Code::NoSuchRoom) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message to send, with the feed's place moved past it; `None` ends the stream
    /// (shutdown, too far behind, or logged out).
    async fn next(&mut self) -> Option<Arc<Message>> {
        loop {
            if self.live.ended().is_some() {
                return None;
            }
            if let Some(message) = self.replay.pop_front() {
                self.sent(&message);
                return Some(message);
            }
            if let Some(behind) = self.behind.pop_front() {
                let page = match &behind.room {
                    None => self.app.chat.inbox(&self.user, behind.after, INBOX_PAGE).await,
                    Some(room) => {
                        let page = Page::After(behind.after, HISTORY_PAGE);
                        match self.app.chat.room_history(&self.user, room, page).await {
                            Ok((_, rows)) => Ok(rows),
                            // Left or removed since: nothing more to read there.
                            Err(e) if matches!(e.code, Code::NotMember | Code::NoSuchRoom) => Ok(Vec::new()),
                            Err(e) => Err(e),
                        }
                    }
                };
                match page {
                    Ok(page) if page.is_empty() => {}
                    Ok(page) => {
                        self.behind.push_front(Behind {
                            room: behind.room,
                            after: page.last().map_or(behind.after, |m| m.id),
                        });
                        self.replay.extend(page);
                    }
                    // The client reconnects with Last-Event-ID and catches up then.
                    Err(_) => return None,
                }
                continue;
            }
            let message = self.live.next().await?;
            if !self.already_sent(&message) {
                self.sent(&message);
                return Some(message);
            }
        }
    }

    /// Whether `message` was already sent: at or below its stream's place, once settled.
    fn already_sent(&self, message: &Message) -> bool {
        match message.room() {
            None => self.settled.contains("") && message.id <= self.at.inbox,
            Some(room) => {
                let key = room_key(room);
                self.settled.contains(&key)
                    && self.at.rooms.get(&key).is_some_and(|(_, id)| message.id <= *id)
            }
        }
    }

    /// Moves the feed's place to `message` (a stream's messages are sent in increasing id
    /// order: replayed after its place, then live above it). A room the user left or was removed from is
    /// dropped from the cursor with the event that says so, its last row for them.
    fn sent(&mut self, message: &Message) {
        let Some(room) = message.room() else {
            self.at.inbox = message.id;
            self.settled.insert(String::new());
            return;
        };
        let key = room_key(room);
        let gone = message
            .event
            .as_deref()
            .is_some_and(|e| e.kind.removes() && *e.subject == *self.user.as_str());
        if gone {
            self.at.rooms.remove(&key);
            self.settled.remove(&key);
            return;
        }
        self.at.rooms.insert(key.clone(), (room.clone(), message.id));
        self.settled.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let cursor = Cursor::parse("812,Class:790,team3:801").unwrap();
        assert_eq!(cursor.inbox, 812);
        assert_eq!(cursor.rooms["#class"], (Arc::from("#Class"), 790));
        assert_eq!(cursor.floor(), 790);
        assert_eq!(cursor.to_string(), "812,Class:790,team3:801");
        let plain = Cursor::parse(" 42 ").unwrap();
        assert_eq!((plain.inbox, plain.rooms.len(), plain.floor()), (42, 0, 42));
        assert_eq!(plain.to_string(), "42");
    }

    #[test]
    fn anything_else_is_not_a_cursor() {
        for bad in [
            "",
            "x",
            "-1",
            "1,",
            "1,class",
            "1,class:x",
            "1,#class:2",
            "1,a b:2",
            "1;class:2",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }
}
