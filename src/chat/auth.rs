//! Passwords: hashing them (argon2 on the blocking pool, a bounded number at once) and the
//! limits on failed logins, per connection and per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::Mutex;
use tokio::sync::Semaphore;

use super::names::Password;
use crate::error::{ChatError, ChatResult, Code};

/// Limits on failed logins.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    pub failures_per_conn: u32,
    pub failures_per_addr: u32,
    pub lockout: Duration,
}

/// Counts failed AUTHs of one connection; the line session keeps one.
#[derive(Debug, Default)]
pub struct ConnAuthState {
    failures: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

pub(crate) struct Auth {
    limits: AuthLimits,
    /// Argon2 runs on blocking threads, at most this many at once (each needs ~19 MiB).
    hashers: Semaphore,
    /// Verified against when the user does not exist, so timing does not reveal who exists.
    dummy_hash: String,
    failed: Mutex<HashMap<IpAddr, Failures>>,
}

impl Auth {
    pub fn new(limits: AuthLimits) -> Auth {
        return_large_allocations();
        let hashers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dummy_hash = Argon2::default()
            .hash_password(b"not a password", &SaltString::generate(&mut OsRng))
            .expect("argon2 with default parameters hashes")
            .to_string();
        Auth {
            limits,
            hashers: Semaphore::new(hashers),
            dummy_hash,
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The argon2 hash of a new password, in PHC string form.
    pub async fn hash_password(&self, password: &Password<'_>) -> ChatResult<String> {
        let owned = password.as_str().to_owned();
        self.hash(move |argon| {
            argon
                .hash_password(owned.as_bytes(), &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
                .map_err(|e| ChatError::internal("hashing the password", e))
        })
        .await
    }

    /// Whether `password` matches `stored` (the user's hash, or `None` if there is no such
    /// user: then a dummy hash is checked, so both cost the same).
    pub async fn verify(&self, password: &Password<'_>, stored: Option<String>) -> ChatResult<bool> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let owned = password.as_str().to_owned();
        let ok = self
            .hash(move |argon| {
                let parsed = PasswordHash::new(&hash)
                    .map_err(|e| ChatError::internal("reading the stored password hash", e))?;
                Ok(argon.verify_password(owned.as_bytes(), &parsed).is_ok())
            })
            .await?;
        Ok(ok && exists)
    }

    /// Refuses at once if this connection or address is locked out.
    pub fn check(&self, peer: IpAddr, conn: Option<&mut ConnAuthState>, now: Instant) -> ChatResult<()> {
        if let Some(state) = conn {
            if let Some(until) = state.locked_until {
                if until > now {
                    return Err(rate_limited(until - now));
                }
                *state = ConnAuthState::default();
            }
        }
        let failures = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&peer).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(rate_limited(until - now)),
            _ => Ok(()),
        }
    }

    pub fn succeeded(&self, conn: Option<&mut ConnAuthState>) {
        if let Some(state) = conn {
            *state = ConnAuthState::default();
        }
    }

    pub fn failed(&self, peer: IpAddr, conn: Option<&mut ConnAuthState>, now: Instant) {
        let limits = &self.limits;
        if let Some(state) = conn {
            state.failures += 1;
            if state.failures >= limits.failures_per_conn {
                state.locked_until = Some(now + limits.lockout);
            }
        }
        let mut failures = self.failed.lock().unwrap_or_else(|e| e.into_inner());
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

    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> ChatResult<T> + Send + 'static,
    ) -> ChatResult<T> {
        let _permit = self
            .hashers
            .acquire()
            .await
            .map_err(|e| ChatError::internal("waiting for a password hasher", e))?;
        tokio::task::spawn_blocking(move || work(&Argon2::default()))
            .await
            .map_err(|e| ChatError::internal("hashing the password", e))?
    }
}

pub fn bad_credentials() -> ChatError {
    ChatError::new(Code::BadCredentials, "wrong user name or password")
}

fn rate_limited(wait: Duration) -> ChatError {
    ChatError::new(
        Code::RateLimited,
        format!("too many failed logins; try again in {} s", wait.as_secs().max(1)),
    )
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
