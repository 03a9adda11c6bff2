//! Presence and live delivery: which users are online, and a bounded queue per session into
//! which committed messages are pushed.
//!
//! The locks are plain `std::sync::Mutex`es held only for map and queue operations — never
//! across an `.await` — so a slow client can never slow a sender: when a session's queue is
//! full, that session is kicked (it disconnects; its messages stay in its inbox).
//!
//! A session's queue is a `VecDeque` behind a mutex with the waker of the session waiting on
//! it: it allocates only when messages arrive and shrinks back once drained, so a logged-in
//! connection that receives nothing costs ~100 bytes for it (a tokio channel costs ~800). It
//! is bounded in messages and in bytes: a reader that falls behind by either is kicked.
//!
//! Messages reach the hub in increasing id order per recipient (the topology guarantees it);
//! the hub also remembers, per online user, the newest id it pushed, and never pushes an id
//! at or below it, so no session ever receives a lower id after a higher one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::Message;

#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    online: Mutex<HashMap<Arc<str>, Online>>,
    next_id: AtomicU64,
    /// Signalled when a user comes online or goes offline.
    presence: Notify,
    limits: HubLimits,
}

/// Bounds of the live fan-out.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Messages queued for one session before it counts as too slow.
    pub queue_messages: usize,
    /// Bytes of message text queued for one session before it counts as too slow.
    pub queue_bytes: usize,
    /// Live sessions (line connections and event streams, on this node) one user may have.
    pub sessions_per_user: usize,
}

impl Default for HubLimits {
    fn default() -> HubLimits {
        HubLimits {
            queue_messages: 1024,
            queue_bytes: 1024 * 1024,
            sessions_per_user: 64,
        }
    }
}

#[derive(Default)]
struct Online {
    sessions: Vec<Subscriber>,
    /// The newest message id pushed to this user's sessions.
    last_pushed: i64,
}

/// A user already has as many live sessions as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySessions(pub usize);

struct Subscriber {
    id: u64,
    queue: Arc<PushQueue>,
    kick: CancellationToken,
}

/// One session's bounded queue of live messages.
struct PushQueue {
    state: Mutex<QueueState>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Arc<Message>>,
    /// Bytes of message text in `messages`.
    bytes: usize,
    /// The session waiting for a message, if it is waiting.
    waker: Option<Waker>,
    /// The session was dropped for falling behind: it gets no more messages.
    closed: bool,
}

enum Pushed {
    Queued,
    Full,
}

impl PushQueue {
    fn push(&self, message: &Arc<Message>) -> Pushed {
        let mut state = self.lock();
        let size = queued_size(message);
        let over_bytes = state.bytes + size > self.max_bytes && !state.messages.is_empty();
        if state.closed || state.messages.len() >= self.capacity || over_bytes {
            state.closed = true;
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Pushed::Full;
        }
        state.messages.push_back(message.clone());
        state.bytes += size;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Queued
    }

