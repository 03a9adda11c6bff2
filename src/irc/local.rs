//! Local channels: IRC channels no room backs, on this node's door only (`--irc-guests`).
//!
//! Only accounts create rooms, so a guest that JOINs a channel no room has creates a local
//! channel instead, as any IRC server would: it exists on this node while someone is in it,
//! its creator is its operator, and it holds everything an IRC channel holds (a topic, the
//! modes `+i +m +n +t +s`, a key `+k`, a limit `+l`, bans `+b` with exceptions `+e`, invite
//! exceptions `+I`, ops `+o` and voices `+v`,
//! invitations). Nothing said in it is kept: its messages are live (see
//! [`crate::chat::live`]), and it is gone once empty. Accounts connected by IRC here may join
//! one too (as members of the channel, not of a room). The line protocol and HTTP never see
//! them; `LIST` shows them beside the rooms.
//!
//! This is the channel's state alone: who may do what, checked and changed under one lock, so
//! that two clients racing (two JOINs against `+l 1`, a KICK and a PART) see one order. The
//! commands and the lines they send are in [`super::local_commands`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::hub::LiveFeed;
use crate::store::Message;

/// Lines a local channel, or a conversation with a guest, keeps for CHATHISTORY while it
/// lasts: its last messages.
pub const KEPT_LINES: usize = super::history::MAX as usize;
/// Conversations with guests kept at once on a node; past it, a new one keeps nothing.
pub const KEPT_CONVERSATIONS: usize = 10_000;
/// Bytes of lines all local channels and conversations with guests keep at once in this
/// process; past it, a new line is relayed but not kept.
pub const KEPT_BYTES: usize = 32 * 1024 * 1024;

/// The bytes kept now, against [`KEPT_BYTES`].
static KEPT_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bans a channel holds at most (`MAXLIST=b:`).
pub const MAX_BANS: usize = 100;
/// Invitations a channel remembers at most; the oldest is forgotten first.
const MAX_INVITED: usize = 100;
/// Longest key (RFC 2812's `key` is 1 to 23 characters).
pub const MAX_KEY: usize = 23;

/// One member: its nick, where its lines go, and its status.
#[derive(Debug, Clone)]
pub struct Member {
    pub nick: Arc<str>,
    pub feed: LiveFeed,
    pub op: bool,
    pub voice: bool,
}

impl Member {
    /// `@` for an op, `+` for a voice; both (`@+`) when `multi` (multi-prefix).
    pub fn prefix(&self, multi: bool) -> &'static str {
        match (self.op, self.voice) {
            (true, true) if multi => "@+",
            (true, _) => "@",
            (false, true) => "+",
            (false, false) => "",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Topic {
    pub text: String,
    pub by: String,
    pub at: i64,
}

#[derive(Debug, Clone)]
pub struct Ban {
    pub mask: String,
    pub by: String,
    pub at: i64,
}

/// A channel's flags and parameters.
#[derive(Debug, Clone, Default)]
pub struct Modes {
    pub invite_only: bool,
    pub moderated: bool,
    pub no_outside: bool,
    pub topic_ops: bool,
    pub secret: bool,
    /// `+C`: no CTCP but ACTION.
    pub no_ctcp: bool,
    pub key: Option<String>,
    pub limit: Option<usize>,
}

impl Modes {
    /// `+nt` and so on, then the key and the limit as parameters (the key only for
    /// `members`, as RPL_CHANNELMODEIS shows it).
    pub fn shown(&self, member: bool) -> Vec<String> {
        let mut flags = String::from("+");
        for (on, letter) in [
            (self.no_ctcp, 'C'),
            (self.invite_only, 'i'),
            (self.key.is_some(), 'k'),
            (self.limit.is_some(), 'l'),
            (self.moderated, 'm'),
            (self.no_outside, 'n'),
            (self.secret, 's'),
            (self.topic_ops, 't'),
        ] {
            if on {
                flags.push(letter);
            }
        }
        let mut out = vec![flags];
        if let Some(key) = &self.key {
            out.push(if member { key.clone() } else { "*".to_string() });
        }
        if let Some(limit) = self.limit {
            out.push(limit.to_string());
        }
        out
    }
}

/// A local channel as it is now.
#[derive(Debug, Clone)]
pub struct Channel {
    /// As its creator wrote it.
    pub name: Arc<str>,
    /// Unix seconds, for RPL_CREATIONTIME.
    pub created: i64,
    pub topic: Option<Topic>,
    pub modes: Modes,
    pub bans: Vec<Ban>,
    /// `+e`: masks a ban does not hold for.
    pub excepts: Vec<Ban>,
    /// `+I`: masks that may join a `+i` channel uninvited.
    pub invex: Vec<Ban>,
    /// Lower-case nicks invited since they last joined.
    invited: Vec<String>,
    pub members: Vec<Member>,
    /// Its last messages, for CHATHISTORY; gone with the channel.
    kept: Arc<Kept>,
}

impl Channel {
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.feed.id == id)
    }

