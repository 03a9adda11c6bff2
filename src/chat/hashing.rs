//! The password-hash queue: argon2 on the blocking pool, a few at once, shared fairly
//! between addresses.
//!
//! A hash first needs a [`Ticket`]. Each address (see [`AddrKey`]) holds at most `share`
//! tickets at once; its further requests wait their turn, in order, up to [`HASH_WAIT`], and at
//! most `per_addr` of them wait or hash at once. All addresses together hold at most `queue`
//! tickets: when they are all taken a request is refused with `SERVER_BUSY` at once, rather
//! than waiting seconds behind everyone else. So a flood from one address delays another's
//! login by at most `share` hashes per busy address, not by the length of the flood.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::Argon2;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::AddrKey;
use crate::error::{ChatError, ChatResult, Code};

/// Longest a request waits for its address's turn before `SERVER_BUSY`.
pub const HASH_WAIT: Duration = Duration::from_secs(120);

/// Sizes of the hash queue.
#[derive(Debug, Clone)]
pub struct HashLimits {
    /// Tickets one address may hold at once (default: one per hashing thread, so one address
    /// alone can keep every hasher busy, but never queues ahead of a newcomer by more than that).
    pub share: Option<usize>,
    /// Requests of one address waiting or holding a ticket at once.
    pub per_addr: usize,
    /// Tickets of all addresses together.
    pub queue: usize,
    /// `--load-test-hashing`: new hashes at a cheap cost (64 KiB, one pass), for load tests only.
    pub cheap: bool,
}

/// The argon2 hasher for new password hashes: argon2's defaults (19 MiB, 2 passes), or, when
/// `cheap`, 64 KiB and one pass. Verifying reads the cost from the stored hash either way.
pub fn password_hasher(cheap: bool) -> Argon2<'static> {
    if cheap {
        let params = argon2::Params::new(64, 1, 1, None).expect("valid argon2 parameters");
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    } else {
        Argon2::default()
    }
}

pub(crate) struct Hasher {
    limits: HashLimits,
    /// Argon2 runs on blocking threads, at most this many at once (each needs ~19 MiB).
    running: Semaphore,
    tickets: AtomicUsize,
    share: usize,
    /// Each busy address's turnstile and how many requests use it.
    addrs: Mutex<HashMap<AddrKey, (Arc<Semaphore>, usize)>>,
}

/// The right to hash one password; see the module documentation.
pub(crate) struct Ticket<'a> {
    hasher: &'a Hasher,
    _turn: OwnedSemaphorePermit,
    _user: AddrUser<'a>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.hasher.tickets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one request as using its address's turnstile.
struct AddrUser<'a> {
    hasher: &'a Hasher,
    addr: AddrKey,
}

impl Drop for AddrUser<'_> {
    fn drop(&mut self) {
        let mut addrs = self.hasher.addrs();
        if let Some((_, users)) = addrs.get_mut(&self.addr) {
            *users -= 1;
            if *users == 0 {
                addrs.remove(&self.addr);
            }
        }
    }
}

impl Hasher {
    pub fn new(limits: HashLimits) -> Hasher {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hasher {
            limits: HashLimits {
                share: limits.share,
                per_addr: limits.per_addr.max(1),
                queue: limits.queue.max(1),
                cheap: limits.cheap,
            },
            running: Semaphore::new(threads),
            share: limits.share.unwrap_or(threads).max(1),
            tickets: AtomicUsize::new(0),
            addrs: Mutex::new(HashMap::new()),
        }
    }

    fn addrs(&self) -> std::sync::MutexGuard<'_, HashMap<AddrKey, (Arc<Semaphore>, usize)>> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `addr`'s turn, then takes a ticket; `share` caps how many tickets this address
    /// may hold (below the hasher's own share when the caller needs it).
    pub async fn ticket(&self, addr: AddrKey, share: usize) -> ChatResult<Ticket<'_>> {
        let turnstile = {
            let mut addrs = self.addrs();
            let (turnstile, users) = addrs
                .entry(addr)
                .or_insert_with(|| (Arc::new(Semaphore::new(share.clamp(1, self.share))), 0));
            if *users >= self.limits.per_addr {
                return Err(ChatError::new(
                    Code::RateLimited,
                    format!(
                        "{} logins and registrations from this address are already in progress; try again in 1 s",
                        self.limits.per_addr
                    ),
                ));
            }
            *users += 1;
            turnstile.clone()
        };
        let user = AddrUser { hasher: self, addr };
        let turn = tokio::time::timeout(HASH_WAIT, turnstile.acquire_owned())
            .await
            .map_err(|_| {
                busy(format!(
                    "no turn to check the password within {} s",
                    HASH_WAIT.as_secs()
                ))
            })?
            .map_err(|e| ChatError::internal("waiting for a password hasher", e))?;
        if self.tickets.fetch_add(1, Ordering::AcqRel) >= self.limits.queue {
            self.tickets.fetch_sub(1, Ordering::AcqRel);
            return Err(busy(format!(
                "{} passwords are waiting to be checked",
                self.limits.queue
            )));
        }
        Ok(Ticket {
            hasher: self,
            _turn: turn,
            _user: user,
        })
    }

    /// Runs `work` on a blocking thread once a hasher is free.
    pub async fn run<T: Send + 'static>(
        &self,
        _ticket: Ticket<'_>,
        work: impl FnOnce(&Argon2<'static>) -> ChatResult<T> + Send + 'static,
    ) -> ChatResult<T> {
        let _permit = self
            .running
            .acquire()
            .await
            .map_err(|e| ChatError::internal("waiting for a password hasher", e))?;
        let hasher = password_hasher(self.limits.cheap);
        tokio::task::spawn_blocking(move || work(&hasher))
            .await
            .map_err(|e| ChatError::internal("hashing the password", e))?
    }
}

fn busy(why: String) -> ChatError {
    ChatError::new(
        Code::ServerBusy,
        format!("the server is busy checking passwords ({why}); try again"),
    )
}
