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
use sqlx::PgPool;

use super::{store_error, Counts, Message, NewMessage};
use crate::error::{ChatError, ChatResult, Code};

/// The channel committed message ids are announced on.
pub const CHANNEL: &str = "chatd_messages";
/// The longest any one store operation may take before the caller is told the store is unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Waiting for a pooled connection: short, so an outage is reported quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Ids per NOTIFY payload: ~20 bytes each stays well under PostgreSQL's 8000-byte limit.
const IDS_PER_NOTIFY: usize = 300;

type MessageRow = (i64, String, String, String, i64, Option<String>);
/// A message row with the node that stored it first.
type NodeMessageRow = (String, i64, String, String, String, i64, Option<String>);

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    node_id: Arc<str>,
}

impl PgStore {
    pub async fn open(url: &str, pool_size: u32, node_id: &str) -> anyhow::Result<PgStore> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
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

    pub async fn create_user(&self, name: &str, password_hash: &str) -> ChatResult<()> {
        let insert =
            sqlx::query("INSERT INTO users (name, password_hash, created_at_us) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(password_hash)
                .bind(chrono::Utc::now().timestamp_micros())
                .execute(&self.pool);
        match tokio::time::timeout(OP_TIMEOUT, insert).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(sqlx::Error::Database(e))) if e.is_unique_violation() => Err(ChatError::new(
                Code::UserExists,
                format!("{name} is already registered"),
            )),
            Ok(Err(e)) => Err(store_error("registering the user", e)),
            Err(_) => Err(timed_out("registering the user")),
        }
    }

    pub async fn password_hash(&self, name: &str) -> ChatResult<Option<String>> {
        bounded(
            "looking up the user",
            sqlx::query_scalar("SELECT password_hash FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool),
        )
        .await
    }

    pub async fn user_exists(&self, name: &str) -> ChatResult<bool> {
        let found: Option<i32> = bounded(
            "looking up the user",
            sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(found.is_some())
    }

    /// Stores the batch in one transaction that also announces the new ids on [`CHANNEL`];
    /// PostgreSQL delivers the announcement only if, and once, the transaction commits.
    pub async fn insert_messages(&self, batch: &[NewMessage]) -> ChatResult<Vec<Message>> {
        bounded("storing the message", self.insert_messages_unbounded(batch)).await
    }

    async fn insert_messages_unbounded(&self, batch: &[NewMessage]) -> sqlx::Result<Vec<Message>> {
        let senders: Vec<&str> = batch.iter().map(|m| &*m.sender).collect();
        let recipients: Vec<&str> = batch.iter().map(|m| &*m.recipient).collect();
        let bodies: Vec<&str> = batch.iter().map(|m| m.body.as_str()).collect();
        let stamps: Vec<Option<&str>> = batch.iter().map(|m| m.client_timestamp.as_deref()).collect();
        let mut tx = self.pool.begin().await?;
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
        .fetch_all(&mut *tx)
        .await?;
        rows.sort_unstable();
        for ids in rows.chunks(IDS_PER_NOTIFY) {
            let mut payload = String::with_capacity(self.node_id.len() + ids.len() * 12);
            payload.push_str(&self.node_id);
            for (id, _) in ids {
                payload.push(' ');
                payload.push_str(&id.to_string());
            }
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
            })
            .collect())
    }

    pub async fn inbox(&self, recipient: &str, after_id: i64, limit: u32) -> ChatResult<Vec<Message>> {
        let rows: Vec<MessageRow> = bounded(
            "reading the inbox",
            sqlx::query_as(
                "SELECT id, sender, recipient, body, created_at_us, client_timestamp FROM messages \
                 WHERE recipient = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(recipient)
            .bind(after_id)
            .bind(limit as i64)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(message).collect())
    }

    pub async fn create_token(&self, token_sha256: &str, user: &str, expires_at_us: i64) -> ChatResult<()> {
        let now = chrono::Utc::now().timestamp_micros();
        bounded("issuing a token", async {
            sqlx::query("DELETE FROM tokens WHERE expires_at_us <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?;
            sqlx::query(
                "INSERT INTO tokens (token_sha256, user_name, created_at_us, expires_at_us) VALUES ($1, $2, $3, $4)",
            )
            .bind(token_sha256)
            .bind(user)
            .bind(now)
            .bind(expires_at_us)
            .execute(&self.pool)
            .await
        })
        .await?;
        Ok(())
    }

    pub async fn token_user(&self, token_sha256: &str) -> ChatResult<Option<(String, i64)>> {
        bounded(
            "checking the token",
            sqlx::query_as(
                "SELECT user_name, expires_at_us FROM tokens WHERE token_sha256 = $1 AND expires_at_us > $2",
            )
            .bind(token_sha256)
            .bind(chrono::Utc::now().timestamp_micros())
            .fetch_optional(&self.pool),
        )
        .await
    }

    pub async fn revoke_token(&self, token_sha256: &str) -> ChatResult<()> {
        bounded(
            "revoking the token",
            sqlx::query("DELETE FROM tokens WHERE token_sha256 = $1")
                .bind(token_sha256)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    pub async fn conversation(
        &self,
        user: &str,
        peer: &str,
        after_id: i64,
        limit: u32,
    ) -> ChatResult<Vec<Message>> {
        let rows: Vec<MessageRow> = bounded(
            "reading the conversation",
            sqlx::query_as(
                "SELECT id, sender, recipient, body, created_at_us, client_timestamp FROM messages \
                 WHERE ((recipient = $1 AND sender = $2) OR (recipient = $2 AND sender = $1)) AND id > $3 \
                 ORDER BY id LIMIT $4",
            )
            .bind(user)
            .bind(peer)
            .bind(after_id)
            .bind(limit as i64)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(message).collect())
    }

    pub async fn counts(&self) -> ChatResult<Counts> {
        let (users, messages): (i64, i64) = bounded(
            "counting",
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
    pub async fn messages_by_id(&self, ids: &[i64]) -> ChatResult<Vec<Message>> {
        let rows: Vec<MessageRow> = bounded(
            "reading announced messages",
            sqlx::query_as(
                "SELECT id, sender, recipient, body, created_at_us, client_timestamp FROM messages \
                 WHERE id = ANY($1) ORDER BY id",
            )
            .bind(ids)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows.into_iter().map(message).collect())
    }

    /// Messages stored by other nodes that this node has not seen: for each node in `seen`,
    /// those above its last seen id; for any other node, those above `baseline`. Oldest first,
    /// at most `limit`. One node's messages commit in id order (one writer per node), so this
    /// is exactly what a lost LISTEN connection missed.
    pub async fn unseen_messages(
        &self,
        seen: &[(String, i64)],
        baseline: i64,
        limit: i64,
    ) -> ChatResult<Vec<(String, Message)>> {
        let nodes: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        let ids: Vec<i64> = seen.iter().map(|(_, id)| *id).collect();
        let rows: Vec<NodeMessageRow> = bounded(
            "catching up on messages",
            sqlx::query_as(
                "SELECT m.node_id, m.id, m.sender, m.recipient, m.body, m.created_at_us, m.client_timestamp \
                 FROM (SELECT node_id FROM nodes UNION SELECT UNNEST($1::text[])) AS n(node) \
                 LEFT JOIN UNNEST($1::text[], $2::bigint[]) AS s(node, seen) ON s.node = n.node \
                 CROSS JOIN LATERAL ( \
                     SELECT * FROM messages WHERE node_id = n.node AND id > COALESCE(s.seen, $3) \
                     ORDER BY id LIMIT $4) AS m \
                 WHERE n.node <> $5 \
                 ORDER BY m.id LIMIT $4",
            )
            .bind(&nodes)
            .bind(&ids)
            .bind(baseline)
            .bind(limit)
            .bind(&*self.node_id)
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(node, id, s, r, b, t, c)| (node, message((id, s, r, b, t, c))))
            .collect())
    }

    pub async fn max_message_id(&self) -> ChatResult<i64> {
        bounded(
            "reading the newest message id",
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM messages").fetch_one(&self.pool),
        )
        .await
    }

    /// Announces this node (alive now) and forgets what it had said about its users before,
    /// e.g. before it crashed and restarted.
    pub async fn join_cluster(&self) -> ChatResult<()> {
        bounded("joining the cluster", async {
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
    pub async fn sync_presence(&self, online: &[String], offline: &[String]) -> ChatResult<()> {
        bounded("updating presence", async {
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

    /// Users online on other nodes whose heartbeat is newer than `ttl`.
    pub async fn online_elsewhere(&self, ttl: Duration) -> ChatResult<Vec<String>> {
        bounded(
            "reading who is online",
            sqlx::query_scalar(
                "SELECT DISTINCT p.user_name FROM presence p JOIN nodes n ON n.node_id = p.node_id \
                 WHERE n.node_id <> $1 AND n.heartbeat_us > db_now_us() - $2",
            )
            .bind(&*self.node_id)
            .bind(ttl.as_micros() as i64)
            .fetch_all(&self.pool),
        )
        .await
    }

    /// Removes this node and its presence (on a clean shutdown), and nodes long dead.
    pub async fn leave_cluster(&self, forget_after: Duration) -> ChatResult<()> {
        bounded(
            "leaving the cluster",
            sqlx::query("DELETE FROM nodes WHERE node_id = $1 OR heartbeat_us < db_now_us() - $2")
                .bind(&*self.node_id)
                .bind(forget_after.as_micros() as i64)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }
}

fn message((id, sender, recipient, body, created_at_us, client_timestamp): MessageRow) -> Message {
    Message {
        id,
        sender: Arc::from(sender),
        recipient: Arc::from(recipient),
        body,
        created_at_us,
        client_timestamp,
    }
}

/// Runs a store operation with the [`OP_TIMEOUT`] bound.
async fn bounded<T>(context: &str, op: impl Future<Output = sqlx::Result<T>>) -> ChatResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(store_error(context, e)),
        Err(_) => Err(timed_out(context)),
    }
}

fn timed_out(context: &str) -> ChatError {
    ChatError::unavailable(context, format!("no answer within {OP_TIMEOUT:?}"))
}
