//! The failed-login table: who may try a password now, counted before the hash is paid for.
//!
//! Every AUTH that will be hashed first takes a *slot* from its address and from its account;
//! a success gives the slots back, a failure turns them into failures. So however many AUTHs
//! arrive at once, an address never has more checked than its budget of failures, and a
//! budget exhausted by failures refuses at once, before any hashing.
//!
//! - Per address (IPv4, or an IPv6 /64; see [`AddrKey`]): `failures_per_addr` failures in a
//!   window of `lockout`, then `RATE_LIMITED` for `lockout`.
//! - Per account: `failures_per_account` failures in the window, from anywhere; after that
//!   the account backs off rather than locking: an address that already failed on it (or has an
//!   attempt in progress) is refused, while any other address still gets its attempt, so a
//!   correct password from elsewhere passes. Beyond [`SUSPECTS_PER_ACCOUNT`] such addresses,
//!   new ones are let through one per [`STRANGER_INTERVAL`]. At most `concurrent_per_account`
//!   attempts on one account are in progress at once.
//! - REGISTERs per address: a bucket of `registrations_per_addr` that refills over an hour.
//!
//! The table holds at most [`MAX_ADDRS`] addresses and [`MAX_ACCOUNTS`] accounts (each with
//! at most [`SUSPECTS_PER_ACCOUNT`] addresses), a few MiB in all; when full, idle entries and
//! then the oldest go first.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ChatError, ChatResult, Code};

/// Most addresses the table remembers.
pub const MAX_ADDRS: usize = 65_536;
/// Most accounts the table remembers.
pub const MAX_ACCOUNTS: usize = 16_384;
/// Most addresses remembered per account in back-off.
pub const SUSPECTS_PER_ACCOUNT: usize = 16;
/// In back-off with every suspect slot taken, how often a new address may try the account.
pub const STRANGER_INTERVAL: Duration = Duration::from_secs(1);
/// The period over which the registration bucket refills.
pub const REGISTRATION_REFILL: Duration = Duration::from_secs(3600);

/// Limits on logins and registrations.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    pub failures_per_conn: u32,
    pub failures_per_addr: u32,
    pub failures_per_account: u32,
    pub concurrent_per_account: u32,
    pub lockout: Duration,
    pub registrations_per_addr: u32,
}

/// What the limits count as one client: an IPv4 address, or an IPv6 /64 (one site's subnet;
/// a single host usually has a whole /64). IPv4-mapped IPv6 addresses count as their IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    AddrKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

