//! The IRC door: real chat clients (irssi, WeeChat, HexChat) on the same community as the
//! line protocol and HTTP. Channels are chatd rooms, nicks are chatd accounts, and every
//! message goes through the same domain: stored before anyone sees it, in the same order.
//!
//! - [`wire`]: framing and the message grammar (RFC 1459/2812, IRCv3 message tags);
//! - [`client`]: one connection's life: registration, the live feed, timeouts, SendQ;
//! - [`commands`]: the command table (name, arguments, who may use it) and each command;
//! - [`caps`]: IRCv3 capability negotiation and SASL PLAIN;
//! - [`history`]: CHATHISTORY over the same history as HISTORY and HTTP;
//! - [`labeled`]: labeled-response, a command's reply tagged with the client's label;
//! - [`read_marker`]: MARKREAD over the rooms' read marks;
//! - [`render`]: chatd's messages and room events as IRC lines;
//! - [`who`]: WHO and WHOX;
//! - [`guests`]: who the guests are (`--irc-guests`), by nick and channel;
//! - [`local`] and [`local_commands`]: the channels no room backs, which guests create;
//! - [`nickserv`]: the NickServ pseudo-user, for clients without SASL;
//! - [`oper`]: IRC operators (OPER, KILL, WALLOPS) and user modes;
//! - [`numeric`]: the numeric replies by name.
//!
//! The door reaches the store only through [`Chat`], as every door does.

pub mod caps;
pub mod client;
pub mod commands;
pub mod guests;
pub mod history;
pub mod labeled;
pub mod local;
pub mod local_commands;
pub mod nickserv;
pub mod numeric;
pub mod oper;
pub mod read_marker;
pub mod render;
pub mod who;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;

/// The network name in `NETWORK=` and the welcome.
pub const NETWORK: &str = "chatd";
/// The host part of every user's mask (`alice!alice@chatd`): chatd shows no client addresses
/// to other clients.
pub const HOST: &str = "chatd";
/// A client must finish registering (NICK, USER, CAP END) within this long.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// What every connection of the door shares.
pub struct IrcSettings {
    /// The server's name in every reply's source (`--irc-server-name`).
    pub server_name: String,
    /// A connection password every client must send with PASS (`--irc-password`).
    pub password: Option<String>,
    /// A client that accepts none of our bytes for this long is disconnected.
    pub write_stall: Duration,
    pub registration_timeout: Duration,
    pub ping_every: Duration,
    pub identify_within: Duration,
    /// Rooms one user may be in, for `CHANLIMIT`.
    pub max_rooms: u32,
    /// When the server started, for 003.
    pub created: String,
    /// Who is away, and what they said, on this node.
    pub away: Away,
    /// The accounts that may become IRC operators (`--irc-oper`).
    pub opers: Vec<String>,
    /// The guests on this node, with `--irc-guests`.
    pub guests: Option<guests::Guests>,
    /// Read marks kept in memory (see [`read_marker`]).
    pub marks: read_marker::Marks,
    /// The last lines of the conversations with guests here, for CHATHISTORY.
    pub conversations: local::Conversations,
    /// The channels no room backs on this node (guests create them).
    pub local: local::LocalChannels,
    /// Who left this node's door lately, for WHOWAS.
    pub whowas: Whowas,
    /// What the clients connected here said of themselves in USER, for WHOIS and WHO.
    pub idents: Idents,
    /// For LUSERS: connections that have not registered, and the most users seen.
    pub counts: Counts,
    /// `--trace`.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

impl IrcSettings {
    pub fn from_config(config: &Config) -> IrcSettings {
        IrcSettings {
            server_name: config
                .irc_server_name
                .clone()
                .unwrap_or_else(crate::net::hostname),
            password: config.irc_password.clone(),
            write_stall: config.write_stall(),
            registration_timeout: REGISTRATION_TIMEOUT,
            ping_every: config.irc_ping_every(),
            identify_within: Duration::from_secs(config.irc_identify_within.max(1)),
            max_rooms: config.max_rooms_per_user,
            created: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            away: Away::default(),
            opers: config.irc_opers.clone(),
            guests: config.irc_guests.then(guests::Guests::default),
            local: local::LocalChannels::default(),
            conversations: local::Conversations::default(),
            marks: read_marker::Marks::default(),
            whowas: Whowas::default(),
            idents: Idents::default(),
            counts: Counts::default(),
            tracer: None,
        }
    }
}

/// Away messages of the IRC sessions on this node, by account; an account with several
/// sessions is away while any of them says so, with the latest message.
#[derive(Default)]
pub struct Away(Mutex<HashMap<Arc<str>, (u64, String)>>);

impl Away {
    pub fn set(&self, user: &Arc<str>, session: u64, message: Option<String>) {
        let mut away = self.0.lock().expect("away lock");
        match message {
            Some(message) => {
                away.insert(user.clone(), (session, message));
            }
            None => {
                away.remove(user);
            }
        }
    }

    /// Forgets a session's away message as it ends.
    pub fn session_ended(&self, user: &str, session: u64) {
        let mut away = self.0.lock().expect("away lock");
        if away.get(user).is_some_and(|(s, _)| *s == session) {
            away.remove(user);
        }
    }

