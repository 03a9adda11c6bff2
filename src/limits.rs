//! One budget of file descriptors for every door. Each client connection costs one descriptor,
//! whichever door it came through (line, HTTP — event streams included — or echo), so the
//! connection limits are derived from the open-files limit, with descriptors kept back for the
//! store, the listeners, the logs and the short-lived refusals: the store never fails for want
//! of a descriptor, and a client over the limit is told so instead of being left hanging.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for the listeners, logs, the runtime and anything else the process opens.
const RESERVED_BASE: u64 = 64;
/// Refused connections kept open at once for a moment after their answer, at most; each holds
/// its descriptor for at most a quarter of a second (`listener.rs`).
pub const MAX_REFUSING: usize = 64;
/// Descriptors one store connection may need (SQLite: the database, its WAL and shared memory).
const FDS_PER_STORE_CONNECTION: u64 = 3;
/// Echo's share of the budget: one connection in this many, at least one.
const ECHO_SHARE: usize = 16;

/// How the descriptors of the process are shared out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The open-files limit in force.
    pub open_files: u64,
    /// Descriptors never used for client connections.
    pub reserved: u64,
    /// Line and HTTP connections together (event streams included).
    pub chat: usize,
    /// Echo connections, a share of their own so that echo cannot starve chat.
    pub echo: usize,
}

impl Budget {
    /// Shares `open_files` out. `store_connections` is how many connections the store may open;
    /// `requested` (`--max-connections`) can lower the total, never raise it past the limit.
    pub fn derive(open_files: u64, store_connections: u64, requested: Option<usize>, echo: bool) -> Budget {
        let reserved = RESERVED_BASE + MAX_REFUSING as u64 + FDS_PER_STORE_CONNECTION * store_connections;
        let available = open_files.saturating_sub(reserved).max(2) as usize;
        let total = requested.map_or(available, |r| r.clamp(1, available));
        let echo_slots = if echo { (total / ECHO_SHARE).max(1) } else { 0 };
        Budget {
            open_files,
            reserved,
            chat: total.saturating_sub(echo_slots).max(1),
            echo: echo_slots,
        }
    }
}

/// The admission policy of one listener: a pool of slots, shared with other doors or not, and
/// an optional cap per client address shared by every door.
#[derive(Clone)]
pub struct Door {
    slots: Arc<Semaphore>,
    per_addr: Option<Arc<PerAddr>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot of the door is taken.
    Full,
    /// The client's address (an IPv6 /64) holds its share already.
    PerAddress,
}

impl Refusal {
    /// The text for the client.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "too many connections; try again later",
            Refusal::PerAddress => "too many connections from your address; close some first",
        }
    }
}

/// A connection's place; dropping it frees the place.
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    _addr: Option<AddrSlot>,
}

impl Door {
    /// A door with `slots` places of its own.
    pub fn new(slots: usize, per_addr: Option<Arc<PerAddr>>) -> Door {
        Door::sharing(Arc::new(Semaphore::new(slots)), per_addr)
    }

    /// A door drawing on `slots`, which other doors may share.
    pub fn sharing(slots: Arc<Semaphore>, per_addr: Option<Arc<PerAddr>>) -> Door {
        Door { slots, per_addr }
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn try_admit(&self, peer: IpAddr) -> Result<Admission, Refusal> {
        let addr = self.take_addr(peer)?;
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        Ok(Admission {
            _slot: slot,
            _addr: addr,
        })
    }

    /// A place for `peer`, waiting up to `wait` for one to come free in the pool. An address
    /// that holds its share already is refused at once: it waits for nobody but itself.
    pub async fn admit_within(&self, peer: IpAddr, wait: Duration) -> Result<Admission, Refusal> {
        let addr = self.take_addr(peer)?;
        let slot = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(Refusal::Full),
        };
        Ok(Admission {
            _slot: slot,
            _addr: addr,
        })
    }

    fn take_addr(&self, peer: IpAddr) -> Result<Option<AddrSlot>, Refusal> {
        match &self.per_addr {
            Some(per_addr) if per_addr.counts(peer) => {
                per_addr.try_take(peer).map(Some).ok_or(Refusal::PerAddress)
            }
            _ => Ok(None),
        }
    }
}

