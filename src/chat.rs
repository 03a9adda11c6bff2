//! The chat domain: register, authenticate, send, inbox, who. Both facades (the line protocol
//! and HTTP) call this one place; it owns validation, password hashing, rate limiting, the
//! group-commit writer and live delivery.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache::InboxCache;
use crate::error::{ChatError, ChatResult, Code};
use crate::hub::{Hub, Subscription};
use crate::store::{Counts, Message, NewMessage, Store};

/// Most messages one INBOX reply carries.
pub const INBOX_PAGE: u32 = 100;
/// Longest message body in bytes, whichever facade it comes through.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most SENDs committed in one transaction.
const MAX_BATCH: usize = 4096;
/// SENDs waiting for the writer before senders wait for room.
const WRITER_QUEUE: usize = 16 * 1024;

/// A valid user name: 1-32 of `[A-Za-z0-9_.-]`. Names are case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(Arc<str>);

impl Username {
    pub fn parse(name: &str) -> ChatResult<Username> {
        let valid = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Username(Arc::from(name)))
        } else {
            Err(ChatError::bad_args(
                "user names are 1-32 characters of A-Z a-z 0-9 _ . -",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid password: 1-128 bytes, no spaces or control characters.
pub struct Password<'a>(&'a str);

impl<'a> Password<'a> {
    pub fn parse(password: &'a str) -> ChatResult<Password<'a>> {
        let valid =
            (1..=128).contains(&password.len()) && !password.chars().any(|c| c == ' ' || c.is_control());
        if valid {
            Ok(Password(password))
        } else {
            Err(ChatError::bad_args("passwords are 1-128 bytes without spaces"))
        }
    }
}

/// How long a bearer token from `/auth` stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Limits on failed logins.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    pub failures_per_conn: u32,
    pub failures_per_addr: u32,
    pub lockout: Duration,
}

/// Settings of the domain layer.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub auth: AuthLimits,
    /// Live messages queued per session before it is disconnected as too slow.
    pub push_queue: usize,
}

/// The cheap, cloneable handle every connection holds.
#[derive(Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    hub: Hub,
    options: ChatOptions,
    /// Argon2 runs on blocking threads, at most this many at once (each needs ~19 MiB).
    hashers: Semaphore,
    writer: mpsc::Sender<PendingSend>,
    known_users: Mutex<HashSet<Arc<str>>>,
    failed_auth: Mutex<HashMap<IpAddr, Failures>>,
    /// Verified against when the user does not exist, so timing does not reveal who exists.
    dummy_hash: String,
    /// The newest messages of users who read their inbox (single node only).
    cache: Option<Arc<InboxCache>>,
    /// Tokens seen valid recently: SHA-256 of the token -> user and expiry (µs since epoch).
    tokens: Mutex<HashMap<[u8; 32], (Username, i64)>>,
    connections: AtomicUsize,
}

/// Counts a connection as open for as long as it lives.
pub struct ConnectionGuard(Chat);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

