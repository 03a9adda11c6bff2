//! chatd's messages as IRC lines, and IRC's text as chatd's.
//!
//! - A direct message is `PRIVMSG <me>` from its sender; a room message `PRIVMSG <#room>`.
//! - A room's events are the IRC commands that make them: a join is `JOIN`, a leave `PART`,
//!   a removal `KICK`, a topic change `TOPIC`, a flag or op change `MODE`.
//! - Tags as the client's capabilities ask: `time` (server-time, message-tags), `msgid` (the
//!   message's id, message-tags) and `account` (account-tag).
//! - A message longer than a line is split over several lines.
//! - `/me waves`, as line and HTTP clients type it, is CTCP ACTION (`/me` in IRC clients), and
//!   back: an IRC client's `/me` reaches telnet as `/me waves`.

use std::fmt::Write as _;

use super::caps::{ACCOUNT_TAG, MESSAGE_TAGS};
use super::client::Client;
use super::wire::{self, split_text, MAX_LINE};
use super::HOST;
use crate::store::{EventKind, Message};

/// How a chatd text marks an action, which IRC sends as CTCP ACTION.
const ME: &str = "/me ";

/// A user's mask: `alice!alice@chatd`.
pub fn mask(nick: &str) -> String {
    format!("{nick}!{nick}@{HOST}")
}

/// What a push leaves to do that needs the store.
pub enum Followup {
    None,
    /// Another session of this account joined a room: show it as joined here too.
    Joined(std::sync::Arc<str>),
}

/// Writes one live message for this client.
pub fn push(c: &mut Client, message: &Message) -> Followup {
    let tags = tags_for(c, message);
    let me = c.nick.clone();
    if let Some(event) = message.event.as_ref().filter(|e| e.kind == EventKind::Line) {
        // A KICK of this client (from a local channel) takes the channel off its list.
        if *event.subject == *me {
            c.channels.remove(&message.recipient.to_ascii_lowercase());
        }
        line(c, message, tags);
        return Followup::None;
    }
    let Some(room) = message.room() else {
        // A direct message: this client's inbox.
        say(c, &tags, &message.sender, "PRIVMSG", &me, &message.body);
        return Followup::None;
    };
    let Some(event) = &message.event else {
        say(c, &tags, &message.sender, "PRIVMSG", room, &message.body);
        return Followup::None;
    };
    let (actor, subject) = (message.sender.as_ref(), event.subject.as_ref());
    let mine = subject == me;
    let key = room.to_ascii_lowercase();
    match event.kind {
        EventKind::Join if mine => {
            if !c.channels.contains_key(&key) {
                return Followup::Joined(room.clone());
            }
        }
        EventKind::Join => c.relay(&tags, &mask(subject), "JOIN", &[room], None),
        // A guest's new nick, in a room it is in (live only).
        EventKind::Leave if message.id == 0 && !message.body.is_empty() => {
            c.relay(&tags, &mask(subject), "NICK", &[], Some(&message.body));
        }
        EventKind::Leave => {
            if mine && c.channels.remove(&key).is_none() {
                return Followup::None;
            }
            c.relay(&tags, &mask(subject), "PART", &[room], None);
        }
        EventKind::Kick => {
            if mine && c.channels.remove(&key).is_none() {
                return Followup::None;
            }
            let said = format!("{actor} removed {subject}");
            let reason = message
                .body
                .strip_prefix(&said)
                .and_then(|r| r.strip_prefix(": "))
                .unwrap_or(actor);
            c.relay(&tags, &mask(actor), "KICK", &[room, subject], Some(reason));
        }
        EventKind::Topic => {
            let said = format!("{actor} set the topic: ");
            let topic = message.body.strip_prefix(&said).unwrap_or("");
            c.relay(&tags, &mask(actor), "TOPIC", &[room], Some(topic));
        }
        EventKind::Mode => {
            let said = format!("{actor} set ");
            let change = message.body.strip_prefix(&said).unwrap_or("");
            let params: Vec<&str> = std::iter::once(room.as_ref())
                .chain(change.split(' ').filter(|p| !p.is_empty()))
                .collect();
            c.relay(&tags, &mask(actor), "MODE", &params, None);
        }
        EventKind::Line => {}
    }
    Followup::None
}

/// A live line (a local channel's, a guest's, a TAGMSG), written as it was made, after
/// `tags`. Its body is `@<client tags> <line>`: the client tags go to clients with
/// message-tags only, and so does a TAGMSG.
fn line(c: &mut Client, message: &Message, mut tags: String) {
    let (client_tags, line) = match message.body.strip_prefix('@') {
        Some(tagged) => tagged.split_once(' ').unwrap_or((tagged, "")),
        None => ("", message.body.as_str()),
    };
    let tagging = c.caps.has(MESSAGE_TAGS);
    if super::read_marker::unwanted(c, line) || (!tagging && line.starts_with("TAGMSG ")) {
        return;
    }
    if tagging && !client_tags.is_empty() {
        if !tags.is_empty() {
            tags.push(';');
        }
        tags.push_str(client_tags);
    }
    // From "": the server's own line (a read mark for another session).
    let source = match message.sender.as_ref() {
        "" => c.settings.server_name.clone(),
        sender => mask(sender),
    };
    c.relay(&tags, &source, line, &[], None);
}

/// A message the client itself sent, as echo-message returns it.
pub fn echo(c: &mut Client, message: &Message, target: &str, command: &str) {
    let tags = tags_for(c, message);
    let me = c.nick.clone();
    say(c, &tags, &me, command, target, &message.body);
}

