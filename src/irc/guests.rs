//! The guests of this node's IRC door (`--irc-guests`): who holds which nick, and which
//! guests are in which channel, so that NAMES and WHO show them and no two guests here share
//! a nick. Nicks compare without case (`CASEMAPPING=ascii`). A guest's nick is never an
//! account's when it is taken; the live messages themselves travel through the hub (see
//! [`crate::chat::live`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Guests {
    state: Mutex<State>,
    numbers: AtomicU64,
}

#[derive(Default)]
struct State {
    /// By lower-case nick: the nick as shown, and the guest's live session.
    nicks: HashMap<String, (Arc<str>, u64)>,
    /// By lower-case room name: the nicks of the guests in it.
    channels: HashMap<String, Vec<Arc<str>>>,
}

impl Guests {
    /// Takes `nick` for the guest with live session `feed`; false if another guest has it.
    pub fn claim(&self, nick: &str, feed: u64) -> bool {
        let mut state = self.lock();
        match state.nicks.get(&nick.to_ascii_lowercase()) {
            Some((_, holder)) if *holder != feed => false,
            _ => {
                state
                    .nicks
                    .insert(nick.to_ascii_lowercase(), (Arc::from(nick), feed));
                true
            }
        }
    }

    /// Whether a guest other than `feed` holds `nick`.
    pub fn taken(&self, nick: &str, feed: u64) -> bool {
        self.lock()
            .nicks
            .get(&nick.to_ascii_lowercase())
            .is_some_and(|(_, holder)| *holder != feed)
    }

    /// The guest holding `nick`: its nick as shown and its live session.
    pub fn find(&self, nick: &str) -> Option<(Arc<str>, u64)> {
        self.lock().nicks.get(&nick.to_ascii_lowercase()).cloned()
    }

    /// Whether `nick` (exactly) is a guest's.
    pub fn is_guest(&self, nick: &str) -> bool {
        self.find(nick).is_some_and(|(shown, _)| &*shown == nick)
    }

    /// Moves the guest `feed` from `old` to `new` (already claimed), in its channels too.
    pub fn renamed(&self, old: &str, new: &str, feed: u64) {
        let mut state = self.lock();
        if state
            .nicks
            .get(&old.to_ascii_lowercase())
            .is_some_and(|(_, holder)| *holder == feed)
            && !old.eq_ignore_ascii_case(new)
        {
            state.nicks.remove(&old.to_ascii_lowercase());
        }
        let new: Arc<str> = Arc::from(new);
        for nicks in state.channels.values_mut() {
            for nick in nicks.iter_mut().filter(|n| &***n == old) {
                *nick = new.clone();
            }
        }
    }

    /// The guest `feed` leaves: its nick is free again, and it is in no channel.
    pub fn release(&self, nick: &str, feed: u64) {
        let mut state = self.lock();
        let key = nick.to_ascii_lowercase();
        if state.nicks.get(&key).is_some_and(|(_, holder)| *holder == feed) {
            state.nicks.remove(&key);
        }
        state.channels.retain(|_, nicks| {
            nicks.retain(|n| &**n != nick);
            !nicks.is_empty()
        });
    }

    pub fn enter(&self, nick: &str, room: &str) {
        let mut state = self.lock();
        let nicks = state.channels.entry(room.to_ascii_lowercase()).or_default();
        if !nicks.iter().any(|n| &**n == nick) {
            nicks.push(Arc::from(nick));
        }
    }

    pub fn leave(&self, nick: &str, room: &str) {
        let mut state = self.lock();
        let key = room.to_ascii_lowercase();
        if let Some(nicks) = state.channels.get_mut(&key) {
            nicks.retain(|n| &**n != nick);
            if nicks.is_empty() {
                state.channels.remove(&key);
            }
        }
    }

    /// The guests in `room`.
    pub fn in_channel(&self, room: &str) -> Vec<Arc<str>> {
        self.lock()
            .channels
            .get(&room.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// The nicks of the guests connected here.
    pub fn nicks(&self) -> Vec<Arc<str>> {
        self.lock().nicks.values().map(|(nick, _)| nick.clone()).collect()
    }

    /// How many guests are connected here.
    pub fn count(&self) -> usize {
        self.lock().nicks.len()
    }

    /// A fresh number for a `Guest<n>` nick.
    pub fn next_number(&self) -> u64 {
        10_000 + self.numbers.fetch_add(1, Ordering::Relaxed) % 90_000
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nick_is_one_guests_whatever_its_case() {
        let guests = Guests::default();
        assert!(guests.claim("Ann", 1));
        assert!(!guests.claim("ann", 2), "another guest has it");
        assert!(guests.claim("ANN", 1), "the holder may change its case");
        assert!(guests.taken("ann", 2));
        assert!(!guests.taken("ann", 1));
        guests.enter("ANN", "#Class");
        assert_eq!(guests.in_channel("#class"), vec![Arc::<str>::from("ANN")]);
        assert!(guests.claim("Bo", 1));
        guests.renamed("ANN", "Bo", 1);
        assert!(!guests.taken("ann", 2), "the old nick is free");
        assert_eq!(guests.in_channel("#CLASS"), vec![Arc::<str>::from("Bo")]);
        guests.release("Bo", 1);
        assert_eq!(guests.count(), 0);
        assert!(guests.in_channel("#class").is_empty());
    }
}
