//! IRC operators and user modes: `OPER`, `KILL`, `WALLOPS`, `INFO`, and `MODE <nick>`.
//!
//! An operator is an account named by `--irc-oper`: `OPER <account> <password>` checks the
//! account's own password, through the same limits as every login (argon2 fairness,
//! lockouts), so no other secret is kept and a burst of guesses is slowed like any other. A
//! wrong name and a wrong password get the same `464`. Any registered connection may become
//! an operator so (a guest too); it stays one until `MODE <nick> -o` or it leaves.
//!
//! User modes, per connection: `+o` (operator, by OPER only), `+i` (invisible: `WHO <mask>`
//! lists it only to who shares a channel with it), `+w` (receives WALLOPS; operators always
//! do).

use std::sync::atomic::Ordering::Relaxed;

use super::client::Client;
use super::numeric::*;
use super::wire::Msg;
use crate::error::Code;

pub async fn oper(c: &mut Client, m: &Msg<'_>) {
    if m.params.len() < 2 {
        return c.numeric(
            ERR_NEEDMOREPARAMS,
            &["OPER"],
            "Not enough parameters: OPER <account> <password>",
        );
    }
    let (name, password) = (m.arg(0), m.arg(1));
    // The password is checked whether or not the name is an operator's: the same limits,
    // and the same answer, for both.
    match c.check_password(name, password).await {
        Ok(account) if c.settings.opers.iter().any(|o| o == account.as_str()) => {
            c.handle.oper.store(true, Relaxed);
            c.feed_changed();
            tracing::info!(oper = %account, nick = %c.nick, peer = %c.peer, "IRC operator");
            c.numeric(RPL_YOUREOPER, &[], "You are now an IRC operator");
            let (nick, me) = (c.nick.clone(), c.mask());
            c.relay("", &me, "MODE", &[&nick], Some("+o"));
        }
        Ok(_) => c.numeric(ERR_PASSWDMISMATCH, &[], "Password incorrect"),
        Err(e) if matches!(e.code, Code::BadCredentials | Code::NoSuchUser) => {
            c.numeric(ERR_PASSWDMISMATCH, &[], "Password incorrect")
        }
        Err(e) => c.failed("OPER", &e),
    }
}

fn not_oper(c: &mut Client) -> bool {
    if c.handle.is_oper() {
        return false;
    }
    c.numeric(
        ERR_NOPRIVILEGES,
        &[],
        "Permission Denied- You're not an IRC operator",
    );
    true
}

/// `KILL <nick> [<reason>]`: ends the connection on that nick here.
pub fn kill(c: &mut Client, m: &Msg<'_>) {
    if not_oper(c) {
        return;
    }
    let target = m.arg(0);
    let Some(ident) = c.settings.idents.of(target) else {
        return c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel");
    };
    let reason = m
        .params
        .get(1)
        .copied()
        .filter(|r| !r.is_empty())
        .unwrap_or("no reason");
    tracing::info!(oper = %c.nick, killed = %ident.nick, reason, "IRC KILL");
    ident.handle.kill(format!("Killed ({} ({reason}))", c.nick));
}

/// `WALLOPS <text>`: to the operators and the `+w` users here, and back to the sender.
pub fn wallops(c: &mut Client, m: &Msg<'_>) {
    if not_oper(c) {
        return;
    }
    let text = m.arg(0);
    let to = c.settings.idents.wallops_feeds();
    let any: std::sync::Arc<str> = std::sync::Arc::from("*");
    c.chat
        .push_line(&c.nick, &any, format!("WALLOPS :{text}"), "", &to, c.origin());
    let me = c.mask();
    c.relay("", &me, "WALLOPS", &[], Some(text));
}

pub fn info(c: &mut Client) {
    let lines = [
        concat!("chatd ", env!("CARGO_PKG_VERSION")),
        "A chat server for learning protocols: the line protocol (telnet, nc), HTTP and IRC,",
        "one community. Messages between accounts are stored before anyone is told they were",
        "sent; guests and local channels are live only.",
    ];
    for line in lines {
        c.numeric(RPL_INFO, &[], line);
    }
    c.numeric(RPL_ENDOFINFO, &[], "End of INFO list");
}

/// `MODE <nick> [changes]`: one's own user modes.
pub async fn user_mode(c: &mut Client, m: &Msg<'_>) {
    let target = m.arg(0);
    if !target.eq_ignore_ascii_case(&c.nick) {
        let guest = c
            .settings
            .guests
            .as_ref()
            .is_some_and(|g| g.find(target).is_some());
        let code = if guest || c.is_reserved(target).await {
            ERR_USERSDONTMATCH
        } else {
            ERR_NOSUCHNICK
        };
        let text = if code == ERR_NOSUCHNICK {
            "No such nick/channel"
        } else {
            "Can't change mode for other users"
        };
        return c.numeric(code, &[target], text);
    }
    let changes = m.arg(1);
    if changes.is_empty() {
        let shown = modes_of(&c.handle);
        return c.numeric_params(RPL_UMODEIS, &[&shown]);
    }
    let handle = c.handle.clone();
    let (mut on, mut shown, mut sign, mut unknown) = (true, String::new(), None, false);
    for letter in changes.chars() {
        let flag = match letter {
            '+' => {
                on = true;
                continue;
            }
            '-' => {
                on = false;
                continue;
            }
            'i' => &handle.invisible,
            'w' => &handle.wallops,
            // +o is OPER's to give; -o gives it up.
            'o' if !on => &handle.oper,
            'o' => continue,
            _ => {
                unknown = true;
                continue;
            }
        };
        if flag.swap(on, Relaxed) != on {
            if sign != Some(on) {
                shown.push(if on { '+' } else { '-' });
                sign = Some(on);
            }
            shown.push(letter);
        }
    }
    if unknown {
        c.numeric(
            ERR_UMODEUNKNOWNFLAG,
            &[],
            "Unknown MODE flag: +i, +w and -o are yours to change",
        );
    }
    if !shown.is_empty() {
        let (nick, me) = (c.nick.clone(), c.mask());
        c.relay("", &me, "MODE", &[&nick], Some(&shown));
    }
}

/// `+iow` as they are set.
fn modes_of(handle: &super::Handle) -> String {
    let mut out = String::from("+");
    for (flag, letter) in [
        (&handle.invisible, 'i'),
        (&handle.oper, 'o'),
        (&handle.wallops, 'w'),
    ] {
        if flag.load(Relaxed) {
            out.push(letter);
        }
    }
    out
}