    pub fn member_by_nick(&self, nick: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.nick.eq_ignore_ascii_case(nick))
    }

    /// Where its lines go: every member's feed.
    pub fn feeds(&self) -> Vec<LiveFeed> {
        self.members.iter().map(|m| m.feed.clone()).collect()
    }

    /// Banned (`+b`), and no exception (`+e`) for it.
    fn banned(&self, mask: &str) -> bool {
        let matches = |list: &[Ban]| list.iter().any(|b| glob_matches(&b.mask, mask));
        matches(&self.bans) && !matches(&self.excepts)
    }

    /// The list of a list mode: `b`, `e` or `I`.
    pub fn list(&self, letter: char) -> &[Ban] {
        match letter {
            'e' => &self.excepts,
            'I' => &self.invex,
            _ => &self.bans,
        }
    }

    fn list_mut(&mut self, letter: char) -> &mut Vec<Ban> {
        match letter {
            'e' => &mut self.excepts,
            'I' => &mut self.invex,
            _ => &mut self.bans,
        }
    }
}

/// Why a change was not made: each is one numeric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403.
    NoSuchChannel,
    /// 442: the one asking is not in the channel.
    NotOn,
    /// 482.
    NotOp,
    /// 441: the one it is about is not in the channel.
    TargetNotOn,
    /// 443.
    TargetOn,
    /// 473.
    InviteOnly,
    /// 475.
    BadKey,
    /// 471.
    Full,
    /// 474 (joining), 404 (speaking).
    Banned,
    /// 404: +m and neither op nor voice, or +n and not in it.
    CannotSend,
    /// 478.
    BanListFull,
}

/// A channel's name as shown, and the sessions to tell of a change.
pub type Told = (Arc<str>, Vec<LiveFeed>);

/// One mode change asked for, with its parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub on: bool,
    pub letter: char,
    pub arg: Option<String>,
}

/// What a mode change did: the change to show (its argument as applied), or nothing if it
/// changed nothing (setting what was set).
pub type Applied = Option<Change>;

/// The local channels of this node, by lower-case name.
#[derive(Default)]
pub struct LocalChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

impl LocalChannels {
    /// The channel as it is now.
    pub fn get(&self, name: &str) -> Option<Channel> {
        self.lock().get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.lock().contains_key(&name.to_ascii_lowercase())
    }

    /// Whether the session `id` is in `name`.
    pub fn is_member(&self, name: &str, id: u64) -> bool {
        self.lock()
            .get(&name.to_ascii_lowercase())
            .is_some_and(|c| c.member(id).is_some())
    }

