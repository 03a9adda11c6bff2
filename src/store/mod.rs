//! Persistence of users and messages, behind one seam: the rest of chatd only sees [`Store`].
//!
//! SQLite is the embedded default. Writes of messages go through a single writer task that
//! groups every waiting SEND into one transaction (group commit), so one fsync acknowledges
//! many messages while each ack still means "committed".

mod error;
pub mod postgres;
pub mod rooms;
mod sqlite;
mod sqlite_file;
pub mod url;

use std::sync::Arc;

pub use error::{StoreError, StoreErrorKind, StoreResult};
pub use postgres::PgStore;
pub use rooms::{
    Applied, Committed, EventKind, Flag, OpenRoom, Page, Role, RoomEvent, RoomInfo, RoomOp, RoomRefusal,
    RoomSummary, RoomWrite, Write,
};
pub use sqlite::SqliteStore;
pub use url::StoreUrl;

/// A message as stored: a row of one stream. A stream is one ordered log, named by the
/// `recipient` column: a user's inbox (a user name) or a room (its name, `#` first, as it was
/// first created). Within a stream, ids only grow in commit order, on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    pub sender: Arc<str>,
    /// The stream: the recipient's name, or the room's.
    pub recipient: Arc<str>,
    pub body: String,
    /// Server time of the commit, microseconds since the Unix epoch; authoritative for ordering
    /// together with `id`.
    pub created_at_us: i64,
    /// A timestamp the client supplied (HTTP facade), kept as given.
    pub client_timestamp: Option<String>,
    /// In a room, what changed if this row is an event (a join, a removal...) rather than a
    /// message someone said. Boxed: most rows are not events.
    pub event: Option<Box<RoomEvent>>,
    /// The live session that sent it, on this node, which is answered `OK <id>` rather than
    /// pushed its own message; 0 for none. Not stored.
    pub origin: u64,
    /// Its line as pushed, written once however many sessions it goes to. Not stored.
    pub rendered: Rendered,
}

/// A message's line as pushed to live sessions: written by the first session that pushes it,
/// then shared, so a room message is serialised once per node, not once per member.
#[derive(Default)]
pub struct Rendered(std::sync::OnceLock<Box<[u8]>>);

impl Rendered {
    pub fn get_or_init(&self, render: impl FnOnce() -> Box<[u8]>) -> &[u8] {
        self.0.get_or_init(render)
    }
}

impl Clone for Rendered {
    /// A copy of a message may be changed: it renders itself again.
    fn clone(&self) -> Rendered {
        Rendered::default()
    }
}

impl PartialEq for Rendered {
    /// A cache: it never makes two messages differ.
    fn eq(&self, _: &Rendered) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

impl Message {
    /// The room this row belongs to, if its stream is a room's.
    pub fn room(&self) -> Option<&Arc<str>> {
        self.recipient.starts_with('#').then_some(&self.recipient)
    }
}

/// The columns a [`Row`] is read from.
const COLUMNS: &str = "id, sender, recipient, body, created_at_us, client_timestamp, kind, subject";

/// The SQL of a page of a direct conversation, both directions, for either store: `mark` is
/// how it numbers its parameters (`?` for SQLite, `$` for PostgreSQL), which are the user,
/// the peer, the page's bound id and its size, in that order. Each side is read from its own
/// inbox through the recipient index, which holds the sender, so neither needs an index of its
/// own on every message; the two pages are then merged.
fn conversation_sql(page: Page, mark: char) -> (String, i64, u32) {
    let side = |recipient: u8, sender: u8, cmp: &str, order: &str| {
        let not_self = if recipient == 2 {
            format!(" AND {mark}1 <> {mark}2")
        } else {
            String::new()
        };
        format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM messages WHERE recipient = {mark}{recipient} \
             AND sender = {mark}{sender} AND id {cmp} {mark}3{not_self} ORDER BY id {order} LIMIT {mark}4) AS side{recipient}"
        )
    };
    match page {
        Page::After(id, limit) => (
            format!(
                "SELECT * FROM ({} UNION ALL {}) AS page ORDER BY id LIMIT {mark}4",
                side(1, 2, ">", "ASC"),
                side(2, 1, ">", "ASC")
            ),
            id,
            limit,
        ),
        Page::Before(id, limit) => (
            format!(
                "SELECT * FROM (SELECT * FROM ({} UNION ALL {}) AS both_sides ORDER BY id DESC LIMIT {mark}4) AS page ORDER BY id",
                side(1, 2, "<", "DESC"),
                side(2, 1, "<", "DESC")
            ),
            id,
            limit,
        ),
    }
}