struct PendingSend {
    message: NewMessage,
    reply: oneshot::Sender<ChatResult<Arc<Message>>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

/// Counts failed AUTHs of one connection; the line session keeps one.
#[derive(Debug, Default)]
pub struct ConnAuthState {
    failures: u32,
    locked_until: Option<Instant>,
}

impl Chat {
    /// Builds the domain over `store` and starts the group-commit writer. The writer (whose
    /// handle is returned) stops once every `Chat` handle is dropped and the queued SENDs are
    /// committed.
    pub fn start(store: Store, options: ChatOptions) -> (Chat, JoinHandle<()>) {
        return_large_allocations();
        let (writer, queue) = mpsc::channel(WRITER_QUEUE);
        let hub = Hub::new();
        let hashers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dummy_hash = Argon2::default()
            .hash_password(b"not a password", &SaltString::generate(&mut OsRng))
            .expect("argon2 with default parameters hashes")
            .to_string();
        // Only a single node sees every commit, which the cache needs to stay exact.
        let cache = store.postgres().is_none().then(|| Arc::new(InboxCache::new()));
        let writer_task = tokio::spawn(write_messages(store.clone(), hub.clone(), cache.clone(), queue));
        let chat = Chat {
            inner: Arc::new(Inner {
                store,
                hub,
                options,
                hashers: Semaphore::new(hashers),
                writer,
                known_users: Mutex::new(HashSet::new()),
                failed_auth: Mutex::new(HashMap::new()),
                dummy_hash,
                cache,
                tokens: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
            }),
        };
        (chat, writer_task)
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub async fn register(&self, user: &str, password: &str) -> ChatResult<Username> {
        let user = Username::parse(user)?;
        let password = Password::parse(password)?;
        let owned = password.0.to_owned();
        let hash = self
            .hash(move |argon| {
                argon
                    .hash_password(owned.as_bytes(), &SaltString::generate(&mut OsRng))
                    .map(|h| h.to_string())
                    .map_err(|e| ChatError::internal("hashing the password", e))
            })
            .await?;
        self.inner.store.create_user(user.as_str(), &hash).await?;
        self.remember(user.as_arc());
        tracing::info!(%user, "registered");
        Ok(user)
    }

    /// Checks credentials, honouring the per-address limit and the caller's per-connection
    /// state (`None` for facades without connections).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
        conn: Option<&mut ConnAuthState>,
    ) -> ChatResult<Username> {
        let now = Instant::now();
        let mut conn = conn;
        if let Some(state) = conn.as_deref_mut() {
            if let Some(until) = state.locked_until {
                if until > now {
                    return Err(rate_limited(until - now));
                }
                *state = ConnAuthState::default();
            }
        }
        self.check_address(peer, now)?;
        let name = Username::parse(user);
        let verified = match (&name, Password::parse(password)) {
            (Ok(name), Ok(password)) => {
                let stored = self.inner.store.password_hash(name.as_str()).await?;
                let exists = stored.is_some();
                let hash = stored.unwrap_or_else(|| self.inner.dummy_hash.clone());
                let owned = password.0.to_owned();
                let ok = self
                    .hash(move |argon| {
                        let parsed = PasswordHash::new(&hash)
                            .map_err(|e| ChatError::internal("reading the stored password hash", e))?;
                        Ok(argon.verify_password(owned.as_bytes(), &parsed).is_ok())
                    })
                    .await?;
                ok && exists
            }
            _ => false,
        };
        match name {
            Ok(name) if verified => {
                if let Some(state) = conn {
                    *state = ConnAuthState::default();
                }
                self.remember(name.as_arc());
                Ok(name)
            }
            _ => {
                self.record_failure(peer, Instant::now(), conn);
                Err(ChatError::new(
                    Code::BadCredentials,
                    "wrong user name or password",
                ))
            }
        }
    }

