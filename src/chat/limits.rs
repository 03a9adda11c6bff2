//! The failed-login table: who may try a password now, counted before the hash is paid for.
//!
//! Every AUTH that will be checked first takes a *slot* from its address and from its
//! account; a success gives the slots back, a failure turns them into failures. So however
//! many AUTHs arrive at once, an address never has more checked than its budget of failures,
//! and a budget exhausted by failures refuses at once, before any hashing.
//!
//! - Per address (IPv4, or an IPv6 /64; see [`AddrKey`]): `failures_per_addr` failures in a
//!   window of `lockout`, then `RATE_LIMITED` for `lockout`.
//! - Per account: `failures_per_account` failures in a window of `lockout`, from anywhere
//!   (attempts in progress count as failures until they end); after that the account *backs
//!   off* rather than locking. In back-off each address has a slow budget of its own: one
//!   attempt at a time, and after a failure none for `lockout`. An address that has an attempt
//!   in progress or failed within `lockout` is refused at once, before it waits for a hash
//!   or takes anything; any other address still gets its attempt, so the right password from
//!   elsewhere passes. Budgets are kept for [`SUSPECTS_PER_ACCOUNT`] addresses; beyond that,
//!   further addresses share one attempt per [`STRANGER_INTERVAL`]. At most
//!   `concurrent_per_account` attempts on one account are in progress at once.
//! - *Known* addresses skip the back-off and that cap: an address that logged in to the
//!   account within [`KNOWN_FOR`] (a remembered password counts; [`KNOWN_PER_ACCOUNT`] per
//!   account; not for the rest of a `lockout` window in which it failed [`KNOWN_MISSES`]
//!   times), and a connection that logged in to it before. Their address budget still holds.
//! - REGISTERs per address: a bucket of `registrations_per_addr` that refills over an hour
//!   (0: unlimited); unset, [`REGISTRATIONS_PER_ADDR`] for every address but loopback, which
//!   is unlimited.
//!
//! The table holds at most [`MAX_ADDRS`] addresses, [`MAX_ACCOUNTS`] accounts,
//! [`MAX_SUSPECTS`] back-off budgets in all (beyond, further addresses are strangers) and the
//! known addresses of [`MAX_KNOWN_ACCOUNTS`] accounts: about 25 MiB at the very most, half of
//! it the address table. When full, idle entries and then the oldest go first.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{ChatError, ChatResult, Code};

/// Most addresses the table remembers.
pub const MAX_ADDRS: usize = 65_536;
/// Most accounts the table remembers.
pub const MAX_ACCOUNTS: usize = 16_384;
/// Most addresses an account keeps a back-off budget for.
pub const SUSPECTS_PER_ACCOUNT: usize = 64;
/// Most back-off budgets kept for all accounts together.
pub const MAX_SUSPECTS: usize = 65_536;
/// In back-off with every budget taken, how often a further address may try the account.
pub const STRANGER_INTERVAL: Duration = Duration::from_secs(1);
/// The period over which the registration bucket refills.
pub const REGISTRATION_REFILL: Duration = Duration::from_secs(3600);
/// REGISTERs per address per hour when none is configured, for every address but loopback.
pub const REGISTRATIONS_PER_ADDR: u32 = 60;
/// How long a successful login keeps its address known to the account.
pub const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most known addresses per account; a new one replaces the least recently used.
pub const KNOWN_PER_ACCOUNT: usize = 4;
/// Most accounts with known addresses.
pub const MAX_KNOWN_ACCOUNTS: usize = 16_384;
/// Failed logins from a known address within the lockout window after which it is known no
/// more until the window ends.
pub const KNOWN_MISSES: u32 = 3;

/// Limits on logins and registrations.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    pub failures_per_conn: u32,
    pub failures_per_addr: u32,
    pub failures_per_account: u32,
    pub concurrent_per_account: u32,
    pub lockout: Duration,
    /// REGISTERs per address per hour, 0 for no limit; `None`: [`REGISTRATIONS_PER_ADDR`],
    /// loopback unlimited.
    pub registrations_per_addr: Option<u32>,
}