/// The SQL of [`Store::last_id_before`], numbering its parameters with `mark`: the recipient,
/// the sender or NULL, the time. It walks the stream back from its newest row, so it costs
/// the rows after that time.
fn last_id_before_sql(mark: char) -> String {
    format!(
        "SELECT id FROM messages WHERE recipient = {mark}1 AND (CAST({mark}2 AS TEXT) IS NULL OR sender = {mark}2) \
         AND created_at_us < {mark}3 ORDER BY id DESC LIMIT 1"
    )
}

/// A row of `messages` as read by [`COLUMNS`].
type Row = (
    i64,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn from_row((id, sender, recipient, body, created_at_us, client_timestamp, kind, subject): Row) -> Message {
    let event = kind.as_deref().and_then(EventKind::parse).map(|kind| {
        Box::new(RoomEvent {
            kind,
            subject: Arc::from(subject.as_deref().unwrap_or(sender.as_str())),
        })
    });
    Message {
        id,
        sender: Arc::from(sender),
        recipient: Arc::from(recipient),
        body,
        created_at_us,
        client_timestamp,
        event,
        origin: 0,
        rendered: Rendered::default(),
    }
}

/// A message waiting to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: Arc<str>,
    pub recipient: Arc<str>,
    pub body: String,
    pub client_timestamp: Option<String>,
    /// The live session that sent it (see [`Message::origin`]).
    pub origin: u64,
}

/// Counts for `/info` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub messages: i64,
}

/// What removing a user deletes, in order (the first statement decides whether it existed).
const DELETE_USER: [&str; 5] = [
    "DELETE FROM users WHERE name = $1",
    "DELETE FROM tokens WHERE user_name = $1",
    "DELETE FROM room_members WHERE user_name = $1",
    "DELETE FROM room_invites WHERE user_name = $1",
    "DELETE FROM messages WHERE recipient = $1",
];

/// The store chatd runs on.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Settings that only some stores use.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the PostgreSQL pool.
    pub pool_size: u32,
    /// This node's name, recorded with each message it stores (PostgreSQL).
    pub node_id: String,
}

impl Store {
    /// Opens (creating and migrating as needed) the store named by `url`. The errors name the
    /// file or server and say what to do.
    pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<Store> {
        match StoreUrl::parse(url)? {
            StoreUrl::Postgres(url) => Ok(Store::Postgres(
                PgStore::open(&url, options.pool_size, &options.node_id).await?,
            )),
            sqlite => Ok(Store::Sqlite(SqliteStore::open(&sqlite).await?)),
        }
    }

