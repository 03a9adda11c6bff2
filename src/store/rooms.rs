//! Rooms as stored: the rooms, their members, invites and flags, and the rows of each room's
//! stream (what members said, and events: joins, leaves, removals, topic and flag changes).
//!
//! A change to a room is one [`RoomWrite`], applied inside the writer's batch transaction by
//! [`apply`]: its checks (is the actor a member, an op; is the room invite-only, full) read
//! the same transaction that then writes, after the store took the room's ordering lock, so
//! two nodes changing one room at once see each other's changes, never a stale view. Its event
//! row is written in the room's stream, in order with its messages.
//!
//! The checks are the store's constraints, like a unique name: the domain chooses the words
//! a client reads ([`RoomRefusal`] says only what was refused).

use std::sync::Arc;

use super::Message;

/// A change to the store, in the writer's batch: a direct message, or a change to a room.
#[derive(Debug, Clone)]
pub enum Write {
    Direct(super::NewMessage),
    Room(RoomWrite),
}

/// A change to a room by `actor`.
#[derive(Debug, Clone)]
pub struct RoomWrite {
    pub actor: Arc<str>,
    /// The room's name as the client typed it (`#` first); matched case-insensitively, and
    /// the name a room is created with.
    pub room: Arc<str>,
    pub op: RoomOp,
    /// The row's text: what was said, or the event in words (`alice joined`).
    pub text: String,
    /// The live session that asked (see [`Message::origin`]).
    pub origin: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOp {
    /// A message to the room.
    Say {
        client_timestamp: Option<String>,
    },
    /// Join, creating the room if there is none (its creator becomes its owner).
    Join {
        max_members: i64,
        max_rooms: i64,
    },
    Leave,
    Invite {
        user: Arc<str>,
    },
    Kick {
        user: Arc<str>,
    },
    Topic {
        topic: String,
    },
    Mode {
        flag: Flag,
        on: bool,
    },
}

/// What MODE changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    InviteOnly,
    Moderated,
    TopicLocked,
    /// A member's op role.
    Op(Arc<str>),
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Op,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Op => "op",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Role {
        match s {
            "owner" => Role::Owner,
            "op" => Role::Op,
            _ => Role::Member,
        }
    }
}

/// What an event row records besides its text: what happened, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    pub kind: EventKind,
    /// Who joined, left, was removed, or whose role changed; for a topic or flag change, who
    /// made it.
    pub subject: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Join,
    Leave,
    Kick,
    Topic,
    Mode,
    /// Live only, never stored: one of the IRC door's local channels changed, and the
    /// message's text is the IRC line that says so, after its source (`PART #lab :bye`).
    /// The subject is the nick it takes out of the channel (a KICK's), or empty.
    Line,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Kick => "kick",
            EventKind::Topic => "topic",
            EventKind::Mode => "mode",
            EventKind::Line => "line",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "join" => EventKind::Join,
            "leave" => EventKind::Leave,
            "kick" => EventKind::Kick,
            "topic" => EventKind::Topic,
            "mode" => EventKind::Mode,
            _ => return None,
        })
    }

    /// Whether the event changes who is in the room.
    pub fn removes(self) -> bool {
        matches!(self, EventKind::Leave | EventKind::Kick)
    }
}

/// Why a change to a room was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRefusal {
    NoSuchRoom,
    /// The actor is not a member.
    NotMember,
    /// Only ops and the owner may do this.
    NotOp,
    /// Only the owner may do this (to an op).
    NotOwner,
    /// The room is moderated and the actor is not an op.
    Moderated,
    /// The room is invite-only and the actor was not invited.
    InviteOnly,
    /// The room has this many members, the most allowed.
    Full(i64),
    /// The actor is in this many rooms, the most allowed.
    TooManyRooms(i64),
    /// The user acted on does not exist.
    NoSuchUser,
    /// The user acted on is not a member.
    TargetNotMember,
    /// The owner cannot be removed or demoted.
    TargetIsOwner,
}

/// One write's outcome: done, or refused (and nothing written).
pub type Applied = Result<Committed, RoomRefusal>;

impl Committed {
    pub(super) fn direct(message: Message) -> Applied {
        Ok(Committed {
            message: Some(message),
            room: None,
        })
    }
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The row it added to a stream, if any (an invite, or joining a room one is already in,
    /// adds none).
    pub message: Option<Message>,
    /// For a room: its name as shown, and its members after the change (0 for a message,
    /// which is not counted).
    pub room: Option<(Arc<str>, i64)>,
}

/// A room as a member lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub name: Arc<str>,
    pub members: i64,
    /// Messages (not events) after the member's read mark.
    pub unread: i64,
    pub topic: String,
}