    pub fn of(&self, user: &str) -> Option<String> {
        self.0
            .lock()
            .expect("away lock")
            .get(user)
            .map(|(_, m)| m.clone())
    }
}

/// The clients that left this node's door lately, newest last, for WHOWAS (RFC 2812
/// §3.6.3): their nick, user name and real name, at most [`Whowas::KEPT`].
#[derive(Default)]
pub struct Whowas(Mutex<std::collections::VecDeque<Departed>>);

#[derive(Debug, Clone)]
pub struct Departed {
    pub nick: String,
    pub username: String,
    pub realname: String,
}

impl Whowas {
    pub const KEPT: usize = 256;

    pub fn left(&self, departed: Departed) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= Self::KEPT {
            kept.pop_front();
        }
        kept.push_back(departed);
    }

    /// Who went by `nick` (without case), newest first, at most `most`.
    pub fn of(&self, nick: &str, most: usize) -> Vec<Departed> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .rev()
            .filter(|d| d.nick.eq_ignore_ascii_case(nick))
            .take(most)
            .cloned()
            .collect()
    }
}

/// What each IRC client connected to this node said of itself in USER (its user name and
/// real name), by nick without case; for a nick several clients share (an account's
/// sessions), the newest's.
#[derive(Default)]
pub struct Idents(Mutex<HashMap<String, Ident>>);

#[derive(Clone)]
pub struct Ident {
    pub nick: String,
    pub username: String,
    pub realname: String,
    /// The connection it came from.
    peer: std::net::SocketAddr,
    pub handle: Arc<Handle>,
}

/// What other connections may need of one registered client: its user modes, where its
/// lines go, and a way to end it (KILL).
#[derive(Default)]
pub struct Handle {
    /// User mode `+o`: an IRC operator (OPER).
    pub oper: std::sync::atomic::AtomicBool,
    /// User mode `+i`: `WHO <mask>` does not list it to who shares no channel with it.
    pub invisible: std::sync::atomic::AtomicBool,
    /// User mode `+w`: it receives WALLOPS.
    pub wallops: std::sync::atomic::AtomicBool,
    /// Its live session, for WALLOPS (an operator's).
    pub feed: Mutex<Option<crate::hub::LiveFeed>>,
    /// Cancelled by a KILL, whose reason is beside it.
    pub kill: tokio_util::sync::CancellationToken,
    pub killed: Mutex<String>,
}

impl Handle {
    pub fn is_oper(&self) -> bool {
        self.oper.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_invisible(&self) -> bool {
        self.invisible.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends the connection: it is told `why`, and its channels see it quit with it.
    pub fn kill(&self, why: String) {
        *self.killed.lock().unwrap_or_else(|e| e.into_inner()) = why;
        self.kill.cancel();
    }
}

impl Idents {
    pub fn set(
        &self,
        nick: &str,
        username: &str,
        realname: &str,
        peer: std::net::SocketAddr,
        handle: &Arc<Handle>,
    ) {
        let ident = Ident {
            nick: nick.to_string(),
            username: username.to_string(),
            realname: realname.to_string(),
            peer,
            handle: handle.clone(),
        };
        self.lock().insert(nick.to_ascii_lowercase(), ident);
    }

    /// The client at `peer` is now `new`.
    pub fn renamed(&self, old: &str, new: &str, peer: std::net::SocketAddr) {
        let mut idents = self.lock();
        let key = old.to_ascii_lowercase();
        let Some(mut ident) = idents.get(&key).filter(|i| i.peer == peer).cloned() else {
            return;
        };
        idents.remove(&key);
        ident.nick = new.to_string();
        idents.insert(new.to_ascii_lowercase(), ident);
    }

    /// The client at `peer` left.
    pub fn gone(&self, nick: &str, peer: std::net::SocketAddr) {
        let mut idents = self.lock();
        let key = nick.to_ascii_lowercase();
        if idents.get(&key).is_some_and(|i| i.peer == peer) {
            idents.remove(&key);
        }
    }

    pub fn of(&self, nick: &str) -> Option<Ident> {
        self.lock().get(&nick.to_ascii_lowercase()).cloned()
    }

    /// The live sessions of the operators and `+w` users connected here, for WALLOPS.
    pub fn wallops_feeds(&self) -> Vec<crate::hub::LiveFeed> {
        use std::sync::atomic::Ordering::Relaxed;
        self.lock()
            .values()
            .filter(|i| i.handle.is_oper() || i.handle.wallops.load(Relaxed))
            .filter_map(|i| i.handle.feed.lock().ok().and_then(|f| f.clone()))
            .collect()
    }

    /// How many operators are connected here (LUSERS).
    pub fn opers(&self) -> usize {
        self.lock().values().filter(|i| i.handle.is_oper()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ident>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What LUSERS counts beside who is online: this door's connections that have not
/// registered yet, and the most users seen online here and in all (since this node started).
#[derive(Default)]
pub struct Counts {
    pub unregistered: std::sync::atomic::AtomicUsize,
    local_max: std::sync::atomic::AtomicUsize,
    global_max: std::sync::atomic::AtomicUsize,
}

impl Counts {
    /// Records users online now, here and in all; the most seen of each.
    pub fn peaks(&self, local: usize, global: usize) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let local_max = self.local_max.fetch_max(local, Relaxed).max(local);
        let global_max = self.global_max.fetch_max(global, Relaxed).max(global);
        (local_max, global_max)
    }
}
