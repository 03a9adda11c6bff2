//! The send budget: how many bytes of messages one user may have stored per second, on this
//! node, whichever door the messages come through. A class chatting never comes near it; it
//! stops one account from growing the database as fast as the disk takes it.
//!
//! Each sender has a bucket of [`BURST`] seconds' worth of bytes that refills at the rate; a
//! message costs its text's bytes plus [`MESSAGE_OVERHEAD`] (what storing any message costs:
//! its row, its names and its index entry), so a flood of tiny messages is held too. A SEND
//! that finds too little in the bucket is refused with how long to wait, and nothing is stored.
//!
//! A bucket is kept as the time at which it will be full again (a "theoretical arrival time",
//! as in GCRA): one `Instant` per sender, and a sender whose bucket is full needs no entry at
//! all. The table holds at most [`MAX_SENDERS`] of them; when it is full, the buckets that
//! have refilled go first, then those closest to full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{ChatError, ChatResult, Code};

/// What a message costs beyond its text.
pub const MESSAGE_OVERHEAD: usize = 64;
/// How many seconds of the rate a sender may send at once.
pub const BURST: u32 = 4;
/// Default bytes per second per sender: 1 MiB.
pub const DEFAULT_RATE: u64 = 1024 * 1024;
/// Senders with a partly spent bucket remembered at most.
const MAX_SENDERS: usize = 65_536;

pub(crate) struct SendBudget {
    /// Bytes per second; `None`: no budget.
    rate: Option<u64>,
    /// The time the bucket takes to refill from empty.
    burst: Duration,
    /// Per sender, when its bucket is full again.
    full_at: Mutex<HashMap<Arc<str>, Instant>>,
}