    /// Joins `name` as `nick` (whose mask is `mask`), creating it (with the joiner as op) if
    /// `create` and it does not exist: the channel as the joiner now sees it. An invitation lets one past `+i`, `+k` and `+l`, as
    /// the Modern documents say; a ban holds anyway.
    pub fn join(
        &self,
        name: &str,
        nick: &str,
        mask: &str,
        feed: LiveFeed,
        key: Option<&str>,
        create: bool,
    ) -> Result<Channel, Refusal> {
        let mut channels = self.lock();
        let lower = name.to_ascii_lowercase();
        let created = !channels.contains_key(&lower);
        if created && !create {
            return Err(Refusal::NoSuchChannel);
        }
        let channel = channels.entry(lower).or_insert_with(|| Channel {
            name: Arc::from(name),
            created: chrono::Utc::now().timestamp(),
            topic: None,
            modes: Modes {
                no_outside: true,
                topic_ops: true,
                ..Modes::default()
            },
            bans: Vec::new(),
            excepts: Vec::new(),
            invex: Vec::new(),
            invited: Vec::new(),
            members: Vec::new(),
            kept: Arc::default(),
        });
        if channel.member(feed.id).is_some() {
            return Err(Refusal::TargetOn);
        }
        let nick_lower = nick.to_ascii_lowercase();
        let invited = channel.invited.contains(&nick_lower);
        let excepted = channel.invex.iter().any(|b| glob_matches(&b.mask, mask));
        if channel.banned(mask) {
            return Err(Refusal::Banned);
        }
        if !invited {
            if channel.modes.invite_only && !excepted {
                return Err(Refusal::InviteOnly);
            }
            if channel.modes.key.as_deref().is_some_and(|k| Some(k) != key) {
                return Err(Refusal::BadKey);
            }
            if channel.modes.limit.is_some_and(|l| channel.members.len() >= l) {
                return Err(Refusal::Full);
            }
        }
        channel.invited.retain(|n| *n != nick_lower);
        channel.members.push(Member {
            nick: Arc::from(nick),
            feed,
            op: created,
            voice: false,
        });
        Ok(channel.clone())
    }

    /// Keeps `message` (said in `name`) among the channel's last lines.
    pub fn keep(&self, name: &str, message: Arc<Message>) {
        let Some(kept) = self
            .lock()
            .get(&name.to_ascii_lowercase())
            .map(|c| c.kept.clone())
        else {
            return;
        };
        kept.push(message);
    }

    /// The last lines of `name`, oldest first, for a member (session `id`).
    pub fn kept(&self, name: &str, id: u64) -> Result<Vec<Arc<Message>>, Refusal> {
        let channels = self.lock();
        let channel = channels
            .get(&name.to_ascii_lowercase())
            .ok_or(Refusal::NoSuchChannel)?;
        channel.member(id).ok_or(Refusal::NotOn)?;
        Ok(channel.kept.lines())
    }

    /// Takes session `id` out of `name`: who was in it (the one leaving too), to tell.
    pub fn part(&self, name: &str, id: u64) -> Result<Told, Refusal> {
        let mut channels = self.lock();
        let lower = name.to_ascii_lowercase();
        let channel = channels.get_mut(&lower).ok_or(Refusal::NoSuchChannel)?;
        if channel.member(id).is_none() {
            return Err(Refusal::NotOn);
        }
        let told = channel.feeds();
        channel.members.retain(|m| m.feed.id != id);
        let shown = channel.name.clone();
        if channel.members.is_empty() {
            channels.remove(&lower);
        }
        Ok((shown, told))
    }

    /// Whether session `id` (whose mask is `mask`) may speak in `name`: the other members,
    /// to tell.
    /// With `status` (`@` or `+`, STATUSMSG), only the ops (and voices) are told. `ctcp`: the
    /// text is a CTCP request other than ACTION, which `+C` refuses.
    pub fn speak(
        &self,
        name: &str,
        id: u64,
        mask: &str,
        status: Option<char>,
        ctcp: bool,
    ) -> Result<Told, Refusal> {
        let channels = self.lock();
        let channel = channels
            .get(&name.to_ascii_lowercase())
            .ok_or(Refusal::NoSuchChannel)?;
        if ctcp && channel.modes.no_ctcp {
            return Err(Refusal::CannotSend);
        }
        let Some(me) = channel.member(id) else {
            // From outside: only where +n is off, and not past +m or a ban.
            if channel.modes.no_outside || channel.modes.moderated || channel.banned(mask) {
                return Err(Refusal::CannotSend);
            }
            return Ok((channel.name.clone(), channel.feeds()));
        };
        if !me.op && !me.voice && (channel.modes.moderated || channel.banned(mask)) {
            return Err(Refusal::CannotSend);
        }
        let others = channel
            .members
            .iter()
            .filter(|m| m.feed.id != id)
            .filter(|m| match status {
                Some('@') => m.op,
                Some(_) => m.op || m.voice,
                None => true,
            })
            .map(|m| m.feed.clone())
            .collect();
        Ok((channel.name.clone(), others))
    }

