//! Passwords: checking them under the limits of [`limits`](super::limits), hashing them on
//! the fair queue of [`hashing`](super::hashing), and remembering recent successes briefly so
//! that a client sending its password with every request does not cost a hash each time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::RngCore;
use sha2::{Digest, Sha256};

use super::hashing::{HashLimits, Hasher};
use super::limits::{rate_limited, AddrKey, Admission, AuthLimits, Limits};
use super::names::{Password, Username};
use crate::error::{ChatError, ChatResult, Code};

/// How long a successful password is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Most passwords remembered at once.
pub const REMEMBER_MAX: usize = 4096;

/// Counts failed AUTHs of one connection, and remembers the account it last logged in to
/// (which it may log in to again past that account's back-off); the line session keeps one.
#[derive(Debug, Default)]
pub struct ConnAuthState {
    failures: u32,
    locked_until: Option<Instant>,
    logged_in: Option<Arc<str>>,
}

pub(crate) struct Auth {
    limits: Limits,
    hasher: Hasher,
    /// Verified against when the user does not exist, so timing does not reveal who exists.
    dummy_hash: String,
    remembered: Remembered,
}

impl Auth {
    pub fn new(limits: AuthLimits, hashing: HashLimits) -> Auth {
        crate::memory::tune();
        let dummy_hash = Argon2::default()
            .hash_password(b"not a password", &SaltString::generate(&mut OsRng))
            .expect("argon2 with default parameters hashes")
            .to_string();
        // One address's share of the hash queue is never more than its failure budget, so
        // that correct passwords in flight cannot by themselves use up that budget.
        let share_cap = limits.failures_per_addr as usize;
        Auth {
            limits: Limits::new(limits),
            hasher: Hasher::new(hashing, share_cap),
            dummy_hash,
            remembered: Remembered::new(),
        }
    }

    /// Takes one of `addr`'s registrations, or refuses.
    pub fn begin_registration(&self, addr: AddrKey) -> ChatResult<()> {
        self.limits.register(addr, Instant::now())
    }

    /// Gives back a registration that needed no hash.
    pub fn refund_registration(&self, addr: AddrKey) {
        self.limits.refund_registration(addr)
    }

    /// The argon2 hash of a new password, in PHC string form, in `addr`'s turn.
    /// Password hashes waiting or running now.
    pub fn hash_queue_depth(&self) -> usize {
        self.hasher.depth()
    }

    pub async fn hash_password(&self, addr: AddrKey, password: &Password<'_>) -> ChatResult<String> {
        let turn = self.hasher.turn(addr, true).await?;
        let owned = password.as_str().to_owned();
        self.hasher
            .run(turn, move |argon| {
                argon
                    .hash_password(owned.as_bytes(), &SaltString::generate(&mut OsRng))
                    .map(|h| h.to_string())
                    .map_err(|e| ChatError::internal("hashing the password", e))
            })
            .await
    }

    /// Refuses at once if this connection is locked out.
    pub fn check_conn(&self, conn: Option<&mut ConnAuthState>, now: Instant) -> ChatResult<()> {
        if let Some(state) = conn {
            if let Some(until) = state.locked_until {
                if until > now {
                    return Err(rate_limited(until - now));
                }
                state.failures = 0;
                state.locked_until = None;
            }
        }
        Ok(())
    }

