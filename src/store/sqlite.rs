//! The embedded SQLite store: WAL journal, `synchronous=FULL`, one writer connection (so writes
//! never meet "database is locked") and a small pool of readers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, QueryBuilder, Sqlite, SqlitePool};

use super::{store_error, Counts, Message, NewMessage};
use crate::error::{ChatError, ChatResult, Code};

/// Rows per INSERT statement: 4 bound values each stays far below SQLite's variable limit.
const ROWS_PER_INSERT: usize = 500;

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
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(|e| store_error("storing the message", e))?;
        // BEGIN IMMEDIATE takes the write lock up front: no upgrade that could fail half-way.
        conn.execute("BEGIN IMMEDIATE")
            .await
            .map_err(|e| store_error("storing the message", e))?;
        let mut ids = Vec::with_capacity(batch.len());
        let mut failed = None;
        for chunk in batch.chunks(ROWS_PER_INSERT) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO messages (sender, recipient, body, created_at_us, client_timestamp) ",
            );
            insert.push_values(chunk, |mut row, m| {
                row.push_bind(&*m.sender)
                    .push_bind(&*m.recipient)
                    .push_bind(&m.body)
                    .push_bind(now)
                    .push_bind(m.client_timestamp.as_deref());
            });
            insert.push(" RETURNING id");
            match insert.build_query_scalar::<i64>().fetch_all(&mut *conn).await {
                Ok(mut chunk_ids) => {
                    // Rows of one INSERT get increasing ids in VALUES order; RETURNING's
                    // order is unspecified, so sort to pair them up again.
                    chunk_ids.sort_unstable();
                    ids.extend(chunk_ids);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let outcome = match failed {
            None => conn.execute("COMMIT").await.map(|_| ()),
            Some(e) => Err(e),
        };
        if let Err(e) = outcome {
            // The transaction may still be open; roll back so the connection stays usable.
            let _ = conn.execute("ROLLBACK").await;
            return Err(store_error("storing the message", e));
        }
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