impl Default for AddrKey {
    fn default() -> AddrKey {
        AddrKey(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

#[derive(Debug, Clone, Copy)]
struct AddrRecord {
    failures: u32,
    /// Start of the failure window.
    since: Instant,
    locked_until: Option<Instant>,
    pending: u32,
    /// Registrations left, as of `tokens_at`.
    tokens: f64,
    tokens_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Suspect {
    addr: AddrKey,
    failures: u32,
    pending: u32,
}

#[derive(Debug)]
struct AccountRecord {
    failures: u32,
    since: Instant,
    pending: u32,
    suspects: Vec<Suspect>,
    next_stranger: Instant,
}

#[derive(Default)]
struct Table {
    addrs: HashMap<AddrKey, AddrRecord>,
    accounts: HashMap<Arc<str>, AccountRecord>,
}

pub(crate) struct Limits {
    limits: AuthLimits,
    table: Mutex<Table>,
}

/// A login attempt that holds its slots. [`Attempt::succeeded`] gives them back,
/// [`Attempt::failed`] counts the failure; dropped otherwise (the hash could not run, the
/// client left), it gives them back too.
pub(crate) struct Attempt<'a> {
    limits: &'a Limits,
    addr: AddrKey,
    account: Arc<str>,
    done: bool,
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.done = true;
        self.limits
            .finish(self.addr, &self.account, false, Instant::now());
    }

    pub fn failed(mut self) {
        self.done = true;
        self.limits.finish(self.addr, &self.account, true, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.limits
                .finish(self.addr, &self.account, false, Instant::now());
        }
    }
}

impl Limits {
    pub fn new(limits: AuthLimits) -> Limits {
        Limits {
            limits,
            table: Mutex::new(Table::default()),
        }
    }

    pub fn limits(&self) -> &AuthLimits {
        &self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses at once if `addr` is locked out, or is one the account backs off from.
    pub fn check(&self, addr: AddrKey, account: &str, now: Instant) -> ChatResult<()> {
        let mut table = self.table();
        if let Some(record) = table.addrs.get_mut(&addr) {
            self.expire_addr(record, now);
            if let Some(until) = record.locked_until {
                return Err(rate_limited(until - now));
            }
        }
        if let Some(record) = table.accounts.get_mut(account) {
            self.expire_account(record, now);
            if record.failures >= self.limits.failures_per_account
                && record.suspects.iter().any(|s| s.addr == addr && s.failures > 0)
            {
                return Err(rate_limited(self.account_wait(record, now)));
            }
        }
        Ok(())
    }

    /// Takes a slot from `addr` and from `account` for one password check, or refuses.
    pub fn begin(&self, addr: AddrKey, account: &Arc<str>, now: Instant) -> ChatResult<Attempt<'_>> {
        let limits = &self.limits;
        let mut guard = self.table();
        let table = &mut *guard;
        if !table.addrs.contains_key(&addr) && table.addrs.len() >= MAX_ADDRS {
            evict_addrs(&mut table.addrs, self, now);
        }
        if !table.accounts.contains_key(account) && table.accounts.len() >= MAX_ACCOUNTS {
            evict_accounts(&mut table.accounts, self, now);
        }

        let record = table.addrs.entry(addr).or_insert_with(|| new_addr(limits, now));
        self.expire_addr(record, now);
        if let Some(until) = record.locked_until {
            return Err(rate_limited(until - now));
        }
        if record.failures + record.pending >= limits.failures_per_addr {
            // Only failures can bring this about: the hashing share of one address is never
            // larger than its failure budget.
            return Err(rate_limited(record.since + limits.lockout - now));
        }

        let account_record = table
            .accounts
            .entry(account.clone())
            .or_insert_with(|| AccountRecord {
                failures: 0,
                since: now,
                pending: 0,
                suspects: Vec::new(),
                next_stranger: now,
            });
        self.expire_account(account_record, now);
        if account_record.pending >= limits.concurrent_per_account {
            return Err(ChatError::new(
                Code::RateLimited,
                format!(
                    "{} logins as {account} are already in progress; try again in 1 s",
                    account_record.pending
                ),
            ));
        }
        let index = account_record.suspects.iter().position(|s| s.addr == addr);
        let backing_off = account_record.failures + account_record.pending >= limits.failures_per_account;
        if backing_off {
            match index {
                Some(i)
                    if account_record.suspects[i].failures > 0 || account_record.suspects[i].pending > 0 =>
                {
                    return Err(rate_limited(self.account_wait(account_record, now)));
                }
                Some(_) => {}
                None if account_record.suspects.len() >= SUSPECTS_PER_ACCOUNT => {
                    if now < account_record.next_stranger {
                        return Err(rate_limited(account_record.next_stranger - now));
                    }
                    account_record.next_stranger = now + STRANGER_INTERVAL;
                }
                None => {}
            }
        }
        match index {
            Some(i) => account_record.suspects[i].pending += 1,
            None if account_record.suspects.len() < SUSPECTS_PER_ACCOUNT => {
                account_record.suspects.push(Suspect {
                    addr,
                    failures: 0,
                    pending: 1,
                })
            }
            None => {}
        }
        account_record.pending += 1;
        table.addrs.get_mut(&addr).expect("inserted above").pending += 1;
        Ok(Attempt {
            limits: self,
            addr,
            account: account.clone(),
            done: false,
        })
    }

    fn finish(&self, addr: AddrKey, account: &str, failed: bool, now: Instant) {
        let limits = &self.limits;
        let mut table = self.table();
        if let Some(record) = table.addrs.get_mut(&addr) {
            record.pending = record.pending.saturating_sub(1);
            if failed {
                record.failures += 1;
                if record.failures >= limits.failures_per_addr && record.locked_until.is_none() {
                    record.locked_until = Some(now + limits.lockout);
                    tracing::warn!(peer = %addr, "too many failed logins from this address; locking it out");
                }
            }
        }
        if let Some(record) = table.accounts.get_mut(account) {
            record.pending = record.pending.saturating_sub(1);
            if failed {
                if record.failures == 0 {
                    record.since = now;
                }
                record.failures += 1;
                if record.failures == limits.failures_per_account {
                    tracing::warn!(
                        user = account,
                        "too many failed logins for this account; backing off"
                    );
                }
            }
            if let Some(i) = record.suspects.iter().position(|s| s.addr == addr) {
                let suspect = &mut record.suspects[i];
                suspect.pending = suspect.pending.saturating_sub(1);
                if failed {
                    suspect.failures += 1;
                } else {
                    // This address knows the password: it is not a guesser.
                    suspect.failures = 0;
                }
                if suspect.pending == 0 && suspect.failures == 0 {
                    record.suspects.swap_remove(i);
                }
            } else if failed && record.suspects.len() < SUSPECTS_PER_ACCOUNT {
                record.suspects.push(Suspect {
                    addr,
                    failures: 1,
                    pending: 0,
                });
            }
        }
    }

    /// Takes one registration from `addr`'s bucket, or refuses.
    pub fn register(&self, addr: AddrKey, now: Instant) -> ChatResult<()> {
        let limits = &self.limits;
        let mut guard = self.table();
        let table = &mut *guard;
        if !table.addrs.contains_key(&addr) && table.addrs.len() >= MAX_ADDRS {
            evict_addrs(&mut table.addrs, self, now);
        }
        let record = table.addrs.entry(addr).or_insert_with(|| new_addr(limits, now));
        refill(limits, record, now);
        if record.tokens < 1.0 {
            let per_token =
                REGISTRATION_REFILL.as_secs_f64() / f64::from(limits.registrations_per_addr.max(1));
            let wait = Duration::from_secs_f64((1.0 - record.tokens) * per_token);
            return Err(ChatError::new(
                Code::RateLimited,
                format!(
                    "too many registrations from this address; try again in {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        record.tokens -= 1.0;
        Ok(())
    }

    /// Gives back a registration that cost no hash (the name was taken).
    pub fn refund_registration(&self, addr: AddrKey) {
        if let Some(record) = self.table().addrs.get_mut(&addr) {
            record.tokens = (record.tokens + 1.0).min(f64::from(self.limits.registrations_per_addr));
        }
    }

    fn expire_addr(&self, record: &mut AddrRecord, now: Instant) {
        let expired = match record.locked_until {
            Some(until) => until <= now,
            None => now.duration_since(record.since) >= self.limits.lockout,
        };
        if expired {
            record.failures = 0;
            record.since = now;
            record.locked_until = None;
        }
    }

    fn expire_account(&self, record: &mut AccountRecord, now: Instant) {
        if record.failures > 0 && now.duration_since(record.since) >= self.limits.lockout {
            record.failures = 0;
            record.since = now;
            record.suspects.retain_mut(|s| {
                s.failures = 0;
                s.pending > 0
            });
        }
    }

    fn account_wait(&self, record: &AccountRecord, now: Instant) -> Duration {
        (record.since + self.limits.lockout).saturating_duration_since(now)
    }

    /// Whether an address record holds nothing worth keeping.
    fn addr_idle(&self, record: &AddrRecord, now: Instant) -> bool {
        let mut copy = *record;
        self.expire_addr(&mut copy, now);
        refill(&self.limits, &mut copy, now);
        copy.pending == 0
            && copy.failures == 0
            && copy.tokens >= f64::from(self.limits.registrations_per_addr)
    }

    fn account_idle(&self, record: &AccountRecord, now: Instant) -> bool {
        record.pending == 0
            && (record.failures == 0 || now.duration_since(record.since) >= self.limits.lockout)
    }

    /// Entries in the table now: (addresses, accounts).
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let table = self.table();
        (table.addrs.len(), table.accounts.len())
    }
}

fn new_addr(limits: &AuthLimits, now: Instant) -> AddrRecord {
    AddrRecord {
        failures: 0,
        since: now,
        locked_until: None,
        pending: 0,
        tokens: f64::from(limits.registrations_per_addr),
        tokens_at: now,
    }
}

fn refill(limits: &AuthLimits, record: &mut AddrRecord, now: Instant) {
    let full = f64::from(limits.registrations_per_addr);
    let elapsed = now.duration_since(record.tokens_at).as_secs_f64();
    record.tokens = (record.tokens + elapsed * full / REGISTRATION_REFILL.as_secs_f64()).min(full);
    record.tokens_at = now;
}

/// Makes room for one more address: drops the idle ones, else the eighth with the oldest windows
/// among those without an attempt in progress.
fn evict_addrs(addrs: &mut HashMap<AddrKey, AddrRecord>, limits: &Limits, now: Instant) {
    addrs.retain(|_, r| !limits.addr_idle(r, now));
    if addrs.len() >= MAX_ADDRS {
        let mut oldest: Vec<(Instant, AddrKey)> = addrs
            .iter()
            .filter(|(_, r)| r.pending == 0)
            .map(|(k, r)| (r.since, *k))
            .collect();
        oldest.sort_unstable_by_key(|(since, _)| *since);
        for (_, key) in oldest.into_iter().take(MAX_ADDRS / 8) {
            addrs.remove(&key);
        }
    }
}

fn evict_accounts(accounts: &mut HashMap<Arc<str>, AccountRecord>, limits: &Limits, now: Instant) {
    accounts.retain(|_, r| !limits.account_idle(r, now));
    if accounts.len() >= MAX_ACCOUNTS {
        let mut oldest: Vec<(Instant, Arc<str>)> = accounts
            .iter()
            .filter(|(_, r)| r.pending == 0)
            .map(|(k, r)| (r.since, k.clone()))
            .collect();
        oldest.sort_unstable_by_key(|(since, _)| *since);
        for (_, key) in oldest.into_iter().take(MAX_ACCOUNTS / 8) {
            accounts.remove(&key);
        }
    }
}

pub fn rate_limited(wait: Duration) -> ChatError {
    ChatError::new(
        Code::RateLimited,
        format!("too many failed logins; try again in {} s", wait.as_secs().max(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(AuthLimits {
            failures_per_conn: 5,
            failures_per_addr: 20,
            failures_per_account: 10,
            concurrent_per_account: 8,
            lockout: Duration::from_secs(60),
            registrations_per_addr: 3,
        })
    }

    fn ip(s: &str) -> AddrKey {
        AddrKey::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_ne!(ip("192.0.2.7"), ip("192.0.2.8"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn one_ipv6_64_shares_one_failure_budget() {
        let l = limits();
        let now = Instant::now();
        for i in 0..20 {
            let addr = ip(&format!("2001:db8::{:x}", i + 1));
            let user: Arc<str> = format!("user{i}").into();
            l.begin(addr, &user, now).unwrap().failed();
        }
        let other: Arc<str> = "someone".into();
        let err = l.begin(ip("2001:db8::ffff"), &other, now).err().unwrap();
        assert_eq!(err.code, Code::RateLimited);
        assert!(
            l.begin(ip("2001:db8:0:1::1"), &other, now).is_ok(),
            "another /64 is not"
        );
    }

    #[test]
    fn slots_are_taken_before_the_check_and_refunded_on_success() {
        let l = limits();
        let now = Instant::now();
        let addr = ip("192.0.2.1");
        let held: Vec<_> = (0..20)
            .map(|i| l.begin(addr, &Arc::from(format!("u{i}")), now).unwrap())
            .collect();
        // Twenty in progress: the budget is taken until they end.
        assert!(l.begin(addr, &Arc::from("x"), now).is_err());
        for attempt in held {
            attempt.succeeded();
        }
        assert!(
            l.begin(addr, &Arc::from("x"), now).is_ok(),
            "successes give slots back"
        );
    }

    #[test]
    fn an_account_backs_off_from_its_guessers_but_not_from_others() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        for i in 0..10 {
            l.begin(ip(&format!("192.0.2.{i}")), &alice, now)
                .unwrap()
                .failed();
        }
        for i in 0..10 {
            let addr = ip(&format!("192.0.2.{i}"));
            assert!(
                l.check(addr, &alice, now).is_err(),
                "a guesser is refused before hashing"
            );
            assert!(l.begin(addr, &alice, now).is_err());
        }
        // Alice herself, from elsewhere, still gets her attempt.
        l.begin(ip("198.51.100.1"), &alice, now).unwrap().succeeded();
        l.begin(ip("198.51.100.1"), &alice, now).unwrap().succeeded();
        // After the window, the guessers may try again.
        let later = now + Duration::from_secs(61);
        assert!(l.begin(ip("192.0.2.1"), &alice, later).is_ok());
    }

    #[test]
    fn concurrent_attempts_per_account_are_capped() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        let held: Vec<_> = (0..8)
            .map(|i| l.begin(ip(&format!("192.0.2.{i}")), &alice, now).unwrap())
            .collect();
        assert!(l.begin(ip("192.0.2.200"), &alice, now).is_err());
        drop(held);
        assert!(l.begin(ip("192.0.2.200"), &alice, now).is_ok());
    }

    #[test]
    fn registrations_per_address_come_from_a_bucket() {
        let l = limits();
        let now = Instant::now();
        let addr = ip("192.0.2.1");
        for _ in 0..3 {
            l.register(addr, now).unwrap();
        }
        assert!(l.register(addr, now).is_err());
        l.refund_registration(addr);
        assert!(l.register(addr, now).is_ok());
        assert!(l.register(ip("192.0.2.2"), now).is_ok(), "per address");
        assert!(
            l.register(addr, now + Duration::from_secs(1200)).is_ok(),
            "it refills"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let l = limits();
        let now = Instant::now();
        for i in 0..(MAX_ADDRS as u32 + 100) {
            let addr = AddrKey::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
            let user: Arc<str> = format!("u{}", i % (MAX_ACCOUNTS as u32 + 50)).into();
            if let Ok(attempt) = l.begin(addr, &user, now) {
                attempt.failed();
            }
        }
        let (addrs, accounts) = l.len();
        assert!(addrs <= MAX_ADDRS, "{addrs}");
        assert!(accounts <= MAX_ACCOUNTS, "{accounts}");
    }
}
