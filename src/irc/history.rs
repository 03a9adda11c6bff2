//! `CHATHISTORY` (IRCv3 draft/chathistory, <https://ircv3.net/specs/extensions/chathistory>):
//! a room's history or a direct conversation, read from the same store as `HISTORY` and
//! `/rooms/<name>/messages`, so every door sees the same messages with the same ids and times.
//!
//! Message references are `msgid=<id>` (chatd's ids) and `timestamp=<RFC 3339>`; replies are
//! a `chathistory` batch of the messages as they were first sent, with their `time` and
//! `msgid`. Room events (joins, topic changes) are not replayed: event-playback is not offered.
//!
//! What is live has no stored history, but a local channel keeps its last lines while it
//! exists, and a conversation with a guest while the guest is here (see [`super::local`]):
//! CHATHISTORY reads those from memory, by the same rules (`msgid=l<n>`).

use std::sync::Arc;

use super::caps::BATCH;
use super::client::Client;
use super::render;
use super::wire::Msg;
use crate::chat::Username;
use crate::error::{ChatError, Code};
use crate::store::{EventKind, Message, Page};

/// Most messages one CHATHISTORY reply holds (`CHATHISTORY=` in ISUPPORT).
pub const MAX: u32 = 100;

/// Where a reference points: an id, the time of one, or `*` (now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref {
    Id(i64),
    Time(i64),
    Now,
}

fn parse_ref(text: &str) -> Option<Ref> {
    if text == "*" {
        return Some(Ref::Now);
    }
    if let Some(id) = text.strip_prefix("msgid=") {
        // A live line's id, `l<n>`, is -n.
        if let Some(live) = id.strip_prefix('l') {
            return live.parse().ok().filter(|n: &i64| *n > 0).map(|n| Ref::Id(-n));
        }
        return id.parse().ok().filter(|id: &i64| *id >= 0).map(Ref::Id);
    }
    let time = text.strip_prefix("timestamp=")?;
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| Ref::Time(t.timestamp_micros()))
}

/// `CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN <target> <ref> [<ref>] <limit>`.
pub async fn chathistory(c: &mut Client, m: &Msg<'_>) {
    let sub = m.arg(0).to_ascii_uppercase();
    let mut target = m.arg(1).to_string();
    let needs = if sub == "BETWEEN" { 5 } else { 4 };
    if !matches!(sub.as_str(), "LATEST" | "BEFORE" | "AFTER" | "AROUND" | "BETWEEN") {
        let shown: String = m.arg(0).chars().take(20).collect();
        fail(
            c,
            "UNKNOWN_COMMAND",
            &[&shown],
            "Unknown CHATHISTORY subcommand: LATEST, BEFORE, AFTER, AROUND or BETWEEN",
        );
        return;
    }
    if m.params.len() < needs {
        fail(c, "NEED_MORE_PARAMS", &[&sub], "Not enough parameters");
        return;
    }
    let limit = m.arg(needs - 1).parse::<u32>().ok().filter(|n| *n > 0);
    let refs: Option<Vec<Ref>> = (2..needs - 1).map(|i| parse_ref(m.arg(i))).collect();
    let (Some(limit), Some(refs)) = (limit, refs) else {
        fail(c, "INVALID_PARAMS", &[&sub], "A reference is msgid=<id>, timestamp=<RFC 3339 time> or * (LATEST), and a limit a positive number");
        return;
    };
    let limit = limit.min(MAX);
    let memory = match super::local_commands::kept_lines(c, &target) {
        Some(Ok(lines)) => Some(lines),
        Some(Err(())) => {
            return fail(
                c,
                "INVALID_TARGET",
                &[&sub, &target],
                "Messages could not be retrieved",
            );
        }
        None => None,
    };
    // The batch names the target as the client did; the account is found whatever its case.
    let asked = target.clone();
    if memory.is_none() && !target.starts_with('#') {
        target = super::commands::account_named(c, &target).await;
    }
    match read(c, &sub, &target, &refs, limit, memory.as_deref()).await {
        Ok(messages) => reply(c, &asked, &messages),
        Err(e)
            if matches!(
                e.code,
                Code::NoSuchRoom | Code::NotMember | Code::NoSuchUser | Code::BadArgs
            ) =>
        {
            fail(
                c,
                "INVALID_TARGET",
                &[&sub, &target],
                "Messages could not be retrieved",
            )
        }
        Err(e) => {
            e.log();
            fail(
                c,
                "MESSAGE_ERROR",
                &[&sub, &target],
                &format!("{}: {}", e.code, e.message),
            );
        }
    }
}

/// Where a message stands in its history: its id, or for a live line `n` of its `l<n>`.
fn key(m: &Message) -> i64 {
    m.id.abs()
}