impl AuthLimits {
    /// The registration bucket of `addr`, `None` when unlimited.
    fn registrations(&self, addr: AddrKey) -> Option<f64> {
        match self.registrations_per_addr {
            Some(0) => None,
            Some(n) => Some(f64::from(n)),
            None if addr.is_loopback() => None,
            None => Some(f64::from(REGISTRATIONS_PER_ADDR)),
        }
    }
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
                // `::1` alone, not the /64 around it: it is this machine.
                None if v6.is_loopback() => AddrKey(IpAddr::V6(v6)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    AddrKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }

    /// A client on this machine (127.0.0.0/8, `::1`): a load test rather than a class.
    pub fn is_loopback(self) -> bool {
        self.0.is_loopback()
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) if v6.is_loopback() => write!(f, "{v6}"),
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
    /// Registrations left, as of `tokens_at` (unused when registrations are unlimited).
    tokens: f64,
    tokens_at: Instant,
}

/// An address's back-off budget on one account.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    addr: AddrKey,
    pending: u32,
    /// Until when its last failure keeps it from trying the account in back-off.
    failed_until: Option<Instant>,
}

impl Suspect {
    fn live(&self, now: Instant) -> bool {
        self.pending > 0 || self.failed_until.is_some_and(|until| until > now)
    }
}

#[derive(Debug)]
struct AccountRecord {
    failures: u32,
    since: Instant,
    pending: u32,
    suspects: Vec<Suspect>,
    next_stranger: Instant,
}

/// Every change to an account's budgets goes through here, to keep the count of all of them
/// (`total`, [`MAX_SUSPECTS`] at most).
impl AccountRecord {
    /// Keeps a budget for `suspect`'s address if there is room.
    fn add(&mut self, suspect: Suspect, total: &AtomicUsize, now: Instant) -> bool {
        if self.suspects.len() >= SUSPECTS_PER_ACCOUNT {
            self.prune(total, now);
        }
        if self.suspects.len() >= SUSPECTS_PER_ACCOUNT || total.load(Ordering::Relaxed) >= MAX_SUSPECTS {
            return false;
        }
        self.suspects.push(suspect);
        total.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn remove(&mut self, index: usize, total: &AtomicUsize) {
        self.suspects.swap_remove(index);
        total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Drops the budgets with nothing left to count.
    fn prune(&mut self, total: &AtomicUsize, now: Instant) {
        let before = self.suspects.len();
        self.suspects.retain(|s| s.live(now));
        total.fetch_sub(before - self.suspects.len(), Ordering::Relaxed);
    }
}

/// An address that logged in to an account.
#[derive(Debug, Clone, Copy)]
struct Known {
    addr: AddrKey,
    /// Its last successful login.
    last: Instant,
    /// Its failures in the window that began at `misses_since`; a success does not undo them,
    /// so a guesser sharing the owner's address gains only these few.
    misses: u32,
    misses_since: Instant,
}

impl Known {
    fn holds(&self, lockout: Duration, now: Instant) -> bool {
        now.duration_since(self.last) < KNOWN_FOR
            && (self.misses < KNOWN_MISSES || now.duration_since(self.misses_since) >= lockout)
    }
}

#[derive(Default)]
struct Table {
    addrs: HashMap<AddrKey, AddrRecord>,
    accounts: HashMap<Arc<str>, AccountRecord>,
    known: HashMap<Arc<str>, Vec<Known>>,
}

pub(crate) struct Limits {
    limits: AuthLimits,
    table: Mutex<Table>,
    /// Back-off budgets kept, all accounts together (changed under the table's lock).
    suspects: AtomicUsize,
}

/// A login admitted past the checks that cost nothing, on its way to its turn in the hash
/// queue; [`Limits::begin`] then takes its slots. In back-off it already holds its address's
/// budget on the account, given back if it is dropped before it begins.
pub(crate) struct Admission<'a> {
    limits: &'a Limits,
    addr: AddrKey,
    account: Arc<str>,
    known: bool,
    /// Admitted by the account's back-off already.
    backed_off: bool,
    /// Holds a count in its address's budget on the account.
    tracked: bool,
}

impl Admission<'_> {
    pub fn addr(&self) -> AddrKey {
        self.addr
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.tracked {
            let mut table = self.limits.table();
            if let Some(record) = table.accounts.get_mut(&self.account) {
                untrack(record, self.addr, &self.limits.suspects);
            }
        }
    }
}

