//! The embedded SQLite store: WAL journal, `synchronous=FULL`, one writer connection (so writes
//! never meet "database is locked") and a small pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::sqlite_file::DbFile;
use super::url::StoreUrl;
use super::{Counts, Message, NewMessage, StoreError, StoreResult};

type MessageRow = (i64, String, String, String, i64, Option<String>);

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// The locked database file; `None` in memory.
    file: Option<Arc<DbFile>>,
}

impl SqliteStore {
    /// Opens the store at `location` (a file, locked for this process, or memory), creating
    /// and migrating it as needed.
    pub async fn open(location: &StoreUrl) -> anyhow::Result<SqliteStore> {
        let (options, file) = match location {
            StoreUrl::SqliteMemory => (SqliteConnectOptions::from_str("sqlite::memory:")?, None),
            StoreUrl::SqliteFile(path) => {
                let file = DbFile::lock(path)?;
                (SqliteConnectOptions::new().filename(path), Some(Arc::new(file)))
            }
            StoreUrl::Postgres(_) => anyhow::bail!("not a SQLite URL"),
        };
        let in_memory = file.is_none();
        let created = file.as_ref().is_some_and(|f| !f.path().exists());
        let options = options
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let failed = |doing: &str, e: &dyn std::fmt::Display| match &file {
            Some(f) => open_error(f.path(), doing, e),
            None => anyhow::anyhow!("{doing} the in-memory database failed: {e}"),
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // The writer's one connection is local and always there: no ping before each use.
            .test_before_acquire(false)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(|e| failed("opening", &sqlite_cause(&e)))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| failed("migrating", &e))?;
        // An in-memory database lives in its one connection, so it must also serve reads.
        let readers = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.read_only(true))
                .await
                .map_err(|e| failed("opening", &sqlite_cause(&e)))?
        };
        if let Some(file) = &file {
            file.remember()
                .map_err(|e| failed("looking at", &super::sqlite_file::describe(&e)))?;
            DbFile::watch(file);
            if created {
                tracing::info!("created a new database at {}", file.path().display());
            }
        }
        Ok(SqliteStore {
            writer,
            readers,
            file,
        })
    }

    /// The database file's absolute path; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref().map(DbFile::path)
    }

    /// Fails if the database file was deleted or replaced since it was opened, so that no
    /// write is acknowledged into a file that is gone. One stat(2); nothing in memory.
    pub fn check_file(&self) -> StoreResult<()> {
        match &self.file {
            Some(file) => file.check(),
            None => Ok(()),
        }
    }

    pub async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<()> {
        self.check_file()?;
        let result = sqlx::query("INSERT INTO users (name, password_hash, created_at_us) VALUES (?, ?, ?)")
            .bind(name)
            .bind(password_hash)
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(&self.writer)
            .await;
        result.map_err(|e| StoreError::from_sqlx("registering the user", true, e))?;
        self.check_file()
    }

    pub async fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT password_hash FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("looking up the user", false, e))
    }

    pub async fn user_exists(&self, name: &str) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("looking up the user", false, e))?;
        Ok(found.is_some())
    }

    pub async fn insert_messages(&self, batch: &[NewMessage]) -> StoreResult<Vec<Message>> {
        self.check_file()?;
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
        .map_err(|e| StoreError::from_sqlx("storing the message", true, e))?;
        // Committed, but into the file that was opened: if that is no longer the database's
        // path, nobody will read these rows again, so they must not be acknowledged.
        self.check_file()?;
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

    pub async fn inbox(&self, recipient: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Message>> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT id, sender, recipient, body, created_at_us, client_timestamp FROM messages \
             WHERE recipient = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(recipient)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| StoreError::from_sqlx("reading the inbox", false, e))?;
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

    /// Records a token (by its hash) for `user`, and ends the user's oldest tokens beyond
    /// `max_per_user` (the new one included) and the user's expired ones; returns the hashes of
    /// the tokens it ended. One transaction on the one writer connection, so two issues for
    /// one user never both keep a token over the cap.
    pub async fn create_token(
        &self,
        token_sha256: &str,
        user: &str,
        expires_at_us: i64,
        max_per_user: usize,
    ) -> StoreResult<Vec<String>> {
        let failed = |e| StoreError::from_sqlx("issuing a token", true, e);
        let now = chrono::Utc::now().timestamp_micros();
        let mut tx = self.writer.begin().await.map_err(failed)?;
        sqlx::query(
            "INSERT INTO tokens (token_sha256, user_name, created_at_us, expires_at_us) VALUES (?, ?, ?, ?)",
        )
        .bind(token_sha256)
        .bind(user)
        .bind(now)
        .bind(expires_at_us)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        let ended: Vec<String> = sqlx::query_scalar(
            "DELETE FROM tokens WHERE user_name = ?1 AND token_sha256 <> ?2 AND (expires_at_us <= ?3 \
             OR token_sha256 IN (SELECT token_sha256 FROM tokens WHERE user_name = ?1 \
                 ORDER BY token_sha256 = ?2 DESC, created_at_us DESC, token_sha256 DESC LIMIT -1 OFFSET ?4)) \
             RETURNING token_sha256",
        )
        .bind(user)
        .bind(token_sha256)
        .bind(now)
        .bind(max_per_user.max(1) as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(ended)
    }

    /// Which of `tokens` (hashes) exist and have not expired.
    pub async fn live_tokens(&self, tokens: &[String]) -> StoreResult<Vec<String>> {
        let tokens = serde_json::to_string(tokens).expect("strings serialise");
        sqlx::query_scalar(
            "SELECT token_sha256 FROM tokens WHERE token_sha256 IN (SELECT value FROM json_each(?1)) \
             AND expires_at_us > ?2",
        )
        .bind(tokens)
        .bind(chrono::Utc::now().timestamp_micros())
        .fetch_all(&self.readers)
        .await
        .map_err(|e| StoreError::from_sqlx("checking tokens", false, e))
    }

    /// Ends every token of `user`; how many there were.
    pub async fn end_user_tokens(&self, user: &str) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM tokens WHERE user_name = ?")
            .bind(user)
            .execute(&self.writer)
            .await
            .map_err(|e| StoreError::from_sqlx("ending the tokens", true, e))?;
        Ok(done.rows_affected())
    }

    /// Deletes expired tokens; how many.
    pub async fn delete_expired_tokens(&self) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM tokens WHERE expires_at_us <= ?")
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(&self.writer)
            .await
            .map_err(|e| StoreError::from_sqlx("deleting expired tokens", true, e))?;
        Ok(done.rows_affected())
    }

    /// The user and expiry of an unexpired token.
    pub async fn token_user(&self, token_sha256: &str) -> StoreResult<Option<(String, i64)>> {
        sqlx::query_as(
            "SELECT user_name, expires_at_us FROM tokens WHERE token_sha256 = ? AND expires_at_us > ?",
        )
        .bind(token_sha256)
        .bind(chrono::Utc::now().timestamp_micros())
        .fetch_optional(&self.readers)
        .await
        .map_err(|e| StoreError::from_sqlx("checking the token", false, e))
    }

    pub async fn revoke_token(&self, token_sha256: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM tokens WHERE token_sha256 = ?")
            .bind(token_sha256)
            .execute(&self.writer)
            .await
            .map_err(|e| StoreError::from_sqlx("revoking the token", true, e))?;
        Ok(())
    }

    pub async fn conversation(
        &self,
        user: &str,
        peer: &str,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
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
        .map_err(|e| StoreError::from_sqlx("reading the conversation", false, e))?;
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

    pub async fn counts(&self) -> StoreResult<Counts> {
        let (users, messages): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users), (SELECT COALESCE(MAX(id), 0) FROM messages)",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(|e| StoreError::from_sqlx("counting", false, e))?;
        Ok(Counts { users, messages })
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
        if let Some(file) = &self.file {
            file.release();
        }
    }
}

/// The cause of a failed SQLite open, once: sqlx's text repeats SQLite's message.
fn sqlite_cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => super::sqlite_file::describe(io),
        other => other.to_string(),
    }
}

/// An error opening the database at `path` that says why, looking at the file itself when
/// SQLite only says "unable to open database file".
fn open_error(path: &Path, doing: &str, cause: &dyn std::fmt::Display) -> anyhow::Error {
    let why = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Err(e) if path.exists() => super::sqlite_file::describe(&e),
        _ => cause.to_string(),
    };
    anyhow::anyhow!("{doing} the database {} failed: {why}", path.display())
}
