//! Live messages: what the IRC door's guests say and are told. A guest has no account, so
//! nothing it says can be stored: a live message has no id (0), takes no place in any
//! stream's order, is kept nowhere, and reaches only the sessions on this node whose door can
//! show a message without an id (IRC). The line protocol and HTTP, where every message has an
//! id to page and mark by, never see one.
//!
//! Guests follow public rooms through the hub like members do, so whatever is said in a room
//! at any door reaches them, in the room's order; they are never the room's members.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::rooms::{refused, RoomName, RoomView};
use super::{names, Chat, Username};
use crate::error::ChatResult;
use crate::hub::{LiveFeed, Subscription};
use crate::store::{EventKind, Message, RoomEvent, RoomRefusal};

impl Chat {
    /// Opens a guest's live session.
    pub fn guest_feed(&self, kick: CancellationToken) -> Subscription {
        self.hub().subscribe_guest(kick)
    }

    /// `user`'s session `feed` shows live messages (guests talking to it).
    pub fn show_live(&self, user: &Username, feed: &Subscription) {
        self.hub().accept_live(user.as_str(), feed.id());
    }

    /// A room anyone may join, as a guest sees it: `NO_SUCH_ROOM`, or `FORBIDDEN` for an
    /// invite-only room.
    pub async fn public_room(&self, room: &str) -> ChatResult<RoomView> {
        let name = RoomName::parse(room)?;
        let view = self.room_view(&name).await?;
        if view.info.invite_only {
            return Err(refused(RoomRefusal::InviteOnly, &name, None));
        }
        Ok(view)
    }

    /// The guest with live session `feed` follows public `room` (by its name as shown) from
    /// now on, and the IRC sessions there are told it joined.
    pub fn guest_join(&self, feed: &Subscription, nick: &str, room: &Arc<str>) {
        self.hub().watch(feed.id(), room);
        self.live_event(room, EventKind::Join, nick, feed.id());
    }

    /// The guest no longer follows `room`, and the IRC sessions there are told it left.
    pub fn guest_leave(&self, feed: &Subscription, nick: &str, room: &Arc<str>) {
        self.hub().unwatch(feed.id(), room);
        self.live_event(room, EventKind::Leave, nick, feed.id());
    }

    /// The guest, in `room`, is now `new`: the IRC sessions there are told (a live leave of
    /// `old` whose text is the new nick).
    pub fn guest_renamed(&self, feed: &Subscription, old: &str, new: &str, room: &Arc<str>) {
        let message = live_message(old, room, new.to_owned(), feed.id());
        self.deliver_event(message, EventKind::Leave, old);
    }

    fn live_event(&self, room: &Arc<str>, kind: EventKind, subject: &str, origin: u64) {
        let message = live_message(subject, room, String::new(), origin);
        self.deliver_event(message, kind, subject);
    }

    fn deliver_event(&self, message: Message, kind: EventKind, subject: &str) {
        let message = Message {
            event: Some(Box::new(RoomEvent {
                kind,
                subject: Arc::from(subject),
            })),
            ..message
        };
        self.hub().deliver_live(&Arc::new(message));
    }

    /// Says `text` live in `room` (by its name as shown), from the guest `from`, under the
    /// same text rules and send budget as a stored message: its members' IRC sessions here
    /// and its guests get it, not the session `origin`.
    pub fn say_live(
        &self,
        from: &str,
        guest: bool,
        room: &Arc<str>,
        text: &str,
        origin: u64,
    ) -> ChatResult<Arc<Message>> {
        self.may_say_live(from, guest, text)?;
        let message = Arc::new(live_message(from, room, text.to_owned(), origin));
        self.hub().deliver_live(&message);
        Ok(message)
    }
}

impl Chat {
    /// Pushes an IRC line of a local channel of the IRC door (`channel`, or `*` for a line of
    /// several, such as a QUIT) from `from` to the sessions `to` but `origin`: a live event
    /// of kind [`EventKind::Line`] whose subject is `removes` (a KICK's target, or empty).
    /// How many sessions it was queued for.
    ///
    /// Such a line has an id of its own below 0 (`-1`, `-2`...: unique on this node while it
    /// runs, and in no stream), so that IRC can tag it with a message id.
    pub fn push_line(
        &self,
        from: &str,
        channel: &Arc<str>,
        line: String,
        removes: &str,
        to: &[LiveFeed],
        origin: u64,
    ) -> (Arc<Message>, usize) {
        let message = Arc::new(self.line_message(from, channel, line, removes, origin));
        let reached = self.hub().push_live(&message, to);
        (message, reached)
    }

    /// The same, to every IRC session of a room's members here and its guests.
    pub fn push_room_line(&self, from: &str, room: &Arc<str>, line: String, origin: u64) -> Arc<Message> {
        let message = Arc::new(self.line_message(from, room, line, "", origin));
        self.hub().deliver_live(&message);
        message
    }

    fn line_message(
        &self,
        from: &str,
        channel: &Arc<str>,
        line: String,
        removes: &str,
        origin: u64,
    ) -> Message {
        static LINES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        Message {
            id: -LINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            event: Some(Box::new(RoomEvent {
                kind: EventKind::Line,
                subject: Arc::from(removes),
            })),
            ..live_message(from, channel, line, origin)
        }
    }
}

impl Chat {
    /// Whether `from` may say `text` live now: the same text rules and send budget as a
    /// stored message; spends it.
    pub fn may_say_live(&self, from: &str, guest: bool, text: &str) -> ChatResult<()> {
        names::check_message_text(text)?;
        self.spend_live(from, guest, text.len())
    }

    /// Spends `bytes` of `from`'s send budget (a guest's is its nick's, apart from any
    /// account's) on a live line, or refuses it (rate limited). An IRC line relayed as it was
    /// sent (CTCP and formatting included) is checked by the IRC door's framing alone.
    pub fn spend_live(&self, from: &str, guest: bool, bytes: usize) -> ChatResult<()> {
        let spender: Arc<str> = if guest {
            Arc::from(format!("~{from}"))
        } else {
            Arc::from(from)
        };
        self.inner
            .budget
            .take(&spender, bytes.max(1), std::time::Instant::now())?;
        Ok(())
    }
}

fn live_message(from: &str, recipient: &Arc<str>, body: String, origin: u64) -> Message {
    Message {
        id: 0,
        sender: Arc::from(from),
        recipient: recipient.clone(),
        body,
        created_at_us: chrono::Utc::now().timestamp_micros(),
        client_timestamp: None,
        event: None,
        origin,
        rendered: Default::default(),
    }
}