    /// Sets (or, with an empty text, clears) the topic of `name`: every member, to tell.
    pub fn set_topic(&self, name: &str, id: u64, text: &str, by: &str) -> Result<Told, Refusal> {
        let mut channels = self.lock();
        let channel = channels
            .get_mut(&name.to_ascii_lowercase())
            .ok_or(Refusal::NoSuchChannel)?;
        let me = channel.member(id).ok_or(Refusal::NotOn)?;
        if channel.modes.topic_ops && !me.op {
            return Err(Refusal::NotOp);
        }
        channel.topic = (!text.is_empty()).then(|| Topic {
            text: text.to_string(),
            by: by.to_string(),
            at: chrono::Utc::now().timestamp(),
        });
        Ok((channel.name.clone(), channel.feeds()))
    }

    /// Applies mode changes by session `id`, each on its own: what each did, in order (a
    /// refusal stops no other change), and every member, to tell.
    #[allow(clippy::type_complexity)]
    pub fn change_modes(
        &self,
        name: &str,
        id: u64,
        by: &str,
        changes: &[Change],
    ) -> Result<(Arc<str>, Vec<Result<Applied, Refusal>>, Vec<LiveFeed>), Refusal> {
        let mut channels = self.lock();
        let channel = channels
            .get_mut(&name.to_ascii_lowercase())
            .ok_or(Refusal::NoSuchChannel)?;
        let op = match channel.member(id) {
            Some(me) => me.op,
            None => return Err(Refusal::NotOn),
        };
        if !op {
            return Err(Refusal::NotOp);
        }
        let done = changes.iter().map(|c| apply(channel, c, by)).collect();
        Ok((channel.name.clone(), done, channel.feeds()))
    }

    /// Session `id` removes `target` from `name`: every member before (the target too), to
    /// tell, and the target's nick as shown.
    pub fn kick(&self, name: &str, id: u64, target: &str) -> Result<(Arc<str>, Told), Refusal> {
        let mut channels = self.lock();
        let lower = name.to_ascii_lowercase();
        let channel = channels.get_mut(&lower).ok_or(Refusal::NoSuchChannel)?;
        let me = channel.member(id).ok_or(Refusal::NotOn)?;
        if !me.op {
            return Err(Refusal::NotOp);
        }
        let target = channel
            .member_by_nick(target)
            .ok_or(Refusal::TargetNotOn)?
            .nick
            .clone();
        let told = channel.feeds();
        channel.members.retain(|m| m.nick != target);
        let shown = channel.name.clone();
        if channel.members.is_empty() {
            channels.remove(&lower);
        }
        Ok((target, (shown, told)))
    }

    /// Session `id` invites `target` to `name` (a member may, an op only when `+i`).
    pub fn invite(&self, name: &str, id: u64, target: &str) -> Result<Arc<str>, Refusal> {
        let mut channels = self.lock();
        let channel = channels
            .get_mut(&name.to_ascii_lowercase())
            .ok_or(Refusal::NoSuchChannel)?;
        let me = channel.member(id).ok_or(Refusal::NotOn)?;
        if channel.modes.invite_only && !me.op {
            return Err(Refusal::NotOp);
        }
        if channel.member_by_nick(target).is_some() {
            return Err(Refusal::TargetOn);
        }
        let lower = target.to_ascii_lowercase();
        if !channel.invited.contains(&lower) {
            if channel.invited.len() >= MAX_INVITED {
                channel.invited.remove(0);
            }
            channel.invited.push(lower);
        }
        Ok(channel.name.clone())
    }

    /// The channels `nick` is invited to and has not joined since.
    pub fn invited_to(&self, nick: &str) -> Vec<Arc<str>> {
        let nick = nick.to_ascii_lowercase();
        let mut out: Vec<Arc<str>> = self
            .lock()
            .values()
            .filter(|c| c.invited.contains(&nick))
            .map(|c| c.name.clone())
            .collect();
        out.sort();
        out
    }

