//! Persistence of users and messages, behind one seam: the rest of chatd only sees [`Store`].
//!
//! SQLite is the embedded default. Writes of messages go through a single writer task that
//! groups every waiting SEND into one transaction (group commit), so one fsync acknowledges
//! many messages while each ack still means "committed".

mod error;
pub mod postgres;
mod sqlite;
mod sqlite_file;
pub mod url;

use std::sync::Arc;

pub use error::{StoreError, StoreErrorKind, StoreResult};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use url::StoreUrl;

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    pub sender: Arc<str>,
    pub recipient: Arc<str>,
    pub body: String,
    /// Server time of the commit, microseconds since the Unix epoch; authoritative for ordering
    /// together with `id`.
    pub created_at_us: i64,
    /// A timestamp the client supplied (HTTP facade), kept as given.
    pub client_timestamp: Option<String>,
}

/// A message waiting to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: Arc<str>,
    pub recipient: Arc<str>,
    pub body: String,
    pub client_timestamp: Option<String>,
}

/// Counts for `/info` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub messages: i64,
}

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

    /// The stored password hash of a user, if the user exists.
    pub async fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        match self {
            Store::Sqlite(s) => s.password_hash(name).await,
            Store::Postgres(s) => s.password_hash(name).await,
        }
    }

    pub async fn user_exists(&self, name: &str) -> StoreResult<bool> {
        match self {
            Store::Sqlite(s) => s.user_exists(name).await,
            Store::Postgres(s) => s.user_exists(name).await,
        }
    }

    /// Stores all of `batch` in one transaction and returns them in the same order with their
    /// ids. Either all are committed or none is. For each recipient, messages become visible in
    /// id order, whichever process stores them. `notify` (PostgreSQL only) is sent inside
    /// the transaction, so it reaches listeners only if, and once, the batch commits.
    pub async fn insert_messages(
        &self,
        batch: &[NewMessage],
        notify: Option<&Notify<'_>>,
    ) -> StoreResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.insert_messages(batch).await,
            Store::Postgres(s) => s.insert_messages(batch, notify).await,
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

    /// Messages between `user` and `peer`, both ways, with id > `after_id`, oldest first, at
    /// most `limit`.
    pub async fn conversation(
        &self,
        user: &str,
        peer: &str,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.conversation(user, peer, after_id, limit).await,
            Store::Postgres(s) => s.conversation(user, peer, after_id, limit).await,
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