    fn pop(&self, state: &mut QueueState) -> Option<Arc<Message>> {
        let message = state.messages.pop_front();
        if let Some(message) = &message {
            state.bytes -= queued_size(message);
        }
        if state.messages.is_empty() && state.messages.capacity() > 8 {
            // Drained after a burst: give the memory back.
            state.messages = VecDeque::new();
        }
        message
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One session's live feed. Dropping it takes the session offline.
pub struct Subscription {
    hub: Hub,
    user: Arc<str>,
    id: u64,
    queue: Arc<PushQueue>,
    kick: CancellationToken,
}

impl Subscription {
    /// The next pushed message; `None` once this session was kicked for falling behind (or
    /// its kick token was cancelled, e.g. by a shutdown it descends from).
    pub async fn next(&mut self) -> Option<Arc<Message>> {
        tokio::select! {
            biased;
            _ = self.kick.cancelled() => None,
            message = std::future::poll_fn(|cx| self.poll_recv(cx)) => message,
        }
    }

    /// Polls for the next pushed message; `None` once the hub dropped this session for
    /// falling behind.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<Message>>> {
        let mut state = self.queue.lock();
        if state.closed {
            return Poll::Ready(None);
        }
        if let Some(message) = self.queue.pop(&mut state) {
            return Poll::Ready(Some(message));
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A message that is already queued, without waiting.
    pub fn try_recv(&self) -> Option<Arc<Message>> {
        let mut state = self.queue.lock();
        if state.closed {
            return None;
        }
        self.queue.pop(&mut state)
    }

    #[cfg(test)]
    pub fn is_kicked(&self) -> bool {
        self.kick.is_cancelled()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user, self.id);
    }
}

/// What a queued message counts for against a session's byte bound.
fn queued_size(message: &Message) -> usize {
    message.body.len() + message.sender.len() + message.client_timestamp.as_ref().map_or(0, |t| t.len()) + 64
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new(HubLimits::default())
    }
}

impl Hub {
    pub fn new(limits: HubLimits) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                online: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                presence: Notify::new(),
                limits,
            }),
        }
    }

    /// Puts a session of `user` online. `kick` is cancelled if the session falls so far
    /// behind that its queue overflows. Refused when the user has as many sessions as allowed.
    pub fn subscribe(
        &self,
        user: Arc<str>,
        kick: CancellationToken,
    ) -> Result<Subscription, TooManySessions> {
        let limits = self.shared.limits;
        let queue = Arc::new(PushQueue {
            state: Mutex::new(QueueState::default()),
            capacity: limits.queue_messages.max(1),
            max_bytes: limits.queue_bytes.max(1),
        });
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Subscriber {
            id,
            queue: queue.clone(),
            kick: kick.clone(),
        };
        let mut online = self.lock();
        let entry = online.entry(user.clone()).or_default();
        if entry.sessions.len() >= limits.sessions_per_user {
            return Err(TooManySessions(limits.sessions_per_user));
        }
        entry.sessions.push(subscriber);
        if entry.sessions.len() == 1 {
            self.shared.presence.notify_one();
        }
        drop(online);
        Ok(Subscription {
            hub: self.clone(),
            user,
            id,
            queue,
            kick,
        })
    }

    fn unsubscribe(&self, user: &str, id: u64) {
        let mut online = self.lock();
        if let Some(entry) = online.get_mut(user) {
            entry.sessions.retain(|s| s.id != id);
            if entry.sessions.is_empty() {
                online.remove(user);
                self.shared.presence.notify_one();
            }
        }
    }

    /// Pushes a committed message to every online session of its recipient. Returns how many
    /// sessions it was queued for.
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        let mut online = self.lock();
        let Some(entry) = online.get_mut(&*message.recipient) else {
            return 0;
        };
        if message.id <= entry.last_pushed {
            tracing::debug!(
                id = message.id,
                last = entry.last_pushed,
                "not pushing an id already passed"
            );
            return 0;
        }
        entry.last_pushed = message.id;
        let mut queued = 0;
        entry.sessions.retain(|s| match s.queue.push(message) {
            Pushed::Queued => {
                queued += 1;
                true
            }
            Pushed::Full => {
                tracing::warn!(user = %message.recipient, "session too slow to read its messages; disconnecting it");
                s.kick.cancel();
                false
            }
        });
        if entry.sessions.is_empty() {
            online.remove(&*message.recipient);
            self.shared.presence.notify_one();
        }
        queued
    }

    /// Names of the users with at least one live session, sorted.
    pub fn online_users(&self) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = self.lock().keys().cloned().collect();
        users.sort_unstable();
        users
    }

    /// Resolves after a user came online or went offline (at least once since the last call).
    pub async fn presence_changed(&self) {
        self.shared.presence.notified().await
    }

    #[cfg(test)]
    pub fn is_online(&self, user: &str) -> bool {
        self.lock().contains_key(user)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Online>> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters (every operation is a single insert/retain), so poisoning is ignored.
        self.shared.online.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, to: &str) -> Arc<Message> {
        Arc::new(Message {
            id,
            sender: Arc::from("a"),
            recipient: Arc::from(to),
            body: "hi".into(),
            created_at_us: 0,
            client_timestamp: None,
        })
    }

    #[tokio::test]
    async fn delivers_to_every_session_and_tracks_presence() {
        let hub = Hub::default();
        let mut one = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        let mut two = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        assert_eq!(hub.online_users(), vec![Arc::<str>::from("bob")]);
        assert_eq!(hub.deliver(&message(1, "bob")), 2);
        assert_eq!(one.next().await.unwrap().id, 1);
        assert_eq!(two.next().await.unwrap().id, 1);
        drop(one);
        assert!(hub.is_online("bob"));
        drop(two);
        assert!(!hub.is_online("bob"));
        assert_eq!(hub.deliver(&message(2, "bob")), 0);
    }

    #[tokio::test]
    async fn a_full_queue_kicks_only_that_session() {
        let hub = Hub::new(HubLimits {
            queue_messages: 2,
            ..HubLimits::default()
        });
        let slow = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        let mut fast = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        hub.deliver(&message(1, "bob"));
        assert_eq!(fast.next().await.unwrap().id, 1);
        hub.deliver(&message(2, "bob"));
        assert!(!slow.is_kicked());
        hub.deliver(&message(3, "bob"));
        assert!(slow.is_kicked());
        assert_eq!(fast.next().await.unwrap().id, 2);
        assert_eq!(fast.next().await.unwrap().id, 3);
        assert_eq!(hub.deliver(&message(4, "bob")), 1);
    }

    #[tokio::test]
    async fn a_queue_is_bounded_in_bytes() {
        let hub = Hub::new(HubLimits {
            queue_bytes: 100_000,
            ..HubLimits::default()
        });
        let slow = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        let big = |id| {
            Arc::new(Message {
                body: "x".repeat(40_000),
                ..(*message(id, "bob")).clone()
            })
        };
        hub.deliver(&big(1));
        hub.deliver(&big(2));
        assert!(!slow.is_kicked(), "80 KB fits");
        hub.deliver(&big(3));
        assert!(slow.is_kicked(), "120 KB does not");
    }

    #[tokio::test]
    async fn never_pushes_a_lower_id_after_a_higher_one() {
        let hub = Hub::default();
        let mut bob = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        assert_eq!(hub.deliver(&message(5, "bob")), 1);
        assert_eq!(hub.deliver(&message(3, "bob")), 0);
        assert_eq!(hub.deliver(&message(5, "bob")), 0);
        assert_eq!(hub.deliver(&message(6, "bob")), 1);
        assert_eq!(bob.next().await.unwrap().id, 5);
        assert_eq!(bob.next().await.unwrap().id, 6);
    }

    #[test]
    fn sessions_per_user_are_capped() {
        let hub = Hub::new(HubLimits {
            sessions_per_user: 2,
            ..HubLimits::default()
        });
        let _a = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        let b = hub.subscribe(Arc::from("bob"), CancellationToken::new()).unwrap();
        assert_eq!(
            hub.subscribe(Arc::from("bob"), CancellationToken::new()).err(),
            Some(TooManySessions(2))
        );
        assert!(hub
            .subscribe(Arc::from("alice"), CancellationToken::new())
            .is_ok());
        drop(b);
        assert!(hub.subscribe(Arc::from("bob"), CancellationToken::new()).is_ok());
    }
}