/// The messages asked for, oldest first: from the store, or from `memory` (the lines a
/// local channel or a conversation with a guest keeps, oldest first).
async fn read(
    c: &Client,
    sub: &str,
    target: &str,
    refs: &[Ref],
    limit: u32,
    memory: Option<&[Arc<Message>]>,
) -> Result<Vec<Arc<Message>>, ChatError> {
    let me = c.account().cloned();
    if me.is_none() && memory.is_none() {
        return Err(ChatError::new(Code::NotMember, "a guest has no stored history"));
    }
    // Only read when there is an account (checked above).
    let stored = |me: Option<Username>| me.ok_or_else(|| ChatError::new(Code::NotMember, "no account"));
    // The id a reference stands for: `after` rounds a time to the last message at or before
    // it, otherwise to the last one strictly before it. Times are shown to the millisecond,
    // so a time stands for its whole millisecond: a message shown at `T` is at `T`.
    let id_of = |r: Ref, after: bool| {
        let (chat, me, target) = (c.chat.clone(), me.clone(), target.to_string());
        async move {
            match r {
                // A stored id in memory, or a live one in the store, is no message there.
                Ref::Id(id) if memory.is_some() => Ok::<i64, ChatError>(if id < 0 { -id } else { 0 }),
                Ref::Id(id) => Ok::<i64, ChatError>(id.max(0)),
                Ref::Now => Ok(i64::MAX),
                Ref::Time(micros) => {
                    let millisecond = micros.div_euclid(1000) * 1000;
                    let at = if after { millisecond + 1000 } else { millisecond };
                    let last = match memory {
                        Some(lines) => lines
                            .iter()
                            .filter(|m| m.created_at_us < at)
                            .map(|m| key(m))
                            .max()
                            .unwrap_or(0),
                        None => chat.last_id_before(&stored(me)?, &target, at).await?,
                    };
                    // Before a time: the ids up to and including `last`.
                    Ok(if after { last } else { last + 1 })
                }
            }
        }
    };
    let page = |page: Page| {
        let (chat, me, target) = (c.chat.clone(), me.clone(), target.to_string());
        async move {
            if let Some(lines) = memory {
                return Ok(page_of(lines, page));
            }
            let me = stored(me)?;
            let rows = if target.starts_with('#') {
                chat.room_history(&me, &target, page).await?.1
            } else {
                chat.conversation_page(&me, &target, page).await?
            };
            Ok::<_, ChatError>(rows)
        }
    };
    let rows = match sub {
        "LATEST" => {
            let newest = page(Page::Before(i64::MAX, limit)).await?;
            match refs[0] {
                Ref::Now => newest,
                r => {
                    let after = id_of(r, true).await?;
                    newest.into_iter().filter(|m| key(m) > after).collect()
                }
            }
        }
        "BEFORE" => page(Page::Before(id_of(refs[0], false).await?, limit)).await?,
        "AFTER" => page(Page::After(id_of(refs[0], true).await?, limit)).await?,
        "AROUND" => {
            // The message referred to (or the first at or after the time) in the middle.
            let at = id_of(refs[0], false).await?;
            let before = (limit - 1) / 2;
            let mut rows = if before > 0 {
                page(Page::Before(at, before)).await?
            } else {
                Vec::new()
            };
            rows.extend(page(Page::After(at.saturating_sub(1), limit - before)).await?);
            rows
        }
        _ => {
            let (a, b) = (id_of(refs[0], true).await?, id_of(refs[1], false).await?);
            if a <= b {
                let rows = page(Page::After(a, limit)).await?;
                rows.into_iter().filter(|m| key(m) < b).collect()
            } else {
                // Newest first: the page nearest the first reference.
                let (from, to) = (id_of(refs[0], false).await?, id_of(refs[1], true).await?);
                let rows = page(Page::Before(from, limit)).await?;
                rows.into_iter().filter(|m| key(m) > to).collect()
            }
        }
    };
    // Event-playback is not offered: what members said, not joins and topic changes.
    let said = |m: &Arc<Message>| m.event.as_ref().is_none_or(|e| e.kind == EventKind::Line);
    Ok(rows.into_iter().filter(said).collect())
}

/// A page of lines kept in memory (oldest first), as the store pages its rows.
fn page_of(lines: &[Arc<Message>], page: Page) -> Vec<Arc<Message>> {
    match page {
        Page::After(after, limit) => lines
            .iter()
            .filter(|m| key(m) > after)
            .take(limit as usize)
            .cloned()
            .collect(),
        Page::Before(before, limit) => {
            let older: Vec<_> = lines.iter().filter(|m| key(m) < before).cloned().collect();
            let skip = older.len().saturating_sub(limit as usize);
            older.into_iter().skip(skip).collect()
        }
    }
}

/// The messages in a `chathistory` batch (or bare, for a client without batch).
fn reply(c: &mut Client, target: &str, messages: &[Arc<Message>]) {
    let batched = c.caps.has(BATCH);
    let reference = format!("h{}", messages.first().map_or(0, |m| key(m)));
    if batched {
        let start = format!("+{reference}");
        c.raw("BATCH", &[&start, "chathistory", target], None);
    }
    for message in messages {
        render::replay(c, message, batched.then_some(reference.as_str()));
    }
    if batched {
        let end = format!("-{reference}");
        c.raw("BATCH", &[&end], None);
    }
}

/// A standard reply: `FAIL CHATHISTORY <code> <context...> :<text>`.
fn fail(c: &mut Client, code: &str, context: &[&str], text: &str) {
    let mut middle = vec!["CHATHISTORY", code];
    middle.extend_from_slice(context);
    c.raw("FAIL", &middle, Some(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_ids_times_or_now() {
        assert_eq!(parse_ref("msgid=42"), Some(Ref::Id(42)));
        assert_eq!(parse_ref("*"), Some(Ref::Now));
        assert_eq!(
            parse_ref("timestamp=2026-12-07T10:02:03.120Z"),
            Some(Ref::Time(1_796_637_723_120_000))
        );
        for bad in ["msgid=x", "msgid=-1", "timestamp=yesterday", "42", ""] {
            assert_eq!(parse_ref(bad), None, "{bad}");
        }
    }
}
