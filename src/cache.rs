//! The newest messages of the users who read their inbox, kept in memory so that polling
//! (`INBOX`, `GET /get_messages`) does not cost a query each time.
//!
//! Only for a single node (SQLite): there every message is committed by this process's one
//! writer, in id order, which tells the cache about each commit. An entry for a user holds
//! *every* message to them with an id above `complete_after`, so a read after that id is
//! answered exactly as the store would answer it; any other read goes to the store.
//!
//! The cache is bounded in bytes, not only in entries: users are evicted least recently read
//! first once the total passes [`MAX_BYTES`], and a message over [`MAX_CACHED_MESSAGE`] is
//! never kept (an entry then starts after it), so large messages cannot pin memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::store::Message;

/// Messages kept per user.
pub const PER_USER: usize = 64;
/// Bytes the whole cache holds at most (message text and names, plus a fixed overhead each).
pub const MAX_BYTES: usize = 32 * 1024 * 1024;
/// Messages larger than this are not cached.
pub const MAX_CACHED_MESSAGE: usize = 4 * 1024;
/// What an entry costs besides its messages.
const ENTRY_OVERHEAD: usize = 128;

pub struct InboxCache {
    state: Mutex<State>,
    max_bytes: usize,
}

impl Default for InboxCache {
    fn default() -> InboxCache {
        InboxCache::with_budget(MAX_BYTES)
    }
}

struct State {
    users: LruCache<Arc<str>, Recent>,
    /// Bytes held by every entry together.
    bytes: usize,
    /// The newest id the writer reported committed.
    last_committed: i64,
}

struct Recent {
    /// Every message to the user with an id above this is in `messages`.
    complete_after: i64,
    /// Ascending ids.
    messages: VecDeque<Arc<Message>>,
    /// Bytes of this entry.
    bytes: usize,
}

/// What a cached message counts for.
fn size(message: &Message) -> usize {
    message.body.len()
        + message.sender.len()
        + message.client_timestamp.as_ref().map_or(0, |t| t.len())
        + std::mem::size_of::<Message>()
        + 16
}

/// What a reader notes before it queries the store, to know afterwards whether a commit
/// happened in between (then what it read may already be stale for caching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(i64);

impl InboxCache {
    pub fn new() -> InboxCache {
        InboxCache::default()
    }

