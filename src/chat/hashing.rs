//! The password-hash queue: argon2 on the blocking pool, a few at once, shared fairly
//! between addresses.
//!
//! Every AUTH and REGISTER first waits for its address's *turn* (see [`AddrKey`]): requests
//! of one address go in the order they came, at most `per_addr` of them waiting or hashing at
//! once (`RATE_LIMITED` beyond), for up to [`HASH_WAIT`]. A request that needs a hash takes a
//! *ticket* with its turn, and holds it until its hash is done.
//!
//! - One address holds at most `share` tickets; its further requests wait their turn.
//! - All addresses together hold at most `queue` tickets, and the last quarter of them
//!   ([`RESERVE_SHARE`]) only goes to addresses that hold none: so a crowd of busy addresses
//!   can never take the place of a newcomer. When even that is taken, a newcomer takes the
//!   place of a request still waiting for a hasher (never one already hashing) of the address
//!   holding the most tickets, which is refused with `SERVER_BUSY`; only when no address holds
//!   more than one is the newcomer refused (it then takes `queue` addresses at once).
//! - A hasher that comes free takes the waiting ticket of the address with the fewest hashes
//!   running, then the one served least recently: a newcomer's hash is next, and busy
//!   addresses take turns.
//! - A request that needs no hash (a remembered password) takes no ticket and is not held up
//!   by a full queue; it still waits for its address's earlier requests, so that a burst of
//!   guesses ahead of it is counted before it is.
//!
//! Everything happens under one short lock, never held across an `.await`; the queue holds
//! at most `per_addr` requests per address with one in flight, and the lists it scans hold
//! at most `queue` tickets and the addresses with requests waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use argon2::Argon2;
use tokio::sync::oneshot;

use super::limits::AddrKey;
use crate::error::{ChatError, ChatResult, Code};

/// Longest a request waits for its turn, or its ticket for a hasher, before `SERVER_BUSY`.
pub const HASH_WAIT: Duration = Duration::from_secs(120);
/// One ticket in this many is kept for addresses that hold none.
pub const RESERVE_SHARE: usize = 4;

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
    cheap: bool,
    queue: Arc<Mutex<Queue>>,
}

/// Where one request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its address's turn.
    Waiting,
    /// Had its turn and needs no hash.
    Passed,
    /// Holds a ticket.
    Ticket,
    /// Holds a ticket and waits for a hasher.
    Ready,
    /// Being hashed.
    Running,
    /// Lost its ticket to a newcomer while it waited for a hasher.
    Refused,
}

struct Queue {
    share: usize,
    per_addr: usize,
    size: usize,
    reserve: usize,
    /// Hashes run at once (argon2 on blocking threads, each needs ~19 MiB).
    threads: usize,
    tickets: usize,
    running: usize,
    next_id: u64,
    /// Hashes started so far: each address notes when it was last served.
    served: u64,
    requests: HashMap<u64, (AddrKey, Stage)>,
    addrs: HashMap<AddrKey, AddrQueue>,
    /// Addresses with requests waiting for their turn, each once.
    turns: VecDeque<AddrKey>,
    /// Tickets waiting for a hasher.
    ready: Vec<ReadyTicket>,
}

#[derive(Default)]
struct AddrQueue {
    requests: usize,
    tickets: usize,
    running: usize,
    /// When a hash of this address last started (0: never).
    last_served: u64,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    hash: bool,
    wake: oneshot::Sender<()>,
}

struct ReadyTicket {
    id: u64,
    addr: AddrKey,
    wake: oneshot::Sender<ChatResult<()>>,
}

/// A request's place in the queue, given back when dropped: its turn, and with it a ticket
/// when it needs a hash.
pub(crate) struct Turn<'a> {
    hasher: &'a Hasher,
    /// `None` once a running hash owns the place.
    id: Option<u64>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.hasher.lock().leave(id);
        }
    }
}

