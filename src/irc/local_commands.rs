//! The commands on local channels (see [`super::local`]): JOIN, PART, PRIVMSG and NOTICE,
//! TOPIC, MODE, KICK, INVITE, NAMES and WHO, as RFC 2812 and the Modern documents give them.
//! What one member does, the others are sent as a live line (never stored); the one who did
//! it is written its line at once, before the replies that follow it.

use std::sync::Arc;

use super::caps;
use super::client::Client;
use super::local::{Change, Channel, Refusal, MAX_BANS, MAX_KEY};
use super::numeric::*;
use super::wire::Msg;
use crate::hub::LiveFeed;

/// This client's session, as a local channel holds it.
pub fn my_feed(c: &Client) -> Option<LiveFeed> {
    let feed = c.feed()?;
    let user = c
        .account()
        .map_or_else(|| Arc::from(""), |a| Arc::from(a.as_str()));
    Some(LiveFeed { user, id: feed.id() })
}

/// Sends `line` (what follows the source: `PART #lab :bye`) from this client to `to`, but
/// itself; `removes` is a nick the line takes out of the channel.
fn tell(
    c: &Client,
    channel: &Arc<str>,
    line: String,
    removes: Option<&str>,
    to: &[LiveFeed],
) -> Arc<crate::store::Message> {
    let removes = removes.unwrap_or("");
    c.chat
        .push_line(&c.nick, channel, line, removes, to, c.origin())
        .0
}

/// The client-only tags (`+name=value`) of a line, as sent, to relay: `;`-separated.
pub fn client_tags(tags: Option<&str>) -> String {
    let tags = tags.unwrap_or("").split(';').filter(|t| t.starts_with('+'));
    tags.collect::<Vec<_>>().join(";")
}

/// A line to relay, with the client-only tags it carries first: `@+typing=active TAGMSG #lab`.
pub fn tagged(client_tags: &str, line: String) -> String {
    if client_tags.is_empty() {
        line
    } else {
        format!("@{client_tags} {line}")
    }
}

fn refuse(c: &mut Client, channel: &str, target: &str, refusal: Refusal) {
    let (code, params, text): (&str, Vec<&str>, &str) = match refusal {
        Refusal::NoSuchChannel => (ERR_NOSUCHCHANNEL, vec![channel], "No such channel"),
        Refusal::NotOn => (ERR_NOTONCHANNEL, vec![channel], "You're not on that channel"),
        Refusal::NotOp => (ERR_CHANOPRIVSNEEDED, vec![channel], "You're not channel operator"),
        Refusal::TargetNotOn => (
            ERR_USERNOTINCHANNEL,
            vec![target, channel],
            "They aren't on that channel",
        ),
        Refusal::TargetOn => (ERR_USERONCHANNEL, vec![target, channel], "is already on channel"),
        Refusal::InviteOnly => (
            ERR_INVITEONLYCHAN,
            vec![channel],
            "Cannot join channel (+i): an op must INVITE you",
        ),
        Refusal::BadKey => (
            ERR_BADCHANNELKEY,
            vec![channel],
            "Cannot join channel (+k): wrong or missing key",
        ),
        Refusal::Full => (
            ERR_CHANNELISFULL,
            vec![channel],
            "Cannot join channel (+l): it is full",
        ),
        Refusal::Banned => (
            ERR_BANNEDFROMCHAN,
            vec![channel],
            "Cannot join channel (+b): you are banned",
        ),
        Refusal::CannotSend => (ERR_CANNOTSENDTOCHAN, vec![channel], "Cannot send to channel"),
        Refusal::BanListFull => (ERR_BANLISTFULL, vec![channel, "b"], "Channel ban list is full"),
    };
    c.numeric(code, &params, text);
}