/// A login attempt that holds its slots. [`Attempt::succeeded`] gives them back,
/// [`Attempt::failed`] counts the failure; dropped otherwise (the hash could not run, the
/// client left), it gives them back too.
pub(crate) struct Attempt<'a> {
    limits: &'a Limits,
    addr: AddrKey,
    account: Arc<str>,
    tracked: bool,
    done: bool,
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.done = true;
        self.limits.finish(&self, false, Instant::now());
    }

    pub fn failed(mut self) {
        self.done = true;
        self.limits.finish(&self, true, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.limits.release(self);
        }
    }
}

impl Limits {
    pub fn new(limits: AuthLimits) -> Limits {
        Limits {
            limits,
            table: Mutex::new(Table::default()),
            suspects: AtomicUsize::new(0),
        }
    }

    pub fn limits(&self) -> &AuthLimits {
        &self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The checks that cost nothing, made before a login waits for anything: refuses at once
    /// if `addr` is locked out, or if the account backs off and this address has an attempt
    /// in progress or used its budget (in back-off the admission then holds that budget).
    /// `client_known`: the connection logged in to this account before.
    pub fn admit(
        &self,
        addr: AddrKey,
        account: &Arc<str>,
        client_known: bool,
        now: Instant,
    ) -> ChatResult<Admission<'_>> {
        let limits = &self.limits;
        let mut guard = self.table();
        let table = &mut *guard;
        if let Some(record) = table.addrs.get_mut(&addr) {
            self.expire_addr(record, now);
            if let Some(until) = record.locked_until {
                return Err(rate_limited(until - now));
            }
        }
        let known = client_known || is_known(&table.known, account, addr, limits.lockout, now);
        let (mut backed_off, mut tracked) = (false, false);
        if !known {
            if let Some(record) = table.accounts.get_mut(account) {
                self.expire_account(record, now);
                if record.failures + record.pending >= limits.failures_per_account {
                    tracked = track(record, addr, true, &self.suspects, now)?;
                    backed_off = true;
                }
            }
        }
        Ok(Admission {
            limits: self,
            addr,
            account: account.clone(),
            known,
            backed_off,
            tracked,
        })
    }

