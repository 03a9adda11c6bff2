//! Rooms: group conversations. A room is one stream, stored once; its members (who stay
//! members while offline) read it from there, and every logged-in session of a member follows
//! it live. Every change to a room goes through the group-commit writer, where the store checks
//! it in the same transaction that writes it (see `store::rooms`), so an acknowledged change
//! is committed and in order with the room's messages.
//!
//! This module owns the rules a client reads: valid names, and the words of every refusal.

use std::fmt;
use std::sync::Arc;

use crate::error::{ChatError, ChatResult, Code};
use crate::store::{
    Flag, Message, OpenRoom, Page, Role, RoomInfo, RoomOp, RoomRefusal, RoomSummary, RoomWrite, Write,
};

use super::writer::Written;
use super::{names, Chat, Username, COMMAND_DEADLINE};

/// Most characters of a room's name after its `#`.
pub const MAX_ROOM_NAME: usize = 32;
/// Members one room may have unless configured otherwise.
pub const DEFAULT_MAX_ROOM_MEMBERS: u32 = 10_000;
/// Rooms one user may be in unless configured otherwise.
pub const DEFAULT_MAX_ROOMS_PER_USER: u32 = 100;
/// Rows a `HISTORY <#room>` with no bound returns: the latest.
pub const HISTORY_LATEST: u32 = 50;
/// Most rows one `HISTORY ... after|before` returns.
pub const HISTORY_PAGE: u32 = 100;
/// Most rooms one listing of the open rooms holds.
pub const OPEN_ROOMS_PAGE: u32 = 500;
/// Most characters of a topic.
pub const MAX_TOPIC: usize = 300;
/// Most characters of a removal's reason.
pub const MAX_REASON: usize = 200;

/// `page` with its limit capped at `most`, and at least 1.
pub fn bounded(page: Page, most: u32) -> Page {
    match page {
        Page::After(id, limit) => Page::After(id.max(0), limit.clamp(1, most)),
        Page::Before(id, limit) => Page::Before(id, limit.clamp(1, most)),
    }
}

