//! **The invariant, on one node or many: within a stream (a user's inbox, or a room), messages
//! become visible and are pushed in increasing id order.** Ids are global and only grow; the
//! store takes a lock per stream before drawing a batch's ids, so each stream's rows commit in
//! id order; delivery keeps commit order; the hub never pushes, within a stream, an id at or
//! below one it pushed. Streams are independent: a room's id 100 may arrive after an inbox's
//! id 101, and is still delivered.
//!
//! Alone or in a cluster: the one place that knows whether this node is the only one on its
//! store, and so owns what depends on it:
//!
//! - **delivery after a commit**, through one path per mode. Alone (SQLite), the writer is the
//!   only one committing, so a batch is delivered straight from it, in commit order. In a
//!   cluster (PostgreSQL), every node — this one too — delivers from the store's announcement
//!   stream, which PostgreSQL hands out in commit order; together with the store's
//!   per-recipient commit order (see `PgStore::insert_messages`) each session receives its
//!   messages in increasing id order, whichever nodes stored them;
//! - **the inbox cache**, kept only alone, where it learns of every commit before the SEND is
//!   acknowledged and so is exact by construction;
//! - **presence**: who is online here, and, in a cluster, on the other nodes;
//! - **the announcement format** ([`announcement`]).
//!
//! Delivery runs off the commit path: the writer hands a batch over and goes on; a task of
//! the topology pushes it into the sessions' queues.

mod announcement;
mod presence;
mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::InboxCache;
use crate::error::ChatResult;
use crate::hub::Hub;
use crate::store::{Message, Notify, Payloads, PgStore, Store};
use crate::supervisor::{Finished, Supervisor};
use announcement::{Announcement, CHANNEL};

/// Batches handed from the writer to the delivery task before the writer waits.
const DELIVERY_QUEUE: usize = 256;
/// This node's own committed messages kept for its relay, which would otherwise read them back.
const OWN_KEPT: usize = 16 * 1024;

pub(crate) use presence::PRESENCE_TTL;

pub(crate) struct Topology {
    hub: Hub,
    mode: Mode,
    stop: CancellationToken,
    tasks: Vec<Finished>,
}

enum Mode {
    Alone {
        cache: InboxCache,
        deliveries: mpsc::Sender<Vec<Arc<Message>>>,
    },
    Cluster {
        store: PgStore,
        own: Arc<OwnMessages>,
        encode: Box<Payloads>,
    },
}

/// What this node committed, waiting for its own announcement to come back. These carry what
/// the store does not keep (which session sent each, so that it is not pushed its own room
/// message), so the relay waits a moment for them rather than read them back.
#[derive(Default)]
pub(crate) struct OwnMessages(Mutex<HashMap<i64, Arc<Message>>>, tokio::sync::Notify);

