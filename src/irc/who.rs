//! WHO: the users of a channel, a nick, or the users whose nick matches a mask, as RFC 2812
//! §3.6.1 gives them (`352`), or with the fields a WHOX request names (`354`,
//! <https://ircv3.net/specs/extensions/whox>): `WHO #lab %tcnfa,42`.

use super::client::Client;
use super::commands::{ident_of, view_of};
use super::local::glob_matches;
use super::numeric::*;
use super::render::prefixed;
use super::wire::Msg;
use super::{caps, local_commands, HOST};

/// Most users one `WHO <mask>` lists.
const WHO_MASK_MOST: usize = 200;

/// WHOX's fields, in the order a `354` carries them whatever the order asked.
const WHOX_ORDER: &str = "tcuihsnfdlaor";

/// How a WHO is answered: `352` lines, or `354` lines with the fields asked for (and the
/// client's token with `t`).
pub struct Reply {
    whox: Option<(String, String)>,
}

impl Reply {
    fn of(m: &Msg<'_>) -> Reply {
        let whox = m.params.get(1).and_then(|p| p.strip_prefix('%')).map(|rest| {
            let (fields, token) = rest.split_once(',').unwrap_or((rest, ""));
            (fields.to_string(), token.chars().take(3).collect())
        });
        Reply { whox }
    }
}

pub async fn who(c: &mut Client, m: &Msg<'_>) {
    let mask_asked = m.arg(0);
    let how = Reply::of(m);
    if mask_asked.starts_with('#') {
        if local_commands::who(c, &how, mask_asked) {
        } else if let Ok(view) = view_of(c, mask_asked).await {
            let multi = c.caps.has(caps::MULTI_PREFIX);
            for member in &view.members {
                let here = if member.online { "H" } else { "G" };
                let oper = if is_oper(c, &member.name) { "*" } else { "" };
                let flags = format!("{here}{oper}{}", prefixed("", member.role, multi));
                line(c, &how, &view.info.name, &member.name, &flags);
            }
            let guests = c.settings.guests.as_ref().map(|g| g.in_channel(&view.info.name));
            for nick in guests.unwrap_or_default() {
                line(c, &how, &view.info.name, &nick, "H");
            }
        }
    } else if mask_asked.contains(['*', '?']) {
        // A mask: the users online (guests here, then accounts anywhere) whose nick it matches.
        let mut nicks: Vec<String> = c
            .settings
            .guests
            .as_ref()
            .map(|g| g.nicks().iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        if let Ok(page) = c.chat.who("").await {
            nicks.extend(page.users.iter().map(|u| u.to_string()));
        }
        // Invisible users (+i) only to who shares a channel with them.
        let matching = nicks
            .into_iter()
            .filter(|n| glob_matches(mask_asked, n))
            .filter(|n| !invisible_to(c, n));
        for nick in matching.take(WHO_MASK_MOST).collect::<Vec<_>>() {
            user(c, &how, &nick, true);
        }
    } else if let Some((nick, _)) = c.settings.guests.as_ref().and_then(|g| g.find(mask_asked)) {
        user(c, &how, &nick, true);
    } else if !mask_asked.is_empty() && c.chat.user_exists(mask_asked).await.unwrap_or(false) {
        let online = c.chat.online_among(&[mask_asked]).await.unwrap_or_default();
        user(c, &how, mask_asked, online.contains(mask_asked));
    }
    let shown = if mask_asked.is_empty() { "*" } else { mask_asked };
    c.numeric(RPL_ENDOFWHO, &[shown], "End of WHO list");
}

/// One line for `nick` outside any channel: here (`H`) or gone (`G`), and `*` for an operator.
fn user(c: &mut Client, how: &Reply, nick: &str, online: bool) {
    let here = if online && c.settings.away.of(nick).is_none() {
        "H"
    } else {
        "G"
    };
    let oper = if is_oper(c, nick) { "*" } else { "" };
    line(c, how, "*", nick, &format!("{here}{oper}"));
}

/// Whether `nick`, connected here, is an IRC operator.
pub fn is_oper(c: &Client, nick: &str) -> bool {
    c.settings
        .idents
        .of(nick)
        .is_some_and(|i| i.nick == nick && i.handle.is_oper())
}

/// Whether `nick` is invisible (+i) and shares no channel of this node with this client: a
/// local channel, or a room it follows as a guest.
fn invisible_to(c: &Client, nick: &str) -> bool {
    let Some(ident) = c.settings.idents.of(nick).filter(|i| i.handle.is_invisible()) else {
        return false;
    };
    if nick == c.nick {
        return false;
    }
    let theirs = ident
        .handle
        .feed
        .lock()
        .ok()
        .and_then(|f| f.as_ref().map(|f| f.id));
    let local = theirs.map(|id| c.settings.local.of(id)).unwrap_or_default();
    let guests = c.settings.guests.as_ref();
    !c.channels.values().any(|mine| {
        local.iter().any(|(name, _)| name == mine)
            || guests.is_some_and(|g| g.in_channel(mine).iter().any(|n| &**n == nick))
    })
}

/// The one place a WHO line is written:
/// `352 <me> <channel> <user> <host> <server> <nick> <flags> :0 <real name>`, or the `354`
/// WHOX asked for. Addresses are not shown (`255.255.255.255`), hops are 0, idle time 0,
/// and the account is the nick for an account and `0` for a guest.
pub fn line(c: &mut Client, how: &Reply, channel: &str, nick: &str, flags: &str) {
    let server = c.settings.server_name.clone();
    let (user, real) = ident_of(c, nick);
    let Some((fields, token)) = &how.whox else {
        let real = format!("0 {real}");
        return c.numeric(RPL_WHOREPLY, &[channel, &user, HOST, &server, nick, flags], &real);
    };
    let guest = c.settings.guests.as_ref().is_some_and(|g| g.is_guest(nick));
    let account = if guest { "0" } else { nick };
    let mut params: Vec<&str> = Vec::new();
    for field in WHOX_ORDER.chars().filter(|f| fields.contains(*f)) {
        params.push(match field {
            't' => token,
            'c' => channel,
            'u' => &user,
            'i' => "255.255.255.255",
            'h' => HOST,
            's' => &server,
            'n' => nick,
            'f' => flags,
            'd' | 'l' => "0",
            'a' => account,
            'o' => "n/a",
            _ => &real,
        });
    }
    if params.is_empty() {
        return;
    }
    c.numeric_params(RPL_WHOSPCRPL, &params);
}