    /// Session `id` is now `new`: the members of its channels (itself too, once), to tell.
    pub fn renamed(&self, id: u64, new: &str) -> Vec<LiveFeed> {
        let mut channels = self.lock();
        let new: Arc<str> = Arc::from(new);
        let mut told: Vec<LiveFeed> = Vec::new();
        for channel in channels.values_mut() {
            if channel.member(id).is_none() {
                continue;
            }
            for member in &mut channel.members {
                if member.feed.id == id {
                    member.nick = new.clone();
                }
                if !told.iter().any(|f| f.id == member.feed.id) {
                    told.push(member.feed.clone());
                }
            }
        }
        told
    }

    /// Session `id` leaves every local channel (it quit, or logged in elsewhere): the other
    /// members of its channels, each once, to tell.
    pub fn quit(&self, id: u64) -> Vec<LiveFeed> {
        let mut channels = self.lock();
        let mut told: Vec<LiveFeed> = Vec::new();
        channels.retain(|_, channel| {
            if channel.member(id).is_none() {
                return true;
            }
            channel.members.retain(|m| m.feed.id != id);
            for member in &channel.members {
                if !told.iter().any(|f| f.id == member.feed.id) {
                    told.push(member.feed.clone());
                }
            }
            !channel.members.is_empty()
        });
        told
    }

    /// The local channels session `id` is in, as WHOIS lists them (with its prefix).
    pub fn of(&self, id: u64) -> Vec<(Arc<str>, &'static str)> {
        self.lock()
            .values()
            .filter_map(|c| c.member(id).map(|m| (c.name.clone(), m.prefix(false))))
            .collect()
    }