/// Gives a running hash's ticket back when the hash ends, even if nobody waits for it any more.
struct Running {
    queue: Arc<Mutex<Queue>>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.queue).leave(self.id);
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hasher {
    /// `share_cap` bounds the tickets of one address below `limits.share` (the caller's own
    /// reasons; see `Auth`).
    pub fn new(limits: HashLimits, share_cap: usize) -> Hasher {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hasher::with_threads(limits, share_cap, threads)
    }

    fn with_threads(limits: HashLimits, share_cap: usize, threads: usize) -> Hasher {
        let size = limits.queue.max(1);
        Hasher {
            cheap: limits.cheap,
            queue: Arc::new(Mutex::new(Queue {
                share: limits.share.unwrap_or(threads).min(share_cap).max(1),
                per_addr: limits.per_addr.max(1),
                size,
                reserve: size / RESERVE_SHARE,
                threads: threads.max(1),
                tickets: 0,
                running: 0,
                next_id: 0,
                served: 0,
                requests: HashMap::new(),
                addrs: HashMap::new(),
                turns: VecDeque::new(),
                ready: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Hashes waiting or running now.
    pub fn depth(&self) -> usize {
        self.lock().tickets
    }

    /// Waits for `addr`'s turn; with `hash`, takes a ticket with it. See the module
    /// documentation for who waits and who is refused.
    pub async fn turn(&self, addr: AddrKey, hash: bool) -> ChatResult<Turn<'_>> {
        let (turn, woken) = {
            let mut queue = self.lock();
            let id = queue.enter(addr)?;
            match queue.start(id, addr, hash) {
                Ok(woken) => (
                    Turn {
                        hasher: self,
                        id: Some(id),
                    },
                    woken,
                ),
                Err(refused) => {
                    queue.leave(id);
                    return Err(refused);
                }
            }
        };
        let Some(woken) = woken else {
            return Ok(turn);
        };
        match tokio::time::timeout(HASH_WAIT, woken).await {
            Ok(Ok(())) => Ok(turn),
            Ok(Err(_)) => Err(dropped()),
            Err(_) => Err(busy(format!(
                "no turn to check the password within {} s",
                HASH_WAIT.as_secs()
            ))),
        }
    }

    /// Runs `work` on a blocking thread once a hasher is free for this turn's ticket.
    pub async fn run<T: Send + 'static>(
        &self,
        mut turn: Turn<'_>,
        work: impl FnOnce(&Argon2<'static>) -> ChatResult<T> + Send + 'static,
    ) -> ChatResult<T> {
        let id = turn.id.expect("a turn has its place until it runs");
        let started = {
            let mut queue = self.lock();
            if queue.requests.get(&id).map(|r| r.1) != Some(Stage::Ticket) {
                return Err(ChatError::internal(
                    "waiting for a password hasher",
                    "this request holds no ticket",
                ));
            }
            let (wake, started) = oneshot::channel();
            queue.set_stage(id, Stage::Ready);
            let addr = queue.requests[&id].0;
            queue.ready.push(ReadyTicket { id, addr, wake });
            queue.pump();
            started
        };
        match tokio::time::timeout(HASH_WAIT, started).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(refused))) => return Err(refused),
            Ok(Err(_)) => return Err(dropped()),
            Err(_) => {
                return Err(busy(format!(
                    "no password hasher free within {} s",
                    HASH_WAIT.as_secs()
                )))
            }
        }
        // From here the blocking task owns the place: it ends when the hash does, whether or
        // not anyone still waits for it.
        let running = Running {
            queue: self.queue.clone(),
            id: turn.id.take().expect("taken once"),
        };
        let hasher = password_hasher(self.cheap);
        tokio::task::spawn_blocking(move || {
            let _running = running;
            work(&hasher)
        })
        .await
        .map_err(|e| ChatError::internal("hashing the password", e))?
    }
}

impl Queue {
    /// Counts a new request of `addr`, or refuses it when the address has too many.
    fn enter(&mut self, addr: AddrKey) -> ChatResult<u64> {
        let per_addr = self.per_addr;
        let entry = self.addrs.entry(addr).or_default();
        if entry.requests >= per_addr {
            return Err(ChatError::new(
                Code::RateLimited,
                format!(
                    "{per_addr} logins and registrations from this address are already in progress; try again in 1 s"
                ),
            ));
        }
        entry.requests += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.requests.insert(id, (addr, Stage::Waiting));
        Ok(id)
    }

    /// Gives a new request its turn now (`None`), or queues it (`Some`: woken at its turn),
    /// or refuses it: a newcomer when the whole queue is held and nobody holds more than one.
    fn start(&mut self, id: u64, addr: AddrKey, hash: bool) -> ChatResult<Option<oneshot::Receiver<()>>> {
        let a = &self.addrs[&addr];
        let (first, tickets) = (a.waiting.is_empty(), a.tickets);
        if first {
            if !hash {
                self.set_stage(id, Stage::Passed);
                return Ok(None);
            }
            if self.may_take_ticket(tickets) {
                self.give_ticket(id, addr);
                return Ok(None);
            }
            if tickets == 0 {
                // A newcomer and the queue is full: the heaviest address gives up a place.
                if !self.take_place_from_heaviest() {
                    return Err(busy(format!("{} passwords are waiting to be checked", self.size)));
                }
                self.give_ticket(id, addr);
                return Ok(None);
            }
        }
        let (wake, woken) = oneshot::channel();
        let a = self.addrs.get_mut(&addr).expect("entered above");
        a.waiting.push_back(Waiter { id, hash, wake });
        if a.waiting.len() == 1 {
            self.turns.push_back(addr);
        }
        Ok(Some(woken))
    }

    /// Whether an address holding `held` tickets may take one more: below its share, and
    /// outside the reserve unless it holds none.
    fn may_take_ticket(&self, held: usize) -> bool {
        held < self.share
            && (self.tickets + self.reserve < self.size || (held == 0 && self.tickets < self.size))
    }

    fn give_ticket(&mut self, id: u64, addr: AddrKey) {
        self.tickets += 1;
        self.addrs.get_mut(&addr).expect("a request's address").tickets += 1;
        self.set_stage(id, Stage::Ticket);
    }

    fn set_stage(&mut self, id: u64, stage: Stage) {
        if let Some(request) = self.requests.get_mut(&id) {
            request.1 = stage;
        }
    }

    /// Refuses the newest ticket still waiting for a hasher of the address holding the most
    /// tickets, if that is more than one; its place is then free for a newcomer.
    fn take_place_from_heaviest(&mut self) -> bool {
        let victim = self
            .ready
            .iter()
            .enumerate()
            .map(|(i, r)| (self.addrs[&r.addr].tickets, r.id, i))
            .filter(|(tickets, ..)| *tickets > 1)
            .max();
        let Some((held, _, index)) = victim else {
            return false;
        };
        let ticket = self.ready.swap_remove(index);
        self.tickets -= 1;
        self.addrs
            .get_mut(&ticket.addr)
            .expect("a ticket's address")
            .tickets -= 1;
        self.set_stage(ticket.id, Stage::Refused);
        let _ = ticket.wake.send(Err(busy(format!(
            "{} passwords are waiting to be checked, {held} of them from your address; others go first",
            self.size
        ))));
        true
    }

    /// Gives back whatever request `id` holds, and passes it on.
    fn leave(&mut self, id: u64) {
        let Some((addr, stage)) = self.requests.remove(&id) else {
            return;
        };
        let a = self.addrs.get_mut(&addr).expect("a request's address");
        match stage {
            Stage::Waiting => {
                a.waiting.retain(|w| w.id != id);
                if a.waiting.is_empty() {
                    self.turns.retain(|t| *t != addr);
                }
            }
            Stage::Passed | Stage::Refused => {}
            Stage::Ticket | Stage::Ready | Stage::Running => {
                a.tickets -= 1;
                self.tickets -= 1;
                if stage == Stage::Ready {
                    self.ready.retain(|r| r.id != id);
                }
                if stage == Stage::Running {
                    a.running -= 1;
                    self.running -= 1;
                }
            }
        }
        a.requests -= 1;
        if a.requests == 0 {
            self.addrs.remove(&addr);
        }
        self.pump();
    }

    /// Hands out turns and hashers while there are places for them.
    fn pump(&mut self) {
        while let Some(index) = self.next_turn() {
            let addr = self.turns.remove(index).expect("an index into turns");
            let a = self.addrs.get_mut(&addr).expect("a waiting address");
            let waiter = a.waiting.pop_front().expect("a waiting address has a waiter");
            if !a.waiting.is_empty() {
                self.turns.push_back(addr);
            }
            if waiter.hash {
                self.give_ticket(waiter.id, addr);
            } else {
                self.set_stage(waiter.id, Stage::Passed);
            }
            // A waiter that has gone is cleaned up by its own `Turn`, which reads the stage.
            let _ = waiter.wake.send(());
        }
        while self.running < self.threads && !self.ready.is_empty() {
            let index = self
                .ready
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| {
                    let a = &self.addrs[&r.addr];
                    (a.running, a.last_served, r.id)
                })
                .map(|(i, _)| i)
                .expect("not empty");
            let ticket = self.ready.swap_remove(index);
            self.served += 1;
            let a = self.addrs.get_mut(&ticket.addr).expect("a ticket's address");
            a.running += 1;
            a.last_served = self.served;
            self.running += 1;
            self.set_stage(ticket.id, Stage::Running);
            let _ = ticket.wake.send(Ok(()));
        }
    }

    /// The address in `turns` whose first request may go now: one that needs no hash at
    /// once, else the one holding the fewest tickets, then served least recently.
    fn next_turn(&self) -> Option<usize> {
        let mut best: Option<((usize, u64), usize)> = None;
        for (i, addr) in self.turns.iter().enumerate() {
            let a = &self.addrs[addr];
            let first = a.waiting.front().expect("a waiting address has a waiter");
            if !first.hash {
                return Some(i);
            }
            if self.may_take_ticket(a.tickets) {
                let key = (a.tickets, a.last_served);
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }
}

fn dropped() -> ChatError {
    ChatError::internal(
        "waiting for a password hasher",
        "the hash queue dropped a request",
    )
}

fn busy(why: String) -> ChatError {
    ChatError::new(
        Code::ServerBusy,
        format!("the server is busy checking passwords ({why}); try again"),
    )
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tokio::task::JoinHandle;

    use super::*;

    fn addr(n: u8) -> AddrKey {
        AddrKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)))
    }

    fn hasher(queue: usize, share: usize, threads: usize) -> &'static Hasher {
        let limits = HashLimits {
            share: Some(share),
            per_addr: 256,
            queue,
            cheap: true,
        };
        Box::leak(Box::new(Hasher::with_threads(limits, usize::MAX, threads)))
    }

    /// (tickets, hashes running, tickets waiting for a hasher, addresses) now.
    fn counts(h: &Hasher) -> (usize, usize, usize, usize) {
        let q = h.lock();
        (q.tickets, q.running, q.ready.len(), q.addrs.len())
    }

    /// Runs a "hash" for `turn` that lasts until the returned sender is dropped, and notes
    /// `name` in `order` when it starts.
    fn hash(
        h: &'static Hasher,
        turn: Turn<'static>,
        name: u8,
        order: &Arc<Mutex<Vec<u8>>>,
    ) -> (std::sync::mpsc::Sender<()>, JoinHandle<ChatResult<()>>) {
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let order = order.clone();
        let task = tokio::spawn(h.run(turn, move |_| {
            order.lock().unwrap().push(name);
            let _ = finished.recv();
            Ok(())
        }));
        (finish, task)
    }

    /// Waits (for at most 5 s) for the queue to reach `want`.
    async fn until(h: &Hasher, want: impl Fn(&Queue) -> bool) {
        for _ in 0..500 {
            if want(&h.lock()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the queue never got there: {:?}", counts(h));
    }

    /// Requests of `a` waiting for their turn.
    fn waiting(q: &Queue, a: u8) -> usize {
        q.addrs.get(&addr(a)).map_or(0, |a| a.waiting.len())
    }

    #[tokio::test]
    async fn busy_addresses_leave_a_reserve_and_the_heaviest_gives_way() {
        // 8 tickets, the last 2 only for addresses holding none; 2 per address; one hasher.
        let h = hasher(8, 2, 1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut held = Vec::new();
        for a in 1..=3 {
            held.push(h.turn(addr(a), true).await.unwrap());
            held.push(h.turn(addr(a), true).await.unwrap());
        }
        // A fourth busy address gets its first ticket, but its second must wait: only
        // addresses without one may take the last places.
        held.push(h.turn(addr(4), true).await.unwrap());
        let second = tokio::spawn(h.turn(addr(4), true));
        until(h, |q| waiting(q, 4) == 1).await;
        // A newcomer gets the last place at once.
        held.push(h.turn(addr(5), true).await.unwrap());
        assert_eq!(counts(h).0, 8);
        // Full, and every ticket is its holder's own business: a further newcomer is refused.
        let err = h.turn(addr(6), true).await.err().unwrap();
        assert_eq!(err.code, Code::ServerBusy);
        // Address 1's two tickets wait for the hasher, one runs: the next newcomer takes the
        // waiting one's place, and that request is refused.
        let first_of_1 = held.remove(0);
        let second_of_1 = held.remove(0);
        let (finish, running) = hash(h, first_of_1, 1, &order);
        until(h, |q| q.running == 1).await;
        let (_finish_waiting, waiting_for_hasher) = hash(h, second_of_1, 1, &order);
        until(h, |q| q.ready.len() == 1).await;
        let newcomer = h.turn(addr(7), true).await.unwrap();
        let refused = waiting_for_hasher.await.unwrap().err().unwrap();
        assert_eq!(refused.code, Code::ServerBusy, "{refused:?}");
        assert!(
            refused.message.contains("2 of them from your address"),
            "{refused:?}"
        );
        drop(finish);
        running.await.unwrap().unwrap();
        drop((held, newcomer));
        second.await.unwrap().unwrap();
        assert_eq!(counts(h), (0, 0, 0, 0), "everything given back");
    }

    #[tokio::test]
    async fn a_free_hasher_serves_the_address_served_least_recently() {
        let h = hasher(64, 2, 1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let busy_first = h.turn(addr(1), true).await.unwrap();
        let busy_second = h.turn(addr(1), true).await.unwrap();
        let (finish, first) = hash(h, busy_first, 1, &order);
        until(h, |q| q.running == 1).await;
        let (finish_second, second) = hash(h, busy_second, 1, &order);
        let newcomer = h.turn(addr(2), true).await.unwrap();
        let (finish_newcomer, newcomer) = hash(h, newcomer, 2, &order);
        until(h, |q| q.ready.len() == 2).await;
        drop(finish);
        first.await.unwrap().unwrap();
        drop(finish_newcomer);
        newcomer.await.unwrap().unwrap();
        drop(finish_second);
        second.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![1, 2, 1]);
    }

    #[tokio::test]
    async fn a_request_without_a_hash_waits_only_for_its_own_address() {
        // One ticket in all, one per address.
        let h = hasher(1, 1, 1);
        let ticket = h.turn(addr(1), true).await.unwrap();
        let behind = tokio::spawn(h.turn(addr(1), true));
        until(h, |q| waiting(q, 1) == 1).await;
        let no_hash = tokio::spawn(h.turn(addr(1), false));
        // It waits for the request ahead of it...
        until(h, |q| waiting(q, 1) == 2).await;
        // ... but another address's, needing no ticket, is not held up by the full queue.
        drop(h.turn(addr(2), false).await.unwrap());
        drop(ticket);
        let behind = behind.await.unwrap().unwrap();
        no_hash.await.unwrap().unwrap();
        drop(behind);
        assert_eq!(counts(h), (0, 0, 0, 0));
    }

    #[tokio::test]
    async fn a_request_that_stops_waiting_leaves_nothing_behind() {
        let h = hasher(4, 1, 1);
        let ticket = h.turn(addr(1), true).await.unwrap();
        let behind = tokio::spawn(h.turn(addr(1), true));
        until(h, |q| waiting(q, 1) == 1).await;
        behind.abort();
        let _ = behind.await;
        assert_eq!(h.lock().addrs[&addr(1)].requests, 1);
        drop(ticket);
        assert_eq!(counts(h), (0, 0, 0, 0));
    }
}