/// JOINs a local channel, creating it if `create`: false if it does not exist and was not
/// created (the caller goes on to the rooms).
pub fn join(c: &mut Client, channel: &str, key: Option<&str>, create: bool) -> bool {
    let Some(feed) = my_feed(c) else {
        return false;
    };
    let most = c.settings.max_rooms as usize;
    if c.channels.len() >= most && (create || c.settings.local.exists(channel)) {
        let text = format!("You have joined too many channels: {most} at most");
        c.numeric(ERR_TOOMANYCHANNELS, &[channel], &text);
        return true;
    }
    let me = c.mask();
    let joined = c.settings.local.join(channel, &c.nick, &me, feed, key, create);
    let joined = match joined {
        Ok(joined) => joined,
        Err(Refusal::NoSuchChannel) => return false,
        // Already in it: nothing to say (RFC 2812 §3.2.1).
        Err(Refusal::TargetOn) => return true,
        Err(refusal) => {
            refuse(c, channel, "", refusal);
            return true;
        }
    };
    let name = joined.name.clone();
    c.channels.insert(name.to_ascii_lowercase(), name.clone());
    tell(c, &name, format!("JOIN {name}"), None, &joined.feeds());
    c.relay("", &me, "JOIN", &[&name], None);
    if let Some(topic) = &joined.topic {
        c.numeric(RPL_TOPIC, &[&name], &topic.text);
        c.numeric_params(RPL_TOPICWHOTIME, &[&name, &topic.by, &topic.at.to_string()]);
    }
    // read-marker: the mark after the JOIN, before the end of the names.
    if c.caps.has(caps::READ_MARKER) {
        super::read_marker::send_memory_mark(c, &name);
    }
    names(c, &joined);
    true
}

/// PARTs a local channel: false if `channel` is none this client is in.
pub fn part(c: &mut Client, channel: &str, reason: Option<&str>) -> bool {
    let Some(id) = c.feed().map(|f| f.id()) else {
        return false;
    };
    let Ok((name, told)) = c.settings.local.part(channel, id) else {
        return false;
    };
    c.channels.remove(&name.to_ascii_lowercase());
    let line = match reason.filter(|r| !r.is_empty()) {
        Some(reason) => format!("PART {name} :{reason}"),
        None => format!("PART {name}"),
    };
    tell(c, &name, line, None, &told);
    let me = c.mask();
    c.relay("", &me, "PART", &[&name], reason.filter(|r| !r.is_empty()));
    true
}

/// Leaves every local channel with a PART (a guest logging in to an account).
pub fn part_all(c: &mut Client, reason: &str) {
    let Some(id) = c.feed().map(|f| f.id()) else {
        return;
    };
    for (name, _) in c.settings.local.of(id) {
        part(c, &name, Some(reason));
    }
}

/// The connection ended: the members of its local channels see it QUIT, each once.
pub fn quit(c: &mut Client, reason: &str) {
    let Some(id) = c.feed().map(|f| f.id()) else {
        return;
    };
    for (name, _) in c.settings.local.of(id) {
        c.channels.remove(&name.to_ascii_lowercase());
    }
    let told = c.settings.local.quit(id);
    if !told.is_empty() {
        let any: Arc<str> = Arc::from("*");
        tell(c, &any, format!("QUIT :{reason}"), None, &told);
    }
}

/// This client is now `new` (already set): the members of its local channels see the NICK.
pub fn renamed(c: &Client, old: &str, new: &str) {
    let Some(id) = c.feed().map(|f| f.id()) else {
        return;
    };
    let told = c.settings.local.renamed(id, new);
    if !told.is_empty() {
        let any: Arc<str> = Arc::from("*");
        let line = format!("NICK :{new}");
        c.chat.push_line(old, &any, line, "", &told, c.origin());
    }
}