    /// The absolute path of the SQLite database file, if the store is one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            Store::Sqlite(s) => s.path(),
            Store::Postgres(_) => None,
        }
    }

    /// Creates a user; `USER_EXISTS` if the name is taken.
    pub async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<()> {
        match self {
            Store::Sqlite(s) => s.create_user(name, password_hash).await,
            Store::Postgres(s) => s.create_user(name, password_hash).await,
        }
    }

    /// Replaces a user's password hash; false if there is no such user.
    pub async fn set_password_hash(&self, name: &str, password_hash: &str) -> StoreResult<bool> {
        match self {
            Store::Sqlite(s) => s.set_password_hash(name, password_hash).await,
            Store::Postgres(s) => s.set_password_hash(name, password_hash).await,
        }
    }

    /// Removes a user, in one transaction: the account, its tokens, its room memberships and
    /// invitations, and the direct messages sent to it. What it said to others stays theirs:
    /// their direct messages and the rooms' history keep its lines under its name. False if
    /// there is no such user.
    pub async fn delete_user(&self, name: &str) -> StoreResult<bool> {
        match self {
            Store::Sqlite(s) => s.delete_user(name).await,
            Store::Postgres(s) => s.delete_user(name).await,
        }
    }

    /// The stored password hash of a user, if the user exists.
    pub async fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        match self {
            Store::Sqlite(s) => s.password_hash(name).await,
            Store::Postgres(s) => s.password_hash(name).await,
        }
    }

    /// Up to two account names equal to `name` without case.
    pub async fn users_any_case(&self, name: &str) -> StoreResult<Vec<String>> {
        match self {
            Store::Sqlite(s) => s.users_any_case(name).await,
            Store::Postgres(s) => s.users_any_case(name).await,
        }
    }

    pub async fn user_exists(&self, name: &str) -> StoreResult<bool> {
        match self {
            Store::Sqlite(s) => s.user_exists(name).await,
            Store::Postgres(s) => s.user_exists(name).await,
        }
    }

    /// Commits all of `batch` in one transaction and returns what each write did, in the same
    /// order: direct messages with their ids, changes to rooms done or refused (a refused one
    /// writes nothing). Either the whole batch is committed or none of it is. Within each
    /// stream, rows become visible in id order, whichever process stores them. `notify`
    /// (PostgreSQL only) is sent inside the transaction, so it reaches listeners only if, and
    /// once, the batch commits.
    pub async fn commit(&self, batch: &[&Write], notify: Option<&Notify<'_>>) -> StoreResult<Vec<Applied>> {
        match self {
            Store::Sqlite(s) => s.commit(batch).await,
            Store::Postgres(s) => s.commit(batch, notify).await,
        }
    }

    /// A page of one stream (a user's inbox, or a room), oldest first.
    pub async fn stream(&self, stream: &str, page: Page) -> StoreResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.stream(stream, page, "reading the history").await,
            Store::Postgres(s) => s.stream(stream, page, "reading the history").await,
        }
    }

    /// The rooms `user` is in, with their members, unread counts and topics, by name.
    pub async fn rooms_of(&self, user: &str) -> StoreResult<Vec<RoomSummary>> {
        match self {
            Store::Sqlite(s) => s.rooms_of(user).await,
            Store::Postgres(s) => s.rooms_of(user).await,
        }
    }

    /// A room's name as shown, and `user`'s role in it if a member; `None` if there is no
    /// such room.
    pub async fn member(&self, room: &str, user: &str) -> StoreResult<Option<(Arc<str>, Option<Role>)>> {
        match self {
            Store::Sqlite(s) => s.member(room, user).await,
            Store::Postgres(s) => s.member(room, user).await,
        }
    }

    /// The names of the rooms `user` is in (the streams a session of theirs follows).
    pub async fn followed(&self, user: &str) -> StoreResult<Vec<Arc<str>>> {
        match self {
            Store::Sqlite(s) => s.followed(user).await,
            Store::Postgres(s) => s.followed(user).await,
        }
    }

    /// The rooms anyone may join (not invite-only), by name after `after` (a room's key, in
    /// lower case), at most `limit`.
    pub async fn open_rooms(&self, after: &str, limit: u32) -> StoreResult<Vec<OpenRoom>> {
        match self {
            Store::Sqlite(s) => s.open_rooms(after, limit).await,
            Store::Postgres(s) => s.open_rooms(after, limit).await,
        }
    }

    /// How many rooms anyone may join.
    pub async fn open_room_count(&self) -> StoreResult<i64> {
        match self {
            Store::Sqlite(s) => s.open_room_count().await,
            Store::Postgres(s) => s.open_room_count().await,
        }
    }

    /// A room, by its name in any case, with its settings and members.
    pub async fn room(&self, name: &str) -> StoreResult<Option<RoomInfo>> {
        match self {
            Store::Sqlite(s) => s.room(name).await,
            Store::Postgres(s) => s.room(name).await,
        }
    }

    /// Moves `user`'s read mark in the room up to `id` (its newest row if `None`), never
    /// back; false if `user` is not a member.
    pub async fn mark_read(&self, room: &str, user: &str, id: Option<i64>) -> StoreResult<bool> {
        match self {
            Store::Sqlite(s) => s.mark_read(room, user, id).await,
            Store::Postgres(s) => s.mark_read(room, user, id).await,
        }
    }

    /// Messages to `recipient` with id > `after_id`, oldest first, at most `limit`.
    pub async fn inbox(&self, recipient: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.inbox(recipient, after_id, limit).await,
            Store::Postgres(s) => s.inbox(recipient, after_id, limit).await,
        }
    }

    /// Records a login token by its SHA-256 (hex), valid until `expires_at_us`, and ends the
    /// user's oldest tokens beyond `max_per_user` (the new one included; atomically, whichever
    /// nodes issue at once) and the user's expired ones. Returns the hashes of those it ended.
    pub async fn create_token(
        &self,
        token_sha256: &str,
        user: &str,
        expires_at_us: i64,
        max_per_user: usize,
    ) -> StoreResult<Vec<String>> {
        match self {
            Store::Sqlite(s) => {
                s.create_token(token_sha256, user, expires_at_us, max_per_user)
                    .await
            }
            Store::Postgres(s) => {
                s.create_token(token_sha256, user, expires_at_us, max_per_user)
                    .await
            }
        }
    }

    /// Which of the given token hashes are of tokens that exist and have not expired.
    pub async fn live_tokens(&self, tokens: &[String]) -> StoreResult<Vec<String>> {
        match self {
            Store::Sqlite(s) => s.live_tokens(tokens).await,
            Store::Postgres(s) => s.live_tokens(tokens).await,
        }
    }

    /// Ends every token of `user` (on PostgreSQL also recording the logout for the other
    /// nodes); how many there were.
    pub async fn end_user_tokens(&self, user: &str) -> StoreResult<u64> {
        match self {
            Store::Sqlite(s) => s.end_user_tokens(user).await,
            Store::Postgres(s) => s.end_user_tokens(user).await,
        }
    }

    /// Deletes the tokens past their expiry; how many.
    pub async fn delete_expired_tokens(&self) -> StoreResult<u64> {
        match self {
            Store::Sqlite(s) => s.delete_expired_tokens().await,
            Store::Postgres(s) => s.delete_expired_tokens().await,
        }
    }

    /// The user a token was issued to and when it expires, if it exists and has not expired.
    pub async fn token_user(&self, token_sha256: &str) -> StoreResult<Option<(String, i64)>> {
        match self {
            Store::Sqlite(s) => s.token_user(token_sha256).await,
            Store::Postgres(s) => s.token_user(token_sha256).await,
        }
    }

    /// Ends a login token (by its SHA-256, hex); a token that does not exist is not an error.
    pub async fn revoke_token(&self, token_sha256: &str) -> StoreResult<()> {
        match self {
            Store::Sqlite(s) => s.revoke_token(token_sha256).await,
            Store::Postgres(s) => s.revoke_token(token_sha256).await,
        }
    }

    /// `user`'s read mark in `room` and the commit time of the row it points at; `None` if
    /// `user` is not a member.
    pub async fn read_mark(&self, room: &str, user: &str) -> StoreResult<Option<(i64, Option<i64>)>> {
        match self {
            Store::Sqlite(s) => s.read_mark(room, user).await,
            Store::Postgres(s) => s.read_mark(room, user).await,
        }
    }

    /// The newest id in `recipient`'s stream (from `sender` only, if given) committed before
    /// `micros`; 0 if none: where a stream stood at a time.
    pub async fn last_id_before(
        &self,
        recipient: &str,
        sender: Option<&str>,
        micros: i64,
    ) -> StoreResult<i64> {
        match self {
            Store::Sqlite(s) => s.last_id_before(recipient, sender, micros).await,
            Store::Postgres(s) => s.last_id_before(recipient, sender, micros).await,
        }
    }

    /// A page of the messages between `user` and `peer`, both ways, oldest first.
    pub async fn conversation(&self, user: &str, peer: &str, page: Page) -> StoreResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.conversation(user, peer, page).await,
            Store::Postgres(s) => s.conversation(user, peer, page).await,
        }
    }

    pub async fn counts(&self) -> StoreResult<Counts> {
        match self {
            Store::Sqlite(s) => s.counts().await,
            Store::Postgres(s) => s.counts().await,
        }
    }

    /// File descriptors the store holds at most: its connections (SQLite: a writer and four
    /// readers, each with the database, its WAL and shared memory, and the lock file;
    /// PostgreSQL: the pool and the LISTEN connection).
    pub fn descriptors(&self) -> u64 {
        match self {
            Store::Sqlite(_) => 5 * 3 + 1,
            Store::Postgres(s) => u64::from(s.pool().options().get_max_connections()) + 1,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// An announcement sent with a batch of messages: `payloads` turns the batch's ids (ascending)
/// into the NOTIFY payloads for `channel`. Its format belongs to whoever listens.
pub struct Notify<'a> {
    pub channel: &'a str,
    pub payloads: &'a Payloads,
}

/// Turns a committed batch's ids into announcement payloads.
pub type Payloads = dyn Fn(&[i64]) -> Vec<String> + Send + Sync;
