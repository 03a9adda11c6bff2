//! The relay of a node in a cluster: listens on the announcement channel for the ids every
//! node commits (this node's own too), and pushes those messages to this node's sessions in
//! the order PostgreSQL hands the announcements out, which is commit order.
//!
//! If its LISTEN connection is lost it reconnects and catches up on every node's messages
//! after the last id it saw from that node (one writer per node commits that node's ids in
//! increasing order, so this is exact), so no live push is silently lost while this node is up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::announcement::{Announcement, CHANNEL};
use super::OwnMessages;
use crate::hub::Hub;
use crate::store::{PgStore, StoreResult};

/// Catch-up reads this many messages per query.
const CATCH_UP_PAGE: i64 = 1000;
/// Announcements relayed together at most.
const ANNOUNCEMENTS_AT_ONCE: usize = 256;
/// Messages read by id in one query at most.
const READ_AT_ONCE: usize = 10_000;

/// Per origin node, the newest message id delivered from it.
#[derive(Default)]
struct Seen {
    by_node: HashMap<String, i64>,
    /// When catching up, messages of nodes not in `by_node` are new above this id: the newest
    /// id when this node first listened.
    baseline: i64,
}

impl Seen {
    /// Whether an announced id is new. Announcements arrive in commit order, and each node
    /// commits its ids in increasing order, so anything from a node not seen yet is new.
    fn is_new(&self, node: &str, id: i64) -> bool {
        self.by_node.get(node).is_none_or(|&last| id > last)
    }

    fn record(&mut self, node: &str, id: i64) {
        let last = self.by_node.entry(node.to_string()).or_insert(id);
        *last = (*last).max(id);
    }
}

pub(super) async fn relay(store: PgStore, hub: Hub, own: Arc<OwnMessages>, shutdown: CancellationToken) {
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
            Some(seen) => {
                // This node's own messages committed meanwhile are read back with the rest.
                own.clear();
                catch_up(&store, &hub, seen).await
            }
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
                Ok(Some(first)) => {
                    // Take every announcement already received along with it, so that under
                    // load one store read serves many batches instead of one read each.
                    let mut payloads = vec![first.payload().to_owned()];
                    while payloads.len() < ANNOUNCEMENTS_AT_ONCE {
                        match listener.next_buffered() {
                            Some(more) => payloads.push(more.payload().to_owned()),
                            None => break,
                        }
                    }
                    relay_announcements(&store, &hub, &own, seen, &payloads).await
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

/// Delivers the messages named in announcements received in commit order: this node's own
/// from what its writer kept, the rest (and any of its own it no longer has) read from the
/// store in one query. Delivered in id order, which for each recipient is commit order.
async fn relay_announcements(
    store: &PgStore,
    hub: &Hub,
    own: &OwnMessages,
    seen: &mut Seen,
    payloads: &[String],
) -> StoreResult<()> {
    let mut missing = Vec::new();
    let mut mine = Vec::new();
    let mut announced: Vec<(&str, i64)> = Vec::new();
    for payload in payloads {
        let Some(announcement) = Announcement::parse(payload) else {
            tracing::warn!(payload, "ignoring a malformed announcement");
            continue;
        };
        let node = announcement.node;
        let ours = node == store.node_id();
        for id in announcement.ids.into_iter().filter(|&id| seen.is_new(node, id)) {
            announced.push((node, id));
            if ours { &mut mine } else { &mut missing }.push(id);
        }
    }
    // This node's own, from what its writer kept (the announcement may overtake the writer
    // handing them over); any it no longer has are read with the rest.
    let mut ready = own.take_all(&mut mine).await;
    missing.append(&mut mine);
    for chunk in missing.chunks(READ_AT_ONCE) {
        ready.extend(store.messages_by_id(chunk).await?.into_iter().map(Arc::new));
    }
    // Only once everything is read: if a read fails, the catch-up starts from before these.
    for (node, id) in announced {
        seen.record(node, id);
    }
    ready.sort_unstable_by_key(|m| m.id);
    for message in ready {
        if let Some(lag) = crate::metrics::Metrics::since_micros(message.created_at_us) {
            crate::metrics::METRICS
                .relay_lag_seconds
                .observe(lag.as_secs_f64());
        }
        hub.deliver(&message);
    }
    Ok(())
}

async fn catch_up(store: &PgStore, hub: &Hub, seen: &mut Seen) -> StoreResult<()> {
    crate::metrics::METRICS.relay_catchups.inc();
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
                hub.deliver(&Arc::new(message));
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