    /// Every local channel, for LIST: its name, members and topic, and whether it is `+s`.
    pub fn list(&self) -> Vec<(Arc<str>, usize, String, bool)> {
        let mut out: Vec<_> = self
            .lock()
            .values()
            .map(|c| {
                let topic = c.topic.as_ref().map(|t| t.text.clone()).unwrap_or_default();
                (c.name.clone(), c.members.len(), topic, c.modes.secret)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How many local channels there are (LUSERS).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Last lines, oldest first: at most [`KEPT_LINES`], and while the process keeps fewer than
/// [`KEPT_BYTES`] in all. What they take is given back when they go.
#[derive(Debug, Default)]
pub struct Kept(Mutex<VecDeque<Arc<Message>>>);

fn size(message: &Message) -> usize {
    message.body.len() + message.sender.len() + message.recipient.len() + 64
}

impl Kept {
    fn push(&self, message: Arc<Message>) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = size(&message);
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= KEPT_LINES {
            if let Some(old) = lines.pop_front() {
                KEPT_NOW.fetch_sub(size(&old), Relaxed);
            }
        }
        let taken = KEPT_NOW.fetch_add(bytes, Relaxed);
        if taken + bytes > KEPT_BYTES {
            KEPT_NOW.fetch_sub(bytes, Relaxed);
            return;
        }
        lines.push_back(message);
    }

    fn lines(&self) -> Vec<Arc<Message>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let lines = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = lines.iter().map(|m| size(m)).sum();
        KEPT_NOW.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The last lines of the conversations with guests on this node, by their two nicks (in
/// lower case): kept while the guest is here, forgotten when it leaves or changes its nick.
#[derive(Default)]
pub struct Conversations(Mutex<HashMap<(String, String), Arc<Kept>>>);

impl Conversations {
    fn key(a: &str, b: &str) -> (String, String) {
        let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
        if a <= b {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// Keeps a line between `a` and `b` (at most [`KEPT_CONVERSATIONS`] conversations).
    pub fn keep(&self, a: &str, b: &str, message: Arc<Message>) {
        let kept = {
            let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let key = Conversations::key(a, b);
            if !all.contains_key(&key) && all.len() >= KEPT_CONVERSATIONS {
                return;
            }
            all.entry(key).or_default().clone()
        };
        kept.push(message);
    }

    /// The last lines between `a` and `b`, oldest first.
    pub fn kept(&self, a: &str, b: &str) -> Vec<Arc<Message>> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&Conversations::key(a, b))
            .map(|k| k.lines())
            .unwrap_or_default()
    }

    /// The guest `nick` left (or is no longer `nick`): its conversations go.
    pub fn forget(&self, nick: &str) {
        let nick = nick.to_ascii_lowercase();
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(a, b), _| *a != nick && *b != nick);
    }
}

/// One mode change on `channel`, by an op.
fn apply(channel: &mut Channel, change: &Change, by: &str) -> Result<Applied, Refusal> {
    let Change { on, letter, arg } = change;
    let same = Ok(Some(change.clone()));
    match letter {
        'C' | 'i' | 'm' | 'n' | 's' | 't' => {
            let flag = match letter {
                'C' => &mut channel.modes.no_ctcp,
                'i' => &mut channel.modes.invite_only,
                'm' => &mut channel.modes.moderated,
                'n' => &mut channel.modes.no_outside,
                's' => &mut channel.modes.secret,
                _ => &mut channel.modes.topic_ops,
            };
            if *flag == *on {
                return Ok(None);
            }
            *flag = *on;
            same
        }
        'k' if *on => {
            channel.modes.key = arg.clone();
            same
        }
        'k' => {
            if channel.modes.key.take().is_none() {
                return Ok(None);
            }
            // `-k` shows `*` for the key it removed, whatever was given.
            Ok(Some(Change {
                on: false,
                letter: 'k',
                arg: Some("*".to_string()),
            }))
        }
        'l' if *on => {
            let limit = arg.as_deref().and_then(|a| a.parse().ok());
            channel.modes.limit = limit;
            same
        }
        'l' => {
            if channel.modes.limit.take().is_none() {
                return Ok(None);
            }
            Ok(Some(Change {
                on: false,
                letter: 'l',
                arg: None,
            }))
        }
        'b' | 'e' | 'I' => {
            let mask = arg.clone().unwrap_or_default();
            let list = channel.list_mut(*letter);
            if *on {
                if list.iter().any(|b| b.mask.eq_ignore_ascii_case(&mask)) {
                    return Ok(None);
                }
                if list.len() >= MAX_BANS {
                    return Err(Refusal::BanListFull);
                }
                list.push(Ban {
                    mask,
                    by: by.to_string(),
                    at: chrono::Utc::now().timestamp(),
                });
                return same;
            }
            let before = list.len();
            list.retain(|b| !b.mask.eq_ignore_ascii_case(&mask));
            if list.len() == before {
                return Ok(None);
            }
            same
        }
        'o' | 'v' => {
            let nick = arg.as_deref().unwrap_or("");
            let member = channel
                .members
                .iter_mut()
                .find(|m| m.nick.eq_ignore_ascii_case(nick))
                .ok_or(Refusal::TargetNotOn)?;
            let status = if *letter == 'o' {
                &mut member.op
            } else {
                &mut member.voice
            };
            *status = *on;
            Ok(Some(Change {
                on: *on,
                letter: *letter,
                arg: Some(member.nick.to_string()),
            }))
        }
        _ => Ok(None),
    }
}

/// Whether `name` matches a mask: `*` any run, `?` any one character, without case.
pub fn glob_matches(mask: &str, name: &str) -> bool {
    let (mask, name) = (mask.as_bytes(), name.as_bytes());
    let (mut m, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if m < mask.len() && (mask[m] == b'?' || mask[m].eq_ignore_ascii_case(&name[n])) {
            m += 1;
            n += 1;
        } else if m < mask.len() && mask[m] == b'*' {
            star = Some(m);
            m += 1;
            mark = n;
        } else if let Some(s) = star {
            m = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    mask[m..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(id: u64) -> LiveFeed {
        LiveFeed {
            user: Arc::from(""),
            id,
        }
    }

    fn join(ch: &LocalChannels, nick: &str, id: u64, key: Option<&str>) -> Result<Channel, Refusal> {
        ch.join("#Lab", nick, &format!("{nick}!{nick}@chatd"), feed(id), key, true)
    }

    fn mode(
        ch: &LocalChannels,
        id: u64,
        on: bool,
        letter: char,
        arg: Option<&str>,
    ) -> Result<Applied, Refusal> {
        let change = Change {
            on,
            letter,
            arg: arg.map(str::to_string),
        };
        let (_, mut done, _) = ch.change_modes("#lab", id, "ann", &[change])?;
        done.remove(0)
    }

    #[test]
    fn the_creator_is_op_and_the_channel_ends_with_its_last_member() {
        let ch = LocalChannels::default();
        let first = join(&ch, "ann", 1, None).unwrap();
        assert!(first.members[0].op, "the creator is op");
        let second = join(&ch, "bob", 2, None).unwrap();
        assert!(!second.members[1].op);
        assert_eq!(ch.get("#LAB").unwrap().name.as_ref(), "#Lab");
        assert_eq!(mode(&ch, 2, true, 'm', None), Err(Refusal::NotOp));
        assert_eq!(ch.part("#lab", 1).unwrap().1.len(), 2);
        assert_eq!(ch.part("#lab", 1).err(), Some(Refusal::NotOn));
        ch.part("#lab", 2).unwrap();
        assert!(!ch.exists("#lab"), "empty, it is gone");
        assert_eq!(
            ch.join("#lab", "cy", "cy!cy@chatd", feed(3), None, false).err(),
            Some(Refusal::NoSuchChannel)
        );
    }

    #[test]
    fn keys_limits_bans_and_invitations_keep_people_out_until_they_may_enter() {
        let ch = LocalChannels::default();
        join(&ch, "ann", 1, None).unwrap();
        mode(&ch, 1, true, 'k', Some("beer")).unwrap();
        assert_eq!(join(&ch, "bob", 2, None).err(), Some(Refusal::BadKey));
        assert_eq!(join(&ch, "bob", 2, Some("bees")).err(), Some(Refusal::BadKey));
        join(&ch, "bob", 2, Some("beer")).unwrap();
        mode(&ch, 1, true, 'l', Some("2")).unwrap();
        assert_eq!(join(&ch, "cy", 3, Some("beer")).err(), Some(Refusal::Full));
        ch.invite("#lab", 2, "CY").unwrap();
        assert_eq!(ch.invited_to("cy"), [Arc::from("#Lab")]);
        join(&ch, "cy", 3, None).expect("an invitation passes the key and the limit");
        ch.part("#lab", 3).unwrap();
        assert_eq!(
            join(&ch, "cy", 3, Some("beer")).err(),
            Some(Refusal::Full),
            "once"
        );
        mode(&ch, 1, false, 'l', None).unwrap();
        mode(&ch, 1, true, 'b', Some("CY!*@*")).unwrap();
        assert_eq!(join(&ch, "cy", 3, Some("beer")).err(), Some(Refusal::Banned));
        mode(&ch, 1, true, 'e', Some("c?!*@*")).unwrap();
        join(&ch, "cy", 3, Some("beer")).expect("an exception to the ban");
        ch.part("#lab", 3).unwrap();
        mode(&ch, 1, false, 'e', Some("c?!*@*")).unwrap();
        assert_eq!(join(&ch, "cy", 3, Some("beer")).err(), Some(Refusal::Banned));
        mode(&ch, 1, false, 'b', Some("cy!*@*")).unwrap();
        mode(&ch, 1, true, 'i', None).unwrap();
        assert_eq!(join(&ch, "cy", 3, Some("beer")).err(), Some(Refusal::InviteOnly));
        mode(&ch, 1, true, 'I', Some("*!*@chatd")).unwrap();
        join(&ch, "cy", 3, Some("beer")).expect("an invite exception");
        assert_eq!(ch.invite("#lab", 1, "cy"), Err(Refusal::TargetOn));
    }

    #[test]
    fn moderation_voice_and_kicks() {
        let ch = LocalChannels::default();
        join(&ch, "ann", 1, None).unwrap();
        join(&ch, "bob", 2, None).unwrap();
        assert_eq!(
            ch.speak("#lab", 2, "bob!bob@chatd", None, false).unwrap().1.len(),
            1,
            "to ann"
        );
        assert_eq!(
            ch.speak("#lab", 9, "x!x@chatd", None, false).err(),
            Some(Refusal::CannotSend),
            "+n"
        );
        mode(&ch, 1, true, 'm', None).unwrap();
        assert_eq!(
            mode(&ch, 1, true, 'm', None),
            Ok(None),
            "already set: nothing to show"
        );
        assert_eq!(
            ch.speak("#lab", 2, "bob!bob@chatd", None, false).err(),
            Some(Refusal::CannotSend)
        );
        let voiced = mode(&ch, 1, true, 'v', Some("BOB")).unwrap().unwrap();
        assert_eq!(voiced.arg.as_deref(), Some("bob"), "the nick as it is");
        ch.speak("#lab", 2, "bob!bob@chatd", None, false).unwrap();
        assert_eq!(
            ch.speak("#lab", 2, "bob!bob@chatd", Some('@'), false)
                .unwrap()
                .1
                .len(),
            1,
            "ann is op"
        );
        assert_eq!(
            ch.speak("#lab", 1, "ann!ann@chatd", Some('+'), false)
                .unwrap()
                .1
                .len(),
            1,
            "bob has voice"
        );
        assert_eq!(mode(&ch, 1, true, 'o', Some("zed")), Err(Refusal::TargetNotOn));
        mode(&ch, 1, true, 'C', None).unwrap();
        let ctcp = ch.speak("#lab", 2, "bob!bob@chatd", None, true);
        assert_eq!(ctcp.err(), Some(Refusal::CannotSend), "+C: no CTCP but ACTION");
        assert_eq!(ch.kick("#lab", 2, "ann").err(), Some(Refusal::NotOp));
        let (kicked, (_, told)) = ch.kick("#lab", 1, "Bob").unwrap();
        assert_eq!((kicked.as_ref(), told.len()), ("bob", 2));
        assert_eq!(ch.kick("#lab", 1, "bob").err(), Some(Refusal::TargetNotOn));
    }

    #[test]
    fn masks_match_without_case() {
        assert!(glob_matches("*", "alice"));
        assert!(glob_matches("ALI*", "alice"));
        assert!(glob_matches("a?i*e", "alice"));
        assert!(glob_matches("*c*", "alice"));
        assert!(!glob_matches("b*", "alice"));
        assert!(!glob_matches("alic", "alice"));
        assert!(glob_matches("al*ce*", "alice"));
    }

    #[test]
    fn a_channel_keeps_its_last_lines_and_a_conversation_goes_with_its_guest() {
        let line = |n: i64| {
            Arc::new(Message {
                id: -n,
                sender: Arc::from("ann"),
                recipient: Arc::from("#lab"),
                body: format!("PRIVMSG #lab :{n}"),
                created_at_us: n,
                client_timestamp: None,
                event: None,
                origin: 0,
                rendered: Default::default(),
            })
        };
        let ch = LocalChannels::default();
        join(&ch, "ann", 1, None).unwrap();
        for n in 1..=150 {
            ch.keep("#LAB", line(n));
        }
        let kept = ch.kept("#lab", 1).unwrap();
        assert_eq!(kept.len(), KEPT_LINES);
        assert_eq!((kept[0].id, kept[99].id), (-51, -150), "the last, oldest first");
        assert_eq!(ch.kept("#lab", 2).err(), Some(Refusal::NotOn), "members only");

        let talks = Conversations::default();
        talks.keep("Guest1", "ann", line(1));
        assert_eq!(talks.kept("ann", "guest1").len(), 1, "either way, any case");
        talks.forget("GUEST1");
        assert!(talks.kept("ann", "guest1").is_empty());
    }

    #[test]
    fn a_quit_and_a_rename_tell_each_member_once() {
        let ch = LocalChannels::default();
        for room in ["#a", "#b"] {
            for (nick, id) in [("ann", 1), ("bob", 2)] {
                ch.join(room, nick, "m", feed(id), None, true).unwrap();
            }
        }
        assert_eq!(ch.renamed(1, "anna").len(), 2, "ann and bob, once each");
        assert_eq!(ch.get("#a").unwrap().members[0].nick.as_ref(), "anna");
        assert_eq!(ch.quit(1).len(), 1, "bob");
        assert_eq!(ch.of(2).len(), 2);
        assert_eq!(ch.quit(2).len(), 0);
        assert_eq!(ch.count(), 0);
    }
}
