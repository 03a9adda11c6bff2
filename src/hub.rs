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
//! The hub delivers by stream. A session follows its user's inbox and the rooms its user is in
//! (the user's rooms are loaded when a session goes online, and kept up to date by the join,
//! leave and removal events of each room's own stream, so a change of membership takes effect
//! exactly where it falls among the room's messages, on every node). Messages reach the hub in
//! increasing id order per stream (the topology guarantees it); the hub also remembers, per
//! stream, the newest id it pushed, and never pushes an id at or below it, so no session ever
//! receives a lower id after a higher one within a stream.
//!
//! A room message is one `Arc<Message>` queued for every session of every online member: it
//! is stored once and held once, however many members there are.
//!
//! A session opened with a bearer token (an `/events` stream) is filed under that token too:
//! a token has at most [`HubLimits::sessions_per_token`] of them, so one leaked token cannot
//! take all of its user's sessions, and the sessions of a token or a user can be ended when it
//! logs out.

use crate::metrics::METRICS;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{EventKind, Message};

#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// What identifies the token a session was opened with: the token's SHA-256.
pub type TokenId = [u8; 32];

struct Shared {
    state: Mutex<State>,
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
    /// Live sessions opened with one token (event streams) on this node.
    pub sessions_per_token: usize,
}

impl Default for HubLimits {
    fn default() -> HubLimits {
        HubLimits {
            queue_messages: 1024,
            queue_bytes: 1024 * 1024,
            sessions_per_user: 64,
            sessions_per_token: 8,
        }
    }
}

/// One live session, as the IRC door's local channels address it: an account's (its name and
/// session id, or 0 for each of its sessions that shows live messages) or a guest's (an empty
/// name, and its live session id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFeed {
    pub user: Arc<str>,
    pub id: u64,
}

#[derive(Default)]
struct State {
    online: HashMap<Arc<str>, Online>,
    /// The sessions open per token, and whose token it is.
    tokens: HashMap<TokenId, TokenSessions>,
    /// The rooms with a member or a guest online here: who, and the newest id pushed.
    rooms: HashMap<Arc<str>, LiveRoom>,
    /// Guests of the IRC door on this node: live sessions without an account.
    guests: HashMap<u64, Guest>,
}

#[derive(Default)]
struct LiveRoom {
    /// Members of the room with a live session on this node.
    members: Vec<Arc<str>>,
    /// Guests on this node following the room (they are not its members).
    guests: Vec<u64>,
    last_pushed: i64,
}

/// A live session without an account: it follows the public rooms it was put in, and is
/// pushed their messages and the live messages addressed to it.
struct Guest {
    queue: Arc<PushQueue>,
    kick: CancellationToken,
    rooms: Vec<Arc<str>>,
}

struct TokenSessions {
    user: Arc<str>,
    count: usize,
}

#[derive(Default)]
struct Online {
    sessions: Vec<Subscriber>,
    /// The newest id of the user's inbox pushed to this user's sessions.
    last_pushed: i64,
    /// The rooms the user is in, which its sessions follow.
    rooms: Vec<Arc<str>>,
    /// Rooms the user left or was removed from while online here: a list of rooms read from
    /// the store before that (by [`Hub::follow`]) must not bring them back.
    left: Vec<Arc<str>>,
}

/// Why a session could not go online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooManySessions {
    /// The user already has this many live sessions, the most allowed.
    User(usize),
    /// The token already has this many live sessions, the most allowed.
    Token(usize),
}

/// Why the hub ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It fell so far behind that its queue overflowed.
    TooSlow,
    /// Its user logged out everywhere, or the token it was opened with ended.
    LoggedOut,
}

struct Subscriber {
    id: u64,
    queue: Arc<PushQueue>,
    kick: CancellationToken,
    /// The token the session was opened with, if any (boxed: most sessions have none).
    token: Option<Box<TokenId>>,
    opened: Instant,
    /// Whether its door shows live messages (which have no id and are never stored).
    live: bool,
}