    /// Takes a slot from the admitted login's address and account for one password check, or
    /// refuses; a refused admission gives its budget back when dropped (after the table's
    /// lock: parameters are dropped after locals).
    pub fn begin(&self, mut admission: Admission<'_>, now: Instant) -> ChatResult<Attempt<'_>> {
        let limits = &self.limits;
        let (addr, account, known) = (admission.addr, admission.account.clone(), admission.known);
        let mut guard = self.table();
        let table = &mut *guard;
        if !table.addrs.contains_key(&addr) && table.addrs.len() >= MAX_ADDRS {
            evict_addrs(&mut table.addrs, self, now);
        }
        if !table.accounts.contains_key(&account) && table.accounts.len() >= MAX_ACCOUNTS {
            evict_accounts(&mut table.accounts, self, now);
        }

        let record = table
            .addrs
            .entry(addr)
            .or_insert_with(|| new_addr(limits, addr, now));
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
        let backing_off = account_record.failures + account_record.pending >= limits.failures_per_account;
        // In back-off each address has one attempt in progress at most, which bounds them
        // better than a cap that the guessers could fill.
        if !known && !backing_off && account_record.pending >= limits.concurrent_per_account {
            return Err(ChatError::new(
                Code::RateLimited,
                format!(
                    "{} logins as {account} are already in progress; try again in 1 s",
                    account_record.pending
                ),
            ));
        }
        let mut tracked = admission.tracked;
        if !known && !admission.backed_off {
            tracked = track(account_record, addr, backing_off, &self.suspects, now)?;
        }
        // The admission's hold on the budget passes to the attempt.
        admission.tracked = false;
        account_record.pending += 1;
        table.addrs.get_mut(&addr).expect("inserted above").pending += 1;
        Ok(Attempt {
            limits: self,
            addr,
            account,
            tracked,
            done: false,
        })
    }

    /// Gives back the slots of an attempt that was never checked.
    fn release(&self, attempt: &Attempt<'_>) {
        release(&mut self.table(), attempt, &self.suspects);
    }

    fn finish(&self, attempt: &Attempt<'_>, failed: bool, now: Instant) {
        let limits = &self.limits;
        let (addr, account) = (attempt.addr, &attempt.account);
        let mut guard = self.table();
        let table = &mut *guard;
        release(table, attempt, &self.suspects);
        if failed {
            if let Some(record) = table.addrs.get_mut(&addr) {
                record.failures += 1;
                if record.failures >= limits.failures_per_addr && record.locked_until.is_none() {
                    record.locked_until = Some(now + limits.lockout);
                    tracing::warn!(peer = %addr, "too many failed logins from this address; locking it out");
                }
            }
        }
        if let Some(record) = table.accounts.get_mut(&**account) {
            let index = record.suspects.iter().position(|s| s.addr == addr);
            if failed {
                if record.failures == 0 {
                    record.since = now;
                }
                record.failures += 1;
                if record.failures == limits.failures_per_account {
                    tracing::warn!(
                        user = &**account,
                        "too many failed logins for this account; backing off"
                    );
                }
                // A known address's failures count too, for when it is known no more.
                let until = Some(now + limits.lockout);
                match index {
                    Some(i) => record.suspects[i].failed_until = until,
                    None => {
                        let suspect = Suspect {
                            addr,
                            pending: 0,
                            failed_until: until,
                        };
                        record.add(suspect, &self.suspects, now);
                    }
                }
            }
            // A success leaves the address's failures as they are: it is known from now on,
            // which is what lets its owner past the back-off.
        }
        if failed {
            let known = table.known.get_mut(&**account);
            if let Some(k) = known.and_then(|list| list.iter_mut().find(|k| k.addr == addr)) {
                if now.duration_since(k.misses_since) >= limits.lockout {
                    k.misses = 0;
                    k.misses_since = now;
                }
                k.misses += 1;
            }
        } else {
            remember_known(&mut table.known, account, addr, now);
        }
    }

    /// Takes one registration from `addr`'s bucket, or refuses.
    pub fn register(&self, addr: AddrKey, now: Instant) -> ChatResult<()> {
        let limits = &self.limits;
        let Some(size) = limits.registrations(addr) else {
            return Ok(());
        };
        let mut guard = self.table();
        let table = &mut *guard;
        if !table.addrs.contains_key(&addr) && table.addrs.len() >= MAX_ADDRS {
            evict_addrs(&mut table.addrs, self, now);
        }
        let record = table
            .addrs
            .entry(addr)
            .or_insert_with(|| new_addr(limits, addr, now));
        refill(size, record, now);
        if record.tokens < 1.0 {
            let per_token = REGISTRATION_REFILL.as_secs_f64() / size;
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
        let Some(size) = self.limits.registrations(addr) else {
            return;
        };
        if let Some(record) = self.table().addrs.get_mut(&addr) {
            record.tokens = (record.tokens + 1.0).min(size);
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
        }
        record.prune(&self.suspects, now);
    }

    /// Whether an address record holds nothing worth keeping.
    fn addr_idle(&self, addr: AddrKey, record: &AddrRecord, now: Instant) -> bool {
        let mut copy = *record;
        self.expire_addr(&mut copy, now);
        let full = match self.limits.registrations(addr) {
            Some(size) => {
                refill(size, &mut copy, now);
                copy.tokens >= size
            }
            None => true,
        };
        copy.pending == 0 && copy.failures == 0 && full
    }

    fn account_idle(&self, record: &AccountRecord, now: Instant) -> bool {
        record.pending == 0
            && (record.failures == 0 || now.duration_since(record.since) >= self.limits.lockout)
            && !record.suspects.iter().any(|s| s.live(now))
    }

    /// Entries in the table now: (addresses, accounts, accounts with known addresses).
    #[cfg(test)]
    fn len(&self) -> (usize, usize, usize) {
        let table = self.table();
        (table.addrs.len(), table.accounts.len(), table.known.len())
    }
}

/// Counts an attempt of `addr` in its budget on the account. In back-off, refuses an address
/// with an attempt in progress or a failure within the lockout, and lets addresses beyond
/// the budgets kept through one per [`STRANGER_INTERVAL`]. Returns whether a budget counts it.
fn track(
    record: &mut AccountRecord,
    addr: AddrKey,
    backing_off: bool,
    total: &AtomicUsize,
    now: Instant,
) -> ChatResult<bool> {
    if let Some(suspect) = record.suspects.iter_mut().find(|s| s.addr == addr) {
        if backing_off {
            if suspect.pending > 0 {
                return Err(ChatError::new(
                    Code::RateLimited,
                    "a login to this account from your address is already being checked; try again in 1 s",
                ));
            }
            if let Some(until) = suspect.failed_until.filter(|until| *until > now) {
                return Err(rate_limited(until - now));
            }
        }
        suspect.pending += 1;
        return Ok(true);
    }
    let suspect = Suspect {
        addr,
        pending: 1,
        failed_until: None,
    };
    if record.add(suspect, total, now) {
        return Ok(true);
    }
    if backing_off {
        if now < record.next_stranger {
            return Err(rate_limited(record.next_stranger - now));
        }
        record.next_stranger = now + STRANGER_INTERVAL;
    }
    Ok(false)
}

fn release(table: &mut Table, attempt: &Attempt<'_>, total: &AtomicUsize) {
    if let Some(record) = table.addrs.get_mut(&attempt.addr) {
        record.pending = record.pending.saturating_sub(1);
    }
    if let Some(record) = table.accounts.get_mut(&attempt.account) {
        record.pending = record.pending.saturating_sub(1);
        if attempt.tracked {
            untrack(record, attempt.addr, total);
        }
    }
}

fn untrack(record: &mut AccountRecord, addr: AddrKey, total: &AtomicUsize) {
    if let Some(i) = record.suspects.iter().position(|s| s.addr == addr) {
        let suspect = &mut record.suspects[i];
        suspect.pending = suspect.pending.saturating_sub(1);
        if suspect.pending == 0 && suspect.failed_until.is_none() {
            record.remove(i, total);
        }
    }
}

fn is_known(
    known: &HashMap<Arc<str>, Vec<Known>>,
    account: &str,
    addr: AddrKey,
    lockout: Duration,
    now: Instant,
) -> bool {
    known
        .get(account)
        .is_some_and(|list| list.iter().any(|k| k.addr == addr && k.holds(lockout, now)))
}

fn remember_known(
    known: &mut HashMap<Arc<str>, Vec<Known>>,
    account: &Arc<str>,
    addr: AddrKey,
    now: Instant,
) {
    if !known.contains_key(account) && known.len() >= MAX_KNOWN_ACCOUNTS {
        known.retain(|_, list| list.iter().any(|k| now.duration_since(k.last) < KNOWN_FOR));
        if known.len() >= MAX_KNOWN_ACCOUNTS {
            let mut oldest: Vec<(Instant, Arc<str>)> = known
                .iter()
                .map(|(account, list)| (list.iter().map(|k| k.last).max().unwrap_or(now), account.clone()))
                .collect();
            oldest.sort_unstable_by_key(|(last, _)| *last);
            for (_, account) in oldest.into_iter().take(MAX_KNOWN_ACCOUNTS / 8) {
                known.remove(&account);
            }
        }
    }
    let list = known.entry(account.clone()).or_default();
    let entry = Known {
        addr,
        last: now,
        misses: 0,
        misses_since: now,
    };
    if let Some(k) = list.iter_mut().find(|k| k.addr == addr) {
        k.last = now;
    } else if list.len() < KNOWN_PER_ACCOUNT {
        list.push(entry);
    } else if let Some(least) = list.iter_mut().min_by_key(|k| k.last) {
        *least = entry;
    }
}

fn new_addr(limits: &AuthLimits, addr: AddrKey, now: Instant) -> AddrRecord {
    AddrRecord {
        failures: 0,
        since: now,
        locked_until: None,
        pending: 0,
        tokens: limits.registrations(addr).unwrap_or(0.0),
        tokens_at: now,
    }
}

fn refill(size: f64, record: &mut AddrRecord, now: Instant) {
    let elapsed = now.duration_since(record.tokens_at).as_secs_f64();
    record.tokens = (record.tokens + elapsed * size / REGISTRATION_REFILL.as_secs_f64()).min(size);
    record.tokens_at = now;
}

/// Makes room for one more address: drops the idle ones, else the eighth with the oldest windows
/// among those without an attempt in progress.
fn evict_addrs(addrs: &mut HashMap<AddrKey, AddrRecord>, limits: &Limits, now: Instant) {
    addrs.retain(|addr, r| !limits.addr_idle(*addr, r, now));
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
    let dropped = |r: &AccountRecord| limits.suspects.fetch_sub(r.suspects.len(), Ordering::Relaxed);
    accounts.retain(|_, r| {
        let keep = !limits.account_idle(r, now);
        if !keep {
            dropped(r);
        }
        keep
    });
    if accounts.len() >= MAX_ACCOUNTS {
        let mut oldest: Vec<(Instant, Arc<str>)> = accounts
            .iter()
            .filter(|(_, r)| r.pending == 0)
            .map(|(k, r)| (r.since, k.clone()))
            .collect();
        oldest.sort_unstable_by_key(|(since, _)| *since);
        for (_, key) in oldest.into_iter().take(MAX_ACCOUNTS / 8) {
            if let Some(r) = accounts.remove(&key) {
                dropped(&r);
            }
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

    fn limits_with(registrations_per_addr: Option<u32>) -> Limits {
        Limits::new(AuthLimits {
            failures_per_conn: 5,
            failures_per_addr: 20,
            failures_per_account: 10,
            concurrent_per_account: 8,
            lockout: Duration::from_secs(60),
            registrations_per_addr,
        })
    }

    fn limits() -> Limits {
        limits_with(Some(3))
    }

    fn ip(s: &str) -> AddrKey {
        AddrKey::of(s.parse().unwrap())
    }

    /// Ten addresses fail on `account` (192.0.2.0 to .9): it backs off.
    fn back_off(l: &Limits, account: &Arc<str>, now: Instant) {
        for i in 0..10 {
            login(l, ip(&format!("192.0.2.{i}")), account, now)
                .unwrap()
                .failed();
        }
    }

    /// Both steps of a login from an address the account does not know otherwise.
    fn login<'a>(l: &'a Limits, addr: AddrKey, account: &Arc<str>, now: Instant) -> ChatResult<Attempt<'a>> {
        l.begin(l.admit(addr, account, false, now)?, now)
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_ne!(ip("192.0.2.7"), ip("192.0.2.8"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("::1").to_string(), "::1");
        assert!(
            ip("::1").is_loopback() && ip("127.0.0.9").is_loopback() && ip("::ffff:127.0.0.1").is_loopback()
        );
        assert!(!ip("::2").is_loopback() && !ip("192.0.2.7").is_loopback());
    }

    #[test]
    fn one_ipv6_64_shares_one_failure_budget() {
        let l = limits();
        let now = Instant::now();
        for i in 0..20 {
            let addr = ip(&format!("2001:db8::{:x}", i + 1));
            let user: Arc<str> = format!("user{i}").into();
            login(&l, addr, &user, now).unwrap().failed();
        }
        let other: Arc<str> = "someone".into();
        let err = login(&l, ip("2001:db8::ffff"), &other, now).err().unwrap();
        assert_eq!(err.code, Code::RateLimited);
        assert!(
            login(&l, ip("2001:db8:0:1::1"), &other, now).is_ok(),
            "another /64 is not"
        );
    }

    #[test]
    fn slots_are_taken_before_the_check_and_refunded_on_success() {
        let l = limits();
        let now = Instant::now();
        let addr = ip("192.0.2.1");
        let held: Vec<_> = (0..20)
            .map(|i| login(&l, addr, &Arc::from(format!("u{i}")), now).unwrap())
            .collect();
        // Twenty in progress: the budget is taken until they end.
        assert!(login(&l, addr, &Arc::from("x"), now).is_err());
        for attempt in held {
            attempt.succeeded();
        }
        assert!(
            login(&l, addr, &Arc::from("x"), now).is_ok(),
            "successes give slots back"
        );
    }

    #[test]
    fn an_account_backs_off_from_its_guessers_but_not_from_others() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        back_off(&l, &alice, now);
        for i in 0..10 {
            let addr = ip(&format!("192.0.2.{i}"));
            assert!(
                l.admit(addr, &alice, false, now).is_err(),
                "a guesser is refused before it waits for anything"
            );
        }
        // Alice herself, from elsewhere, still gets her attempt.
        login(&l, ip("198.51.100.1"), &alice, now).unwrap().succeeded();
        login(&l, ip("198.51.100.1"), &alice, now).unwrap().succeeded();
        // After the window, the guessers may try again.
        let later = now + Duration::from_secs(61);
        assert!(login(&l, ip("192.0.2.1"), &alice, later).is_ok());
    }

    #[test]
    fn in_back_off_each_address_has_a_budget_of_its_own() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        back_off(&l, &alice, now);
        // Fifty new addresses each get one attempt, however many others are trying.
        for i in 0..50 {
            let addr = ip(&format!("198.51.100.{i}"));
            let attempt = login(&l, addr, &alice, now).unwrap();
            // Its instant retry is refused while the first is being checked...
            assert!(l.admit(addr, &alice, false, now).is_err());
            attempt.failed();
            // ... and after its failure, for the lockout.
            let err = l
                .admit(addr, &alice, false, now + Duration::from_secs(30))
                .err()
                .unwrap();
            assert!(err.message.contains("try again in 30 s"), "{err:?}");
        }
        // Those refusals took nothing from anyone: a new address still gets its attempt.
        login(&l, ip("203.0.113.1"), &alice, now).unwrap().succeeded();
        // Once budgets are kept for 64 addresses, further ones share one attempt a second.
        let room = SUSPECTS_PER_ACCOUNT - 60;
        let mut refused = 0;
        for i in 0..20 {
            match login(&l, ip(&format!("203.0.113.{}", 100 + i)), &alice, now) {
                Ok(attempt) => attempt.failed(),
                Err(_) => refused += 1,
            }
        }
        assert_eq!(refused, 20 - room - 1);
    }

    #[test]
    fn an_admission_holds_its_budget_until_it_begins_or_is_dropped() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        back_off(&l, &alice, now);
        let addr = ip("198.51.100.1");
        let waiting = l.admit(addr, &alice, false, now).unwrap();
        assert!(l.admit(addr, &alice, false, now).is_err(), "one at a time");
        drop(waiting);
        let waiting = l.admit(addr, &alice, false, now).unwrap();
        let attempt = l.begin(waiting, now).unwrap();
        assert!(l.admit(addr, &alice, false, now).is_err());
        drop(attempt);
        login(&l, addr, &alice, now).unwrap().succeeded();
    }