/// A room anyone may join, as a newcomer finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRoom {
    pub name: Arc<str>,
    pub members: i64,
    pub topic: String,
}

/// A room's settings and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: Arc<str>,
    pub topic: String,
    pub invite_only: bool,
    pub moderated: bool,
    pub topic_locked: bool,
    /// Owner first, then ops, then members, each by name.
    pub members: Vec<(String, Role)>,
}

impl RoomInfo {
    pub fn role_of(&self, user: &str) -> Option<Role> {
        self.members.iter().find(|(u, _)| u == user).map(|(_, r)| *r)
    }
}

/// Which part of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The first `limit` rows with id > this, oldest first.
    After(i64, u32),
    /// The last `limit` rows with id < this, returned oldest first.
    Before(i64, u32),
}

/// The key a room is found by: its name in lower case.
pub fn room_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The column of `rooms` a flag is kept in (a fixed name, never the client's text).
pub(super) fn flag_column(flag: &Flag) -> &'static str {
    match flag {
        Flag::InviteOnly => "invite_only",
        Flag::Moderated => "moderated",
        Flag::TopicLocked => "topic_locked",
        // A role is a member's, not a column of the room: [`apply`] never sets it here.
        Flag::Op(_) => unreachable!("an op is set with set_role"),
    }
}

/// A room row, as the checks read it.
pub(super) struct RoomRow {
    pub id: i64,
    pub name: String,
    pub invite_only: bool,
    pub moderated: bool,
    pub topic_locked: bool,
}

/// The reads and writes [`apply`] needs, inside one store's transaction.
pub(super) trait RoomTx {
    async fn room(&mut self, key: &str) -> sqlx::Result<Option<RoomRow>>;
    async fn create_room(&mut self, key: &str, name: &str) -> sqlx::Result<i64>;
    async fn role(&mut self, room: i64, user: &str) -> sqlx::Result<Option<Role>>;
    async fn member_count(&mut self, room: i64) -> sqlx::Result<i64>;
    async fn rooms_of(&mut self, user: &str) -> sqlx::Result<i64>;
    /// Adds a member whose read mark starts at `read_id`.
    async fn add_member(&mut self, room: i64, user: &str, role: Role, read_id: i64) -> sqlx::Result<()>;
    async fn remove_member(&mut self, room: i64, user: &str) -> sqlx::Result<()>;
    async fn set_role(&mut self, room: i64, user: &str, role: Role) -> sqlx::Result<()>;
    async fn invited(&mut self, room: i64, user: &str) -> sqlx::Result<bool>;
    async fn invite(&mut self, room: i64, user: &str) -> sqlx::Result<()>;
    async fn uninvite(&mut self, room: i64, user: &str) -> sqlx::Result<()>;
    async fn set_topic(&mut self, room: i64, topic: &str) -> sqlx::Result<()>;
    async fn set_flag(&mut self, room: i64, flag: &Flag, on: bool) -> sqlx::Result<()>;
    async fn user_exists(&mut self, user: &str) -> sqlx::Result<bool>;
    /// Appends a row to a stream; its id and commit time.
    async fn insert_row(
        &mut self,
        stream: &str,
        sender: &str,
        body: &str,
        client_timestamp: Option<&str>,
        event: Option<&RoomEvent>,
    ) -> sqlx::Result<(i64, i64)>;
}