/// A valid room name: `#` then 1 to 32 of `A-Z a-z 0-9 _ . -`. Compared case-insensitively
/// by the store; kept as typed, which is how a new room is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub fn parse(name: &str) -> ChatResult<RoomName> {
        let rest = name.strip_prefix('#').ok_or_else(|| bad_name(name))?;
        let valid = (1..=MAX_ROOM_NAME).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(bad_name(name));
        }
        Ok(RoomName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad_name(name: &str) -> ChatError {
    let shown: String = name.chars().take(40).collect();
    ChatError::bad_args(format!(
        "{shown:?} is not a room name: # then 1 to {MAX_ROOM_NAME} letters, digits, _ . or - (e.g. #class)"
    ))
}

/// A MODE change as typed: `+i`, `-m`, `+t`, `+o bob`, `-o bob`.
pub fn parse_mode(mode: &str, user: Option<&str>) -> ChatResult<(Flag, bool)> {
    let bad = || {
        ChatError::bad_args(
            "a mode is +i or -i (invite-only), +m or -m (moderated: only ops speak), +t or -t \
             (only ops set the topic), +o <user> or -o <user> (make or unmake an op)",
        )
    };
    let (on, letter) = match mode.as_bytes() {
        [b'+', letter] => (true, *letter),
        [b'-', letter] => (false, *letter),
        _ => return Err(bad()),
    };
    let flag = match (letter, user) {
        (b'i', None) => Flag::InviteOnly,
        (b'm', None) => Flag::Moderated,
        (b't', None) => Flag::TopicLocked,
        (b'o', Some(user)) => Flag::Op(Arc::from(user)),
        _ => return Err(bad()),
    };
    Ok((flag, on))
}

/// A MODE change in words, as its event shows it: `+m`, `+o bob`.
pub fn mode_text(flag: &Flag, on: bool) -> String {
    let sign = if on { '+' } else { '-' };
    match flag {
        Flag::InviteOnly => format!("{sign}i"),
        Flag::Moderated => format!("{sign}m"),
        Flag::TopicLocked => format!("{sign}t"),
        Flag::Op(user) => format!("{sign}o {user}"),
    }
}

/// The write for a change to `room` by `actor`, with the text its row will carry.
pub fn write(actor: &Arc<str>, room: &RoomName, op: RoomOp, origin: u64, said: Option<&str>) -> Write {
    let text = match (&op, said) {
        (RoomOp::Say { .. }, Some(said)) => said.to_owned(),
        (RoomOp::Say { .. }, None) => String::new(),
        (RoomOp::Join { .. }, _) => format!("{actor} joined"),
        (RoomOp::Leave, _) => format!("{actor} left"),
        (RoomOp::Invite { user }, _) => format!("{actor} invited {user}"),
        (RoomOp::Kick { user }, reason) => match reason.filter(|r| !r.is_empty()) {
            Some(reason) => format!("{actor} removed {user}: {reason}"),
            None => format!("{actor} removed {user}"),
        },
        (RoomOp::Topic { topic }, _) => format!("{actor} set the topic: {topic}"),
        (RoomOp::Mode { flag, on }, _) => format!("{actor} set {}", mode_text(flag, *on)),
    };
    Write::Room(RoomWrite {
        actor: actor.clone(),
        room: room.as_arc().clone(),
        op,
        text,
        origin,
    })
}

/// A refusal in the words a client reads: what was refused, and who may do it.
pub fn refused(refusal: RoomRefusal, room: &RoomName, user: Option<&str>) -> ChatError {
    ChatError {
        refusal: Some(refusal.clone()),
        ..refusal_text(refusal, room, user)
    }
}

fn refusal_text(refusal: RoomRefusal, room: &RoomName, user: Option<&str>) -> ChatError {
    let target = user.unwrap_or("that user");
    match refusal {
        RoomRefusal::NoSuchRoom => ChatError::new(
            Code::NoSuchRoom,
            format!("there is no room {room}; JOIN {room} creates it"),
        ),
        RoomRefusal::NotMember => ChatError::new(
            Code::NotMember,
            format!("you are not in {room}; JOIN {room} first"),
        ),
        RoomRefusal::NotOp => ChatError::new(
            Code::Forbidden,
            format!("only the owner and ops of {room} may do that"),
        ),
        RoomRefusal::NotOwner => ChatError::new(
            Code::Forbidden,
            format!("only the owner of {room} may do that to an op"),
        ),
        RoomRefusal::Moderated => ChatError::new(
            Code::Forbidden,
            format!("{room} is moderated (+m): only its owner and ops may speak"),
        ),
        RoomRefusal::InviteOnly => ChatError::new(
            Code::Forbidden,
            format!("{room} is invite-only (+i): an op must INVITE you first"),
        ),
        RoomRefusal::Full(most) => ChatError::new(
            Code::Forbidden,
            format!("{room} is full: it has {most} members, the most allowed"),
        ),
        RoomRefusal::TooManyRooms(most) => ChatError::new(
            Code::Forbidden,
            format!("you are in {most} rooms, the most allowed; LEAVE one first"),
        ),
        RoomRefusal::NoSuchUser => ChatError::new(Code::NoSuchUser, format!("there is no user {target}")),
        RoomRefusal::TargetNotMember => ChatError::new(Code::NotMember, format!("{target} is not in {room}")),
        RoomRefusal::TargetIsOwner => ChatError::new(
            Code::Forbidden,
            format!("{target} owns {room}: the owner cannot be removed or made a member"),
        ),
    }
}

/// A room's member as MEMBERS lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub role: Role,
    pub online: bool,
}

/// A room as one asking about it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    pub info: RoomInfo,
    pub members: Vec<Member>,
}

/// The changes to a room, as the line protocol and HTTP call them.
impl Chat {
    /// Joins `room`, creating it (with `user` as its owner) if there is none: the room's name
    /// as shown, and its members now.
    pub async fn join(&self, user: &Username, room: &str, origin: u64) -> ChatResult<(Arc<str>, i64)> {
        let room = RoomName::parse(room)?;
        let op = RoomOp::Join {
            max_members: i64::from(self.inner.max_room_members),
            max_rooms: i64::from(self.inner.max_rooms_per_user),
        };
        let done = self.change(user, &room, op, origin, None, None).await?;
        Ok(done.room.unwrap_or_else(|| (room.as_arc().clone(), 0)))
    }

