//! The newest messages of the users who read their inbox, kept in memory so that polling
//! (`INBOX`, `GET /get_messages`) does not cost a query each time.
//!
//! Only for a single node (SQLite): there every message is committed by this process's one
//! writer, in id order, which tells the cache about each commit. An entry for a user holds
//! *every* message to them with an id above `complete_after`, so a read after that id is
//! answered exactly as the store would answer it; any other read goes to the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::store::Message;

/// Messages kept per user.
pub const PER_USER: usize = 64;
/// Users kept at most; beyond that, reads of further users go to the store.
pub const MAX_USERS: usize = 4096;

#[derive(Default)]
pub struct InboxCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    users: HashMap<Arc<str>, Recent>,
    /// The newest id the writer reported committed.
    last_committed: i64,
}

struct Recent {
    /// Every message to the user with an id above this is in `messages`.
    complete_after: i64,
    /// Ascending ids.
    messages: VecDeque<Arc<Message>>,
}

/// What a reader notes before it queries the store, to know afterwards whether a commit
/// happened in between (then what it read may already be stale for caching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(i64);

impl InboxCache {
    pub fn new() -> InboxCache {
        InboxCache::default()
    }

    /// Messages to `user` with id > `after`, oldest first, at most `limit`, if the cache can
    /// answer exactly.
    pub fn get(&self, user: &str, after: i64, limit: usize) -> Option<Vec<Arc<Message>>> {
        let state = self.lock();
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
        if state.last_committed != fence.0
            || (state.users.len() >= MAX_USERS && !state.users.contains_key(user))
        {
            return;
        }
        let keep = messages.len().min(PER_USER);
        let dropped = messages.len() - keep;
        let complete_after = if dropped > 0 {
            messages[dropped - 1].id
        } else {
            after
        };
        state.users.insert(
            user.clone(),
            Recent {
                complete_after,
                messages: messages[dropped..].iter().cloned().collect(),
            },
        );
    }

    /// Told by the writer, in id order, of every committed message.
    pub fn committed(&self, message: &Arc<Message>) {
        let mut state = self.lock();
        state.last_committed = state.last_committed.max(message.id);
        if let Some(recent) = state.users.get_mut(&*message.recipient) {
            // A reader may have cached this message already, straight from the store.
            if recent.messages.back().is_none_or(|last| last.id < message.id) {
                recent.messages.push_back(message.clone());
                if recent.messages.len() > PER_USER {
                    if let Some(oldest) = recent.messages.pop_front() {
                        recent.complete_after = oldest.id;
                    }
                }
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
}
