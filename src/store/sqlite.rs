//! The embedded SQLite store: WAL journal, `synchronous=FULL`, one writer connection (so writes
//! never meet "database is locked") and a small pool of readers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{store_error, Counts, Message, NewMessage};
use crate::error::{ChatError, ChatResult, Code};

type MessageRow = (i64, String, String, String, i64, Option<String>);

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &str) -> anyhow::Result<SqliteStore> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // The writer's one connection is local and always there: no ping before each use.
            .test_before_acquire(false)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        // An in-memory database lives in its one connection, so it must also serve reads.
        let readers = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.read_only(true))
                .await?
        };
        Ok(SqliteStore { writer, readers })
    }

    pub async fn create_user(&self, name: &str, password_hash: &str) -> ChatResult<()> {
        let result = sqlx::query("INSERT INTO users (name, password_hash, created_at_us) VALUES (?, ?, ?)")
            .bind(name)
            .bind(password_hash)
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(&self.writer)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(ChatError::new(
                Code::UserExists,
                format!("{name} is already registered"),
            )),
            Err(e) => Err(store_error("registering the user", e)),
        }
    }

    pub async fn password_hash(&self, name: &str) -> ChatResult<Option<String>> {
        sqlx::query_scalar("SELECT password_hash FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| store_error("looking up the user", e))
    }

    pub async fn user_exists(&self, name: &str) -> ChatResult<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| store_error("looking up the user", e))?;
        Ok(found.is_some())
    }

    pub async fn insert_messages(&self, batch: &[NewMessage]) -> ChatResult<Vec<Message>> {
        let now = chrono::Utc::now().timestamp_micros();
        // The whole batch is one bound JSON array and one statement: prepared once and cached
        // whatever the batch size, no limit on bound variables, and, being one statement, its
        // own transaction: all rows commit together (with the fsync of synchronous=FULL)
        // before the statement reports success, in one round trip to SQLite's thread.
        let rows: Vec<(&str, &str, &str, Option<&str>)> = batch
            .iter()
            .map(|m| {
                (
                    &*m.sender,
                    &*m.recipient,
                    m.body.as_str(),
                    m.client_timestamp.as_deref(),
                )
            })
            .collect();
        let rows = serde_json::to_string(&rows).expect("strings serialise");
        let mut ids = sqlx::query_scalar::<_, i64>(
            "INSERT INTO messages (sender, recipient, body, created_at_us, client_timestamp) \
             SELECT value ->> 0, value ->> 1, value ->> 2, ?1, value ->> 3 FROM json_each(?2) ORDER BY key \
             RETURNING id",
        )
        .bind(now)
        .bind(&rows)
        .fetch_all(&self.writer)
        .await
        .map_err(|e| store_error("storing the message", e))?;
        // Rows get increasing ids in `key` order; RETURNING's order is unspecified, so sort to
        // pair them up again.
        ids.sort_unstable();
        Ok(batch
            .iter()
            .zip(ids)
            .map(|(m, id)| Message {
                id,
                sender: m.sender.clone(),
                recipient: m.recipient.clone(),
                body: m.body.clone(),
                created_at_us: now,
                client_timestamp: m.client_timestamp.clone(),
            })
            .collect())
    }

    pub async fn inbox(&self, recipient: &str, after_id: i64, limit: u32) -> ChatResult<Vec<Message>> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT id, sender, recipient, body, created_at_us, client_timestamp FROM messages \
             WHERE recipient = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(recipient)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| store_error("reading the inbox", e))?;
        let recipient: Arc<str> = Arc::from(recipient);
        Ok(rows
            .into_iter()
            .map(|(id, sender, _, body, created_at_us, client_timestamp)| Message {
                id,
                sender: Arc::from(sender),
                recipient: recipient.clone(),
                body,
                created_at_us,
                client_timestamp,
            })
            .collect())
    }

    /// Records a token (by its hash) for `user`, and forgets expired ones.
    pub async fn create_token(&self, token_sha256: &str, user: &str, expires_at_us: i64) -> ChatResult<()> {
        let now = chrono::Utc::now().timestamp_micros();
        sqlx::query("DELETE FROM tokens WHERE expires_at_us <= ?")
            .bind(now)
            .execute(&self.writer)
            .await
            .map_err(|e| store_error("issuing a token", e))?;
        sqlx::query(
            "INSERT INTO tokens (token_sha256, user_name, created_at_us, expires_at_us) VALUES (?, ?, ?, ?)",
        )
        .bind(token_sha256)
        .bind(user)
        .bind(now)
        .bind(expires_at_us)
        .execute(&self.writer)
        .await
        .map_err(|e| store_error("issuing a token", e))?;
        Ok(())
    }

    /// The user and expiry of an unexpired token.
    pub async fn token_user(&self, token_sha256: &str) -> ChatResult<Option<(String, i64)>> {
        sqlx::query_as(
            "SELECT user_name, expires_at_us FROM tokens WHERE token_sha256 = ? AND expires_at_us > ?",
        )
        .bind(token_sha256)
        .bind(chrono::Utc::now().timestamp_micros())
        .fetch_optional(&self.readers)
        .await
        .map_err(|e| store_error("checking the token", e))
    }

    pub async fn revoke_token(&self, token_sha256: &str) -> ChatResult<()> {
        sqlx::query("DELETE FROM tokens WHERE token_sha256 = ?")
            .bind(token_sha256)
            .execute(&self.writer)
            .await
            .map_err(|e| store_error("revoking the token", e))?;
        Ok(())
    }

    pub async fn conversation(
        &self,
        user: &str,
        peer: &str,
        after_id: i64,
        limit: u32,
    ) -> ChatResult<Vec<Message>> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT id, sender, recipient, body, created_at_us, client_timestamp FROM messages \
             WHERE ((recipient = ?1 AND sender = ?2) OR (recipient = ?2 AND sender = ?1)) AND id > ?3 \
             ORDER BY id LIMIT ?4",
        )
        .bind(user)
        .bind(peer)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| store_error("reading the conversation", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, sender, recipient, body, created_at_us, client_timestamp)| Message {
                    id,
                    sender: Arc::from(sender),
                    recipient: Arc::from(recipient),
                    body,
                    created_at_us,
                    client_timestamp,
                },
            )
            .collect())
    }

    pub async fn counts(&self) -> ChatResult<Counts> {
        let (users, messages): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users), (SELECT COALESCE(MAX(id), 0) FROM messages)",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(|e| store_error("counting", e))?;
        Ok(Counts { users, messages })
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}