impl Subscriber {
    /// Ends the session: it gets no more messages, and its kick token is cancelled.
    fn end(&self, why: Ended) {
        self.queue.end(why);
        self.kick.cancel();
    }
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
    /// The hub ended the session: it gets no more messages.
    ended: Option<Ended>,
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
        if state.ended.is_some() || state.messages.len() >= self.capacity || over_bytes {
            if state.ended.is_none() {
                METRICS.kicks.inc();
            }
            drop(state);
            self.end(Ended::TooSlow);
            return Pushed::Full;
        }
        state.messages.push_back(message.clone());
        state.bytes += size;
        METRICS.pushes.inc();
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Queued
    }

    /// Ends the queue (the first reason given stays) and wakes its session.
    fn end(&self, why: Ended) {
        let mut state = self.lock();
        state.ended.get_or_insert(why);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
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
    /// The next pushed message; `None` once the hub ended this session (see [`Self::ended`])
    /// or its kick token was cancelled (e.g. by a shutdown it descends from).
    pub async fn next(&mut self) -> Option<Arc<Message>> {
        tokio::select! {
            biased;
            _ = self.kick.cancelled() => None,
            message = std::future::poll_fn(|cx| self.poll_recv(cx)) => message,
        }
    }

    /// Polls for the next pushed message; `None` once the hub ended this session.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<Message>>> {
        let mut state = self.queue.lock();
        if state.ended.is_some() {
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

    /// This session's id, which the messages it sends carry as their origin.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A message that is already queued, without waiting.
    pub fn try_recv(&self) -> Option<Arc<Message>> {
        let mut state = self.queue.lock();
        if state.ended.is_some() {
            return None;
        }
        self.queue.pop(&mut state)
    }

    /// Why the hub ended this session, once it has.
    pub fn ended(&self) -> Option<Ended> {
        self.queue.lock().ended
    }

    #[cfg(test)]
    pub fn is_kicked(&self) -> bool {
        self.kick.is_cancelled()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.user.is_empty() {
            self.hub.remove_guest(self.id);
        } else {
            self.hub.unsubscribe(&self.user, self.id);
        }
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
                state: Mutex::new(State::default()),
                // 0 is "no session" (see `Message::origin`).
                next_id: AtomicU64::new(1),
                presence: Notify::new(),
                limits,
            }),
        }
    }

    /// Puts a session of `user` online, opened with `token` if it was. `kick` is cancelled if
    /// the session falls so far behind that its queue overflows, or is ended. Refused when the
    /// user, or the token, has as many sessions as allowed.
    pub fn subscribe(
        &self,
        user: Arc<str>,
        kick: CancellationToken,
        token: Option<TokenId>,
    ) -> Result<Subscription, TooManySessions> {
        let limits = self.shared.limits;
        let queue = Arc::new(PushQueue {
            state: Mutex::new(QueueState::default()),
            capacity: limits.queue_messages.max(1),
            max_bytes: limits.queue_bytes.max(1),
        });
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let State { online, tokens, .. } = &mut *state;
        if online
            .get(&user)
            .is_some_and(|entry| entry.sessions.len() >= limits.sessions_per_user)
        {
            return Err(TooManySessions::User(limits.sessions_per_user));
        }
        if let Some(token) = &token {
            let on_token = tokens.entry(*token).or_insert_with(|| TokenSessions {
                user: user.clone(),
                count: 0,
            });
            if on_token.count >= limits.sessions_per_token {
                return Err(TooManySessions::Token(limits.sessions_per_token));
            }
            on_token.count += 1;
        }
        let entry = online.entry(user.clone()).or_default();
        entry.sessions.push(Subscriber {
            id,
            queue: queue.clone(),
            kick: kick.clone(),
            token: token.map(Box::new),
            opened: Instant::now(),
            live: false,
        });
        if entry.sessions.len() == 1 {
            self.shared.presence.notify_one();
        }
        drop(state);
        Ok(Subscription {
            hub: self.clone(),
            user,
            id,
            queue,
            kick,
        })
    }

    /// The sessions of `user` on this node follow `rooms` (the rooms the user is in), if the
    /// user is online here.
    pub fn follow(&self, user: &str, rooms: &[Arc<str>]) {
        let mut state = self.lock();
        let State {
            online, rooms: live, ..
        } = &mut *state;
        let Some((name, entry)) = online.get_key_value(user) else {
            return;
        };
        let name = name.clone();
        let new: Vec<Arc<str>> = rooms
            .iter()
            .filter(|room| !entry.rooms.contains(room) && !entry.left.contains(room))
            .cloned()
            .collect();
        for room in new {
            live.entry(room.clone()).or_default().members.push(name.clone());
            if let Some(entry) = online.get_mut(user) {
                entry.rooms.push(room);
            }
        }
    }

    /// Whether `user` has a live session on this node.
    pub fn is_online_here(&self, user: &str) -> bool {
        self.lock().online.contains_key(user)
    }

    fn unsubscribe(&self, user: &str, id: u64) {
        self.remove_sessions(user, |s| s.id == id, None);
    }

    /// Ends every session of `user` on this node that opened before `opened_before` (all of
    /// them with `None`); how many.
    pub fn end_user(&self, user: &str, opened_before: Option<Instant>) -> usize {
        self.remove_sessions(
            user,
            |s| opened_before.is_none_or(|before| s.opened < before),
            Some(Ended::LoggedOut),
        )
    }

    /// Ends every session opened with `token` on this node; how many.
    pub fn end_token(&self, token: &TokenId) -> usize {
        let Some(user) = self.lock().tokens.get(token).map(|t| t.user.clone()) else {
            return 0;
        };
        self.remove_sessions(
            &user,
            |s| s.token.as_deref() == Some(token),
            Some(Ended::LoggedOut),
        )
    }

    /// The tokens that live sessions on this node were opened with.
    pub fn tokens_in_use(&self) -> Vec<TokenId> {
        self.lock().tokens.keys().copied().collect()
    }

    /// Takes the sessions of `user` that `matches` picks out of the hub, ending them with
    /// `why` if given; how many.
    fn remove_sessions(
        &self,
        user: &str,
        matches: impl Fn(&Subscriber) -> bool,
        why: Option<Ended>,
    ) -> usize {
        let mut state = self.lock();
        let State {
            online,
            tokens,
            rooms,
            ..
        } = &mut *state;
        let Some(entry) = online.get_mut(user) else {
            return 0;
        };
        let before = entry.sessions.len();
        entry.sessions.retain(|s| {
            if !matches(s) {
                return true;
            }
            if let Some(why) = why {
                s.end(why);
            }
            forget_token(tokens, s);
            false
        });
        let removed = before - entry.sessions.len();
        if entry.sessions.is_empty() {
            self.went_offline(online, rooms, user);
        }
        removed
    }

    /// Takes a user whose last session here ended out of the hub and of its rooms.
    fn went_offline(
        &self,
        online: &mut HashMap<Arc<str>, Online>,
        rooms: &mut HashMap<Arc<str>, LiveRoom>,
        user: &str,
    ) {
        if let Some(entry) = online.remove(user) {
            for room in &entry.rooms {
                unfollow(rooms, room, user);
            }
        }
        self.shared.presence.notify_one();
    }

    /// Pushes a committed message to every live session following its stream: its recipient's
    /// sessions, or for a room every session of every member online here but the one that sent
    /// it. A room's join, leave and removal events also change who follows it, here, exactly
    /// at their place in the stream: the one who left or was removed gets that event, and
    /// nothing after it. Returns how many sessions it was queued for.
    pub fn deliver(&self, message: &Arc<Message>) -> usize {
        let mut state = self.lock();
        let State {
            online,
            tokens,
            rooms,
            guests,
        } = &mut *state;
        let Some(room) = message.room() else {
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
            let queued = push_to(entry, message, tokens);
            if entry.sessions.is_empty() {
                self.went_offline(online, rooms, &message.recipient);
            }
            return queued;
        };
        let event = message.event.as_deref();
        if let Some(joined) = event.filter(|e| e.kind == EventKind::Join) {
            if let Some((name, entry)) = online.get_key_value(&joined.subject) {
                if !entry.rooms.contains(room) {
                    let name = name.clone();
                    rooms.entry(room.clone()).or_default().members.push(name);
                    if let Some(entry) = online.get_mut(&joined.subject) {
                        entry.rooms.push(room.clone());
                        entry.left.retain(|r| r != room);
                    }
                }
            }
        }
        let Some(live) = rooms.get_mut(room) else {
            return 0;
        };
        if message.id <= live.last_pushed {
            tracing::debug!(
                id = message.id,
                last = live.last_pushed,
                "not pushing an id already passed"
            );
            return 0;
        }
        live.last_pushed = message.id;
        let mut queued = 0;
        let mut emptied = Vec::new();
        for member in &live.members {
            let Some(entry) = online.get_mut(member) else {
                continue;
            };
            queued += push_to(entry, message, tokens);
            if entry.sessions.is_empty() {
                emptied.push(member.clone());
            }
        }
        queued += push_to_guests(live, guests, message);
        if let Some(left) = event.filter(|e| e.kind.removes()) {
            unfollow(rooms, room, &left.subject);
            if let Some(entry) = online.get_mut(&left.subject) {
                entry.rooms.retain(|r| r != room);
                if !entry.left.contains(room) {
                    entry.left.push(room.clone());
                }
            }
        }
        for user in emptied {
            self.went_offline(online, rooms, &user);
        }
        queued
    }

    /// Opens a guest's live session: it counts as no user, follows no room until
    /// [`Hub::watch`], and is pushed what is addressed to it by [`Hub::deliver_live`].
    pub fn subscribe_guest(&self, kick: CancellationToken) -> Subscription {
        let limits = self.shared.limits;
        let queue = Arc::new(PushQueue {
            state: Mutex::new(QueueState::default()),
            capacity: limits.queue_messages.max(1),
            max_bytes: limits.queue_bytes.max(1),
        });
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().guests.insert(
            id,
            Guest {
                queue: queue.clone(),
                kick: kick.clone(),
                rooms: Vec::new(),
            },
        );
        Subscription {
            hub: self.clone(),
            user: Arc::from(""),
            id,
            queue,
            kick,
        }
    }

    /// Guest `id` follows `room` (by its name as shown) from now on.
    pub fn watch(&self, id: u64, room: &Arc<str>) {
        let mut state = self.lock();
        let State { rooms, guests, .. } = &mut *state;
        let Some(guest) = guests.get_mut(&id) else {
            return;
        };
        if !guest.rooms.contains(room) {
            guest.rooms.push(room.clone());
            rooms.entry(room.clone()).or_default().guests.push(id);
        }
    }

    /// Guest `id` no longer follows `room`.
    pub fn unwatch(&self, id: u64, room: &str) {
        let mut state = self.lock();
        let State { rooms, guests, .. } = &mut *state;
        if let Some(guest) = guests.get_mut(&id) {
            guest.rooms.retain(|r| &**r != room);
            unwatch(rooms, room, id);
        }
    }

    fn remove_guest(&self, id: u64) {
        let mut state = self.lock();
        let State { rooms, guests, .. } = &mut *state;
        if let Some(guest) = guests.remove(&id) {
            for room in &guest.rooms {
                unwatch(rooms, room, id);
            }
        }
    }

    /// The session `id` of `user` is shown live messages from now on (an IRC session).
    pub fn accept_live(&self, user: &str, id: u64) {
        if let Some(entry) = self.lock().online.get_mut(user) {
            for session in entry.sessions.iter_mut().filter(|s| s.id == id) {
                session.live = true;
            }
        }
    }

    /// Pushes a live message (never stored: id 0) to the sessions that show them: for a room,
    /// every such session of its members online here and its guests; else its recipient's.
    /// Never to the session it came from. Live messages have no place in any stream's order.
    /// How many sessions it was queued for.
    pub fn deliver_live(&self, message: &Arc<Message>) -> usize {
        let state = self.lock();
        let State {
            online,
            rooms,
            guests,
            ..
        } = &*state;
        // A session too slow for it is kicked, and leaves the hub as its connection ends.
        let live_only = |entry: &Online| {
            entry
                .sessions
                .iter()
                .filter(|s| s.live && s.id != message.origin)
                .filter(|s| match s.queue.push(message) {
                    Pushed::Queued => true,
                    Pushed::Full => {
                        s.kick.cancel();
                        false
                    }
                })
                .count()
        };
        let Some(room) = message.room() else {
            return online.get(&*message.recipient).map_or(0, live_only);
        };
        let Some(live) = rooms.get(room) else {
            return 0;
        };
        let members = live.members.iter().filter_map(|m| online.get(m));
        push_to_guests(live, guests, message) + members.map(live_only).sum::<usize>()
    }

    /// Pushes a live message to the sessions `to` (the members of one of the IRC door's local
    /// channels), but the one it came from; a session too slow for it is kicked. How many it
    /// was queued for.
    pub fn push_live(&self, message: &Arc<Message>, to: &[LiveFeed]) -> usize {
        let state = self.lock();
        let mut queued = 0;
        for feed in to.iter().filter(|f| f.id != message.origin) {
            if feed.user.is_empty() {
                queued += usize::from(
                    state
                        .guests
                        .get(&feed.id)
                        .is_some_and(|g| push_to_guest(g, message)),
                );
                continue;
            }
            let sessions = state
                .online
                .get(&feed.user)
                .map(|e| e.sessions.as_slice())
                .unwrap_or_default();
            // Id 0: every IRC session of the account here.
            let chosen = sessions
                .iter()
                .filter(|s| s.id == feed.id || (feed.id == 0 && s.live))
                .filter(|s| s.id != message.origin);
            for session in chosen {
                match session.queue.push(message) {
                    Pushed::Queued => queued += 1,
                    Pushed::Full => session.kick.cancel(),
                }
            }
        }
        queued
    }

    /// Names of the users with at least one live session, sorted.
    pub fn online_users(&self) -> Vec<Arc<str>> {
        self.online_after("", usize::MAX)
    }

    /// The first `limit` names, in byte order, after `after` of the users with at least one
    /// live session: the names past `after` are picked out, and only the `limit` first sorted.
    pub fn online_after(&self, after: &str, limit: usize) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = self
            .lock()
            .online
            .keys()
            .filter(|u| &***u > after)
            .cloned()
            .collect();
        if users.len() > limit {
            users.select_nth_unstable(limit);
            users.truncate(limit);
        }
        users.sort_unstable();
        users
    }

    /// How many users have at least one live session.
    /// Bytes of live messages queued for this node's sessions, not yet written: counted when
    /// asked (a scrape), so that pushing and taking a message touch no shared counter.
    pub fn queued_bytes(&self) -> usize {
        let state = self.lock();
        let sessions = state
            .online
            .values()
            .flat_map(|o| o.sessions.iter().map(|s| &s.queue));
        let guests = state.guests.values().map(|g| &g.queue);
        sessions.chain(guests).map(|q| q.lock().bytes).sum()
    }

    pub fn online_count(&self) -> usize {
        self.lock().online.len()
    }

    /// Resolves after a user came online or went offline (at least once since the last call).
    pub async fn presence_changed(&self) {
        self.shared.presence.notified().await
    }

    #[cfg(test)]
    pub fn is_online(&self, user: &str) -> bool {
        self.lock().online.contains_key(user)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters (every operation is a single insert/retain), so poisoning is ignored.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Queues `message` for every session of a user but the one that sent it; a session whose
/// queue is full is kicked and taken out. How many it was queued for.
fn push_to(
    entry: &mut Online,
    message: &Arc<Message>,
    tokens: &mut HashMap<TokenId, TokenSessions>,
) -> usize {
    let mut queued = 0;
    entry.sessions.retain(|s| {
        if s.id == message.origin {
            return true;
        }
        match s.queue.push(message) {
            Pushed::Queued => {
                queued += 1;
                true
            }
            Pushed::Full => {
                tracing::warn!(stream = %message.recipient, "session too slow to read its messages; disconnecting it");
                s.kick.cancel();
                forget_token(tokens, s);
                false
            }
        }
    });
    queued
}

/// Takes `user` out of the members of `room` that are online here.
fn unfollow(rooms: &mut HashMap<Arc<str>, LiveRoom>, room: &str, user: &str) {
    if let Some(live) = rooms.get_mut(room) {
        live.members.retain(|m| &**m != user);
        if live.members.is_empty() && live.guests.is_empty() {
            rooms.remove(room);
        }
    }
}

/// Takes guest `id` out of the followers of `room`.
fn unwatch(rooms: &mut HashMap<Arc<str>, LiveRoom>, room: &str, id: u64) {
    if let Some(live) = rooms.get_mut(room) {
        live.guests.retain(|&g| g != id);
        if live.members.is_empty() && live.guests.is_empty() {
            rooms.remove(room);
        }
    }
}

/// Queues `message` for the guests following `live` but the one that sent it; a guest whose
/// queue is full is kicked (it leaves the hub when its session ends). How many it was queued
/// for.
fn push_to_guests(live: &LiveRoom, guests: &HashMap<u64, Guest>, message: &Arc<Message>) -> usize {
    live.guests
        .iter()
        .filter(|&&id| id != message.origin)
        .filter_map(|id| guests.get(id))
        .filter(|guest| push_to_guest(guest, message))
        .count()
}

fn push_to_guest(guest: &Guest, message: &Arc<Message>) -> bool {
    match guest.queue.push(message) {
        Pushed::Queued => true,
        Pushed::Full => {
            tracing::warn!(stream = %message.recipient, "guest too slow to read its messages; disconnecting it");
            guest.kick.cancel();
            false
        }
    }
}

/// Counts a session that leaves the hub off its token's.
fn forget_token(tokens: &mut HashMap<TokenId, TokenSessions>, session: &Subscriber) {
    let Some(token) = session.token.as_deref() else {
        return;
    };
    if let Some(on_token) = tokens.get_mut(token) {
        on_token.count -= 1;
        if on_token.count == 0 {
            tokens.remove(token);
        }
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
            event: None,
            origin: 0,
            rendered: Default::default(),
        })
    }

    #[tokio::test]
    async fn delivers_to_every_session_and_tracks_presence() {
        let hub = Hub::default();
        let mut one = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        let mut two = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
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
        let slow = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        let mut fast = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
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
        let slow = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
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
        let mut bob = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        assert_eq!(hub.deliver(&message(5, "bob")), 1);
        assert_eq!(hub.deliver(&message(3, "bob")), 0);
        assert_eq!(hub.deliver(&message(5, "bob")), 0);
        assert_eq!(hub.deliver(&message(6, "bob")), 1);
        assert_eq!(bob.next().await.unwrap().id, 5);
        assert_eq!(bob.next().await.unwrap().id, 6);
    }

    fn in_room(id: i64, from: &str, event: Option<(EventKind, &str)>, origin: u64) -> Arc<Message> {
        Arc::new(Message {
            sender: Arc::from(from),
            recipient: Arc::from("#class"),
            event: event.map(|(kind, subject)| {
                Box::new(crate::store::RoomEvent {
                    kind,
                    subject: Arc::from(subject),
                })
            }),
            origin,
            ..(*message(id, "#class")).clone()
        })
    }

    #[tokio::test]
    async fn streams_are_ordered_apart_a_room_id_below_an_inbox_id_is_delivered() {
        let hub = Hub::default();
        let bob = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        hub.follow("bob", &[Arc::from("#class")]);
        // Another node committed the inbox's 101 before this room's 100: both arrive.
        assert_eq!(hub.deliver(&message(101, "bob")), 1);
        assert_eq!(hub.deliver(&in_room(100, "alice", None, 0)), 1);
        // Within each stream, a lower id after a higher one is still never pushed.
        assert_eq!(hub.deliver(&in_room(99, "alice", None, 0)), 0);
        assert_eq!(hub.deliver(&message(100, "bob")), 0);
        let ids: Vec<i64> = std::iter::from_fn(|| bob.try_recv()).map(|m| m.id).collect();
        assert_eq!(ids, [101, 100]);
    }

    #[tokio::test]
    async fn a_room_reaches_every_member_session_but_the_sender_and_follows_its_events() {
        let hub = Hub::default();
        let alice = hub
            .subscribe(Arc::from("alice"), CancellationToken::new(), None)
            .unwrap();
        let alice_too = hub
            .subscribe(Arc::from("alice"), CancellationToken::new(), None)
            .unwrap();
        let bob = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        hub.follow("alice", &[Arc::from("#class")]);
        // Bob joins: his join event makes him follow the room from there on.
        assert_eq!(
            hub.deliver(&in_room(1, "bob", Some((EventKind::Join, "bob")), 0)),
            3
        );
        // Alice speaks from one session: the other two get it.
        assert_eq!(hub.deliver(&in_room(2, "alice", None, alice.id())), 2);
        assert!(alice.try_recv().is_some_and(|m| m.id == 1) && alice.try_recv().is_none());
        assert_eq!(alice_too.try_recv().map(|m| m.id), Some(1));
        assert_eq!(alice_too.try_recv().map(|m| m.id), Some(2));
        // Bob is removed: he gets the removal, then nothing.
        let kick = in_room(3, "alice", Some((EventKind::Kick, "bob")), alice.id());
        assert_eq!(hub.deliver(&kick), 2);
        assert_eq!(hub.deliver(&in_room(4, "alice", None, alice.id())), 1);
        let ids: Vec<i64> = std::iter::from_fn(|| bob.try_recv()).map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        // A list of rooms read before the removal does not bring it back.
        hub.follow("bob", &[Arc::from("#class")]);
        assert_eq!(hub.deliver(&in_room(5, "alice", None, 0)), 2);
        assert!(bob.try_recv().is_none());
        // Offline members leave the room's live set; the room goes when nobody is left.
        drop((alice, alice_too));
        assert_eq!(hub.deliver(&in_room(6, "carol", None, 0)), 0);
        assert!(hub.lock().rooms.is_empty());
    }

    #[test]
    fn sessions_per_user_are_capped() {
        let hub = Hub::new(HubLimits {
            sessions_per_user: 2,
            ..HubLimits::default()
        });
        let _a = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        let b = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        assert_eq!(
            hub.subscribe(Arc::from("bob"), CancellationToken::new(), None)
                .err(),
            Some(TooManySessions::User(2))
        );
        assert!(hub
            .subscribe(Arc::from("alice"), CancellationToken::new(), None)
            .is_ok());
        drop(b);
        assert!(hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .is_ok());
    }

    #[test]
    fn sessions_per_token_are_capped_below_the_users() {
        let hub = Hub::new(HubLimits {
            sessions_per_user: 4,
            sessions_per_token: 2,
            ..HubLimits::default()
        });
        let leaked = [7u8; 32];
        let open = |token| hub.subscribe(Arc::from("bob"), CancellationToken::new(), token);
        let a = open(Some(leaked)).unwrap();
        let _b = open(Some(leaked)).unwrap();
        assert_eq!(open(Some(leaked)).err(), Some(TooManySessions::Token(2)));
        // The owner's own sessions still go online.
        let _line = open(None).unwrap();
        let _other = open(Some([8u8; 32])).unwrap();
        assert_eq!(open(None).err(), Some(TooManySessions::User(4)));
        drop(a);
        assert!(open(Some(leaked)).is_ok());
    }

    #[tokio::test]
    async fn ending_a_token_ends_only_its_sessions() {
        let hub = Hub::default();
        let token = [1u8; 32];
        let mut stream = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), Some(token))
            .unwrap();
        let line = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        assert_eq!(hub.tokens_in_use(), vec![token]);
        assert_eq!(hub.end_token(&token), 1);
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.ended(), Some(Ended::LoggedOut));
        assert!(stream.is_kicked());
        assert_eq!(line.ended(), None);
        assert!(hub.tokens_in_use().is_empty());
        assert_eq!(hub.deliver(&message(1, "bob")), 1);
        // Dropping an ended session changes nothing more.
        drop(stream);
        assert!(hub.is_online("bob"));
    }

    #[tokio::test]
    async fn ending_a_user_spares_sessions_opened_after() {
        let hub = Hub::default();
        let old = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), Some([2u8; 32]))
            .unwrap();
        let line = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        let alice = hub
            .subscribe(Arc::from("alice"), CancellationToken::new(), None)
            .unwrap();
        let logout = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let new = hub
            .subscribe(Arc::from("bob"), CancellationToken::new(), None)
            .unwrap();
        assert_eq!(hub.end_user("bob", Some(logout)), 2);
        assert_eq!(
            (old.ended(), line.ended()),
            (Some(Ended::LoggedOut), Some(Ended::LoggedOut))
        );
        assert_eq!((new.ended(), alice.ended()), (None, None));
        assert!(hub.tokens_in_use().is_empty());
        assert_eq!(hub.end_user("bob", None), 1);
        assert!(!hub.is_online("bob"));
    }

    #[test]
    fn online_users_page_in_byte_order() {
        let hub = Hub::default();
        let names = ["bob", "Zed", "alice", "carol", "_x"];
        let _sessions: Vec<_> = names
            .iter()
            .map(|n| {
                hub.subscribe(Arc::from(*n), CancellationToken::new(), None)
                    .unwrap()
            })
            .collect();
        let page = |after: &str, limit| -> Vec<String> {
            hub.online_after(after, limit)
                .iter()
                .map(|u| u.to_string())
                .collect()
        };
        assert_eq!(page("", 2), ["Zed", "_x"]);
        assert_eq!(page("_x", 2), ["alice", "bob"]);
        assert_eq!(page("bob", 2), ["carol"]);
        assert_eq!(page("carol", 2), Vec::<String>::new());
        assert_eq!(hub.online_count(), 5);
    }

    #[tokio::test]
    async fn guests_follow_rooms_and_live_messages_reach_only_live_sessions() {
        let hub = Hub::default();
        let mut line = hub
            .subscribe(Arc::from("a"), CancellationToken::new(), None)
            .unwrap();
        let mut irc = hub
            .subscribe(Arc::from("a"), CancellationToken::new(), None)
            .unwrap();
        hub.accept_live("a", irc.id());
        hub.follow("a", &[Arc::from("#class")]);
        let mut guest = hub.subscribe_guest(CancellationToken::new());
        hub.watch(guest.id(), &Arc::from("#class"));
        assert!(
            hub.online_users().iter().all(|u| !u.is_empty()),
            "a guest is no user"
        );
        // A stored room message reaches the member's sessions and the guest.
        assert_eq!(hub.deliver(&in_room(1, "a", None, 0)), 3);
        assert_eq!(guest.next().await.unwrap().id, 1);
        // A live one (id 0) only the sessions that show them, not its sender.
        let live = in_room(0, "visitor", None, guest.id());
        assert_eq!(hub.deliver_live(&live), 1);
        assert_eq!(line.next().await.unwrap().id, 1);
        assert_eq!(irc.next().await.unwrap().id, 1);
        assert_eq!(irc.next().await.unwrap().sender.as_ref(), "visitor");
        assert!(line.try_recv().is_none());
        // And it takes no place in the room's order.
        assert_eq!(hub.deliver(&in_room(2, "a", None, 0)), 3);
        let id = guest.id();
        hub.unwatch(id, "#class");
        assert_eq!(hub.deliver(&in_room(3, "a", None, 0)), 2);
        drop(guest);
        let to = [LiveFeed {
            user: Arc::from(""),
            id,
        }];
        assert_eq!(hub.push_live(&message(0, "a"), &to), 0, "gone");
    }
}
