//! What makes several chatd nodes on one PostgreSQL one community:
//!
//! - the **relay** listens on [`CHANNEL`] for the ids other nodes commit, reads those rows and
//!   pushes them to this node's sessions. If its LISTEN connection is lost it reconnects and
//!   catches up on every node's messages after the last id it saw from that node, so no live
//!   push is silently lost while this node is up;
//! - the **presence** task keeps this node's heartbeat and its online users in the store, so
//!   WHO on any node lists everyone. A node that dies stops its heartbeat, and its users drop
//!   out of WHO within [`PRESENCE_TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ChatResult;
use crate::hub::Hub;
use crate::store::postgres::CHANNEL;
use crate::store::{Message, PgStore};

/// How often a node says it is alive and syncs who is online on it.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node whose heartbeat is older than this is dead: its users are no longer online.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);
/// Every this many heartbeats the presence rows are rewritten whole, whatever happened.
const FULL_SYNC_EVERY: u32 = 15;
/// Dead nodes' rows are removed after this long.
const FORGET_DEAD_NODES: Duration = Duration::from_secs(3600);
/// Catch-up reads this many messages per query.
const CATCH_UP_PAGE: i64 = 1000;

/// Starts the relay and the presence task; both end on `shutdown`.
pub fn start(store: PgStore, hub: Hub, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(relay(store.clone(), hub.clone(), shutdown.clone())),
        tokio::spawn(presence(store, hub, shutdown)),
    ]
}

/// Per origin node, the newest message id delivered from it.
#[derive(Default)]
struct Seen {
    by_node: HashMap<String, i64>,
    /// Messages of nodes not in `by_node` are new above this id.
    baseline: i64,
}

impl Seen {
    fn is_new(&self, node: &str, id: i64) -> bool {
        id > self.by_node.get(node).copied().unwrap_or(self.baseline)
    }

    fn record(&mut self, node: &str, id: i64) {
        let last = self.by_node.entry(node.to_string()).or_insert(id);
        *last = (*last).max(id);
    }
}

async fn relay(store: PgStore, hub: Hub, shutdown: CancellationToken) {
    let mut seen: Option<Seen> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = listen(&store) => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot LISTEN for other nodes' messages");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Listening now: whatever commits from here on is announced. Before going on, deliver
        // what was committed while this node was not listening.
        let ready = match seen.as_mut() {
            None => store.max_message_id().await.map(|baseline| {
                seen = Some(Seen {
                    baseline,
                    ..Seen::default()
                });
            }),
            Some(seen) => catch_up(&store, &hub, seen).await,
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "catching up on other nodes' messages failed; retrying");
            continue;
        }
        let seen = seen.as_mut().expect("set once connected");
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.try_recv() => received,
            };
            let outcome = match received {
                Ok(Some(notification)) => {
                    relay_announcement(&store, &hub, seen, notification.payload()).await
                }
                Ok(None) => {
                    tracing::warn!("lost the LISTEN connection; reconnecting and catching up");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; reconnecting and catching up");
                    break;
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "reading announced messages failed; reconnecting and catching up");
                break;
            }
        }
    }
}

async fn listen(store: &PgStore) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(store.pool()).await?;
    // Report a lost connection (try_recv -> None) instead of silently reconnecting, so the
    // catch-up above always runs.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Delivers the messages named in one announcement (`<node> <id> <id> ...`).
async fn relay_announcement(store: &PgStore, hub: &Hub, seen: &mut Seen, payload: &str) -> ChatResult<()> {
    let mut parts = payload.split(' ');
    let Some(node) = parts.next() else { return Ok(()) };
    if node == store.node_id() {
        // This node delivered its own messages as it committed them.
        return Ok(());
    }
    let ids: Vec<i64> = parts
        .filter_map(|id| id.parse().ok())
        .filter(|&id| seen.is_new(node, id))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    for message in store.messages_by_id(&ids).await? {
        seen.record(node, message.id);
        deliver(hub, message);
    }
    Ok(())
}

async fn catch_up(store: &PgStore, hub: &Hub, seen: &mut Seen) -> ChatResult<()> {
    let mut caught_up = 0usize;
    loop {
        let known: Vec<(String, i64)> = seen.by_node.iter().map(|(n, id)| (n.clone(), *id)).collect();
        let page = store
            .unseen_messages(&known, seen.baseline, CATCH_UP_PAGE)
            .await?;
        let full = page.len() as i64 == CATCH_UP_PAGE;
        for (node, message) in page {
            if seen.is_new(&node, message.id) {
                seen.record(&node, message.id);
                deliver(hub, message);
                caught_up += 1;
            }
        }
        if !full {
            break;
        }
    }
    if caught_up > 0 {
        tracing::info!(messages = caught_up, "caught up on messages from other nodes");
    }
    Ok(())
}

fn deliver(hub: &Hub, message: Message) {
    hub.deliver(&Arc::new(message));
}

async fn presence(store: PgStore, hub: Hub, shutdown: CancellationToken) {
    let mut synced: HashSet<Arc<str>> = HashSet::new();
    let mut joined = false;
    let mut beats = 0u32;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => beats += 1,
            _ = hub.presence_changed() => {
                // Let a burst of logins settle into one write.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if beats >= FULL_SYNC_EVERY {
            beats = 0;
            joined = false;
        }
        if !joined {
            if let Err(e) = store.join_cluster().await {
                tracing::warn!(error = %e, "cannot record this node's presence; retrying");
                continue;
            }
            joined = true;
            synced.clear();
        }
        let now: HashSet<Arc<str>> = hub.online_users().into_iter().collect();
        let online: Vec<String> = now.difference(&synced).map(|u| u.to_string()).collect();
        let offline: Vec<String> = synced.difference(&now).map(|u| u.to_string()).collect();
        match store.sync_presence(&online, &offline).await {
            Ok(()) => synced = now,
            Err(e) => tracing::warn!(error = %e, "cannot update presence; retrying"),
        }
    }
    if let Err(e) = store.leave_cluster(FORGET_DEAD_NODES).await {
        tracing::warn!(error = %e, "could not remove this node's presence; it expires by itself");
    }
}