/// Applies one change to a room inside `tx`: checks, then writes. A refusal writes nothing.
pub(super) async fn apply<T: RoomTx>(tx: &mut T, write: &RoomWrite) -> sqlx::Result<Applied> {
    let actor = &*write.actor;
    let key = room_key(&write.room);
    let room = match (tx.room(&key).await?, &write.op) {
        (Some(room), _) => room,
        (None, RoomOp::Join { max_rooms, .. }) => {
            if tx.rooms_of(actor).await? >= *max_rooms {
                return Ok(Err(RoomRefusal::TooManyRooms(*max_rooms)));
            }
            let id = tx.create_room(&key, &write.room).await?;
            let event = event(EventKind::Join, &write.actor);
            let row = append(tx, &write.room, write, Some(event)).await?;
            tx.add_member(id, actor, Role::Owner, row.id).await?;
            return Ok(Ok(Committed {
                message: Some(row),
                room: Some((write.room.clone(), 1)),
            }));
        }
        (None, RoomOp::Leave) => return Ok(Err(RoomRefusal::NotMember)),
        (None, _) => return Ok(Err(RoomRefusal::NoSuchRoom)),
    };
    let name: Arc<str> = Arc::from(room.name.as_str());
    let role = tx.role(room.id, actor).await?;
    let done = |tx_row: Option<Message>, members| Committed {
        message: tx_row,
        room: Some((name.clone(), members)),
    };
    let is_op = matches!(role, Some(Role::Op | Role::Owner));
    let message = match &write.op {
        RoomOp::Join {
            max_members,
            max_rooms,
        } => {
            if role.is_some() {
                let members = tx.member_count(room.id).await?;
                return Ok(Ok(done(None, members)));
            }
            if room.invite_only && !tx.invited(room.id, actor).await? {
                return Ok(Err(RoomRefusal::InviteOnly));
            }
            if tx.member_count(room.id).await? >= *max_members {
                return Ok(Err(RoomRefusal::Full(*max_members)));
            }
            if tx.rooms_of(actor).await? >= *max_rooms {
                return Ok(Err(RoomRefusal::TooManyRooms(*max_rooms)));
            }
            let row = append(tx, &name, write, Some(event(EventKind::Join, &write.actor))).await?;
            tx.add_member(room.id, actor, Role::Member, row.id).await?;
            tx.uninvite(room.id, actor).await?;
            Some(row)
        }
        _ if role.is_none() => return Ok(Err(RoomRefusal::NotMember)),
        RoomOp::Say { .. } => {
            if room.moderated && !is_op {
                return Ok(Err(RoomRefusal::Moderated));
            }
            Some(append(tx, &name, write, None).await?)
        }
        RoomOp::Leave => {
            tx.remove_member(room.id, actor).await?;
            Some(append(tx, &name, write, Some(event(EventKind::Leave, &write.actor))).await?)
        }
        // An unlocked topic is any member's to set; everything else below needs an op.
        RoomOp::Topic { .. } if room.topic_locked && !is_op => return Ok(Err(RoomRefusal::NotOp)),
        RoomOp::Invite { .. } | RoomOp::Kick { .. } | RoomOp::Mode { .. } if !is_op => {
            return Ok(Err(RoomRefusal::NotOp))
        }
        RoomOp::Invite { user } => {
            if !tx.user_exists(user).await? {
                return Ok(Err(RoomRefusal::NoSuchUser));
            }
            if tx.role(room.id, user).await?.is_none() {
                tx.invite(room.id, user).await?;
            }
            None
        }
        RoomOp::Kick { user } => {
            match tx.role(room.id, user).await? {
                None => return Ok(Err(RoomRefusal::TargetNotMember)),
                Some(Role::Owner) => return Ok(Err(RoomRefusal::TargetIsOwner)),
                Some(Role::Op) if role != Some(Role::Owner) => return Ok(Err(RoomRefusal::NotOwner)),
                Some(_) => {}
            }
            tx.remove_member(room.id, user).await?;
            Some(append(tx, &name, write, Some(event(EventKind::Kick, user))).await?)
        }
        RoomOp::Topic { topic } => {
            tx.set_topic(room.id, topic).await?;
            Some(append(tx, &name, write, Some(event(EventKind::Topic, &write.actor))).await?)
        }
        RoomOp::Mode { flag, on } => {
            let changed = match flag {
                Flag::InviteOnly => room.invite_only != *on,
                Flag::Moderated => room.moderated != *on,
                Flag::TopicLocked => room.topic_locked != *on,
                Flag::Op(user) => match tx.role(room.id, user).await? {
                    None => return Ok(Err(RoomRefusal::TargetNotMember)),
                    Some(Role::Owner) => return Ok(Err(RoomRefusal::TargetIsOwner)),
                    Some(Role::Op) if !*on && role != Some(Role::Owner) && **user != *actor => {
                        return Ok(Err(RoomRefusal::NotOwner))
                    }
                    Some(current) => {
                        let wanted = if *on { Role::Op } else { Role::Member };
                        if current != wanted {
                            tx.set_role(room.id, user, wanted).await?;
                        }
                        current != wanted
                    }
                },
            };
            if !matches!(flag, Flag::Op(_)) && changed {
                tx.set_flag(room.id, flag, *on).await?;
            }
            let subject = match flag {
                Flag::Op(user) => user,
                _ => &write.actor,
            };
            match changed {
                true => Some(append(tx, &name, write, Some(event(EventKind::Mode, subject))).await?),
                false => None,
            }
        }
    };
    // What a message said needs no count of the room (the reply is its id).
    let members = match write.op {
        RoomOp::Say { .. } => 0,
        _ => tx.member_count(room.id).await?,
    };
    Ok(Ok(done(message, members)))
}

fn event(kind: EventKind, subject: &Arc<str>) -> RoomEvent {
    RoomEvent {
        kind,
        subject: subject.clone(),
    }
}