/// Connections per client address (`--max-connections-per-ip`) when the flag is not given:
/// enough for a whole class behind one address (30 students with a telnet, a browser and a
/// lab script each), a small share of the ~20,000 connections one process can hold.
pub const DEFAULT_PER_IP: usize = 256;

/// What `--max-connections-per-ip` asks for: unset, [`DEFAULT_PER_IP`] for every address but
/// loopback (a load test from the server's own machine may open thousands); 0, no limit; N, N
/// for every address, loopback too.
pub fn per_ip(flag: Option<usize>) -> Option<Arc<PerAddr>> {
    match flag {
        None => Some(PerAddr::sparing_loopback(DEFAULT_PER_IP)),
        Some(0) => None,
        Some(n) => Some(PerAddr::new(n)),
    }
}

/// Places per client address; IPv6 addresses count by /64, the block one subscriber is usually
/// given.
pub struct PerAddr {
    max: usize,
    /// Loopback addresses are not counted (the machine's own programs).
    spare_loopback: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddr {
    /// At most `max` places for every address.
    pub fn new(max: usize) -> Arc<PerAddr> {
        Arc::new(PerAddr {
            max: max.max(1),
            spare_loopback: false,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// At most `max` places for every address but loopback ones.
    pub fn sparing_loopback(max: usize) -> Arc<PerAddr> {
        Arc::new(PerAddr {
            max: max.max(1),
            spare_loopback: true,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `peer` is counted at all.
    fn counts(&self, peer: IpAddr) -> bool {
        !(self.spare_loopback && address_block(peer).is_loopback())
    }

    fn try_take(self: &Arc<Self>, peer: IpAddr) -> Option<AddrSlot> {
        let key = address_block(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddrSlot {
            table: self.clone(),
            key,
        })
    }
}

struct AddrSlot {
    table: Arc<PerAddr>,
    key: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The address an address limit counts by: IPv4 as it is (IPv4-mapped IPv6 too), IPv6 by its
/// /64 prefix.
pub fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve_and_gives_echo_a_share() {
        let budget = Budget::derive(1024, 5, None, true);
        assert_eq!(budget.reserved, 64 + 64 + 15);
        let total = (1024 - budget.reserved) as usize;
        assert_eq!(budget.echo, total / 16);
        assert_eq!(budget.chat + budget.echo, total);
        let asked = Budget::derive(1024, 5, Some(100), false);
        assert_eq!((asked.chat, asked.echo), (100, 0));
        let too_many = Budget::derive(1024, 5, Some(1_000_000), false);
        assert_eq!(
            too_many.chat, total,
            "--max-connections cannot exceed the descriptors"
        );
    }

    #[test]
    fn by_default_every_address_but_loopback_has_a_cap() {
        let door = Door::new(10_000, per_ip(None));
        let lan: IpAddr = "192.168.1.31".parse().unwrap();
        let held: Vec<_> = (0..DEFAULT_PER_IP)
            .map(|_| door.try_admit(lan).unwrap())
            .collect();
        assert_eq!(door.try_admit(lan).err(), Some(Refusal::PerAddress));
        let local: Vec<_> = (0..DEFAULT_PER_IP * 2)
            .map(|_| door.try_admit("127.0.0.5".parse().unwrap()).unwrap())
            .collect();
        assert!(door.try_admit("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        drop((held, local));
        let strict = Door::new(10, per_ip(Some(2)));
        let _a = strict.try_admit("127.0.0.1".parse().unwrap()).unwrap();
        let _b = strict.try_admit("127.0.0.1".parse().unwrap()).unwrap();
        assert!(
            strict.try_admit("127.0.0.1".parse().unwrap()).is_err(),
            "given: loopback too"
        );
        assert!(per_ip(Some(0)).is_none(), "0 is off");
    }

    #[test]
    fn a_door_refuses_when_full_and_per_address() {
        let door = Door::new(3, Some(PerAddr::new(2)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        let first = door.try_admit(a).unwrap();
        let _second = door.try_admit(a).unwrap();
        assert_eq!(door.try_admit(a).err(), Some(Refusal::PerAddress));
        let _third = door.try_admit(b).unwrap();
        assert_eq!(door.try_admit(b_neighbour).err(), Some(Refusal::Full));
        drop(first);
        assert!(door.try_admit(a).is_ok(), "a closed connection frees its places");
    }
}