    /// Leaves `room`; its name as shown.
    pub async fn leave(&self, user: &Username, room: &str, origin: u64) -> ChatResult<Arc<str>> {
        let room = RoomName::parse(room)?;
        let done = self
            .change(user, &room, RoomOp::Leave, origin, None, None)
            .await?;
        Ok(shown(done, &room))
    }

    /// Says `text` in `room` once it is committed, under the same text rules and send budget
    /// as a direct message.
    pub async fn say(
        &self,
        user: &Username,
        room: &str,
        text: &str,
        client_timestamp: Option<String>,
        origin: u64,
    ) -> ChatResult<Arc<Message>> {
        let room = RoomName::parse(room)?;
        names::check_message_text(text)?;
        if let Some(stamp) = &client_timestamp {
            super::check_client_timestamp(stamp)?;
        }
        let budget = &self.inner.budget;
        budget.take(user.as_arc(), text.len(), std::time::Instant::now())?;
        let op = RoomOp::Say { client_timestamp };
        let said = self.change(user, &room, op, origin, Some(text), None).await;
        if said.is_err() {
            budget.give_back(user.as_str(), text.len());
        }
        said?
            .message
            .ok_or_else(|| ChatError::internal("storing the message", "no row was written"))
    }

    /// Lets `target` join invite-only `room` (ops only).
    pub async fn invite(&self, user: &Username, room: &str, target: &str) -> ChatResult<Arc<str>> {
        let room = RoomName::parse(room)?;
        let target = Username::parse(target).map_err(|_| super::no_such_user(target))?;
        let op = RoomOp::Invite {
            user: target.as_arc().clone(),
        };
        let done = self
            .change(user, &room, op, 0, None, Some(target.as_str()))
            .await?;
        Ok(shown(done, &room))
    }

    /// Removes `target` from `room` (ops only; only the owner removes an op).
    pub async fn kick(
        &self,
        user: &Username,
        room: &str,
        target: &str,
        reason: Option<&str>,
        origin: u64,
    ) -> ChatResult<Arc<str>> {
        let room = RoomName::parse(room)?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if let Some(reason) = reason {
            check_short(reason, MAX_REASON, "a reason")?;
        }
        let target = Username::parse(target).map_err(|_| super::no_such_user(target))?;
        let op = RoomOp::Kick {
            user: target.as_arc().clone(),
        };
        let done = self
            .change(user, &room, op, origin, reason, Some(target.as_str()))
            .await?;
        Ok(shown(done, &room))
    }

    /// Sets the topic of `room` (ops only while it is topic-locked, as it is by default).
    pub async fn set_topic(
        &self,
        user: &Username,
        room: &str,
        topic: &str,
        origin: u64,
    ) -> ChatResult<Arc<str>> {
        let room = RoomName::parse(room)?;
        let topic = topic.trim();
        check_short(topic, MAX_TOPIC, "a topic")?;
        let op = RoomOp::Topic {
            topic: topic.to_owned(),
        };
        let done = self.change(user, &room, op, origin, None, None).await?;
        Ok(shown(done, &room))
    }

    /// Changes a flag of `room`, or a member's op role (ops only).
    pub async fn set_mode(
        &self,
        user: &Username,
        room: &str,
        mode: &str,
        target: Option<&str>,
        origin: u64,
    ) -> ChatResult<Arc<str>> {
        let room = RoomName::parse(room)?;
        let target = match target {
            Some(t) => Some(Username::parse(t).map_err(|_| super::no_such_user(t))?),
            None => None,
        };
        let (flag, on) = parse_mode(mode, target.as_ref().map(Username::as_str))?;
        let op = RoomOp::Mode { flag, on };
        let done = self
            .change(
                user,
                &room,
                op,
                origin,
                None,
                target.as_ref().map(Username::as_str),
            )
            .await?;
        Ok(shown(done, &room))
    }