    /// Stores a message and, once it is committed, pushes it to the recipient's live sessions.
    pub async fn send(
        &self,
        from: &Username,
        to: &str,
        body: &str,
        client_timestamp: Option<String>,
    ) -> ChatResult<Arc<Message>> {
        let to = Username::parse(to).map_err(|_| no_such_user(to))?;
        if body.is_empty() {
            return Err(ChatError::bad_args("the message is empty"));
        }
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(ChatError::bad_args(format!(
                "the message is over {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        if body.contains(['\r', '\n']) {
            return Err(ChatError::bad_args("a message is one line: no CR or LF"));
        }
        let recipient = self.known_user(to.as_str()).await?;
        let (reply, ack) = oneshot::channel();
        let pending = PendingSend {
            message: NewMessage {
                sender: from.as_arc().clone(),
                recipient,
                body: body.to_owned(),
                client_timestamp,
            },
            reply,
        };
        let gone = || ChatError::new(Code::Internal, "the server is shutting down");
        self.inner.writer.send(pending).await.map_err(|_| gone())?;
        ack.await.map_err(|_| gone())?
    }

    /// Messages to `user` with id > `after_id`, oldest first, at most `limit` (capped at 1000).
    pub async fn inbox(&self, user: &Username, after_id: i64, limit: u32) -> ChatResult<Vec<Arc<Message>>> {
        let (after, limit) = (after_id.max(0), limit.clamp(1, 1000));
        let Some(cache) = &self.inner.cache else {
            let page = self.inner.store.inbox(user.as_str(), after, limit).await?;
            return Ok(page.into_iter().map(Arc::new).collect());
        };
        if let Some(hit) = cache.get(user.as_str(), after, limit as usize) {
            return Ok(hit);
        }
        let fence = cache.fence();
        let page: Vec<Arc<Message>> = self
            .inner
            .store
            .inbox(user.as_str(), after, limit)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        if page.len() < limit as usize {
            // Not a full page: these are all of the user's messages after `after`.
            cache.fill(user.as_arc(), after, &page, fence);
        }
        Ok(page)
    }

    /// Users with at least one live session on any node, sorted.
    pub async fn who(&self) -> ChatResult<Vec<Arc<str>>> {
        let mut users = self.inner.hub.online_users();
        if let Some(pg) = self.inner.store.postgres() {
            let elsewhere = pg.online_elsewhere(crate::cluster::PRESENCE_TTL).await?;
            users.extend(elsewhere.into_iter().map(Arc::from));
            users.sort_unstable();
            users.dedup();
        }
        Ok(users)
    }

    /// Puts an authenticated session online and returns its live feed; `kick` is cancelled
    /// if the session falls too far behind.
    pub fn go_online(&self, user: &Username, kick: CancellationToken) -> Subscription {
        self.inner
            .hub
            .subscribe(user.as_arc().clone(), self.inner.options.push_queue, kick)
    }

    pub async fn counts(&self) -> ChatResult<Counts> {
        self.inner.store.counts().await
    }

    /// Marks a connection open until the guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Connections open now (line protocol and live event streams).
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Issues a bearer token for an authenticated user; returns it and its lifetime.
    pub async fn issue_token(&self, user: &Username) -> ChatResult<(String, Duration)> {
        let mut raw = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut raw);
        let token = hex(&raw);
        let digest = token_digest(&token);
        let expires = chrono::Utc::now().timestamp_micros() + TOKEN_LIFETIME.as_micros() as i64;
        self.inner
            .store
            .create_token(&hex(&digest), user.as_str(), expires)
            .await?;
        self.cache_token(digest, user.clone(), expires);
        Ok((token, TOKEN_LIFETIME))
    }

    /// The user a bearer token belongs to; `BAD_CREDENTIALS` if it is unknown or expired.
    pub async fn token_user(&self, token: &str) -> ChatResult<Username> {
        let bad = || {
            ChatError::new(
                Code::BadCredentials,
                "the token is unknown or has expired; log in again",
            )
        };
        if token.len() != 64 {
            return Err(bad());
        }
        let digest = token_digest(token);
        let now = chrono::Utc::now().timestamp_micros();
        let cached = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        if let Some((user, expires)) = cached {
            return if expires > now { Ok(user) } else { Err(bad()) };
        }
        let (user, expires) = self
            .inner
            .store
            .token_user(&hex(&digest))
            .await?
            .ok_or_else(bad)?;
        let user = Username::parse(&user)?;
        self.cache_token(digest, user.clone(), expires);
        Ok(user)
    }

    fn cache_token(&self, digest: [u8; 32], user: Username, expires: i64) {
        let mut tokens = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= 100_000 {
            let now = chrono::Utc::now().timestamp_micros();
            tokens.retain(|_, (_, e)| *e > now);
            if tokens.len() >= 100_000 {
                tokens.clear();
            }
        }
        tokens.insert(digest, (user, expires));
    }

    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> ChatResult<T> + Send + 'static,
    ) -> ChatResult<T> {
        let _permit = self
            .inner
            .hashers
            .acquire()
            .await
            .map_err(|e| ChatError::internal("waiting for a password hasher", e))?;
        tokio::task::spawn_blocking(move || work(&crate::config::password_hasher()))
            .await
            .map_err(|e| ChatError::internal("hashing the password", e))?
    }