    /// A cache holding at most `max_bytes`.
    pub fn with_budget(max_bytes: usize) -> InboxCache {
        InboxCache {
            state: Mutex::new(State {
                users: LruCache::unbounded(),
                bytes: 0,
                last_committed: 0,
            }),
            max_bytes,
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Messages to `user` with id > `after`, oldest first, at most `limit`, if the cache can
    /// answer exactly.
    pub fn get(&self, user: &str, after: i64, limit: usize) -> Option<Vec<Arc<Message>>> {
        let mut state = self.lock();
        let recent = state.users.get(user)?;
        if after < recent.complete_after {
            return None;
        }
        let start = recent.messages.partition_point(|m| m.id <= after);
        Some(recent.messages.range(start..).take(limit).cloned().collect())
    }

    pub fn fence(&self) -> Fence {
        Fence(self.lock().last_committed)
    }

    /// Remembers a store read of every message to `user` with id > `after` (the caller read
    /// them all: its page was not full), unless a commit happened since `fence`.
    pub fn fill(&self, user: &Arc<str>, after: i64, messages: &[Arc<Message>], fence: Fence) {
        let mut state = self.lock();
        if state.last_committed != fence.0 {
            return;
        }
        // Keep the newest messages, at most PER_USER, none of them large.
        let large = messages.iter().rposition(|m| m.body.len() > MAX_CACHED_MESSAGE);
        let start = large
            .map_or(0, |i| i + 1)
            .max(messages.len().saturating_sub(PER_USER));
        let complete_after = if start > 0 { messages[start - 1].id } else { after };
        let kept: VecDeque<Arc<Message>> = messages[start..].iter().cloned().collect();
        let bytes = ENTRY_OVERHEAD + kept.iter().map(|m| size(m)).sum::<usize>();
        if let Some(old) = state.users.put(
            user.clone(),
            Recent {
                complete_after,
                messages: kept,
                bytes,
            },
        ) {
            state.bytes -= old.bytes;
        }
        state.bytes += bytes;
        self.evict(&mut state);
    }

    /// Forgets what is kept of `user`'s inbox (the user was removed).
    pub fn forget(&self, user: &str) {
        let mut state = self.lock();
        if let Some(recent) = state.users.pop(user) {
            state.bytes -= recent.bytes;
        }
    }

    /// Told by the writer, in id order, of every committed message.
    pub fn committed(&self, message: &Arc<Message>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.last_committed = state.last_committed.max(message.id);
        // `peek_mut`: a commit is not a read, so it does not make the entry recent.
        let Some(recent) = state.users.peek_mut(&*message.recipient) else {
            return;
        };
        // A reader may have cached this message already, straight from the store.
        if recent.messages.back().is_some_and(|last| last.id >= message.id) {
            return;
        }
        if message.body.len() > MAX_CACHED_MESSAGE {
            // Start the entry after it: reads from before it go to the store.
            state.bytes -= recent.bytes - ENTRY_OVERHEAD;
            recent.bytes = ENTRY_OVERHEAD;
            recent.messages.clear();
            recent.complete_after = message.id;
            return;
        }
        let added = size(message);
        recent.messages.push_back(message.clone());
        recent.bytes += added;
        state.bytes += added;
        if recent.messages.len() > PER_USER {
            if let Some(oldest) = recent.messages.pop_front() {
                recent.complete_after = oldest.id;
                recent.bytes -= size(&oldest);
                state.bytes -= size(&oldest);
            }
        }
        self.evict(state);
    }

    /// Drops the least recently read users until the cache is within its budget.
    fn evict(&self, state: &mut State) {
        while state.bytes > self.max_bytes {
            match state.users.pop_lru() {
                Some((_, recent)) => state.bytes -= recent.bytes,
                None => break,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64, to: &str) -> Arc<Message> {
        Arc::new(Message {
            id,
            sender: Arc::from("a"),
            recipient: Arc::from(to),
            body: format!("m{id}"),
            created_at_us: 0,
            client_timestamp: None,
            event: None,
            origin: 0,
            rendered: Default::default(),
        })
    }

    fn big(id: i64, to: &str) -> Arc<Message> {
        Arc::new(Message {
            body: "x".repeat(MAX_CACHED_MESSAGE + 1),
            ..(*msg(id, to)).clone()
        })
    }

    fn ids(messages: Option<Vec<Arc<Message>>>) -> Option<Vec<i64>> {
        messages.map(|m| m.iter().map(|m| m.id).collect())
    }

    #[test]
    fn answers_only_what_it_holds_completely() {
        let cache = InboxCache::new();
        let bob: Arc<str> = Arc::from("bob");
        assert_eq!(ids(cache.get("bob", 0, 10)), None, "nothing cached yet");
        let fence = cache.fence();
        cache.fill(&bob, 0, &[msg(2, "bob"), msg(5, "bob")], fence);
        assert_eq!(ids(cache.get("bob", 0, 10)), Some(vec![2, 5]));
        assert_eq!(ids(cache.get("bob", 2, 10)), Some(vec![5]));
        assert_eq!(ids(cache.get("bob", 0, 1)), Some(vec![2]));
        cache.committed(&msg(6, "alice"));
        cache.committed(&msg(7, "bob"));
        assert_eq!(ids(cache.get("bob", 5, 10)), Some(vec![7]));
        assert_eq!(ids(cache.get("alice", 0, 10)), None);
    }

    #[test]
    fn a_commit_during_a_read_keeps_that_read_out() {
        let cache = InboxCache::new();
        let bob: Arc<str> = Arc::from("bob");
        let fence = cache.fence();
        // The writer commits 3 for bob while the reader's query (which saw only 2) runs.
        cache.committed(&msg(3, "bob"));
        cache.fill(&bob, 0, &[msg(2, "bob")], fence);
        assert_eq!(ids(cache.get("bob", 0, 10)), None, "would have missed 3");
    }

    #[test]
    fn a_message_read_from_the_store_before_the_writer_reports_it_is_kept_once() {
        let cache = InboxCache::new();
        let bob: Arc<str> = Arc::from("bob");
        cache.fill(&bob, 0, &[msg(4, "bob")], cache.fence());
        cache.committed(&msg(4, "bob"));
        assert_eq!(ids(cache.get("bob", 0, 10)), Some(vec![4]));
    }

    #[test]
    fn only_the_newest_are_kept() {
        let cache = InboxCache::new();
        let bob: Arc<str> = Arc::from("bob");
        let many: Vec<_> = (1..=PER_USER as i64 + 10).map(|id| msg(id, "bob")).collect();
        cache.fill(&bob, 0, &many, cache.fence());
        assert_eq!(ids(cache.get("bob", 0, 10)), None, "the oldest ten were dropped");
        assert_eq!(ids(cache.get("bob", 10, 1)), Some(vec![11]));
        cache.committed(&msg(1000, "bob"));
        assert_eq!(ids(cache.get("bob", 10, 1)), None, "one more dropped");
        assert_eq!(ids(cache.get("bob", 11, 1)), Some(vec![12]));
    }

    #[test]
    fn large_messages_are_not_kept() {
        let cache = InboxCache::new();
        let bob: Arc<str> = Arc::from("bob");
        cache.fill(
            &bob,
            0,
            &[msg(1, "bob"), big(2, "bob"), msg(3, "bob")],
            cache.fence(),
        );
        assert_eq!(ids(cache.get("bob", 0, 10)), None, "the read spans the large one");
        assert_eq!(ids(cache.get("bob", 2, 10)), Some(vec![3]));
        cache.committed(&big(4, "bob"));
        assert_eq!(ids(cache.get("bob", 3, 10)), None);
        assert_eq!(ids(cache.get("bob", 4, 10)), Some(vec![]));
        assert!(cache.bytes() < 1024, "{} bytes", cache.bytes());
    }

    #[test]
    fn the_budget_in_bytes_evicts_the_least_recently_read() {
        let cache = InboxCache::with_budget(64 * 1024);
        for user in 0..100 {
            let name: Arc<str> = Arc::from(format!("u{user}"));
            let page: Vec<_> = (1..=PER_USER as i64)
                .map(|id| msg(user * 1000 + id, &name))
                .collect();
            cache.fill(&name, 0, &page, cache.fence());
            // u0 is read all along, so it stays.
            assert!(cache.get("u0", 0, 1).is_some(), "u0 evicted at u{user}");
        }
        assert!(cache.bytes() <= 64 * 1024, "{} bytes", cache.bytes());
        assert!(
            cache.get("u1", 0, 1).is_none(),
            "the least recently read went first"
        );
        assert!(cache.get("u99", 0, 1).is_some());
    }
}