    /// A page of `room`'s stream, oldest first, for a member: its name as shown, and the rows.
    pub async fn room_history(
        &self,
        user: &Username,
        room: &str,
        page: Page,
    ) -> ChatResult<(Arc<str>, Vec<Arc<Message>>)> {
        let room = RoomName::parse(room)?;
        let name = self.member_of(user, &room).await?.0;
        let rows = self
            .inner
            .store
            .stream(&name, bounded(page, HISTORY_PAGE))
            .await?;
        Ok((name, rows.into_iter().map(Arc::new).collect()))
    }

    /// The rooms `user` is in, by name, with members, unread counts and topics.
    pub async fn rooms(&self, user: &Username) -> ChatResult<Vec<RoomSummary>> {
        Ok(self.inner.store.rooms_of(user.as_str()).await?)
    }

    /// The names of the rooms `user` is in: the streams their sessions follow besides the inbox.
    pub async fn followed(&self, user: &Username) -> ChatResult<Vec<Arc<str>>> {
        Ok(self.inner.store.followed(user.as_str()).await?)
    }

    /// The rooms anyone may join (not invite-only), by name after `after` (`#` first, any
    /// case), at most [`OPEN_ROOMS_PAGE`]: how a newcomer finds the class's rooms.
    pub async fn open_rooms(&self, after: &str) -> ChatResult<Vec<OpenRoom>> {
        let after = crate::store::rooms::room_key(after);
        Ok(self.inner.store.open_rooms(&after, OPEN_ROOMS_PAGE).await?)
    }

    /// Where `target`'s history stood at a time: the newest id committed before `micros` in a
    /// room `user` is in, or in `user`'s conversation with the user `target`; 0 if none.
    pub async fn last_id_before(&self, user: &Username, target: &str, micros: i64) -> ChatResult<i64> {
        let store = &self.inner.store;
        if target.starts_with('#') {
            let room = RoomName::parse(target)?;
            let name = self.member_of(user, &room).await?.0;
            return Ok(store.last_id_before(&name, None, micros).await?);
        }
        let peer = Username::parse(target).map_err(|_| super::no_such_user(target))?;
        let peer = self.inner.users.existing(store, peer.as_str()).await?;
        let theirs = store.last_id_before(user.as_str(), Some(&peer), micros).await?;
        let mine = store.last_id_before(&peer, Some(user.as_str()), micros).await?;
        Ok(theirs.max(mine))
    }

    /// How many rooms anyone may join (what IRC's LUSERS calls the channels formed).
    pub async fn open_room_count(&self) -> ChatResult<i64> {
        Ok(self.inner.store.open_room_count().await?)
    }

    /// The newest id in a stream `user` may read (their inbox, or a room they are in), 0 for
    /// none: where a live feed that starts now stands in it.
    pub async fn newest_in(&self, user: &Username, stream: &str) -> ChatResult<i64> {
        let rows = if stream.starts_with('#') {
            self.room_history(user, stream, Page::Before(i64::MAX, 1))
                .await?
                .1
        } else if stream == user.as_str() {
            let rows = self.inner.store.stream(stream, Page::Before(i64::MAX, 1)).await?;
            rows.into_iter().map(Arc::new).collect()
        } else {
            return Err(ChatError::bad_args("only your own inbox"));
        };
        Ok(rows.last().map_or(0, |m| m.id))
    }

    /// A room's topic, flags and members (with who is online). An invite-only room shows
    /// itself only to its members.
    pub async fn room(&self, user: &Username, room: &str) -> ChatResult<RoomView> {
        let room = RoomName::parse(room)?;
        let view = self.room_view(&room).await?;
        if view.info.invite_only && view.info.role_of(user.as_str()).is_none() {
            return Err(refused(RoomRefusal::NotMember, &room, None));
        }
        Ok(view)
    }

    /// A room's topic, flags and members (with who is online), whoever asks.
    pub(super) async fn room_view(&self, room: &RoomName) -> ChatResult<RoomView> {
        let info = self
            .inner
            .store
            .room(room.as_str())
            .await?
            .ok_or_else(|| refused(RoomRefusal::NoSuchRoom, room, None))?;
        let names: Vec<&str> = info.members.iter().map(|(n, _)| n.as_str()).collect();
        let online = self.inner.topology.online_among(&names).await?;
        let members = info
            .members
            .iter()
            .map(|(name, role)| Member {
                online: online.contains(name),
                name: name.clone(),
                role: *role,
            })
            .collect();
        Ok(RoomView { info, members })
    }

