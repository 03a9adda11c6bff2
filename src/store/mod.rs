//! Persistence of users and messages, behind one seam: the rest of chatd only sees [`Store`].
//!
//! SQLite is the embedded default. Writes of messages go through a single writer task that
//! groups every waiting SEND into one transaction (group commit), so one fsync acknowledges
//! many messages while each ack still means "committed".

pub mod postgres;
mod sqlite;

use std::sync::Arc;

use crate::error::{ChatError, ChatResult};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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
    /// Opens (creating and migrating as needed) the store named by `url`.
    pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<Store> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::open(url).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Store::Postgres(
                PgStore::open(url, options.pool_size, &options.node_id).await?,
            ))
        } else {
            anyhow::bail!(
                "unsupported store URL {url:?}: expected sqlite://PATH, sqlite::memory: or postgres://..."
            )
        }
    }

    /// The shared PostgreSQL store, when this node is one of several.
    pub fn postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Postgres(pg) => Some(pg),
            Store::Sqlite(_) => None,
        }
    }

    /// Creates a user; `USER_EXISTS` if the name is taken.
    pub async fn create_user(&self, name: &str, password_hash: &str) -> ChatResult<()> {
        match self {
            Store::Sqlite(s) => s.create_user(name, password_hash).await,
            Store::Postgres(s) => s.create_user(name, password_hash).await,
        }
    }

    /// The stored password hash of a user, if the user exists.
    pub async fn password_hash(&self, name: &str) -> ChatResult<Option<String>> {
        match self {
            Store::Sqlite(s) => s.password_hash(name).await,
            Store::Postgres(s) => s.password_hash(name).await,
        }
    }

    pub async fn user_exists(&self, name: &str) -> ChatResult<bool> {
        match self {
            Store::Sqlite(s) => s.user_exists(name).await,
            Store::Postgres(s) => s.user_exists(name).await,
        }
    }

    /// Stores all of `batch` in one transaction and returns them in the same order with their ids.
    /// Either all are committed or none is.
    pub async fn insert_messages(&self, batch: &[NewMessage]) -> ChatResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.insert_messages(batch).await,
            Store::Postgres(s) => s.insert_messages(batch).await,
        }
    }

    /// Messages to `recipient` with id > `after_id`, oldest first, at most `limit`.
    pub async fn inbox(&self, recipient: &str, after_id: i64, limit: u32) -> ChatResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.inbox(recipient, after_id, limit).await,
            Store::Postgres(s) => s.inbox(recipient, after_id, limit).await,
        }
    }

    /// Records a login token by its SHA-256 (hex), valid until `expires_at_us`.
    pub async fn create_token(&self, token_sha256: &str, user: &str, expires_at_us: i64) -> ChatResult<()> {
        match self {
            Store::Sqlite(s) => s.create_token(token_sha256, user, expires_at_us).await,
            Store::Postgres(s) => s.create_token(token_sha256, user, expires_at_us).await,
        }
    }

    /// The user a token was issued to and when it expires, if it exists and has not expired.
    pub async fn token_user(&self, token_sha256: &str) -> ChatResult<Option<(String, i64)>> {
        match self {
            Store::Sqlite(s) => s.token_user(token_sha256).await,
            Store::Postgres(s) => s.token_user(token_sha256).await,
        }
    }

    /// Ends a login token (by its SHA-256, hex); a token that does not exist is not an error.
    pub async fn revoke_token(&self, token_sha256: &str) -> ChatResult<()> {
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
    ) -> ChatResult<Vec<Message>> {
        match self {
            Store::Sqlite(s) => s.conversation(user, peer, after_id, limit).await,
            Store::Postgres(s) => s.conversation(user, peer, after_id, limit).await,
        }
    }

    pub async fn counts(&self) -> ChatResult<Counts> {
        match self {
            Store::Sqlite(s) => s.counts().await,
            Store::Postgres(s) => s.counts().await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// Maps a database error to what the client sees: a lost or refused connection makes the store
/// unavailable (retry later); anything else is an internal failure.
pub(crate) fn store_error(context: &str, err: sqlx::Error) -> ChatError {
    let unreachable = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08), a login refused (28), insufficient resources
        // (53), operator intervention such as an administrator's shutdown or terminate (57),
        // and a database not accepting connections (55000).
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            ["08", "28", "53", "57"].iter().any(|class| c.starts_with(class)) || c == "55000"
        }),
        _ => false,
    };
    if unreachable {
        ChatError::unavailable(context, err)
    } else {
        ChatError::internal(context, err)
    }
}