impl SendBudget {
    /// A budget of `rate` bytes per second per sender (0: none), with a burst of [`BURST`]
    /// seconds of it, and never less than the largest message.
    pub fn new(rate: u64) -> SendBudget {
        let burst = match rate {
            0 => Duration::ZERO,
            rate => {
                let largest = (super::MAX_MESSAGE_BYTES + MESSAGE_OVERHEAD) as f64 / rate as f64;
                Duration::from_secs(u64::from(BURST)).max(Duration::from_secs_f64(largest))
            }
        };
        SendBudget {
            rate: (rate > 0).then_some(rate),
            burst,
            full_at: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a message of `text_bytes` from `sender`'s bucket, or says how long to wait.
    pub fn take(&self, sender: &Arc<str>, text_bytes: usize, now: Instant) -> ChatResult<()> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let cost = cost(rate, text_bytes);
        let mut full_at = self.lock();
        let from = full_at.get(sender).copied().filter(|t| *t > now).unwrap_or(now);
        let after = from + cost;
        let owed = after - now;
        if owed > self.burst {
            let wait = owed - self.burst;
            return Err(ChatError::new(
                Code::RateLimited,
                format!(
                    "you are sending more than {} per second; wait {:.1} s and send again",
                    bytes_text(rate),
                    (wait.as_secs_f64() * 10.0).ceil() / 10.0
                ),
            ));
        }
        if !full_at.contains_key(sender) && full_at.len() >= MAX_SENDERS {
            make_room(&mut full_at, now);
        }
        full_at.insert(sender.clone(), after);
        Ok(())
    }

    /// Gives back what a message that was not stored took.
    pub fn give_back(&self, sender: &str, text_bytes: usize) {
        let Some(rate) = self.rate else {
            return;
        };
        if let Some(full_at) = self.lock().get_mut(sender) {
            *full_at = full_at.checked_sub(cost(rate, text_bytes)).unwrap_or(*full_at);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Instant>> {
        self.full_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The time a message of `text_bytes` takes to refill at `rate`.
fn cost(rate: u64, text_bytes: usize) -> Duration {
    Duration::from_secs_f64((text_bytes + MESSAGE_OVERHEAD) as f64 / rate as f64)
}

/// Drops the buckets that are full again, then, if that is not a quarter of the table, those
/// closest to full, so that the table is not swept again at the next sender.
fn make_room(full_at: &mut HashMap<Arc<str>, Instant>, now: Instant) {
    full_at.retain(|_, t| *t > now);
    let keep = MAX_SENDERS * 3 / 4;
    if full_at.len() > keep {
        let mut times: Vec<Instant> = full_at.values().copied().collect();
        let cut = times.len() - keep;
        let (_, threshold, _) = times.select_nth_unstable(cut);
        let threshold = *threshold;
        full_at.retain(|_, t| *t > threshold);
    }
}

/// A rate in bytes for people: `1 MiB`, `512 KiB`, `100 bytes`.
fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's text that costs one second at 20,000 bytes per second.
    const SECOND: usize = 20_000 - MESSAGE_OVERHEAD;

    fn user(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_burst_then_the_rate() {
        let budget = SendBudget::new(20_000);
        let (bob, now) = (user("bob"), Instant::now());
        // 4 s of 20,000 bytes/s, each message counting 64 more than its text: 4 of these.
        for _ in 0..4 {
            budget.take(&bob, SECOND, now).unwrap();
        }
        let refused = budget.take(&bob, SECOND, now).unwrap_err();
        assert_eq!(refused.code, Code::RateLimited);
        assert!(refused.message.contains("wait 1.0 s"), "{}", refused.message);
        assert!(
            refused.message.contains("20000 bytes per second"),
            "{}",
            refused.message
        );
        // Others are not held back by bob.
        budget.take(&user("alice"), SECOND, now).unwrap();
        // A second later bob has room for one more.
        let later = now + Duration::from_secs(1);
        budget.take(&bob, SECOND, later).unwrap();
        assert!(budget.take(&bob, SECOND, later).is_err());
    }

    #[test]
    fn many_small_messages_count_their_overhead() {
        let budget = SendBudget::new(64 * 1000);
        let (bob, now) = (user("bob"), Instant::now());
        let sent = (0..10_000)
            .take_while(|_| budget.take(&bob, 0, now).is_ok())
            .count();
        assert_eq!(sent, 4000, "4 s of 1000 empty messages a second");
    }

    #[test]
    fn a_refused_or_unsent_message_costs_nothing() {
        let budget = SendBudget::new(20_000);
        let (bob, now) = (user("bob"), Instant::now());
        budget.take(&bob, 4 * 20_000 - MESSAGE_OVERHEAD, now).unwrap();
        assert!(budget.take(&bob, SECOND, now).is_err());
        budget.give_back("bob", 4 * 20_000 - MESSAGE_OVERHEAD);
        for _ in 0..4 {
            budget.take(&bob, SECOND, now).unwrap();
        }
    }

    #[test]
    fn the_largest_message_always_fits_a_full_bucket() {
        let budget = SendBudget::new(100);
        let (bob, now) = (user("bob"), Instant::now());
        budget.take(&bob, crate::chat::MAX_MESSAGE_BYTES, now).unwrap();
        assert!(budget.take(&bob, 0, now).is_err());
    }

    #[test]
    fn no_budget_at_rate_zero() {
        let budget = SendBudget::new(0);
        let now = Instant::now();
        for _ in 0..1000 {
            budget.take(&user("bob"), 64 * 1024, now).unwrap();
        }
        assert!(budget.lock().is_empty());
    }

    #[test]
    fn the_table_stays_bounded() {
        let budget = SendBudget::new(1);
        let now = Instant::now();
        for i in 0..MAX_SENDERS + 10 {
            budget
                .take(&user(&format!("u{i}")), 0, now + Duration::from_micros(i as u64))
                .unwrap();
        }
        let len = budget.lock().len();
        assert!(len <= MAX_SENDERS, "{len}");
        assert!(len > MAX_SENDERS / 2, "{len}");
        // The senders furthest from full are the ones kept.
        assert!(budget
            .lock()
            .contains_key(&*user(&format!("u{}", MAX_SENDERS + 9))));
        assert!(!budget.lock().contains_key(&*user("u0")));
    }
}