/// PRIVMSG or NOTICE to a local channel: false if `channel` is none (the caller goes on to
/// the rooms). `text` is as the client sent it: IRC to IRC, nothing is rewritten.
/// `@#lab` and `+#lab` (STATUSMSG) reach only its ops, or ops and voices.
pub fn say(c: &mut Client, command: &str, target: &str, text: Option<&str>, tags: &str) -> bool {
    let Some(id) = c.feed().map(|f| f.id()) else {
        return false;
    };
    let (status, channel) = match target.strip_prefix(['@', '+']) {
        Some(channel) => (target.chars().next(), channel),
        None => (None, target),
    };
    let me = c.mask();
    let ctcp = text.is_some_and(|t| t.starts_with('\u{1}') && !t.starts_with("\u{1}ACTION"));
    let (name, others) = match c.settings.local.speak(channel, id, &me, status, ctcp) {
        Ok(spoken) => spoken,
        Err(Refusal::NoSuchChannel) => return false,
        Err(refusal) => {
            if command == "PRIVMSG" {
                refuse(c, channel, "", refusal);
            }
            return true;
        }
    };
    if let Err(e) = c.chat.spend_live(&c.nick, c.is_guest(), text.map_or(1, str::len)) {
        if command == "PRIVMSG" {
            c.failed(command, &e);
        }
        return true;
    }
    let shown = match status {
        Some(status) => format!("{status}{name}"),
        None => name.to_string(),
    };
    let line = match text {
        Some(text) => {
            // The line as the others read it must fit 512 bytes: what does not is cut
            // (Modern: "the server SHOULD truncate"), on a character boundary.
            let overhead = 1 + me.len() + 1 + command.len() + 1 + shown.len() + 2 + 2;
            let text = cut(text, super::wire::MAX_LINE.saturating_sub(overhead));
            format!("{command} {shown} :{text}")
        }
        None => format!("{command} {shown}"),
    };
    let message = tell(c, &name, tagged(tags, line), None, &others);
    if text.is_some() && status.is_none() {
        c.settings.local.keep(&name, message.clone());
    }
    if c.caps.has(caps::ECHO_MESSAGE) {
        super::render::push(c, &message);
    }
    true
}