    /// Refuses at once if `addr` may not try `user` now (no hashing, no waiting, nothing
    /// taken from anyone else); see [`Limits::admit`].
    pub fn admit(
        &self,
        addr: AddrKey,
        user: &Username,
        conn: Option<&ConnAuthState>,
        now: Instant,
    ) -> ChatResult<Admission<'_>> {
        let client_known = conn.and_then(|c| c.logged_in.as_deref()) == Some(user.as_str());
        self.limits.admit(addr, user.as_arc(), client_known, now)
    }

    /// Checks `password` against `stored` (the user's hash, or `None` if there is no such
    /// user: then a dummy hash is checked, so both cost the same). `lookup` fetches the hash
    /// once the attempt holds its slots.
    ///
    /// A password that logged in as `user` within [`REMEMBER_FOR`] skips the hash while the
    /// stored hash is still the one it was checked against (a reset or a removal, on any node,
    /// ends that at once), and so needs no ticket in the hash queue, but only that: it still waits for its address's
    /// earlier requests and takes its slots like any check. Otherwise a burst of guesses that
    /// arrives before its first failures are counted would have every guess compared with the
    /// remembered one for free, and the right one would log in past the limits while the
    /// wrong ones were refused unchecked.
    pub async fn verify<F>(
        &self,
        admission: Admission<'_>,
        user: &Username,
        password: &Password<'_>,
        lookup: F,
    ) -> ChatResult<bool>
    where
        F: std::future::Future<Output = ChatResult<Option<String>>>,
    {
        let addr = admission.addr();
        // Decided once, on arrival: it was the right password then, for the hash stored then.
        let remembered = self.remembered.get(user, password, Instant::now());
        let mut turn = self.hasher.turn(addr, remembered.is_none()).await?;
        let attempt = self.limits.begin(admission, Instant::now())?;
        let stored = lookup.await?;
        if let Some(was) = remembered {
            // Still the stored hash: the password was not changed (on any node) since.
            if stored.as_deref().map(fingerprint) == Some(was) {
                drop(turn);
                attempt.succeeded();
                return Ok(true);
            }
            // Changed or removed since: checked like any other.
            drop(turn);
            turn = self.hasher.turn(addr, true).await?;
        }
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let owned = password.as_str().to_owned();
        let print = fingerprint(&hash);
        let ok = self
            .hasher
            .run(turn, move |argon| {
                let parsed = PasswordHash::new(&hash)
                    .map_err(|e| ChatError::internal("reading the stored password hash", e))?;
                Ok(argon.verify_password(owned.as_bytes(), &parsed).is_ok())
            })
            .await?;
        if ok && exists {
            attempt.succeeded();
            self.remembered.insert(user, password, print, Instant::now());
            Ok(true)
        } else {
            attempt.failed();
            Ok(false)
        }
    }

    pub fn succeeded(&self, conn: Option<&mut ConnAuthState>, user: &Username) {
        if let Some(state) = conn {
            *state = ConnAuthState {
                logged_in: Some(user.as_arc().clone()),
                ..ConnAuthState::default()
            };
        }
    }

    /// Counts a failure against the connection (the address and account count theirs when
    /// a hash was checked).
    pub fn conn_failed(&self, conn: Option<&mut ConnAuthState>, now: Instant) {
        if let Some(state) = conn {
            state.failures += 1;
            if state.failures >= self.limits.limits().failures_per_conn {
                state.locked_until = Some(now + self.limits.limits().lockout);
            }
        }
    }
}

/// Recent successful logins, as keyed digests of user and password: the key is random per
/// process and the digest covers both, so only that same user with that same password matches,
/// and the passwords themselves are not kept.
struct Remembered {
    key: [u8; 32],
    /// Until when, and the fingerprint of the stored hash it was checked against.
    entries: Mutex<Entries>,
}

/// Digest of user and password -> (until when, fingerprint of the stored hash).
type Entries = HashMap<[u8; 32], (Instant, [u8; 32])>;

/// A stored password hash, short.
fn fingerprint(hash: &str) -> [u8; 32] {
    Sha256::digest(hash.as_bytes()).into()
}

impl Remembered {
    fn new() -> Remembered {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Remembered {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, user: &Username, password: &Password<'_>) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update((user.as_str().len() as u64).to_le_bytes());
        hasher.update(user.as_str());
        hasher.update(password.as_str());
        hasher.finalize().into()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fingerprint of the hash `password` was checked against, if it was recently.
    fn get(&self, user: &Username, password: &Password<'_>, now: Instant) -> Option<[u8; 32]> {
        let digest = self.digest(user, password);
        let mut entries = self.entries();
        match entries.get(&digest) {
            Some(&(expires, print)) if expires > now => Some(print),
            Some(_) => {
                entries.remove(&digest);
                None
            }
            None => None,
        }
    }

    fn insert(&self, user: &Username, password: &Password<'_>, print: [u8; 32], now: Instant) {
        let digest = self.digest(user, password);
        let mut entries = self.entries();
        if entries.len() >= REMEMBER_MAX && !entries.contains_key(&digest) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= REMEMBER_MAX {
                return;
            }
        }
        entries.insert(digest, (now + REMEMBER_FOR, print));
    }
}

pub fn bad_credentials() -> ChatError {
    ChatError::new(Code::BadCredentials, "wrong user name or password")
}
