//! The PostgreSQL store, shared by several chatd nodes. Besides users, messages and tokens it
//! carries what the nodes share: a NOTIFY per committed batch of messages (ids only, so nothing
//! depends on the payload limit), the nodes' heartbeats, and who is online on each node.
//!
//! Every operation is bounded in time: while the database is unreachable, callers get an
//! "unavailable" error within seconds instead of hanging, and the pool reconnects by itself
//! when the database is back.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};

use super::rooms::{self, Flag, Role, RoomEvent, RoomOp, RoomRow, RoomTx};
use super::{
    from_row, Applied, Committed, Counts, Message, NewMessage, Notify, Row, StoreError, StoreResult, Write,
    COLUMNS,
};

/// A row of `messages` read with the node that stored it first, then [`COLUMNS`].
type NodeRow = (
    String,
    i64,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The longest any one store operation may take before the caller is told the store is unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Waiting for a pooled connection: short, so an outage is reported quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a "log out everywhere" is remembered for the nodes to see it: far longer than
/// they take to look (seconds), and short enough that the table holds only recent ones.
const LOGOUTS_KEPT: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    node_id: Arc<str>,
}

impl PgStore {
    /// Connects (creating the database if it is missing and the URL's user may), migrates,
    /// and opens the pool. Errors say what to do: start PostgreSQL, fix the login, `createdb`.
    pub async fn open(url: &str, pool_size: u32, node_id: &str) -> anyhow::Result<PgStore> {
        // The server cancels a statement that outlives the operation bound, so a stuck one
        // does not hold its connection (and locks) after the client was answered.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("the store URL {} is not a PostgreSQL URL: {e}", redact(url)))?
            .options([("statement_timeout", format!("{}", OP_TIMEOUT.as_millis()))]);
        let server = Server::of(&options);
        // One connection first, so that the error is the real one: the pool only reports
        // "timed out" after retrying whatever went wrong.
        match connect_once(&options).await {
            Ok(()) => {}
            Err(e) if e.code().as_deref() == Some("3D000") => create_database(&options, &server).await?,
            Err(e) => return Err(server.explain(&e)),
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| server.explain(&Failure::Sqlx(e)))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the database {} failed: {e}", server.database))?;
        Ok(PgStore {
            pool,
            node_id: Arc::from(node_id),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<()> {
        bounded(
            "registering the user",
            true,
            sqlx::query("INSERT INTO users (name, password_hash, created_at_us) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(password_hash)
                .bind(chrono::Utc::now().timestamp_micros())
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    /// Replaces a user's password hash; false if there is no such user.
    pub async fn set_password_hash(&self, name: &str, password_hash: &str) -> StoreResult<bool> {
        let done = bounded(
            "changing the password",
            true,
            sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
                .bind(name)
                .bind(password_hash)
                .execute(&self.pool),
        )
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a user and what is theirs alone, in one transaction (see
    /// [`super::Store::delete_user`]); false if there is no such user.
    pub async fn delete_user(&self, name: &str) -> StoreResult<bool> {
        bounded("removing the user", true, async {
            let mut tx = self.pool.begin().await?;
            let mut removed = false;
            for (i, sql) in super::DELETE_USER.iter().enumerate() {
                let done = sqlx::query(sql).bind(name).execute(&mut *tx).await?;
                removed |= i == 0 && done.rows_affected() > 0;
            }
            tx.commit().await?;
            Ok(removed)
        })
        .await
    }

    pub async fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        bounded(
            "looking up the user",
            false,
            sqlx::query_scalar("SELECT password_hash FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool),
        )
        .await
    }

    /// Up to two account names equal to `name` without case.
    pub async fn users_any_case(&self, name: &str) -> StoreResult<Vec<String>> {
        bounded(
            "looking up the user",
            false,
            sqlx::query_scalar("SELECT name FROM users WHERE lower(name) = lower($1) LIMIT 2")
                .bind(name)
                .fetch_all(&self.pool),
        )
        .await
    }

    pub async fn user_exists(&self, name: &str) -> StoreResult<bool> {
        let found: Option<i32> = bounded(
            "looking up the user",
            false,
            sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(found.is_some())
    }

    /// Commits a batch of writes in one transaction that also sends `notify`: every direct
    /// message, and every change to a room that its checks allow (a refused one writes nothing
    /// and gets its refusal). PostgreSQL delivers the notification only if, and once, the
    /// transaction commits, and delivers the notifications of different transactions in the
    /// order they committed.
    ///
    /// Several nodes write at once, and ids come from one sequence, so on their own the rows
    /// of two nodes could commit out of id order: a reader resuming from "the last id I saw"
    /// would then skip the lower one for good. So each batch first takes a transaction lock
    /// per stream it writes to (an inbox, or a room; sorted, so two batches cannot deadlock)
    /// and only then draws its ids: two batches for one stream commit one after the other, in
    /// id order. The room's lock also serialises the checks of changes to it.
    pub async fn commit(&self, batch: &[&Write], notify: Option<&Notify<'_>>) -> StoreResult<Vec<Applied>> {
        bounded("storing the message", true, self.commit_unbounded(batch, notify)).await
    }

    async fn commit_unbounded(
        &self,
        batch: &[&Write],
        notify: Option<&Notify<'_>>,
    ) -> sqlx::Result<Vec<Applied>> {
        let direct: Vec<&NewMessage> = batch
            .iter()
            .filter_map(|w| match w {
                Write::Direct(m) => Some(m),
                Write::Room(_) => None,
            })
            .collect();
        // An inbox is locked by its user's name as it is; a room by its name in lower case.
        let room_keys: Vec<String> = batch
            .iter()
            .filter_map(|w| match w {
                Write::Room(r) => Some(rooms::room_key(&r.room)),
                Write::Direct(_) => None,
            })
            .collect();
        let streams: Vec<&str> = direct
            .iter()
            .map(|m| &*m.recipient)
            .chain(room_keys.iter().map(String::as_str))
            .collect();
        let mut tx = self.pool.begin().await?;
        // PostgreSQL evaluates a volatile function of the select list after ORDER BY, so the
        // locks are taken in key order.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM \
             (SELECT DISTINCT hashtextextended(r, 0) AS k FROM UNNEST($1::text[]) AS r) AS keys ORDER BY k",
        )
        .bind(&streams)
        .execute(&mut *tx)
        .await?;
        let mut stored = self.insert_direct(&mut tx, &direct).await?.into_iter();
        let mut said = self.insert_says(&mut tx, batch).await?;
        let mut done = Vec::with_capacity(batch.len());
        for (i, write) in batch.iter().enumerate() {
            match write {
                Write::Direct(_) => done.push(Committed::direct(stored.next().expect("one row per message"))),
                Write::Room(_) if said.contains_key(&i) => {
                    let message = said.remove(&i).expect("checked");
                    done.push(Ok(Committed {
                        room: Some((message.recipient.clone(), 0)),
                        message: Some(message),
                    }));
                }
                Write::Room(room) => {
                    let mut room_tx = PgRoomTx {
                        tx: &mut tx,
                        node: &self.node_id,
                    };
                    done.push(rooms::apply(&mut room_tx, room).await?);
                }
            }
        }
        if let Some(notify) = notify {
            let mut ids: Vec<i64> = done
                .iter()
                .filter_map(|d| d.as_ref().ok()?.message.as_ref().map(|m| m.id))
                .collect();
            ids.sort_unstable();
            for payload in (notify.payloads)(&ids) {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(notify.channel)
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(done)
    }

    /// When every change to a room in `batch` is a message (as under load), stores those its
    /// sender may send with two statements for the whole batch, one check and one insert,
    /// instead of several round trips each; returns them by their place in `batch`. The rest
    /// (a sender not in the room, a moderated room) are left to [`rooms::apply`], which says
    /// why. A batch with any other change to a room (a join, a removal) leaves every one to
    /// it, in order, so each message is checked against the changes before it.
    async fn insert_says(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        batch: &[&Write],
    ) -> sqlx::Result<std::collections::HashMap<usize, Message>> {
        let mut says = Vec::new();
        for (i, write) in batch.iter().enumerate() {
            match write {
                Write::Room(r) if matches!(r.op, RoomOp::Say { .. }) => says.push((i, r)),
                Write::Room(_) => return Ok(Default::default()),
                Write::Direct(_) => {}
            }
        }
        if says.is_empty() {
            return Ok(Default::default());
        }
        let actors: Vec<&str> = says.iter().map(|(_, r)| &*r.actor).collect();
        let keys: Vec<String> = says.iter().map(|(_, r)| rooms::room_key(&r.room)).collect();
        let allowed: Vec<(i64, String)> = sqlx::query_as(
            "SELECT t.n, r.name FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(actor, key, n) \
             JOIN rooms r ON r.name_key = t.key \
             JOIN room_members m ON m.room_id = r.id AND m.user_name = t.actor \
             WHERE NOT r.moderated OR m.role <> 'member' ORDER BY t.n",
        )
        .bind(&actors)
        .bind(&keys)
        .fetch_all(&mut **tx)
        .await?;
        let rows: Vec<(usize, NewMessage)> = allowed
            .into_iter()
            .map(|(n, name)| {
                let (i, write) = says[n as usize - 1];
                let client_timestamp = match &write.op {
                    RoomOp::Say { client_timestamp } => client_timestamp.clone(),
                    _ => None,
                };
                let row = NewMessage {
                    sender: write.actor.clone(),
                    recipient: Arc::from(name),
                    body: write.text.clone(),
                    client_timestamp,
                    origin: write.origin,
                };
                (i, row)
            })
            .collect();
        let refs: Vec<&NewMessage> = rows.iter().map(|(_, m)| m).collect();
        let stored = self.insert_direct(tx, &refs).await?;
        Ok(rows.iter().map(|(i, _)| *i).zip(stored).collect())
    }

    /// Stores direct messages with one statement, ids ascending in batch order.
    async fn insert_direct(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        batch: &[&NewMessage],
    ) -> sqlx::Result<Vec<Message>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let senders: Vec<&str> = batch.iter().map(|m| &*m.sender).collect();
        let recipients: Vec<&str> = batch.iter().map(|m| &*m.recipient).collect();
        let bodies: Vec<&str> = batch.iter().map(|m| m.body.as_str()).collect();
        let stamps: Vec<Option<&str>> = batch.iter().map(|m| m.client_timestamp.as_deref()).collect();
        // WITH ORDINALITY ... ORDER BY keeps VALUES order, so ids ascend in batch order.
        let mut rows: Vec<(i64, i64)> = sqlx::query_as(
            "INSERT INTO messages (sender, recipient, body, client_timestamp, node_id) \
             SELECT s, r, b, c, $5 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
             WITH ORDINALITY AS t(s, r, b, c, n) ORDER BY n \
             RETURNING id, created_at_us",
        )
        .bind(&senders)
        .bind(&recipients)
        .bind(&bodies)
        .bind(&stamps)
        .bind(&*self.node_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.sort_unstable();
        Ok(batch
            .iter()
            .zip(rows)
            .map(|(m, (id, created_at_us))| Message {
                id,
                sender: m.sender.clone(),
                recipient: m.recipient.clone(),
                body: m.body.clone(),
                created_at_us,
                client_timestamp: m.client_timestamp.clone(),
                event: None,
                origin: m.origin,
                rendered: Default::default(),
            })
            .collect())
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
                format!(
                    "SELECT {COLUMNS} FROM messages WHERE recipient = $1 AND id > $2 ORDER BY id LIMIT $3"
                ),
                id,
                limit,
            ),
            super::Page::Before(id, limit) => (
                format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM messages WHERE recipient = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3) AS page ORDER BY id"
                ),
                id,
                limit,
            ),
        };
        let rows: Vec<Row> = bounded(
            context,
            false,
            sqlx::query_as(&sql)
                .bind(stream)
                .bind(from)
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Records a token (by its hash) for `user`, and ends the user's oldest tokens beyond
    /// `max_per_user` (the new one included) and the user's expired ones; returns the hashes of
    /// the tokens it ended. Issues for one user take a transaction lock on that user first, so
    /// two nodes issuing at once never both keep a token over the cap; the times are the
    /// database's, so "oldest" means the same on every node.
    pub async fn create_token(
        &self,
        token_sha256: &str,
        user: &str,
        expires_at_us: i64,
        max_per_user: usize,
    ) -> StoreResult<Vec<String>> {
        bounded("issuing a token", true, async {
            let mut tx = self.pool.begin().await?;
            // Seed 1: a key space apart from the recipients' locks of insert_messages.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
                .bind(user)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO tokens (token_sha256, user_name, created_at_us, expires_at_us) \
                 VALUES ($1, $2, db_now_us(), $3)",
            )
            .bind(token_sha256)
            .bind(user)
            .bind(expires_at_us)
            .execute(&mut *tx)
            .await?;
            let ended: Vec<String> = sqlx::query_scalar(
                "DELETE FROM tokens WHERE user_name = $1 AND token_sha256 <> $2 AND (expires_at_us <= $3 \
                 OR token_sha256 IN (SELECT token_sha256 FROM tokens WHERE user_name = $1 \
                     ORDER BY token_sha256 = $2 DESC, created_at_us DESC, token_sha256 DESC OFFSET $4)) \
                 RETURNING token_sha256",
            )
            .bind(user)
            .bind(token_sha256)
            .bind(chrono::Utc::now().timestamp_micros())
            .bind(max_per_user.max(1) as i64)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ended)
        })
        .await
    }

    /// Which of `tokens` (hashes) exist and have not expired.
    pub async fn live_tokens(&self, tokens: &[String]) -> StoreResult<Vec<String>> {
        bounded(
            "checking tokens",
            false,
            sqlx::query_scalar(
                "SELECT token_sha256 FROM tokens WHERE token_sha256 = ANY($1) AND expires_at_us > $2",
            )
            .bind(tokens)
            .bind(chrono::Utc::now().timestamp_micros())
            .fetch_all(&self.pool),
        )
        .await
    }

    /// Ends every token of `user` and records, by the database's clock, that the user logged
    /// out everywhere, for the other nodes to end the user's sessions too; how many tokens
    /// there were.
    pub async fn end_user_tokens(&self, user: &str) -> StoreResult<u64> {
        bounded("logging out everywhere", true, async {
            let mut tx = self.pool.begin().await?;
            let ended = sqlx::query("DELETE FROM tokens WHERE user_name = $1")
                .bind(user)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "INSERT INTO logouts (user_name, at_us) VALUES ($1, db_now_us()) \
                 ON CONFLICT (user_name) DO UPDATE SET at_us = EXCLUDED.at_us",
            )
            .bind(user)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM logouts WHERE at_us < db_now_us() - $1")
                .bind(LOGOUTS_KEPT.as_micros() as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(ended)
        })
        .await
    }

    /// The users who logged out everywhere within `window`, each with how long ago (by the
    /// database's clock, so that no node's clock matters).
    pub async fn recent_logouts(&self, window: Duration) -> StoreResult<Vec<(String, Duration)>> {
        let rows: Vec<(String, i64)> = bounded(
            "reading logouts",
            false,
            sqlx::query_as(
                "SELECT user_name, db_now_us() - at_us FROM logouts WHERE at_us > db_now_us() - $1",
            )
            .bind(window.as_micros() as i64)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user, ago)| (user, Duration::from_micros(ago.max(0) as u64)))
            .collect())
    }

    /// Deletes expired tokens; how many.
    pub async fn delete_expired_tokens(&self) -> StoreResult<u64> {
        let done = bounded(
            "deleting expired tokens",
            true,
            sqlx::query("DELETE FROM tokens WHERE expires_at_us <= $1")
                .bind(chrono::Utc::now().timestamp_micros())
                .execute(&self.pool),
        )
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn token_user(&self, token_sha256: &str) -> StoreResult<Option<(String, i64)>> {
        bounded(
            "checking the token",
            false,
            sqlx::query_as(
                "SELECT user_name, expires_at_us FROM tokens WHERE token_sha256 = $1 AND expires_at_us > $2",
            )
            .bind(token_sha256)
            .bind(chrono::Utc::now().timestamp_micros())
            .fetch_optional(&self.pool),
        )
        .await
    }

    pub async fn revoke_token(&self, token_sha256: &str) -> StoreResult<()> {
        bounded(
            "revoking the token",
            true,
            sqlx::query("DELETE FROM tokens WHERE token_sha256 = $1")
                .bind(token_sha256)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    pub async fn last_id_before(
        &self,
        recipient: &str,
        sender: Option<&str>,
        micros: i64,
    ) -> StoreResult<i64> {
        let id: Option<i64> = bounded(
            "reading the history",
            false,
            sqlx::query_scalar(&super::last_id_before_sql('$'))
                .bind(recipient)
                .bind(sender)
                .bind(micros)
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(id.unwrap_or(0))
    }

    pub async fn conversation(&self, user: &str, peer: &str, page: super::Page) -> StoreResult<Vec<Message>> {
        let (sql, from, limit) = super::conversation_sql(page, '$');
        let rows: Vec<Row> = bounded(
            "reading the conversation",
            false,
            sqlx::query_as(&sql)
                .bind(user)
                .bind(peer)
                .bind(from)
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// A room's name as shown and `user`'s role in it; `None` if there is no such room.
    pub async fn member(&self, name: &str, user: &str) -> StoreResult<Option<(Arc<str>, Option<Role>)>> {
        let row: Option<(String, Option<String>)> = bounded(
            "reading the room",
            false,
            sqlx::query_as(&numbered(rooms::sql::MEMBER))
                .bind(user)
                .bind(rooms::room_key(name))
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(row.map(|(name, role)| (Arc::from(name), role.as_deref().map(Role::parse))))
    }

    /// Which of `users` are online on other nodes whose heartbeat is newer than `ttl`.
    pub async fn online_among(&self, ttl: Duration, users: &[&str]) -> StoreResult<Vec<String>> {
        bounded(
            "reading who is online",
            false,
            sqlx::query_scalar(
                "SELECT DISTINCT p.user_name FROM presence p JOIN nodes n ON n.node_id = p.node_id \
                 WHERE n.node_id <> $1 AND n.heartbeat_us > db_now_us() - $2 AND p.user_name = ANY($3)",
            )
            .bind(&*self.node_id)
            .bind(ttl.as_micros() as i64)
            .bind(users)
            .fetch_all(&self.pool),
        )
        .await
    }

    /// The rooms `user` is in, with their members, unread counts and topics.
    pub async fn rooms_of(&self, user: &str) -> StoreResult<Vec<super::RoomSummary>> {
        let rows: Vec<(String, i64, i64, String)> = bounded(
            "reading your rooms",
            false,
            sqlx::query_as(&numbered(rooms::sql::ROOMS_OF))
                .bind(user)
                .fetch_all(&self.pool),
        )
        .await?;
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
        let names: Vec<String> = bounded(
            "reading your rooms",
            false,
            sqlx::query_scalar(&numbered(rooms::sql::FOLLOWED))
                .bind(user)
                .fetch_all(&self.pool),
        )
        .await?;
        Ok(names.into_iter().map(Arc::from).collect())
    }

    /// The rooms anyone may join, by name after `after`, at most `limit`.
    pub async fn open_room_count(&self) -> StoreResult<i64> {
        bounded(
            "counting the rooms",
            false,
            sqlx::query_scalar(rooms::sql::OPEN_ROOM_COUNT).fetch_one(&self.pool),
        )
        .await
    }

    pub async fn open_rooms(&self, after: &str, limit: u32) -> StoreResult<Vec<super::OpenRoom>> {
        let rows: Vec<(String, i64, String)> = bounded(
            "reading the rooms",
            false,
            sqlx::query_as(&numbered(rooms::sql::OPEN_ROOMS))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(rooms::open_room).collect())
    }

    /// A room (by its name, in any case) with its settings and members.
    pub async fn room(&self, name: &str) -> StoreResult<Option<super::RoomInfo>> {
        bounded("reading the room", false, async {
            let Some(row): Option<rooms::RoomInfoRow> = sqlx::query_as(&numbered(rooms::sql::ROOM))
                .bind(rooms::room_key(name))
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(None);
            };
            let members = sqlx::query_as(&numbered(rooms::sql::MEMBERS))
                .bind(row.0)
                .fetch_all(&self.pool)
                .await?;
            Ok(Some(rooms::room_info(row, members)))
        })
        .await
    }

    /// Moves `user`'s read mark in room `name` up to `id` (its newest row if `None`); false
    /// if the user is not a member.
    pub async fn read_mark(&self, name: &str, user: &str) -> StoreResult<Option<(i64, Option<i64>)>> {
        bounded(
            "reading the read mark",
            false,
            sqlx::query_as(&numbered(rooms::sql::READ_MARK))
                .bind(rooms::room_key(name))
                .bind(user)
                .fetch_optional(&self.pool),
        )
        .await
    }

    pub async fn mark_read(&self, name: &str, user: &str, id: Option<i64>) -> StoreResult<bool> {
        let key = rooms::room_key(name);
        let done = bounded(
            "marking the room read",
            true,
            sqlx::query(&numbered(rooms::sql::READ))
                .bind(id)
                .bind(&key)
                .bind(id)
                .bind(&key)
                .bind(&key)
                .bind(user)
                .execute(&self.pool),
        )
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn counts(&self) -> StoreResult<Counts> {
        let (users, messages): (i64, i64) = bounded(
            "counting",
            false,
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM users), (SELECT COALESCE(MAX(id), 0) FROM messages)",
            )
            .fetch_one(&self.pool),
        )
        .await?;
        Ok(Counts { users, messages })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- what the nodes share ------------------------------------------------------------

    /// Messages by id, in id order, with the node that stored each.
    pub async fn messages_by_id(&self, ids: &[i64]) -> StoreResult<Vec<Message>> {
        let rows: Vec<Row> = bounded(
            "reading announced messages",
            false,
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM messages WHERE id = ANY($1) ORDER BY id"
            ))
            .bind(ids)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Messages stored by any node (this one too) that this node has not seen: for each node in `seen`,
    /// those above its last seen id; for any other node, those above `baseline`. Oldest first,
    /// at most `limit`. One node's messages commit in id order (one writer per node), so this
    /// is exactly what a lost LISTEN connection missed.
    pub async fn unseen_messages(
        &self,
        seen: &[(String, i64)],
        baseline: i64,
        limit: i64,
    ) -> StoreResult<Vec<(String, Message)>> {
        let nodes: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        let ids: Vec<i64> = seen.iter().map(|(_, id)| *id).collect();
        let rows: Vec<NodeRow> = bounded(
            "catching up on messages",
            false,
            sqlx::query_as(
                "SELECT m.node_id, m.id, m.sender, m.recipient, m.body, m.created_at_us, m.client_timestamp, \
                 m.kind, m.subject \
                 FROM (SELECT node_id FROM nodes UNION SELECT UNNEST($1::text[])) AS n(node) \
                 LEFT JOIN UNNEST($1::text[], $2::bigint[]) AS s(node, seen) ON s.node = n.node \
                 CROSS JOIN LATERAL ( \
                     SELECT * FROM messages WHERE node_id = n.node AND id > COALESCE(s.seen, $3) \
                     ORDER BY id LIMIT $4) AS m \
                 ORDER BY m.id LIMIT $4",
            )
            .bind(&nodes)
            .bind(&ids)
            .bind(baseline)
            .bind(limit)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(node, id, s, r, b, t, c, k, j)| (node, from_row((id, s, r, b, t, c, k, j))))
            .collect())
    }

    pub async fn max_message_id(&self) -> StoreResult<i64> {
        bounded(
            "reading the newest message id",
            false,
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM messages").fetch_one(&self.pool),
        )
        .await
    }

    /// Announces this node (alive now) and forgets what it had said about its users before,
    /// e.g. before it crashed and restarted.
    pub async fn join_cluster(&self) -> StoreResult<()> {
        bounded("joining the cluster", true, async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO nodes (node_id, heartbeat_us, started_us) VALUES ($1, db_now_us(), db_now_us()) \
                 ON CONFLICT (node_id) DO UPDATE SET heartbeat_us = db_now_us(), started_us = db_now_us()",
            )
            .bind(&*self.node_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM presence WHERE node_id = $1")
                .bind(&*self.node_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
    }

    /// Records this node's heartbeat and the changes to who is online on it.
    pub async fn sync_presence(&self, online: &[String], offline: &[String]) -> StoreResult<()> {
        bounded("updating presence", true, async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO nodes (node_id, heartbeat_us, started_us) VALUES ($1, db_now_us(), db_now_us()) \
                 ON CONFLICT (node_id) DO UPDATE SET heartbeat_us = db_now_us()",
            )
            .bind(&*self.node_id)
            .execute(&mut *tx)
            .await?;
            if !offline.is_empty() {
                sqlx::query("DELETE FROM presence WHERE node_id = $1 AND user_name = ANY($2)")
                    .bind(&*self.node_id)
                    .bind(offline)
                    .execute(&mut *tx)
                    .await?;
            }
            if !online.is_empty() {
                sqlx::query(
                    "INSERT INTO presence (node_id, user_name) SELECT $1, u FROM UNNEST($2::text[]) AS u \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&*self.node_id)
                .bind(online)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// Users online on other nodes whose heartbeat is newer than `ttl`, after `after` in byte
    /// order (the order Rust sorts names in, whatever the database's collation), at most `limit`.
    pub async fn online_elsewhere(
        &self,
        ttl: Duration,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        bounded(
            "reading who is online",
            false,
            sqlx::query_scalar(
                "SELECT DISTINCT p.user_name COLLATE \"C\" AS name FROM presence p \
                 JOIN nodes n ON n.node_id = p.node_id \
                 WHERE n.node_id <> $1 AND n.heartbeat_us > db_now_us() - $2 AND p.user_name COLLATE \"C\" > $3 \
                 ORDER BY name LIMIT $4",
            )
            .bind(&*self.node_id)
            .bind(ttl.as_micros() as i64)
            .bind(after)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.pool),
        )
        .await
    }

    /// Removes this node and its presence (on a clean shutdown), and nodes long dead.
    pub async fn leave_cluster(&self, forget_after: Duration) -> StoreResult<()> {
        bounded(
            "leaving the cluster",
            true,
            sqlx::query("DELETE FROM nodes WHERE node_id = $1 OR heartbeat_us < db_now_us() - $2")
                .bind(&*self.node_id)
                .bind(forget_after.as_micros() as i64)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }
}

/// SQL written with `?` placeholders, numbered for PostgreSQL (`$1`, `$2`...). Only for the
/// shared statements of [`rooms::sql`], which hold no `?` but placeholders.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A room change's reads and writes, in the batch's transaction.
struct PgRoomTx<'a, 't> {
    tx: &'a mut sqlx::Transaction<'t, sqlx::Postgres>,
    /// This node, recorded with each row: the other nodes' catch-up reads rows by node.
    node: &'a str,
}

impl RoomTx for PgRoomTx<'_, '_> {
    async fn room(&mut self, key: &str) -> sqlx::Result<Option<RoomRow>> {
        let row: Option<(i64, String, bool, bool, bool)> = sqlx::query_as(
            "SELECT id, name, invite_only, moderated, topic_locked FROM rooms WHERE name_key = $1",
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
        sqlx::query_scalar("INSERT INTO rooms (name_key, name) VALUES ($1, $2) RETURNING id")
            .bind(key)
            .bind(name)
            .fetch_one(&mut **self.tx)
            .await
    }

    async fn role(&mut self, room: i64, user: &str) -> sqlx::Result<Option<Role>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM room_members WHERE room_id = $1 AND user_name = $2")
                .bind(room)
                .bind(user)
                .fetch_optional(&mut **self.tx)
                .await?;
        Ok(role.as_deref().map(Role::parse))
    }

    async fn member_count(&mut self, room: i64) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM room_members WHERE room_id = $1")
            .bind(room)
            .fetch_one(&mut **self.tx)
            .await
    }

    async fn rooms_of(&mut self, user: &str) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM room_members WHERE user_name = $1")
            .bind(user)
            .fetch_one(&mut **self.tx)
            .await
    }

    async fn add_member(&mut self, room: i64, user: &str, role: Role, read_id: i64) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO room_members (room_id, user_name, role, read_id) VALUES ($1, $2, $3, $4)")
            .bind(room)
            .bind(user)
            .bind(role.as_str())
            .bind(read_id)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn remove_member(&mut self, room: i64, user: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_name = $2")
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn set_role(&mut self, room: i64, user: &str, role: Role) -> sqlx::Result<()> {
        sqlx::query("UPDATE room_members SET role = $1 WHERE room_id = $2 AND user_name = $3")
            .bind(role.as_str())
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn invited(&mut self, room: i64, user: &str) -> sqlx::Result<bool> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM room_invites WHERE room_id = $1 AND user_name = $2")
                .bind(room)
                .bind(user)
                .fetch_optional(&mut **self.tx)
                .await?;
        Ok(found.is_some())
    }

    async fn invite(&mut self, room: i64, user: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO room_invites (room_id, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn uninvite(&mut self, room: i64, user: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM room_invites WHERE room_id = $1 AND user_name = $2")
            .bind(room)
            .bind(user)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn set_topic(&mut self, room: i64, topic: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE rooms SET topic = $1 WHERE id = $2")
            .bind(topic)
            .bind(room)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn set_flag(&mut self, room: i64, flag: &Flag, on: bool) -> sqlx::Result<()> {
        let column = rooms::flag_column(flag);
        sqlx::query(&format!("UPDATE rooms SET {column} = $1 WHERE id = $2"))
            .bind(on)
            .bind(room)
            .execute(&mut **self.tx)
            .await?;
        Ok(())
    }

    async fn user_exists(&mut self, user: &str) -> sqlx::Result<bool> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
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
        sqlx::query_as(
            "INSERT INTO messages (sender, recipient, body, client_timestamp, kind, subject, node_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, created_at_us",
        )
        .bind(sender)
        .bind(stream)
        .bind(body)
        .bind(client_timestamp)
        .bind(event.map(|e| e.kind.as_str()))
        .bind(event.map(|e| e.subject.to_string()))
        .bind(self.node)
        .fetch_one(&mut **self.tx)
        .await
    }
}

/// Runs a store operation with the [`OP_TIMEOUT`] bound.
async fn bounded<T>(
    context: &'static str,
    write: bool,
    op: impl Future<Output = sqlx::Result<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError::from_sqlx(context, write, e)),
        Err(_) => Err(StoreError::timed_out(context, write, OP_TIMEOUT)),
    }
}

/// Where a PostgreSQL URL points, for messages.
struct Server {
    host: String,
    port: u16,
    user: String,
    database: String,
}

impl Server {
    fn of(options: &PgConnectOptions) -> Server {
        let user = options.get_username().to_string();
        Server {
            host: options.get_host().to_string(),
            port: options.get_port(),
            database: options.get_database().unwrap_or(&user).to_string(),
            user,
        }
    }

    /// A connection error in words, with what to do about it.
    fn explain(&self, e: &Failure) -> anyhow::Error {
        let Server {
            host,
            port,
            user,
            database,
        } = self;
        let at = format!("PostgreSQL at {host} port {port}");
        match e {
            Failure::TimedOut => anyhow::anyhow!(
                "{at} did not answer within {}s: check the host and port, and that no firewall drops the connection",
                CONNECT_TIMEOUT.as_secs()
            ),
            Failure::Sqlx(sqlx::Error::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "{at} refused the connection: is PostgreSQL running and listening there? \
                     (check with `pg_isready -h {host} -p {port}`)"
                )
            }
            Failure::Sqlx(sqlx::Error::Io(io)) => anyhow::anyhow!("cannot reach {at}: {io}"),
            Failure::Sqlx(sqlx::Error::Database(db)) => match db.code().as_deref() {
                Some(c) if c.starts_with("28") => anyhow::anyhow!(
                    "{at} refused the login of user {user:?}: {} (check the user and password in \
                     the URL, and pg_hba.conf)",
                    db.message()
                ),
                Some("3D000") => anyhow::anyhow!(
                    "the database {database:?} does not exist on {at}; create it with \
                     `createdb -h {host} -p {port} {database}`"
                ),
                _ => anyhow::anyhow!("{at} refused the connection to {database:?}: {}", db.message()),
            },
            Failure::Sqlx(other) => anyhow::anyhow!("cannot connect to {at}: {other}"),
        }
    }
}

/// How long the first connection may take before the server is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Failure {
    TimedOut,
    Sqlx(sqlx::Error),
}

impl Failure {
    fn code(&self) -> Option<String> {
        match self {
            Failure::Sqlx(sqlx::Error::Database(db)) => db.code().map(|c| c.to_string()),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::Sqlx(e)
    }
}

async fn connect_once(options: &PgConnectOptions) -> Result<(), Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::Sqlx(e)),
        Err(_) => Err(Failure::TimedOut),
    }
}

/// Creates the missing database named in `options`, connected to the `postgres` maintenance
/// database as the same user; if that user may not, says who can and how.
async fn create_database(options: &PgConnectOptions, server: &Server) -> anyhow::Result<()> {
    let Server {
        host,
        port,
        user,
        database,
    } = server;
    let maintenance = options.clone().database("postgres");
    let created = async {
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&maintenance))
            .await
            .map_err(|_| Failure::TimedOut)??;
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        let result = sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        match result {
            Ok(_) => Ok(()),
            // Another node created it at the same moment.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(()),
            Err(e) => Err(Failure::Sqlx(e)),
        }
    };
    match created.await {
        Ok(()) => {
            tracing::info!("created the PostgreSQL database {database:?} on {host} port {port}");
            Ok(())
        }
        Err(e) => {
            let why = match &e {
                Failure::Sqlx(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                    format!("user {user:?} may not create databases")
                }
                Failure::Sqlx(sqlx::Error::Database(db)) => db.message().to_string(),
                Failure::Sqlx(other) => other.to_string(),
                Failure::TimedOut => "the server did not answer".to_string(),
            };
            anyhow::bail!(
                "the database {database:?} does not exist on PostgreSQL at {host} port {port}, and \
                 chatd could not create it ({why}); create it as a user who may, e.g. \
                 `createdb -h {host} -p {port} -O {user} {database}`, then start chatd again"
            )
        }
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}
