//! `MARKREAD` (IRCv3 draft/read-marker, <https://ircv3.net/specs/extensions/read-marker>): a
//! room's read mark is its member's `READ` mark, so the unread counts of `ROOMS`, `/rooms` and
//! the chat page move with it. Marks are timestamps on the wire and ids in the store: a
//! timestamp marks read every row committed up to the end of its millisecond.
//!
//! Direct conversations keep no read mark on the server (the chat page keeps its own, per
//! browser): `MARKREAD <nick>` answers `*`, and setting one is refused.

use super::client::Client;
use super::wire::{server_time, Msg};
use crate::chat::Username;

/// `MARKREAD <target> [timestamp=...]`.
pub async fn markread(c: &mut Client, m: &Msg<'_>) {
    let target = m.arg(0).to_string();
    if target.is_empty() {
        return fail(c, "NEED_MORE_PARAMS", &[], "Missing parameters");
    }
    let me = c.account().cloned().expect("MARKREAD needs an account");
    if !target.starts_with('#') {
        if m.params.len() < 2 {
            c.raw("MARKREAD", &[&target, "*"], None);
        } else {
            fail(
                c,
                "INVALID_PARAMS",
                &[&target],
                "Direct conversations keep their read marks in the client, not on the server",
            );
        }
        return;
    }
    if let Some(stamp) = m.params.get(1) {
        let Some(micros) = stamp
            .strip_prefix("timestamp=")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros())
        else {
            return fail(
                c,
                "INVALID_PARAMS",
                &[stamp],
                "A read mark is timestamp=YYYY-MM-DDThh:mm:ss.sssZ",
            );
        };
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
    send_mark(c, &me, &target).await;
}

/// `MARKREAD <room> timestamp=...`, or `*` when nothing was read yet.
pub async fn send_mark(c: &mut Client, me: &Username, room: &str) {
    match c.chat.read_mark(me, room).await {
        Ok(Some(at)) => {
            let stamp = format!("timestamp={}", server_time(at));
            c.raw("MARKREAD", &[room, &stamp], None);
        }
        Ok(None) => c.raw("MARKREAD", &[room, "*"], None),
        Err(e) => {
            e.log();
            let text = format!("The read timestamp could not be read: {}: {}", e.code, e.message);
            fail(c, "INTERNAL_ERROR", &[room], &text);
        }
    }
}

fn fail(c: &mut Client, code: &str, context: &[&str], text: &str) {
    let mut middle = vec!["MARKREAD", code];
    middle.extend_from_slice(context);
    c.raw("FAIL", &middle, Some(text));
}