    /// Marks `room` read up to `id` (its newest row if `None`) for `user`, on every session
    /// and node: the room's name as shown.
    pub async fn mark_read(&self, user: &Username, room: &str, id: Option<i64>) -> ChatResult<Arc<str>> {
        let room = RoomName::parse(room)?;
        let name = self.member_of(user, &room).await?.0;
        if !self.inner.store.mark_read(&name, user.as_str(), id).await? {
            return Err(refused(RoomRefusal::NotMember, &room, None));
        }
        Ok(name)
    }

    /// `user`'s read mark in `room`: the commit time of the last row they read, `None` if
    /// they have read nothing yet; `NOT_MEMBER`, `NO_SUCH_ROOM` otherwise.
    pub async fn read_mark(&self, user: &Username, room: &str) -> ChatResult<Option<i64>> {
        let room = RoomName::parse(room)?;
        match self.inner.store.read_mark(room.as_str(), user.as_str()).await? {
            Some((_, at)) => Ok(at),
            None => Err(self
                .member_of(user, &room)
                .await
                .err()
                .unwrap_or_else(|| refused(RoomRefusal::NotMember, &room, None))),
        }
    }

    /// The room's name as shown and `user`'s role: `NO_SUCH_ROOM`, or `NOT_MEMBER`.
    async fn member_of(&self, user: &Username, room: &RoomName) -> ChatResult<(Arc<str>, Role)> {
        match self.inner.store.member(room.as_str(), user.as_str()).await? {
            None => Err(refused(RoomRefusal::NoSuchRoom, room, None)),
            Some((_, None)) => Err(refused(RoomRefusal::NotMember, room, None)),
            Some((name, Some(role))) => Ok((name, role)),
        }
    }

    /// Commits a change to `room` through the writer, answered within [`COMMAND_DEADLINE`].
    async fn change(
        &self,
        user: &Username,
        room: &RoomName,
        op: RoomOp,
        origin: u64,
        said: Option<&str>,
        target: Option<&str>,
    ) -> ChatResult<Written> {
        let deadline = tokio::time::Instant::now() + COMMAND_DEADLINE;
        let write = write(user.as_arc(), room, op, origin, said);
        match self.inner.writer.submit(write, deadline).await? {
            Ok(done) => Ok(done),
            Err(refusal) => Err(refused(refusal, room, target)),
        }
    }
}

/// The room's name as shown, from what a change did.
fn shown(done: Written, room: &RoomName) -> Arc<str> {
    done.room.map_or_else(|| room.as_arc().clone(), |(name, _)| name)
}

/// A topic or reason: one line of printable text, at most `most` characters.
fn check_short(text: &str, most: usize, what: &str) -> ChatResult<()> {
    if text.chars().count() > most {
        return Err(ChatError::bad_args(format!(
            "{what} is at most {most} characters"
        )));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(ChatError::bad_args(format!(
            "{what} is one line, without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hash_then_up_to_32_plain_characters() {
        for good in [
            "#a",
            "#class",
            "#Team-3",
            "#a.b_c",
            &format!("#{}", "x".repeat(32)),
        ] {
            assert!(RoomName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "class",
            "#",
            "# x",
            "#é",
            "#a/b",
            &format!("#{}", "x".repeat(33)),
            "##",
        ] {
            let e = RoomName::parse(bad).unwrap_err();
            assert_eq!(e.code, Code::BadArgs, "{bad}");
        }
    }

    #[test]
    fn modes_parse_and_read_back() {
        for (mode, user, text) in [
            ("+i", None, "+i"),
            ("-m", None, "-m"),
            ("+t", None, "+t"),
            ("+o", Some("bob"), "+o bob"),
            ("-o", Some("bob"), "-o bob"),
        ] {
            let (flag, on) = parse_mode(mode, user).unwrap();
            assert_eq!(mode_text(&flag, on), text);
        }
        for (mode, user) in [
            ("i", None),
            ("+x", None),
            ("+o", None),
            ("+i", Some("bob")),
            ("+im", None),
        ] {
            assert_eq!(parse_mode(mode, user).unwrap_err().code, Code::BadArgs);
        }
    }
}