/// How long the relay waits for the writer to hand over what it just committed: the writer
/// does so right after the commit returns, so this is reached only if it failed, or if the
/// machine is so overloaded that the writer's task did not run for that long.
const OWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl OwnMessages {
    /// Takes this node's own committed messages with these ids; those the writer has not
    /// handed over yet are waited for, briefly. The ids not found are left in `ids`.
    pub async fn take_all(&self, ids: &mut Vec<i64>) -> Vec<Arc<Message>> {
        let deadline = tokio::time::Instant::now() + OWN_WAIT;
        let mut found = Vec::with_capacity(ids.len());
        loop {
            let kept = self.1.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            ids.retain(|&id| match self.take(id) {
                Some(message) => {
                    found.push(message);
                    false
                }
                None => true,
            });
            if ids.is_empty() || tokio::time::timeout_at(deadline, kept).await.is_err() {
                return found;
            }
        }
    }

    fn keep(&self, messages: &[Arc<Message>]) {
        self.keep_locked(messages);
        self.1.notify_waiters();
    }

    fn keep_locked(&self, messages: &[Arc<Message>]) {
        let mut own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if own.len() + messages.len() > OWN_KEPT {
            // The announcements are not coming back (the LISTEN connection is down): the
            // relay reads these from the store when it catches up.
            own.clear();
        }
        own.extend(messages.iter().map(|m| (m.id, m.clone())));
    }

    pub fn take(&self, id: i64) -> Option<Arc<Message>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Topology {
    /// The topology of a node on `store`, with its background tasks running in `supervisor`.
    pub fn start(store: &Store, node_id: &str, hub: Hub, supervisor: &mut Supervisor) -> Arc<Topology> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mode = match store {
            Store::Sqlite(_) => {
                let (deliveries, queue) = mpsc::channel(DELIVERY_QUEUE);
                tasks.push(
                    supervisor.spawn("the delivery", deliver_batches(hub.clone(), queue, stop.clone())),
                );
                Mode::Alone {
                    cache: InboxCache::new(),
                    deliveries,
                }
            }
            Store::Postgres(pg) => {
                tracing::info!(node = %node_id, "joining the other nodes on PostgreSQL");
                let own = Arc::new(OwnMessages::default());
                tasks.push(supervisor.spawn(
                    "the relay",
                    relay::relay(pg.clone(), hub.clone(), own.clone(), stop.clone()),
                ));
                tasks.push(supervisor.spawn(
                    "the presence heartbeat",
                    presence::presence(pg.clone(), hub.clone(), stop.clone()),
                ));
                let node: Arc<str> = Arc::from(node_id);
                Mode::Cluster {
                    store: pg.clone(),
                    own,
                    encode: Box::new(move |ids| Announcement::encode(&node, ids)),
                }
            }
        };
        Arc::new(Topology {
            hub,
            mode,
            stop,
            tasks,
        })
    }

    /// Forgets what is cached of `user`'s inbox (the user was removed).
    pub fn forget_inbox(&self, user: &str) {
        if let Mode::Alone { cache, .. } = &self.mode {
            cache.forget(user);
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// What the store sends with each batch, if anyone listens.
    pub fn notify(&self) -> Option<Notify<'_>> {
        match &self.mode {
            Mode::Alone { .. } => None,
            Mode::Cluster { encode, .. } => Some(Notify {
                channel: CHANNEL,
                payloads: encode.as_ref(),
            }),
        }
    }

    /// Told by the writer of every batch it committed, in commit order, before it acknowledges
    /// them.
    pub async fn committed(&self, messages: &[Arc<Message>]) {
        match &self.mode {
            Mode::Alone { cache, deliveries } => {
                for message in messages {
                    cache.committed(message);
                }
                // Waits only if delivery is a whole queue of batches behind.
                let _ = deliveries.send(messages.to_vec()).await;
            }
            Mode::Cluster { own, .. } => own.keep(messages),
        }
    }

    /// Messages to `user` with id > `after`, oldest first, at most `limit`.
    pub async fn inbox(
        &self,
        store: &Store,
        user: &Arc<str>,
        after: i64,
        limit: u32,
    ) -> ChatResult<Vec<Arc<Message>>> {
        let Mode::Alone { cache, .. } = &self.mode else {
            let page = store.inbox(user, after, limit).await?;
            return Ok(page.into_iter().map(Arc::new).collect());
        };
        if let Some(hit) = cache.get(user, after, limit as usize) {
            return Ok(hit);
        }
        let fence = cache.fence();
        let page: Vec<Arc<Message>> = store
            .inbox(user, after, limit)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        if page.len() < limit as usize {
            // Not a full page: these are all of the user's messages after `after`.
            cache.fill(user, after, &page, fence);
        }
        Ok(page)
    }

    /// The first `limit` users, in byte order, after `after`, with at least one live session
    /// on any node.
    pub async fn who(&self, after: &str, limit: usize) -> ChatResult<Vec<Arc<str>>> {
        let mut users = self.hub.online_after(after, limit);
        if let Mode::Cluster { store, .. } = &self.mode {
            let elsewhere = store.online_elsewhere(PRESENCE_TTL, after, limit).await?;
            users.extend(elsewhere.into_iter().map(Arc::from));
            users.sort_unstable();
            users.dedup();
            users.truncate(limit);
        }
        Ok(users)
    }

    /// Which of `users` have a live session on any node.
    pub async fn online_among(&self, users: &[&str]) -> ChatResult<std::collections::HashSet<String>> {
        let mut online: std::collections::HashSet<String> = users
            .iter()
            .filter(|u| self.hub.is_online_here(u))
            .map(|u| u.to_string())
            .collect();
        if let Mode::Cluster { store, .. } = &self.mode {
            online.extend(store.online_among(PRESENCE_TTL, users).await?);
        }
        Ok(online)
    }

    /// How many users have at least one live session on any node.
    pub async fn online_count(&self) -> ChatResult<usize> {
        match &self.mode {
            Mode::Alone { .. } => Ok(self.hub.online_count()),
            Mode::Cluster { .. } => Ok(self.who("", usize::MAX).await?.len()),
        }
    }

    /// Stops the background tasks (in a cluster, this node leaves the presence table), waiting
    /// for them until `deadline`. Call after the writer is closed.
    pub async fn close(&self, deadline: Instant) -> bool {
        self.stop.cancel();
        if let Mode::Cluster { own, .. } = &self.mode {
            own.clear();
        }
        let ended = self.tasks.iter().map(Finished::wait);
        tokio::time::timeout_at(deadline, futures::future::join_all(ended))
            .await
            .is_ok()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The background tasks live no longer than the topology they serve.
        self.stop.cancel();
    }
}

/// Alone: pushes each committed batch into the recipients' sessions, in commit order. On
/// `stop` it delivers what was handed over and ends.
async fn deliver_batches(hub: Hub, mut queue: mpsc::Receiver<Vec<Arc<Message>>>, stop: CancellationToken) {
    loop {
        let batch = tokio::select! {
            biased;
            batch = queue.recv() => batch,
            _ = stop.cancelled() => {
                queue.close();
                queue.recv().await
            }
        };
        let Some(batch) = batch else { return };
        for message in &batch {
            hub.deliver(message);
        }
    }
}