async fn append<T: RoomTx>(
    tx: &mut T,
    stream: &Arc<str>,
    write: &RoomWrite,
    event: Option<RoomEvent>,
) -> sqlx::Result<Message> {
    let stamp = match &write.op {
        RoomOp::Say { client_timestamp } => client_timestamp.as_deref(),
        _ => None,
    };
    let (id, created_at_us) = tx
        .insert_row(stream, &write.actor, &write.text, stamp, event.as_ref())
        .await?;
    Ok(Message {
        id,
        sender: write.actor.clone(),
        recipient: stream.clone(),
        body: write.text.clone(),
        created_at_us,
        client_timestamp: stamp.map(str::to_owned),
        event: event.map(Box::new),
        origin: write.origin,
        rendered: Default::default(),
    })
}

/// The SQL both stores read rooms with (`?` placeholders; PostgreSQL numbers them).
pub(super) mod sql {
    /// A member's rooms: name, members, unread messages (others' messages, not events, after
    /// the read mark; counted up to 10,000), topic.
    pub const ROOMS_OF: &str = "SELECT r.name, \
         (SELECT COUNT(*) FROM room_members c WHERE c.room_id = r.id), \
         (SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE recipient = r.name AND id > m.read_id \
             AND kind IS NULL AND sender <> m.user_name LIMIT 10000) AS u), \
         r.topic \
         FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE m.user_name = ? ORDER BY r.name_key";
    /// The rooms anyone may join (not invite-only), by name after a key, at most a limit:
    /// name, members, topic. Binds: after (a room key), limit.
    pub const OPEN_ROOMS: &str = "SELECT r.name, \
         (SELECT COUNT(*) FROM room_members c WHERE c.room_id = r.id), r.topic \
         FROM rooms r WHERE NOT r.invite_only AND r.name_key > ? ORDER BY r.name_key LIMIT ?";
    /// The names of a member's rooms.
    /// How many rooms anyone may join.
    pub const OPEN_ROOM_COUNT: &str = "SELECT COUNT(*) FROM rooms WHERE NOT invite_only";
    pub const FOLLOWED: &str =
        "SELECT r.name FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE m.user_name = ?";
    /// A room's name as shown, and `user`'s role in it if a member. Binds: user, room key.
    pub const MEMBER: &str = "SELECT r.name, m.role FROM rooms r \
         LEFT JOIN room_members m ON m.room_id = r.id AND m.user_name = ? WHERE r.name_key = ?";
    pub const ROOM: &str =
        "SELECT id, name, topic, invite_only, moderated, topic_locked FROM rooms WHERE name_key = ?";
    /// A room's members, owner first, then ops, then members, each by name.
    pub const MEMBERS: &str = "SELECT user_name, role FROM room_members WHERE room_id = ? \
         ORDER BY CASE role WHEN 'owner' THEN 0 WHEN 'op' THEN 1 ELSE 2 END, user_name";
    /// A member's read mark and the commit time of the row it points at (NULL for none).
    /// Binds: room key, user.
    pub const READ_MARK: &str =
        "SELECT m.read_id, (SELECT created_at_us FROM messages WHERE id = m.read_id) \
         FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE r.name_key = ? AND m.user_name = ?";
    /// Moves a member's read mark forward (never back) to the given id, or to the room's
    /// newest row when none is given. Binds: id, room key, id, room key, room key, user.
    pub const READ: &str = "UPDATE room_members SET read_id = CASE \
         WHEN read_id > COALESCE(?, (SELECT COALESCE(MAX(id), 0) FROM messages \
             WHERE recipient = (SELECT name FROM rooms WHERE name_key = ?))) THEN read_id \
         ELSE COALESCE(?, (SELECT COALESCE(MAX(id), 0) FROM messages \
             WHERE recipient = (SELECT name FROM rooms WHERE name_key = ?))) END \
         WHERE room_id = (SELECT id FROM rooms WHERE name_key = ?) AND user_name = ?";
}

/// An open room from the row [`sql::OPEN_ROOMS`] reads.
pub(super) fn open_room((name, members, topic): (String, i64, String)) -> OpenRoom {
    OpenRoom {
        name: Arc::from(name),
        members,
        topic,
    }
}

/// A room and its members from the rows [`sql::ROOM`] and [`sql::MEMBERS`] read.
pub(super) fn room_info(
    (_, name, topic, invite_only, moderated, topic_locked): (i64, String, String, bool, bool, bool),
    members: Vec<(String, String)>,
) -> RoomInfo {
    RoomInfo {
        name: Arc::from(name),
        topic,
        invite_only,
        moderated,
        topic_locked,
        members: members
            .into_iter()
            .map(|(user, role)| (user, Role::parse(&role)))
            .collect(),
    }
}

/// A room row as [`sql::ROOM`] reads it.
pub(super) type RoomInfoRow = (i64, String, String, bool, bool, bool);
