//! The embedded SQLite store: WAL journal, `synchronous=FULL`, one writer connection (so writes
//! never meet "database is locked") and a small pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::rooms::{self, Flag, Role, RoomEvent, RoomRow, RoomTx};
use super::sqlite_file::DbFile;
use super::url::StoreUrl;
use super::{from_row, Committed, Counts, Message, NewMessage, Row, StoreError, StoreResult, Write, COLUMNS};

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

    /// Replaces a user's password hash; false if there is no such user.
    pub async fn set_password_hash(&self, name: &str, password_hash: &str) -> StoreResult<bool> {
        self.check_file()?;
        let done = sqlx::query("UPDATE users SET password_hash = ? WHERE name = ?")
            .bind(password_hash)
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(|e| StoreError::from_sqlx("changing the password", true, e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a user and what is theirs alone, in one transaction (see
    /// [`super::Store::delete_user`]); false if there is no such user.
    pub async fn delete_user(&self, name: &str) -> StoreResult<bool> {
        self.check_file()?;
        let failed = |e| StoreError::from_sqlx("removing the user", true, e);
        let mut tx = self.writer.begin().await.map_err(failed)?;
        let mut removed = false;
        for (i, sql) in super::DELETE_USER.iter().enumerate() {
            let done = sqlx::query(&sql.replace("$1", "?"))
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            removed |= i == 0 && done.rows_affected() > 0;
        }
        tx.commit().await.map_err(failed)?;
        Ok(removed)
    }

    pub async fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT password_hash FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("looking up the user", false, e))
    }

    /// Up to two account names equal to `name` without case.
    pub async fn users_any_case(&self, name: &str) -> StoreResult<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM users WHERE lower(name) = lower(?) LIMIT 2")
            .bind(name)
            .fetch_all(&self.readers)
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

    /// Commits a batch of writes in one transaction: every direct message, and every change to
    /// a room that its checks allow (a refused one writes nothing and gets its refusal).
    pub async fn commit(&self, batch: &[&Write]) -> StoreResult<Vec<super::Applied>> {
        self.check_file()?;
        let failed = |e| StoreError::from_sqlx("storing the message", true, e);
        let now = chrono::Utc::now().timestamp_micros();
        let direct: Vec<&NewMessage> = batch
            .iter()
            .filter_map(|w| match w {
                Write::Direct(m) => Some(m),
                Write::Room(_) => None,
            })
            .collect();
        let mut done = Vec::with_capacity(batch.len());
        if direct.len() == batch.len() {
            // Only direct messages: one statement, its own transaction.
            let stored = insert_direct(&self.writer, &direct, now).await.map_err(failed)?;
            done.extend(stored.into_iter().map(Committed::direct));
        } else {
            let mut tx = self.writer.begin().await.map_err(failed)?;
            let mut stored = insert_direct(&mut *tx, &direct, now)
                .await
                .map_err(failed)?
                .into_iter();
            for write in batch {
                match write {
                    Write::Direct(_) => {
                        done.push(Committed::direct(stored.next().expect("one row per message")))
                    }
                    Write::Room(room) => {
                        let mut room_tx = SqliteRoomTx { tx: &mut tx, now };
                        done.push(rooms::apply(&mut room_tx, room).await.map_err(failed)?);
                    }
                }
            }
            tx.commit().await.map_err(failed)?;
        }
        // Committed, but into the file that was opened: if that is no longer the database's
        // path, nobody will read these rows again, so they must not be acknowledged.
        self.check_file()?;
        Ok(done)
    }

    pub async fn inbox(&self, recipient: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Message>> {
        self.stream(
            recipient,
            super::Page::After(after_id, limit),
            "reading the inbox",
        )
        .await
    }

    /// A page of one stream (an inbox or a room), oldest first.
    pub async fn stream(
        &self,
        stream: &str,
        page: super::Page,
        context: &'static str,
    ) -> StoreResult<Vec<Message>> {
        let (sql, from, limit) = match page {
            super::Page::After(id, limit) => (
                format!("SELECT {COLUMNS} FROM messages WHERE recipient = ? AND id > ? ORDER BY id LIMIT ?"),
                id,
                limit,
            ),
            super::Page::Before(id, limit) => (
                format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM messages WHERE recipient = ? AND id < ? \
                     ORDER BY id DESC LIMIT ?) ORDER BY id"
                ),
                id,
                limit,
            ),
        };
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(stream)
            .bind(from)
            .bind(limit)
            .fetch_all(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx(context, false, e))?;
        Ok(rows.into_iter().map(from_row).collect())
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

    pub async fn last_id_before(
        &self,
        recipient: &str,
        sender: Option<&str>,
        micros: i64,
    ) -> StoreResult<i64> {
        let id: Option<i64> = sqlx::query_scalar(&super::last_id_before_sql('?'))
            .bind(recipient)
            .bind(sender)
            .bind(micros)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading the history", false, e))?;
        Ok(id.unwrap_or(0))
    }

    pub async fn conversation(&self, user: &str, peer: &str, page: super::Page) -> StoreResult<Vec<Message>> {
        let (sql, from, limit) = super::conversation_sql(page, '?');
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(user)
            .bind(peer)
            .bind(from)
            .bind(limit)
            .fetch_all(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading the conversation", false, e))?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// A room's name as shown and `user`'s role in it; `None` if there is no such room.
    pub async fn member(&self, name: &str, user: &str) -> StoreResult<Option<(Arc<str>, Option<Role>)>> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(rooms::sql::MEMBER)
            .bind(user)
            .bind(rooms::room_key(name))
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading the room", false, e))?;
        Ok(row.map(|(name, role)| (Arc::from(name), role.as_deref().map(Role::parse))))
    }

    /// The rooms `user` is in, with their members, unread counts and topics.
    pub async fn rooms_of(&self, user: &str) -> StoreResult<Vec<super::RoomSummary>> {
        let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(rooms::sql::ROOMS_OF)
            .bind(user)
            .fetch_all(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading your rooms", false, e))?;
        Ok(rows
            .into_iter()
            .map(|(name, members, unread, topic)| super::RoomSummary {
                name: Arc::from(name),
                members,
                unread,
                topic,
            })
            .collect())
    }

    /// The names of the rooms `user` is in.
    pub async fn followed(&self, user: &str) -> StoreResult<Vec<Arc<str>>> {
        let names: Vec<String> = sqlx::query_scalar(rooms::sql::FOLLOWED)
            .bind(user)
            .fetch_all(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading your rooms", false, e))?;
        Ok(names.into_iter().map(Arc::from).collect())
    }

    /// The rooms anyone may join, by name after `after`, at most `limit`.
    pub async fn open_rooms(&self, after: &str, limit: u32) -> StoreResult<Vec<super::OpenRoom>> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(rooms::sql::OPEN_ROOMS)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading the rooms", false, e))?;
        Ok(rows.into_iter().map(rooms::open_room).collect())
    }

    pub async fn open_room_count(&self) -> StoreResult<i64> {
        sqlx::query_scalar(rooms::sql::OPEN_ROOM_COUNT)
            .fetch_one(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("counting the rooms", false, e))
    }

    /// A room (by its name, in any case) with its settings and members.
    pub async fn room(&self, name: &str) -> StoreResult<Option<super::RoomInfo>> {
        let failed = |e| StoreError::from_sqlx("reading the room", false, e);
        let Some(row): Option<rooms::RoomInfoRow> = sqlx::query_as(rooms::sql::ROOM)
            .bind(rooms::room_key(name))
            .fetch_optional(&self.readers)
            .await
            .map_err(failed)?
        else {
            return Ok(None);
        };
        let members = sqlx::query_as(rooms::sql::MEMBERS)
            .bind(row.0)
            .fetch_all(&self.readers)
            .await
            .map_err(failed)?;
        Ok(Some(rooms::room_info(row, members)))
    }

    /// Moves `user`'s read mark in room `name` up to `id` (its newest row if `None`); false
    /// if the user is not a member.
    pub async fn read_mark(&self, name: &str, user: &str) -> StoreResult<Option<(i64, Option<i64>)>> {
        sqlx::query_as(rooms::sql::READ_MARK)
            .bind(rooms::room_key(name))
            .bind(user)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| StoreError::from_sqlx("reading the read mark", false, e))
    }

    pub async fn mark_read(&self, name: &str, user: &str, id: Option<i64>) -> StoreResult<bool> {
        let key = rooms::room_key(name);
        let done = sqlx::query(rooms::sql::READ)
            .bind(id)
            .bind(&key)
            .bind(id)
            .bind(&key)
            .bind(&key)
            .bind(user)
            .execute(&self.writer)
            .await
            .map_err(|e| StoreError::from_sqlx("marking the room read", true, e))?;
        Ok(done.rows_affected() > 0)
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

/// Stores direct messages with one statement: the whole batch is one bound JSON array, so it
/// is prepared once and cached whatever the batch size, with no limit on bound variables.
async fn insert_direct<'e, E>(exec: E, batch: &[&NewMessage], now: i64) -> sqlx::Result<Vec<Message>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    if batch.is_empty() {
        return Ok(Vec::new());
    }
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
    // No RETURNING: it would hand each new id back from SQLite's worker thread as a row of
    // its own. The ids are consecutive instead: one connection writes (the file is locked
    // for this process, and this is its one writer), and one INSERT ... SELECT gives each
    // row the next id in turn, in `key` order, so the last id and the count say them all.
    let done = sqlx::query(
        "INSERT INTO messages (sender, recipient, body, created_at_us, client_timestamp) \
         SELECT value ->> 0, value ->> 1, value ->> 2, ?1, value ->> 3 FROM json_each(?2) ORDER BY key",
    )
    .bind(now)
    .bind(&rows)
    .execute(exec)
    .await?;
    let count = batch.len() as i64;
    if done.rows_affected() != count as u64 {
        return Err(sqlx::Error::Protocol(format!(
            "stored {} of {count} messages",
            done.rows_affected()
        )));
    }
    let last = done.last_insert_rowid();
    let ids = (last - count + 1)..=last;
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
            event: None,
            origin: m.origin,
            rendered: Default::default(),
        })
        .collect())
}