/// `text` cut to at most `most` bytes, on a character boundary.
pub fn cut(text: &str, most: usize) -> &str {
    if text.len() <= most {
        return text;
    }
    let mut end = most;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// TOPIC on a local channel: false if there is none of that name.
pub fn topic(c: &mut Client, m: &Msg<'_>) -> bool {
    let channel = m.arg(0);
    let Some(now) = c.settings.local.get(channel) else {
        return false;
    };
    let id = c.feed().map_or(0, |f| f.id());
    if m.params.len() < 2 {
        if now.modes.secret && now.member(id).is_none() {
            refuse(c, channel, "", Refusal::NotOn);
            return true;
        }
        match &now.topic {
            Some(topic) => {
                c.numeric(RPL_TOPIC, &[&now.name], &topic.text);
                c.numeric_params(RPL_TOPICWHOTIME, &[&now.name, &topic.by, &topic.at.to_string()]);
            }
            None => c.numeric(RPL_NOTOPIC, &[&now.name], "No topic is set"),
        }
        return true;
    }
    let text = cut(m.arg(1), crate::chat::rooms::MAX_TOPIC);
    let nick = c.nick.clone();
    match c.settings.local.set_topic(channel, id, text, &nick) {
        Ok((name, told)) => {
            tell(c, &name, format!("TOPIC {name} :{text}"), None, &told);
            let me = c.mask();
            c.relay("", &me, "TOPIC", &[&name], Some(text));
        }
        Err(refusal) => refuse(c, channel, "", refusal),
    }
    true
}

/// KICK from a local channel: false if there is none of that name.
pub async fn kick(c: &mut Client, channel: &str, target: &str, reason: Option<&str>) -> bool {
    if !c.settings.local.exists(channel) {
        return false;
    }
    let id = c.feed().map_or(0, |f| f.id());
    match c.settings.local.kick(channel, id, target) {
        Ok((kicked, (name, told))) => {
            let reason = reason.unwrap_or(&c.nick).to_string();
            let reason = cut(&reason, crate::chat::rooms::MAX_REASON);
            let line = format!("KICK {name} {kicked} :{reason}");
            tell(c, &name, line, Some(&kicked), &told);
            let me = c.mask();
            c.relay("", &me, "KICK", &[&name, &kicked], Some(reason));
            if kicked.as_ref() == c.nick {
                c.channels.remove(&name.to_ascii_lowercase());
            }
        }
        Err(Refusal::TargetNotOn) if !known(c, target).await => {
            c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel");
        }
        Err(refusal) => refuse(c, channel, target, refusal),
    }
    true
}

/// INVITE to a local channel: false if there is none of that name. The invitee, a guest or
/// an account's IRC session here, is sent the INVITE.
pub fn invite(c: &mut Client, target: &str, channel: &str, to: Option<LiveFeed>) -> bool {
    if !c.settings.local.exists(channel) {
        return false;
    }
    let Some(to) = to else {
        c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel");
        return true;
    };
    let id = c.feed().map_or(0, |f| f.id());
    match c.settings.local.invite(channel, id, target) {
        Ok(name) => {
            c.numeric_params(RPL_INVITING, &[target, &name]);
            tell(c, &name, format!("INVITE {target} {name}"), None, &[to]);
        }
        Err(refusal) => refuse(c, channel, target, refusal),
    }
    true
}

/// NAMES of a local channel: false if there is none of that name. A `+s` channel shows its
/// names to its members only.
pub fn names_of(c: &mut Client, channel: &str) -> bool {
    let Some(now) = c.settings.local.get(channel) else {
        return false;
    };
    let id = c.feed().map_or(0, |f| f.id());
    if now.modes.secret && now.member(id).is_none() {
        c.numeric(RPL_ENDOFNAMES, &[channel], "End of /NAMES list");
    } else {
        names(c, &now);
    }
    true
}

/// 353 lines of a local channel's members, as many to a line as fit, then 366.
fn names(c: &mut Client, channel: &Channel) {
    let multi = c.caps.has(caps::MULTI_PREFIX);
    // RFC 2812 §3.2.5: `@` a secret channel, `=` a public one.
    let symbol = if channel.modes.secret { "@" } else { "=" };
    let names = channel.members.iter().map(|m| (&*m.nick, m.prefix(multi)));
    super::commands::name_reply(c, symbol, &channel.name, names);
}

/// WHO of a local channel (352 each, without 315): false if there is none of that name.
pub fn who(c: &mut Client, how: &super::who::Reply, channel: &str) -> bool {
    let Some(now) = c.settings.local.get(channel) else {
        return false;
    };
    let id = c.feed().map_or(0, |f| f.id());
    if now.modes.secret && now.member(id).is_none() {
        return true;
    }
    let multi = c.caps.has(caps::MULTI_PREFIX);
    for member in &now.members {
        let away = c.settings.away.of(&member.nick).is_some();
        let oper = if super::who::is_oper(c, &member.nick) {
            "*"
        } else {
            ""
        };
        let flags = format!("{}{oper}{}", if away { "G" } else { "H" }, member.prefix(multi));
        super::who::line(c, how, &now.name, &member.nick, &flags);
    }
    true
}

/// MODE on a local channel: false if there is none of that name.
pub async fn mode(c: &mut Client, m: &Msg<'_>) -> bool {
    let channel = m.arg(0);
    let Some(now) = c.settings.local.get(channel) else {
        return false;
    };
    let id = c.feed().map_or(0, |f| f.id());
    let member = now.member(id).is_some();
    if m.params.len() < 2 {
        let shown = now.modes.shown(member);
        let mut params: Vec<&str> = vec![&now.name];
        params.extend(shown.iter().map(String::as_str));
        c.numeric_params(RPL_CHANNELMODEIS, &params);
        c.numeric_params(RPL_CREATIONTIME, &[&now.name, &now.created.to_string()]);
        return true;
    }
    let (changes, lists) = parse_changes(c, &now, m);
    for letter in lists {
        // `MODE #lab b` (or `+b` without a mask): the ban list, for anyone; the exceptions
        // to its members.
        let (entry, end, what) = match letter {
            'e' => (
                RPL_EXCEPTLIST,
                RPL_ENDOFEXCEPTLIST,
                "End of channel exception list",
            ),
            'I' => (
                RPL_INVEXLIST,
                RPL_ENDOFINVEXLIST,
                "End of channel invite exception list",
            ),
            _ => (RPL_BANLIST, RPL_ENDOFBANLIST, "End of channel ban list"),
        };
        if letter == 'b' || member {
            for ban in now.list(letter) {
                c.numeric_params(entry, &[&now.name, &ban.mask, &ban.by, &ban.at.to_string()]);
            }
        }
        c.numeric(end, &[&now.name], what);
    }
    if changes.is_empty() {
        return true;
    }
    let nick = c.nick.clone();
    let (name, done, told) = match c.settings.local.change_modes(channel, id, &nick, &changes) {
        Ok(done) => done,
        Err(refusal) => {
            refuse(c, channel, "", refusal);
            return true;
        }
    };
    let mut shown = String::new();
    let mut args: Vec<String> = Vec::new();
    let mut sign = None;
    for (change, result) in changes.iter().zip(done) {
        match result {
            Ok(Some(applied)) => {
                if sign != Some(applied.on) {
                    shown.push(if applied.on { '+' } else { '-' });
                    sign = Some(applied.on);
                }
                shown.push(applied.letter);
                args.extend(applied.arg);
            }
            Ok(None) => {}
            Err(Refusal::TargetNotOn) => {
                let target = change.arg.as_deref().unwrap_or("*");
                if known(c, target).await {
                    refuse(c, &name, target, Refusal::TargetNotOn);
                } else {
                    c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel");
                }
            }
            Err(refusal) => refuse(c, &name, "", refusal),
        }
    }
    if shown.is_empty() {
        return true;
    }
    let mut line = format!("MODE {name} {shown}");
    for arg in &args {
        line.push(' ');
        line.push_str(arg);
    }
    tell(c, &name, line, None, &told);
    let me = c.mask();
    let mut params: Vec<&str> = vec![&name, &shown];
    params.extend(args.iter().map(String::as_str));
    c.relay("", &me, "MODE", &params, None);
    true
}

/// Reads `+mt-i+k key ...` into changes, each with the parameter it takes; refuses what is
/// malformed (472, 461, 696) on the way. Also the lists asked for (`+b` without a mask).
fn parse_changes(c: &mut Client, now: &Channel, m: &Msg<'_>) -> (Vec<Change>, Vec<char>) {
    let mut args = m.params.iter().skip(2).copied();
    let (mut changes, mut lists) = (Vec::new(), Vec::new());
    let mut on = true;
    for letter in m.arg(1).chars() {
        match letter {
            '+' => on = true,
            '-' => on = false,
            'C' | 'i' | 'm' | 'n' | 's' | 't' => changes.push(Change {
                on,
                letter,
                arg: None,
            }),
            'b' | 'e' | 'I' => match args.next() {
                Some(mask) if !mask.is_empty() => changes.push(Change {
                    on,
                    letter,
                    arg: Some(normal_mask(mask)),
                }),
                _ => lists.push(letter),
            },
            'k' if on => {
                let key = args.next().unwrap_or("");
                let valid = !key.is_empty()
                    && key.len() <= MAX_KEY
                    && key.bytes().all(|b| b > b' ' && b != b',' && b != 0x7f);
                if !valid {
                    let why = format!("Invalid key: 1 to {MAX_KEY} characters, without spaces or commas");
                    c.numeric(ERR_INVALIDMODEPARAM, &[&now.name, "k", "*"], &why);
                    continue;
                }
                changes.push(Change {
                    on,
                    letter,
                    arg: Some(key.to_string()),
                });
            }
            'k' => {
                // `-k` takes a parameter (the key), which is not checked.
                args.next();
                changes.push(Change {
                    on,
                    letter,
                    arg: None,
                });
            }
            'l' if on => {
                let given = args.next().unwrap_or("");
                match given.parse::<usize>() {
                    Ok(limit) if limit > 0 => changes.push(Change {
                        on,
                        letter,
                        arg: Some(limit.to_string()),
                    }),
                    _ => {
                        let shown = if given.is_empty() { "*" } else { given };
                        c.numeric(
                            ERR_INVALIDMODEPARAM,
                            &[&now.name, "l", shown],
                            "Invalid limit: a number of members above 0",
                        );
                    }
                }
            }
            'l' => changes.push(Change {
                on,
                letter,
                arg: None,
            }),
            'o' | 'v' => match args.next() {
                Some(nick) => changes.push(Change {
                    on,
                    letter,
                    arg: Some(nick.to_string()),
                }),
                None => c.numeric(
                    ERR_NEEDMOREPARAMS,
                    &["MODE"],
                    "Not enough parameters: +o and +v take a nick",
                ),
            },
            other => {
                let why = match other {
                    'q' => "is unknown mode char to me: a channel's first member is its operator (@)",
                    _ => "is unknown mode char to me",
                };
                c.numeric(ERR_UNKNOWNMODE, &[&other.to_string()], why);
            }
        }
    }
    if changes
        .iter()
        .filter(|c| matches!(c.letter, 'b' | 'e' | 'I'))
        .count()
        > MAX_BANS
    {
        changes.retain(|c| !matches!(c.letter, 'b' | 'e' | 'I'));
    }
    (changes, lists)
}

/// A ban mask as IRC servers keep it: `bob` is `bob!*@*`, `bob@host` is `bob!*@host`.
fn normal_mask(mask: &str) -> String {
    match (mask.contains('!'), mask.contains('@')) {
        (true, true) => mask.to_string(),
        (true, false) => format!("{mask}@*"),
        (false, true) => format!("*!{mask}"),
        (false, false) => format!("{mask}!*@*"),
    }
}

/// The local channels `id` is in, for WHOIS 319: `@#lab +#talk`.
pub fn whois_channels(c: &Client, id: u64) -> String {
    let mut names: Vec<String> = c
        .settings
        .local
        .of(id)
        .into_iter()
        .map(|(name, prefix)| format!("{prefix}{name}"))
        .collect();
    names.sort();
    names.join(" ")
}

/// What LIST shows of the local channels: name, members, topic (`+s` ones only to their
/// members).
pub fn list(c: &Client) -> Vec<(Arc<str>, usize, String)> {
    let id = c.feed().map_or(0, |f| f.id());
    c.settings
        .local
        .list()
        .into_iter()
        .filter(|(name, _, _, secret)| !secret || c.settings.local.is_member(name, id))
        .map(|(name, count, topic, _)| (name, count, topic))
        .collect()
}

/// Whether `nick` is anyone's: a guest's here, or an account's.
async fn known(c: &Client, nick: &str) -> bool {
    c.settings.guests.as_ref().is_some_and(|g| g.find(nick).is_some()) || c.is_reserved(nick).await
}

/// What CHATHISTORY reads from memory for `target`: a local channel's last lines (`Err` for a
/// non-member), or a conversation with a guest; `None` for what the store keeps.
pub fn kept_lines(c: &Client, target: &str) -> Option<Result<Vec<Arc<crate::store::Message>>, ()>> {
    if target.starts_with('#') {
        if !c.settings.local.exists(target) {
            return None;
        }
        let id = c.feed().map_or(0, |f| f.id());
        return Some(c.settings.local.kept(target, id).map_err(|_| ()));
    }
    let guest = c
        .settings
        .guests
        .as_ref()
        .is_some_and(|g| g.find(target).is_some());
    (c.is_guest() || guest).then(|| Ok(c.settings.conversations.kept(&c.nick, target)))
}