    fn remember(&self, user: &Arc<str>) {
        let mut known = self.inner.known_users.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains(user) {
            known.insert(user.clone());
        }
    }

    /// The interned name of an existing user; users are never deleted, so a hit is final.
    async fn known_user(&self, name: &str) -> ChatResult<Arc<str>> {
        if let Some(known) = self
            .inner
            .known_users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(known.clone());
        }
        if self.inner.store.user_exists(name).await? {
            let name: Arc<str> = Arc::from(name);
            self.remember(&name);
            Ok(name)
        } else {
            Err(no_such_user(name))
        }
    }

    fn check_address(&self, peer: IpAddr, now: Instant) -> ChatResult<()> {
        let failures = self.inner.failed_auth.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&peer).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(rate_limited(until - now)),
            _ => Ok(()),
        }
    }

    fn record_failure(&self, peer: IpAddr, now: Instant, conn: Option<&mut ConnAuthState>) {
        let limits = &self.inner.options.auth;
        if let Some(state) = conn {
            state.failures += 1;
            if state.failures >= limits.failures_per_conn {
                state.locked_until = Some(now + limits.lockout);
            }
        }
        let mut failures = self.inner.failed_auth.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() > 10_000 {
            failures.retain(|_, f| {
                now.duration_since(f.first) < limits.lockout || f.locked_until.is_some_and(|u| u > now)
            });
        }
        let entry = failures.entry(peer).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        let expired = entry
            .locked_until
            .map_or(now.duration_since(entry.first) >= limits.lockout, |u| u <= now);
        if expired {
            *entry = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= limits.failures_per_addr {
            entry.locked_until = Some(now + limits.lockout);
            tracing::warn!(%peer, "too many failed logins from this address; locking it out");
        }
    }
}

/// Each argon2 hash allocates ~19 MiB on a blocking thread. glibc raises its mmap threshold
/// after the first such buffer is freed, so later ones come from per-thread heaps and stay
/// resident: 2,000 logins left ~600 MiB of RSS. Pinning the threshold keeps large buffers
/// mmapped, returned to the system as soon as they are freed.
fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tuning; called once, before heavy use.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        });
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn no_such_user(name: &str) -> ChatError {
    ChatError::new(Code::NoSuchUser, format!("there is no user {name:?}"))
}

fn rate_limited(wait: Duration) -> ChatError {
    ChatError::new(
        Code::RateLimited,
        format!("too many failed logins; try again in {} s", wait.as_secs().max(1)),
    )
}

/// The group-commit writer: takes every SEND waiting, commits them in one transaction, then
/// pushes each to its recipient's live sessions and acknowledges it, in id order.
async fn write_messages(
    store: Store,
    hub: Hub,
    cache: Option<Arc<InboxCache>>,
    mut queue: mpsc::Receiver<PendingSend>,
) {
    let mut pending = Vec::with_capacity(64);
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let replies: Vec<_> = pending
            .drain(..)
            .map(|p: PendingSend| {
                batch.push(p.message);
                p.reply
            })
            .collect();
        let started = std::time::Instant::now();
        let stored = store.insert_messages(&batch).await;
        tracing::debug!(messages = batch.len(), took = ?started.elapsed(), "committed a batch");
        match stored {
            Ok(stored) => {
                for (message, reply) in stored.into_iter().zip(replies) {
                    let message = Arc::new(message);
                    if let Some(cache) = &cache {
                        cache.committed(&message);
                    }
                    hub.deliver(&message);
                    let _ = reply.send(Ok(message));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["a", "Alice_1", "x.y-z", &"n".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "al ice", "ali:ce", "élise", &"n".repeat(33)] {
            assert_eq!(Username::parse(bad).unwrap_err().code, Code::BadArgs, "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(Password::parse("pw").is_ok());
        assert!(Password::parse(&"p".repeat(128)).is_ok());
        for bad in ["", "two words", "tab\there", &"p".repeat(129)] {
            assert_eq!(Password::parse(bad).err().unwrap().code, Code::BadArgs, "{bad}");
        }
    }
}