/// A room change's reads and writes, in the writer's transaction.
struct SqliteRoomTx<'a, 't> {
    tx: &'a mut sqlx::Transaction<'t, sqlx::Sqlite>,
    now: i64,
}

impl RoomTx for SqliteRoomTx<'_, '_> {
    async fn room(&mut self, key: &str) -> sqlx::Result<Option<RoomRow>> {
        let row: Option<(i64, String, bool, bool, bool)> = sqlx::query_as(
            "SELECT id, name, invite_only, moderated, topic_locked FROM rooms WHERE name_key = ?",
        )
        .bind(key)
        .fetch_optional(&mut **self.tx)
        .await?;
        Ok(
            row.map(|(id, name, invite_only, moderated, topic_locked)| RoomRow {
                id,
                name,
                invite_only,
                moderated,
                topic_locked,
            }),
        )
    }

    async fn create_room(&mut self, key: &str, name: &str) -> sqlx::Result<i64> {
        sqlx::query_scalar("INSERT INTO rooms (name_key, name, created_at_us) VALUES (?, ?, ?) RETURNING id")
            .bind(key)
            .bind(name)
            .bind(self.now)
            .fetch_one(&mut **self.tx)
            .await
    }

    async fn role(&mut self, room: i64, user: &str) -> sqlx::Result<Option<Role>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM room_members WHERE room_id = ? AND user_name = ?")
                .bind(room)
                .bind(user)
                .fetch_optional(&mut **self.tx)
                .await?;
        Ok(role.as_deref().map(Role::parse))
    }

    async fn member_count(&mut self, room: i64) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM room_members WHERE room_id = ?")
            .bind(room)
            .fetch_one(&mut **self.tx)
            .await
    }

    async fn rooms_of(&mut self, user: &str) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM room_members WHERE user_name = ?")
            .bind(user)
            .fetch_one(&mut **self.tx)
            .await
    }

    async fn add_member(&mut self, room: i64, user: &str, role: Role, read_id: i64) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO room_members (room_id, user_name, role, joined_at_us, read_id) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(room)
        .bind(user)
        .bind(role.as_str())
        .bind(self.now)
        .bind(read_id)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn remove_member(&mut self, room: i64, user: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM room_members WHERE room_id = ? AND user_name = ?")
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn set_role(&mut self, room: i64, user: &str, role: Role) -> sqlx::Result<()> {
        sqlx::query("UPDATE room_members SET role = ? WHERE room_id = ? AND user_name = ?")
            .bind(role.as_str())
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn invited(&mut self, room: i64, user: &str) -> sqlx::Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM room_invites WHERE room_id = ? AND user_name = ?")
                .bind(room)
                .bind(user)
                .fetch_optional(&mut **self.tx)
                .await?;
        Ok(found.is_some())
    }

    async fn invite(&mut self, room: i64, user: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT OR IGNORE INTO room_invites (room_id, user_name) VALUES (?, ?)")
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn uninvite(&mut self, room: i64, user: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM room_invites WHERE room_id = ? AND user_name = ?")
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn set_topic(&mut self, room: i64, topic: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE rooms SET topic = ? WHERE id = ?")
            .bind(topic)
            .bind(room)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn set_flag(&mut self, room: i64, flag: &Flag, on: bool) -> sqlx::Result<()> {
        let column = rooms::flag_column(flag);
        sqlx::query(&format!("UPDATE rooms SET {column} = ? WHERE id = ?"))
            .bind(on)
            .bind(room)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn user_exists(&mut self, user: &str) -> sqlx::Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = ?")
            .bind(user)
            .fetch_optional(&mut **self.tx)
            .await?;
        Ok(found.is_some())
    }

    async fn insert_row(
        &mut self,
        stream: &str,
        sender: &str,
        body: &str,
        client_timestamp: Option<&str>,
        event: Option<&RoomEvent>,
    ) -> sqlx::Result<(i64, i64)> {
        let id = sqlx::query_scalar(
            "INSERT INTO messages (sender, recipient, body, created_at_us, client_timestamp, kind, subject) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(sender)
        .bind(stream)
        .bind(body)
        .bind(self.now)
        .bind(client_timestamp)
        .bind(event.map(|e| e.kind.as_str()))
        .bind(event.map(|e| &*e.subject))
        .fetch_one(&mut **self.tx)
        .await?;
        Ok((id, self.now))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(sender: &str, recipient: &str, body: &str) -> Write {
        Write::Direct(NewMessage {
            sender: Arc::from(sender),
            recipient: Arc::from(recipient),
            body: body.to_string(),
            client_timestamp: None,
            origin: 0,
        })
    }

    /// The ids a commit answers with are the rows' own, batch after batch, also after the
    /// newest row was deleted (AUTOINCREMENT never gives an id again).
    #[tokio::test]
    async fn a_batch_is_answered_with_the_ids_its_rows_got() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&StoreUrl::SqliteFile(dir.path().join("t.db")))
            .await
            .unwrap();
        let mut answered = Vec::new();
        for round in 0..3 {
            let writes: Vec<Write> = (0..50)
                .map(|i| {
                    direct(
                        "alice",
                        if i % 2 == 0 { "bob" } else { "carol" },
                        &format!("{round}-{i}"),
                    )
                })
                .collect();
            let batch: Vec<&Write> = writes.iter().collect();
            for applied in store.commit(&batch).await.unwrap() {
                let message = applied.unwrap().message.unwrap();
                answered.push((message.id, message.recipient.to_string(), message.body));
            }
            // A gap: the newest row goes, and the next batch starts past it.
            sqlx::query("DELETE FROM messages WHERE id = (SELECT max(id) FROM messages)")
                .execute(&store.writer)
                .await
                .unwrap();
            answered.pop();
        }
        let stored: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, recipient, body FROM messages ORDER BY id")
                .fetch_all(&store.writer)
                .await
                .unwrap();
        assert_eq!(stored, answered);
        assert_eq!(stored.len(), 147);
        store.close().await;
    }
}