    #[test]
    fn an_address_or_client_that_logged_in_skips_the_back_off() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        let home = ip("198.51.100.1");
        login(&l, home, &alice, now).unwrap().succeeded();
        back_off(&l, &alice, now);
        // Nine attempts at once from her known address, while a stranger gets one at a time.
        let held: Vec<_> = (0..9).map(|_| login(&l, home, &alice, now).unwrap()).collect();
        let stranger = login(&l, ip("198.51.100.2"), &alice, now).unwrap();
        assert!(login(&l, ip("198.51.100.2"), &alice, now).is_err());
        drop((held, stranger));
        // A guesser's connection that never logged in is refused; one that did is not.
        let guesser = ip("192.0.2.1");
        assert!(l.admit(guesser, &alice, false, now).is_err());
        l.begin(l.admit(guesser, &alice, true, now).unwrap(), now)
            .unwrap()
            .succeeded();
        // Now that address is known too.
        login(&l, guesser, &alice, now).unwrap().succeeded();
        // A known address that fails three times in the window is known no more until the
        // window ends, successes in between or not (a guesser may share the owner's address).
        login(&l, home, &alice, now).unwrap().failed();
        login(&l, home, &alice, now).unwrap().failed();
        login(&l, home, &alice, now).unwrap().succeeded();
        login(&l, home, &alice, now).unwrap().failed();
        assert!(l.admit(home, &alice, false, now).is_err());
        let later = now + Duration::from_secs(61);
        assert!(l.admit(home, &alice, false, later).unwrap().known);
    }

    #[test]
    fn concurrent_attempts_per_account_are_capped() {
        let l = limits();
        let now = Instant::now();
        let alice: Arc<str> = "alice".into();
        let held: Vec<_> = (0..8)
            .map(|i| login(&l, ip(&format!("192.0.2.{i}")), &alice, now).unwrap())
            .collect();
        assert!(login(&l, ip("192.0.2.200"), &alice, now).is_err());
        drop(held);
        assert!(login(&l, ip("192.0.2.200"), &alice, now).is_ok());
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
        // Set explicitly, it holds for loopback too.
        for _ in 0..3 {
            l.register(ip("127.0.0.1"), now).unwrap();
        }
        assert!(l.register(ip("127.0.0.1"), now).is_err());
    }

    #[test]
    fn by_default_a_class_registers_and_a_flood_stops_but_loopback_is_unlimited() {
        let l = limits_with(None);
        let now = Instant::now();
        let class = ip("192.0.2.1");
        // Thirty students behind one address register within a minute.
        for i in 0..30 {
            l.register(class, now + Duration::from_secs(i * 2)).unwrap();
        }
        // A flood gets the rest of the bucket, then one a minute.
        let flood = ip("198.51.100.1");
        let allowed = (0..1000).filter(|_| l.register(flood, now).is_ok()).count();
        assert_eq!(allowed, REGISTRATIONS_PER_ADDR as usize);
        let err = l.register(flood, now).err().unwrap();
        assert!(err.message.contains("try again in 60 s"), "{err:?}");
        assert!(l.register(flood, now + Duration::from_secs(60)).is_ok());
        // A load test on this machine is not limited.
        for _ in 0..10_000 {
            l.register(ip("127.0.0.1"), now).unwrap();
            l.register(ip("::1"), now).unwrap();
        }
        // Nor is anyone when the limit is set to 0.
        let l = limits_with(Some(0));
        for _ in 0..10_000 {
            l.register(flood, now).unwrap();
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let l = limits();
        let now = Instant::now();
        for i in 0..(MAX_ADDRS as u32 + 100) {
            let addr = AddrKey::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
            let user: Arc<str> = format!("u{}", i % (MAX_ACCOUNTS as u32 + 50)).into();
            if let Ok(attempt) = login(&l, addr, &user, now) {
                if i % 2 == 0 {
                    attempt.failed();
                } else {
                    attempt.succeeded();
                }
            }
        }
        // Every account, full of known addresses.
        for i in 0..(MAX_KNOWN_ACCOUNTS as u32 + 100) {
            let user: Arc<str> = format!("k{i}").into();
            for a in 0..(KNOWN_PER_ACCOUNT as u32 + 2) {
                let addr = AddrKey::of(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + a)));
                if let Ok(attempt) = login(&l, addr, &user, now) {
                    attempt.succeeded();
                }
            }
        }
        let (addrs, accounts, known) = l.len();
        assert!(addrs <= MAX_ADDRS, "{addrs}");
        assert!(accounts <= MAX_ACCOUNTS, "{accounts}");
        assert!(known <= MAX_KNOWN_ACCOUNTS, "{known}");
        // Back-off budgets: 2,048 accounts, each tried by 64 addresses.
        for a in 0..2048u32 {
            let user: Arc<str> = format!("b{a}").into();
            for j in 0..SUSPECTS_PER_ACCOUNT as u32 {
                let addr = AddrKey::of(IpAddr::V4(Ipv4Addr::from(0x0c00_0000 + a * 64 + j)));
                if let Ok(attempt) = login(&l, addr, &user, now) {
                    attempt.failed();
                }
            }
        }
        let table = l.table();
        let budgets: usize = table.accounts.values().map(|r| r.suspects.len()).sum();
        assert_eq!(budgets, l.suspects.load(Ordering::Relaxed));
        assert!(budgets <= MAX_SUSPECTS, "{budgets}");
        assert!(table.known.values().all(|list| list.len() <= KNOWN_PER_ACCOUNT));
        assert!(table
            .accounts
            .values()
            .all(|r| r.suspects.len() <= SUSPECTS_PER_ACCOUNT));
    }
}