/// A message replayed from history, as it was first sent, in `batch` if any.
pub fn replay(c: &mut Client, message: &Message, batch: Option<&str>) {
    let mut tags = batch.map(|b| format!("batch={b}")).unwrap_or_default();
    let own = tags_for(c, message);
    if !own.is_empty() {
        if !tags.is_empty() {
            tags.push(';');
        }
        tags.push_str(&own);
    }
    if message.event.as_ref().is_some_and(|e| e.kind == EventKind::Line) {
        // A live line kept in memory (a local channel's, a guest's conversation).
        return line(c, message, tags);
    }
    say(
        c,
        &tags,
        &message.sender,
        "PRIVMSG",
        &message.recipient,
        &message.body,
    );
}

/// `PRIVMSG`s (or `NOTICE`s) carrying `body`, split to fit lines.
fn say(c: &mut Client, tags: &str, from: &str, command: &str, target: &str, body: &str) {
    let source = mask(from);
    let (action, text) = match body.strip_prefix(ME) {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    // `:source COMMAND target :` and the CR LF, and the CTCP wrapping of an action.
    let overhead = 1 + source.len() + 1 + command.len() + 1 + target.len() + 2 + 2;
    let room = MAX_LINE - overhead - if action { 9 } else { 0 };
    for piece in split_text(text, room) {
        if action {
            let ctcp = format!("\u{1}ACTION {piece}\u{1}");
            c.relay(tags, &source, command, &[target], Some(&ctcp));
        } else {
            c.relay(tags, &source, command, &[target], Some(piece));
        }
    }
}

/// The tags a message carries to this client.
fn tags_for(c: &Client, message: &Message) -> String {
    let mut tags = String::new();
    let caps = c.caps;
    // A live message (id 0) has no id; its sender may be a guest, which has no account.
    let live = message.id <= 0;
    let guest = live
        && c.settings
            .guests
            .as_ref()
            .is_some_and(|g| g.is_guest(&message.sender));
    let said = message.event.as_ref().is_none_or(|e| e.kind == EventKind::Line);
    let account = (caps.has(ACCOUNT_TAG) && said && !guest).then_some(message.sender.as_ref());
    wire::tags(
        &mut tags,
        caps.time().then_some(message.created_at_us),
        (caps.has(MESSAGE_TAGS) && message.id != 0).then_some(message.id),
        account,
    );
    tags
}

/// What an IRC client typed, as chatd text: CTCP ACTION becomes `/me ...`, and mIRC
/// formatting codes (bold, colours, italics, underline, reset) are removed. Another CTCP
/// (VERSION, PING...) is refused: it asks the other client for an automatic reply, which a
/// stored message cannot give.
pub fn from_irc(text: &str) -> Result<String, String> {
    let text = match text.strip_prefix('\u{1}') {
        Some(ctcp) => {
            let ctcp = ctcp.strip_suffix('\u{1}').unwrap_or(ctcp);
            let (verb, rest) = ctcp.split_once(' ').unwrap_or((ctcp, ""));
            if !verb.eq_ignore_ascii_case("ACTION") {
                return Err(format!(
                    "CTCP {verb} is not carried: chatd stores messages, and carries only ACTION (/me)"
                ));
            }
            let mut out = String::from(ME);
            out.push_str(rest);
            return Ok(strip_formatting(&out));
        }
        None => text,
    };
    Ok(strip_formatting(text))
}

/// Removes mIRC formatting: ^B ^] ^_ ^^ ^O ^V ^Q, and ^C with its colour numbers.
fn strip_formatting(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\u{2}' | '\u{1d}' | '\u{1f}' | '\u{1e}' | '\u{f}' | '\u{16}' | '\u{11}' => {}
            '\u{3}' => {
                // ^C[fg[,bg]]: up to two digits each.
                for _ in 0..2 {
                    if chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                }
                if chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        for _ in 0..2 {
                            if chars.peek().is_some_and(char::is_ascii_digit) {
                                chars.next();
                            }
                        }
                    }
                }
            }
            '\u{4}' => {
                // ^D followed by a hex colour.
                for _ in 0..6 {
                    if chars.peek().is_some_and(char::is_ascii_hexdigit) {
                        chars.next();
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The names of a room's members as NAMES lists them: `~` for its owner, `@` for ops (both,
/// `~@`, with multi-prefix).
pub fn prefixed(name: &str, role: crate::store::Role, multi: bool) -> String {
    use crate::store::Role;
    let mut out = String::with_capacity(name.len() + 2);
    match role {
        Role::Owner if multi => out.push_str("~@"),
        Role::Owner => out.push('~'),
        Role::Op => out.push('@'),
        Role::Member => {}
    }
    let _ = write!(out, "{name}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_formatting_become_plain_text() {
        assert_eq!(from_irc("\u{1}ACTION waves\u{1}").unwrap(), "/me waves");
        assert_eq!(
            from_irc("\u{2}bold\u{2} \u{3}4,12red\u{3} \u{1d}it\u{f}").unwrap(),
            "bold red it"
        );
        assert_eq!(from_irc("\u{3}12,x").unwrap(), ",x");
        assert!(from_irc("\u{1}VERSION\u{1}").unwrap_err().contains("VERSION"));
        assert_eq!(from_irc("plain: text").unwrap(), "plain: text");
    }

    #[test]
    fn owners_and_ops_carry_their_prefixes() {
        use crate::store::Role;
        assert_eq!(prefixed("ann", Role::Owner, false), "~ann");
        assert_eq!(prefixed("ann", Role::Owner, true), "~@ann");
        assert_eq!(prefixed("bob", Role::Op, true), "@bob");
        assert_eq!(prefixed("cy", Role::Member, true), "cy");
    }
}
