//! `MARKREAD` (IRCv3 draft/read-marker, <https://ircv3.net/specs/extensions/read-marker>).
//!
//! - **A room, for one of its members:** the read mark is the member's `READ` mark, so the
//!   unread counts of `ROOMS`, `/rooms` and the chat page move with it. Marks are timestamps
//!   on the wire and ids in the store: a timestamp marks read every row committed up to the
//!   end of its millisecond (a timestamp before the room's first message marks nothing).
//! - **Anything else** (a direct conversation, a local channel, and every target of a
//!   guest): the mark is kept in this node's memory, exactly as the client gave it: an
//!   account's until the node restarts, a guest's until it leaves. At most
//!   [`MARKS_PER_OWNER`] targets each.
//!
//! A mark only moves forward: an older timestamp is answered with the newer one kept. Every
//! other IRC session of the same account here that asked for the capability is sent the new
//! mark too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::caps::READ_MARKER;
use super::client::Client;
use super::wire::{server_time, Msg};
use crate::hub::LiveFeed;

/// Targets one account or guest may hold a mark for in memory.
pub const MARKS_PER_OWNER: usize = 1_000;

/// The marks kept in memory: by owner (an account's name, or `~<session>` for a guest), by
/// lower-case target, in microseconds.
#[derive(Default)]
pub struct Marks(Mutex<HashMap<String, HashMap<String, i64>>>);

impl Marks {
    fn get(&self, owner: &str, target: &str) -> Option<i64> {
        let marks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(owner)?.get(&target.to_ascii_lowercase()).copied()
    }

    /// Moves the mark forward to `micros`: the mark now, or `None` if the owner holds too
    /// many.
    fn set(&self, owner: &str, target: &str, micros: i64) -> Option<i64> {
        let mut marks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mine = marks.entry(owner.to_string()).or_default();
        let key = target.to_ascii_lowercase();
        if !mine.contains_key(&key) && mine.len() >= MARKS_PER_OWNER {
            return None;
        }
        let mark = mine.entry(key).or_insert(micros);
        *mark = (*mark).max(micros);
        Some(*mark)
    }

    /// A guest left: its marks go with it.
    pub fn forget(&self, owner: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(owner);
    }
}

/// Whose marks this client's are: its account's, or its guest session's.
pub fn owner(c: &Client) -> String {
    match c.account() {
        Some(account) => account.to_string(),
        None => format!("~{}", c.origin()),
    }
}

/// `MARKREAD <target> [timestamp=...]`.
pub async fn markread(c: &mut Client, m: &Msg<'_>) {
    let target = m.arg(0).to_string();
    if target.is_empty() {
        return fail(c, "NEED_MORE_PARAMS", &[], "Missing parameters");
    }
    let Some(stamp) = m.params.get(1) else {
        send_mark(c, &target).await;
        return;
    };
    let Some(micros) = stamp
        .strip_prefix("timestamp=")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros())
    else {
        return fail(
            c,
            "INVALID_PARAMS",
            &[&target, stamp],
            "A read mark is timestamp=YYYY-MM-DDThh:mm:ss.sssZ",
        );
    };
    let room = room_mark(c, &target).await.is_some();
    match c.account().cloned().filter(|_| room) {
        Some(me) => {
            // The row whose time tag this is: the last committed within that millisecond.
            let chat = c.chat.clone();
            let marked = match chat.last_id_before(&me, &target, micros + 1000).await {
                Ok(0) => Ok(()),
                Ok(id) => chat.mark_read(&me, &target, Some(id)).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = marked {
                e.log();
                let text = format!("The read timestamp could not be set: {}: {}", e.code, e.message);
                return fail(c, "INTERNAL_ERROR", &[&target], &text);
            }
        }
        None => {
            let owner = owner(c);
            if c.settings.marks.set(&owner, &target, micros).is_none() {
                let text = format!("At most {MARKS_PER_OWNER} read marks are kept for you");
                return fail(c, "INVALID_PARAMS", &[&target], &text);
            }
        }
    }
    // The mark as it is now, to this session and the account's others.
    let stamp = send_mark(c, &target).await;
    if let Some(me) = c.account() {
        let to = [LiveFeed {
            user: Arc::from(me.as_str()),
            id: 0,
        }];
        let any: Arc<str> = Arc::from("*");
        // From "": the server's line. Sessions without the capability leave it out.
        let line = format!("MARKREAD {target} {stamp}");
        c.chat.push_line("", &any, line, "", &to, c.origin());
    }
}

/// The read mark of room `target` when this client's account is a member of it (`None`
/// otherwise: its mark, if any, is in memory).
async fn room_mark(c: &Client, target: &str) -> Option<Option<i64>> {
    let me = c.account()?;
    if !target.starts_with('#') || c.settings.local.exists(target) {
        return None;
    }
    c.chat.read_mark(me, target).await.ok()
}

/// `timestamp=<time>`, or `*` when nothing was read.
fn stamp(at: Option<i64>) -> String {
    match at {
        Some(at) => format!("timestamp={}", server_time(at)),
        None => "*".to_string(),
    }
}

/// Sends this client `MARKREAD <target> <stamp>`, its mark now (after a JOIN, before the end
/// of the names), and returns the stamp.
pub async fn send_mark(c: &mut Client, target: &str) -> String {
    let at = match room_mark(c, target).await {
        Some(at) => at,
        None => c.settings.marks.get(&owner(c), target),
    };
    let stamp = stamp(at);
    c.raw("MARKREAD", &[target, &stamp], None);
    stamp
}

/// `MARKREAD` of a target whose mark is in memory (a local channel's), after its JOIN.
pub fn send_memory_mark(c: &mut Client, target: &str) {
    let stamp = stamp(c.settings.marks.get(&owner(c), target));
    c.raw("MARKREAD", &[target, &stamp], None);
}

/// Whether a pushed line is a read mark this client did not ask for.
pub fn unwanted(c: &Client, line: &str) -> bool {
    line.starts_with("MARKREAD ") && !c.caps.has(READ_MARKER)
}

fn fail(c: &mut Client, code: &str, context: &[&str], text: &str) {
    let mut middle = vec!["MARKREAD", code];
    middle.extend_from_slice(context);
    c.raw("FAIL", &middle, Some(text));
}
