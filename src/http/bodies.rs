//! Room for request bodies, shared fairly. A body being received is held in memory, so the
//! bodies received at once are bounded; but a pool that anyone may fill first-come, first-served
//! is a pool an attacker fills with bodies that trickle in a byte at a time. So:
//!
//! - **Two pools.** A body that declares at most [`SMALL_BODY`] bytes (a chat message, a login,
//!   the lab's JSON) takes a place among [`SMALL_BODIES_AT_ONCE`]; larger or chunked bodies take
//!   one among [`BODIES_AT_ONCE`]. A small body never waits behind large slow ones.
//! - **A share per address.** One address (an IPv6 /64) holds at most an eighth of a pool's
//!   places ([`SMALL_BODIES_PER_ADDR`], [`BODIES_PER_ADDR`]); beyond that it is refused at once,
//!   so it only ever waits for itself. Others wait up to [`BODY_WAIT`] for a place.
//! - **A minimum rate.** A body gets [`BODY_GRACE`] to start, then must keep arriving at
//!   [`MIN_BODY_RATE`] on average ([`Pace`]); a trickle holds its place for seconds, not for the
//!   whole [`BODY_TIME`](super::extract::BODY_TIME).
//!
//! Memory: at most 1,024 × 16 KiB + 64 × 256 KiB = 32 MiB of bodies at once.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::{Admission, Door, PerAddr, Refusal};

/// Largest body that counts as small.
pub const SMALL_BODY: usize = 16 * 1024;
/// Small bodies being received at once, at most.
pub const SMALL_BODIES_AT_ONCE: usize = 1024;
/// Small bodies one address may send at once.
pub const SMALL_BODIES_PER_ADDR: usize = SMALL_BODIES_AT_ONCE / 8;
/// Larger (or chunked) bodies being received at once, at most.
pub const BODIES_AT_ONCE: usize = 64;
/// Larger bodies one address may send at once.
pub const BODIES_PER_ADDR: usize = BODIES_AT_ONCE / 8;
/// How long a body waits for a place in its pool before `503 SERVER_BUSY`.
pub const BODY_WAIT: Duration = Duration::from_secs(2);
/// Time a body gets before the minimum rate applies.
pub const BODY_GRACE: Duration = Duration::from_secs(2);
/// Bytes per second a body must average once its grace is over.
pub const MIN_BODY_RATE: usize = 4 * 1024;

/// The two pools.
pub struct Bodies {
    small: Door,
    large: Door,
}

impl Default for Bodies {
    fn default() -> Bodies {
        Bodies {
            small: Door::new(SMALL_BODIES_AT_ONCE, Some(PerAddr::new(SMALL_BODIES_PER_ADDR))),
            large: Door::new(BODIES_AT_ONCE, Some(PerAddr::new(BODIES_PER_ADDR))),
        }
    }
}

impl Bodies {
    /// A place for a body from `peer` that declares `declared` bytes (`None`: chunked, size
    /// unknown), or why there is none (the text for the client).
    pub async fn room(&self, peer: IpAddr, declared: Option<u64>) -> Result<Admission, &'static str> {
        let small = declared.is_some_and(|n| n <= SMALL_BODY as u64);
        let pool = if small { &self.small } else { &self.large };
        pool.admit_within(peer, BODY_WAIT)
            .await
            .map_err(|refusal| match refusal {
                Refusal::PerAddress => "your address is sending too many request bodies at once; try again",
                Refusal::Full => "too many requests are sending a body right now; try again",
            })
    }
}

/// When a body being received must be complete: [`BODY_GRACE`] after it started, plus a second
/// for every [`MIN_BODY_RATE`] bytes that arrived, and never later than `limit`.
pub struct Pace {
    started: Instant,
    limit: Instant,
}

impl Pace {
    pub fn new(started: Instant, limit: Duration) -> Pace {
        Pace {
            started,
            limit: started + limit,
        }
    }

    /// The deadline once `received` bytes have arrived.
    pub fn deadline(&self, received: usize) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / MIN_BODY_RATE as f64);
        (self.started + BODY_GRACE + earned).min(self.limit)
    }

    /// Whether the total time limit, rather than the rate, ends a body at `deadline`.
    pub fn is_limit(&self, deadline: Instant) -> bool {
        deadline >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_and_small_bodies_have_their_own_pool() {
        let bodies = Bodies::default();
        let greedy: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..BODIES_PER_ADDR {
            held.push(bodies.room(greedy, Some(100_000)).await.unwrap());
        }
        let refused = bodies.room(greedy, None).await.err().unwrap();
        assert!(refused.contains("your address"), "{refused}");
        // Others still have room, large and small, at once.
        assert!(bodies.room(other, None).await.is_ok());
        for _ in 0..SMALL_BODIES_PER_ADDR {
            held.push(bodies.room(greedy, Some(200)).await.unwrap());
        }
        assert!(bodies.room(greedy, Some(200)).await.is_err());
        assert!(bodies.room(other, Some(200)).await.is_ok());
    }

    #[test]
    fn the_deadline_grows_with_what_arrived_up_to_the_limit() {
        let start = Instant::now();
        let pace = Pace::new(start, Duration::from_secs(30));
        assert_eq!(pace.deadline(0), start + BODY_GRACE);
        assert_eq!(
            pace.deadline(MIN_BODY_RATE * 3),
            start + BODY_GRACE + Duration::from_secs(3)
        );
        let all = pace.deadline(256 * 1024);
        assert_eq!(all, start + Duration::from_secs(30));
        assert!(pace.is_limit(all));
    }
}
