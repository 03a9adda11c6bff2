//! Presence in a cluster: this node keeps its heartbeat and its online users in the store, so
//! WHO on any node lists everyone. A node that dies stops its heartbeat, and its users drop
//! out of WHO within [`PRESENCE_TTL`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::store::PgStore;

/// How often a node says it is alive and syncs who is online on it.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node whose heartbeat is older than this is dead: its users are no longer online.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);
/// Every this many heartbeats the presence rows are rewritten whole, whatever happened.
const FULL_SYNC_EVERY: u32 = 15;
/// Dead nodes' rows are removed after this long.
const FORGET_DEAD_NODES: Duration = Duration::from_secs(3600);

pub(super) async fn presence(store: PgStore, hub: Hub, shutdown: CancellationToken) {
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
