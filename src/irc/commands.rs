//! The commands of the IRC door. [`COMMANDS`] is the one table: each command's name, the
//! parameters it needs and whether it needs registration or an account, checked for every
//! command alike in [`dispatch`] before its own code runs (461, 451). Each command then maps
//! to the domain, and the domain's refusals to the RFC numerics.

use std::sync::Arc;

use super::caps::{self, MULTI_PREFIX};
use super::client::{Client, End};
use super::local::glob_matches;
use super::numeric::*;
use super::render::{self, mask, prefixed};
use super::who::is_oper;
use super::wire::Msg;
use super::{local_commands, nickserv, HOST};
use crate::chat::rooms::RoomName;
use crate::chat::Username;
use crate::error::{ChatError, Code};
use crate::store::RoomRefusal;

/// What a command needs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: it is part of registration (or leaving).
    Nothing,
    /// A registered connection.
    Registered,
    /// A connection logged in to an account, or a guest (`--irc-guests`).
    Someone,
    /// A connection logged in to an account.
    Account,
}

/// One row of the table.
pub struct Command {
    pub name: &'static str,
    /// Parameters it needs at least; fewer get 461.
    pub min: usize,
    pub need: Need,
    /// What HELP says of it: its syntax, then what it does.
    pub help: &'static str,
}

const fn row(name: &'static str, min: usize, need: Need, help: &'static str) -> Command {
    Command {
        name,
        min,
        need,
        help,
    }
}

/// Every command the door understands; anything else is 421.
pub const COMMANDS: &[Command] = &[
    row("AUTHENTICATE", 1, Need::Nothing, "AUTHENTICATE PLAIN, then the base64 of \\0<account>\\0<password>: SASL login (CAP REQ :sasl first)"),
    row("AWAY", 0, Need::Someone, "AWAY [:<message>]: mark yourself away (with a message) or back (without)"),
    row("CAP", 1, Need::Nothing, "CAP LS 302 | CAP REQ :<caps> | CAP LIST | CAP END: negotiate IRCv3 capabilities"),
    row("CHATHISTORY", 1, Need::Someone, "CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN <target> ... <limit>: stored messages"),
    row("HELP", 0, Need::Nothing, "HELP [<command>]: the commands, or one command's syntax"),
    row("HELPOP", 0, Need::Nothing, "HELPOP [<command>]: the same as HELP"),
    row("INFO", 0, Need::Registered, "INFO: what this server is"),
    row("INVITE", 0, Need::Someone, "INVITE <nick> <#channel> | INVITE: let someone into an invite-only (+i), keyed or full channel; or list your invitations"),
    row("ISON", 1, Need::Registered, "ISON <nick> [<nick>...]: which of these are connected"),
    row("JOIN", 1, Need::Someone, "JOIN <#channel>[,<#channel>...] [<key>[,<key>...]] | JOIN 0: join channels (a new name makes one), or leave all"),
    row("KICK", 2, Need::Someone, "KICK <#channel> <nick>[,<nick>...] [:<reason>]: remove someone (operators of the channel)"),
    row("KILL", 1, Need::Registered, "KILL <nick> [:<reason>]: disconnect someone (IRC operators)"),
    row("LIST", 0, Need::Registered, "LIST [<#channel>[,<#channel>...]]: the channels, their sizes and topics"),
    row("LUSERS", 0, Need::Registered, "LUSERS: how many users, operators and channels"),
    row("MARKREAD", 0, Need::Registered, "MARKREAD <target> [timestamp=<time>]: what you have read (draft/read-marker)"),
    row("MODE", 1, Need::Registered, "MODE <#channel> [+|-<modes> [<args>]] | MODE <you> [+|-iw]: channel or user modes"),
    row("MOTD", 0, Need::Registered, "MOTD: the message of the day"),
    row("NAMES", 0, Need::Registered, "NAMES <#channel>: who is in a channel"),
    row("NICK", 0, Need::Nothing, "NICK <nick>: choose or change your nick"),
    row("NOTICE", 0, Need::Registered, "NOTICE <target>[,<target>...] :<text>: like PRIVMSG, never answered automatically"),
    row("OPER", 0, Need::Registered, "OPER <account> <password>: become an IRC operator (accounts named by --irc-oper)"),
    row("PART", 1, Need::Someone, "PART <#channel>[,<#channel>...] [:<reason>]: leave channels"),
    row("PASS", 1, Need::Nothing, "PASS <password> | PASS <account>:<password>: before NICK and USER, the server's or an account's password"),
    row("PING", 1, Need::Nothing, "PING <token>: the server answers PONG <token>"),
    row("PONG", 0, Need::Nothing, "PONG <token>: the answer to the server's PING"),
    row("PRIVMSG", 0, Need::Registered, "PRIVMSG <target>[,<target>...] :<text>: a message to a nick or a channel"),
    row("QUIT", 0, Need::Nothing, "QUIT [:<reason>]: leave"),
    row("TAGMSG", 1, Need::Someone, "TAGMSG <target>: only client tags (message-tags), such as +typing=active"),
    row("TIME", 0, Need::Registered, "TIME: the server's time"),
    row("TOPIC", 1, Need::Someone, "TOPIC <#channel> [:<topic>]: see or set a channel's topic"),
    row("USER", 4, Need::Nothing, "USER <user> 0 * :<real name>: at registration, who you are"),
    row("USERHOST", 1, Need::Registered, "USERHOST <nick> [<nick>...]: the masks of connected nicks"),
    row("WALLOPS", 1, Need::Registered, "WALLOPS :<text>: a message to the operators and +w users (IRC operators)"),
    row("WHO", 0, Need::Registered, "WHO <#channel>|<nick>|<mask> [%<fields>[,<token>]]: who is there (WHOX with %)"),
    row("WHOIS", 1, Need::Registered, "WHOIS <nick>: about someone"),
    row("WHOWAS", 1, Need::Registered, "WHOWAS <nick>: about someone who left"),
];

/// Runs one parsed line; with labeled-response, its response is labeled as the client asked.
pub async fn dispatch(c: &mut Client, m: &Msg<'_>) {
    let labeled = c.caps.has(caps::LABELED_RESPONSE) && c.caps.has(caps::BATCH);
    match labeled.then(|| super::labeled::label_of(m.tags)).flatten() {
        Some(label) => {
            let from = c.written();
            run_command(c, m).await;
            c.label_response(from, label);
        }
        None => run_command(c, m).await,
    }
    // What the command delivered to this very client (a message to oneself) is no part of
    // its reply: it follows it.
    for message in std::mem::take(&mut c.delivered_here) {
        render::push(c, &message);
    }
}

/// Finds a line's command, checks what its row needs, and runs it.
async fn run_command(c: &mut Client, m: &Msg<'_>) {
    // Commands are case-insensitive (RFC 2812 §2.3); found without copying the line's.
    let Some(command) = COMMANDS
        .iter()
        .find(|row| row.name.eq_ignore_ascii_case(m.command))
    else {
        let shown: String = m.command.chars().take(32).collect();
        c.numeric(ERR_UNKNOWNCOMMAND, &[&shown], "Unknown command");
        return;
    };
    if !c.registered && command.need != Need::Nothing {
        c.numeric(
            ERR_NOTREGISTERED,
            &[],
            "You have not registered: send NICK and USER first",
        );
        return;
    }
    if m.params.len() < command.min {
        c.numeric(ERR_NEEDMOREPARAMS, &[command.name], "Not enough parameters");
        return;
    }
    let someone = c.account().is_some() || c.is_guest();
    if (command.need == Need::Account && c.account().is_none()) || (command.need == Need::Someone && !someone)
    {
        not_logged_in(c, command.name);
        return;
    }
    match command.name {
        "AUTHENTICATE" => authenticate(c, m).await,
        "AWAY" => away(c, m),
        "CAP" => caps::cap(c, m),
        "CHATHISTORY" => super::history::chathistory(c, m).await,
        "HELP" | "HELPOP" => help(c, m),
        "INFO" => super::oper::info(c),
        "INVITE" => invite(c, m).await,
        "ISON" => ison(c, m).await,
        "JOIN" => join(c, m).await,
        "KICK" => kick(c, m).await,
        "KILL" => super::oper::kill(c, m),
        "LIST" => list(c, m).await,
        "LUSERS" => lusers(c).await,
        "MARKREAD" => super::read_marker::markread(c, m).await,
        "MODE" => mode(c, m).await,
        "MOTD" => motd(c),
        "NAMES" => names_command(c, m).await,
        "NICK" => nick(c, m).await,
        "NOTICE" => message(c, m, "NOTICE").await,
        "OPER" => super::oper::oper(c, m).await,
        "PART" => part(c, m).await,
        "PASS" => pass(c, m),
        "PING" => c.pong(m.arg(0)),
        "PONG" => {}
        "PRIVMSG" => message(c, m, "PRIVMSG").await,
        "QUIT" => {
            let reason = m.params.first().copied().unwrap_or("Client Quit");
            c.end = Some(End::Quit(reason.chars().take(200).collect()));
        }
        "TIME" => {
            let (server, now) = (c.settings.server_name.clone(), chrono::Utc::now());
            c.numeric(RPL_TIME, &[&server], &now.to_rfc2822());
        }
        "TAGMSG" => tagmsg(c, m).await,
        "TOPIC" => topic(c, m).await,
        "USER" => user(c, m),
        "USERHOST" => userhost(c, m).await,
        "WALLOPS" => super::oper::wallops(c, m),
        "WHO" => super::who::who(c, m).await,
        "WHOIS" => whois(c, m).await,
        "WHOWAS" => whowas(c, m).await,
        other => unreachable!("{other} is in the table but has no arm"),
    }
}

/// HELP [<command>] (Modern: 704, 705, 706, or 524): the commands, or one's syntax.
fn help(c: &mut Client, m: &Msg<'_>) {
    let subject = m.arg(0);
    if subject.is_empty() {
        c.numeric(
            RPL_HELPSTART,
            &["*"],
            "chatd's IRC commands (HELP <command> for one):",
        );
        let names: Vec<&str> = COMMANDS.iter().map(|row| row.name).collect();
        for chunk in names.chunks(10) {
            c.numeric(RPL_HELPTXT, &["*"], &chunk.join(" "));
        }
        c.numeric(
            RPL_HELPTXT,
            &["*"],
            "Protocol and examples: protocol.md, \"The IRC door\"",
        );
        return c.numeric(RPL_ENDOFHELP, &["*"], "End of /HELP");
    }
    let Some(row) = COMMANDS.iter().find(|row| row.name.eq_ignore_ascii_case(subject)) else {
        let shown: String = subject.chars().take(32).collect();
        return c.numeric(
            ERR_HELPNOTFOUND,
            &[&shown],
            "No help for that: HELP lists the commands",
        );
    };
    let (syntax, what) = row.help.split_once(": ").unwrap_or((row.help, ""));
    c.numeric(RPL_HELPSTART, &[row.name], syntax);
    if !what.is_empty() {
        c.numeric(RPL_HELPTXT, &[row.name], what);
    }
    let needs = match row.need {
        Need::Nothing => "Any connection may send it.",
        Need::Registered => "After registration (NICK and USER).",
        Need::Someone => "Logged in to an account, or a guest.",
        Need::Account => "Logged in to an account.",
    };
    c.numeric(RPL_ENDOFHELP, &[row.name], needs);
}

fn not_logged_in(c: &mut Client, command: &str) {
    let text = if c.is_guest() {
        "Guests may not do that; log in to an account: /msg NickServ IDENTIFY <account> <password>, or /msg NickServ REGISTER <password>"
    } else {
        "You have not logged in: /msg NickServ IDENTIFY <password>, or /msg NickServ REGISTER <password> for a new account"
    };
    c.numeric(ERR_NOTREGISTERED, &[command], text);
}

/// The account, for commands whose row asks for one.
fn me(c: &Client) -> Username {
    c.account().cloned().expect("the table checked the login")
}

/// A room as this client may see it: as its account, or as a guest sees a public room.
pub async fn view_of(c: &Client, channel: &str) -> Result<crate::chat::rooms::RoomView, ChatError> {
    match c.account() {
        Some(me) => c.chat.room(me, channel).await,
        None => c.chat.public_room(channel).await,
    }
}

fn pass(c: &mut Client, m: &Msg<'_>) {
    if c.registered {
        c.numeric(ERR_ALREADYREGISTERED, &[], "You may not reregister");
        return;
    }
    c.pass = Some(m.arg(0).to_string());
}

fn user(c: &mut Client, m: &Msg<'_>) {
    if c.registered {
        c.numeric(ERR_ALREADYREGISTERED, &[], "You may not reregister");
        return;
    }
    if m.arg(3).is_empty() {
        // RFC 2812 §3.1.3: the real name is a parameter; Modern: empty is too few.
        c.numeric(
            ERR_NEEDMOREPARAMS,
            &["USER"],
            "Not enough parameters: USER <user> 0 * :<real name>",
        );
        return;
    }
    let name: String = m.arg(0).chars().filter(|ch| !ch.is_control()).take(32).collect();
    c.username = Some(if name.is_empty() { "user".into() } else { name });
    c.realname = m.arg(3).chars().take(100).collect();
}

async fn nick(c: &mut Client, m: &Msg<'_>) {
    let wanted = m.arg(0);
    if wanted.is_empty() {
        c.numeric(ERR_NONICKNAMEGIVEN, &[], "No nickname given");
        return;
    }
    if Username::parse(wanted).is_err() {
        let shown: String = wanted.chars().take(40).collect();
        c.numeric(
            ERR_ERRONEUSNICKNAME,
            &[&shown],
            "Erroneous nickname: nicks are chatd names, 1-32 of A-Z a-z 0-9 _ . -",
        );
        return;
    }
    let guests_here = c.settings.guests.as_ref();
    if guests_here.is_some_and(|g| g.taken(wanted, c.origin())) && c.account().is_none() {
        c.numeric(ERR_NICKNAMEINUSE, &[wanted], "Nickname is already in use");
        return;
    }
    if !c.registered {
        c.nick = wanted.to_string();
        return;
    }
    if c.is_guest() {
        if wanted == c.nick {
            return;
        }
        if c.is_reserved(wanted).await {
            c.numeric(
                ERR_NICKNAMEINUSE,
                &[wanted],
                "Nickname is already in use: it is an account's; log in to it with /msg NickServ IDENTIFY <account> <password>",
            );
            return;
        }
        let claimed = c
            .settings
            .guests
            .as_ref()
            .is_some_and(|g| g.claim(wanted, c.origin()));
        if !claimed {
            c.numeric(ERR_NICKNAMEINUSE, &[wanted], "Nickname is already in use");
            return;
        }
        c.change_guest_nick(wanted);
        return;
    }
    if let Some(account) = c.account().cloned() {
        if wanted != account.as_str() {
            c.numeric(
                ERR_ERRONEUSNICKNAME,
                &[wanted],
                &format!("On chatd your nick is your account's name: you are logged in as {account}"),
            );
        }
        return;
    }
    if wanted == c.nick {
        return;
    }
    let old = c.mask();
    c.relay("", &old, "NICK", &[], Some(wanted));
    c.set_nick(wanted);
    if c.chat.user_exists(wanted).await.unwrap_or(false) {
        c.nickserv(&format!(
            "{wanted} is a registered account. Log in with: /msg NickServ IDENTIFY <password>"
        ));
    }
}

async fn authenticate(c: &mut Client, m: &Msg<'_>) {
    let caps::Step::Check { account, password } = caps::authenticate(c, m) else {
        return;
    };
    match c.check_password(&account, &password).await {
        Ok(user) => {
            let shown = if c.registered {
                mask(user.as_str())
            } else {
                mask(&c.nick)
            };
            c.numeric(
                RPL_LOGGEDIN,
                &[&shown, user.as_str()],
                &format!("You are now logged in as {user}"),
            );
            c.numeric(RPL_SASLSUCCESS, &[], "SASL authentication successful");
            c.login_announced = true;
            c.logged_in(user).await;
        }
        Err(e) => {
            let text = format!("SASL authentication failed: {}", e.message);
            c.numeric(ERR_SASLFAIL, &[], &text);
        }
    }
}

fn away(c: &mut Client, m: &Msg<'_>) {
    let me: Arc<str> = match c.account() {
        Some(account) => account.as_arc().clone(),
        None => Arc::from(c.nick.as_str()),
    };
    let me = &me;
    let text = m.arg(0);
    let settings = c.settings.clone();
    if text.is_empty() {
        settings.away.set(me, c.origin(), None);
        c.numeric(RPL_UNAWAY, &[], "You are no longer marked as being away");
    } else {
        let text: String = text.chars().take(200).collect();
        settings.away.set(me, c.origin(), Some(text));
        c.numeric(RPL_NOWAWAY, &[], "You have been marked as being away");
    }
}

/// PRIVMSG and NOTICE: to nicks (accounts) and channels (rooms), several targets at once.
/// A NOTICE is stored and shown as a message like a PRIVMSG, but is never answered with an
/// error (RFC 2812 §3.3.2).
async fn message(c: &mut Client, m: &Msg<'_>, command: &str) {
    let quiet = command == "NOTICE";
    let (targets, text) = (m.arg(0), m.arg(1));
    if targets.is_empty() {
        if !quiet {
            c.numeric(ERR_NORECIPIENT, &[], &format!("No recipient given ({command})"));
        }
        return;
    }
    if m.params.len() < 2 || text.is_empty() {
        if !quiet {
            c.numeric(ERR_NOTEXTTOSEND, &[], "No text to send");
        }
        return;
    }
    for target in targets.split(',').filter(|t| !t.is_empty()).take(4) {
        if target.eq_ignore_ascii_case(nickserv::NICK) {
            if !quiet {
                nickserv::handle(c, text).await;
            }
            continue;
        }
        if c.account().is_none() && !c.is_guest() {
            if !quiet {
                not_logged_in(c, command);
            }
            continue;
        }
        let tags = local_commands::client_tags(m.tags);
        let channel = target.trim_start_matches(['@', '+']).starts_with('#');
        if channel && local_commands::say(c, command, target, Some(text), &tags) {
            continue;
        }
        if !target.starts_with('#') && direct_live(c, command, target, Some(text), &tags).await {
            continue;
        }
        let body = match render::from_irc(text) {
            Ok(body) if !body.trim().is_empty() => body,
            Ok(_) => {
                if !quiet {
                    c.numeric(ERR_NOTEXTTOSEND, &[], "No text to send (only formatting codes)");
                }
                continue;
            }
            Err(why) => {
                if !quiet {
                    c.numeric(ERR_UNKNOWNERROR, &[command], &why);
                }
                continue;
            }
        };
        let Some(me) = c.account().cloned() else {
            // Live: a guest speaking in a room.
            say_live(c, command, target, &body).await;
            continue;
        };
        let resolved;
        let target = if target.starts_with('#') {
            target
        } else {
            resolved = account_named(c, target).await;
            resolved.as_str()
        };
        // To oneself: this session shows the message at once (as echo-message would),
        // rather than as a push that may come after the command's answer.
        let to_self = target == me.as_str();
        let sent = if target.starts_with('#') {
            let origin = c.origin();
            c.chat.say(&me, target, &body, None, origin).await
        } else if to_self {
            let origin = c.origin();
            c.chat.send_from(&me, target, &body, None, origin).await
        } else {
            c.chat.send(&me, target, &body, None).await
        };
        match sent {
            Ok(message) => {
                if c.caps.has(caps::ECHO_MESSAGE) {
                    let shown = if target.starts_with('#') {
                        message.recipient.to_string()
                    } else {
                        target.to_string()
                    };
                    render::echo(c, &message, &shown, command);
                }
                if to_self {
                    c.delivered_here.push(message);
                }
                if !target.starts_with('#') {
                    if let Some(away) = c.settings.away.of(target) {
                        if !quiet {
                            c.numeric(RPL_AWAY, &[target], &away);
                        }
                    }
                }
            }
            Err(_) if quiet => {}
            Err(e) => refuse_message(c, command, target, &e),
        }
    }
}

/// A direct message a guest sends or is sent: IRC to IRC as it was typed (a CTCP too), live,
/// to the guest's session or to the account's IRC sessions here; cut to fit one line. False
/// if neither side is a guest (the message is stored, as any between accounts).
async fn direct_live(c: &mut Client, command: &str, target: &str, text: Option<&str>, tags: &str) -> bool {
    let quiet = command != "PRIVMSG";
    let guest_target = c.settings.guests.as_ref().and_then(|g| g.find(target));
    if guest_target.is_none() && !c.is_guest() {
        return false;
    }
    if c.is_guest() && !c.guest_still_free().await {
        // Renamed: what it said is not sent under the account's name.
        return true;
    }
    let (shown, to): (Arc<str>, _) = match guest_target {
        Some((nick, id)) => (
            nick,
            crate::hub::LiveFeed {
                user: Arc::from(""),
                id,
            },
        ),
        None => (
            Arc::from(target),
            crate::hub::LiveFeed {
                user: Arc::from(target),
                id: 0,
            },
        ),
    };
    if let Err(e) = c.chat.spend_live(&c.nick, c.is_guest(), text.map_or(1, str::len)) {
        if !quiet {
            c.failed(command, &e);
        }
        return true;
    }
    let me = c.mask();
    let line = match text {
        Some(text) => {
            // `:me COMMAND target :text` and CR LF must fit 512 bytes; the rest is cut.
            let overhead = 1 + me.len() + 1 + command.len() + 1 + shown.len() + 2 + 2;
            let text = local_commands::cut(text, super::wire::MAX_LINE.saturating_sub(overhead));
            format!("{command} {shown} :{text}")
        }
        None => format!("{command} {shown}"),
    };
    let line = local_commands::tagged(tags, line);
    let (message, reached) = c.chat.push_line(&c.nick, &shown, line, "", &[to], c.origin());
    if reached > 0 && text.is_some() {
        c.settings.conversations.keep(&c.nick, &shown, message.clone());
    }
    if reached == 0 {
        if !quiet {
            c.numeric(
                ERR_NOSUCHNICK,
                &[target],
                "No such nick: a guest's messages reach only the people connected by IRC to this server now, and are not kept",
            );
        }
        return true;
    }
    if c.caps.has(caps::ECHO_MESSAGE) {
        render::push(c, &message);
    }
    if let Some(away) = c.settings.away.of(&shown).filter(|_| !quiet) {
        c.numeric(RPL_AWAY, &[&shown], &away);
    }
    true
}

/// TAGMSG (IRCv3 message-tags): a message of client tags only, such as `+typing=active`.
/// It is live, never kept, and reaches only the clients that asked for message-tags.
async fn tagmsg(c: &mut Client, m: &Msg<'_>) {
    let target = m.arg(0);
    let tags = local_commands::client_tags(m.tags);
    if target.trim_start_matches(['@', '+']).starts_with('#') {
        if local_commands::say(c, "TAGMSG", target, None, &tags) {
            return;
        }
        let Some(room) = c.channels.get(&target.to_ascii_lowercase()).cloned() else {
            return c.numeric(
                ERR_CANNOTSENDTOCHAN,
                &[target],
                "Cannot send to channel: JOIN it first",
            );
        };
        let line = local_commands::tagged(&tags, format!("TAGMSG {room}"));
        let message = c.chat.push_room_line(&c.nick, &room, line, c.origin());
        if c.caps.has(caps::ECHO_MESSAGE) {
            render::push(c, &message);
        }
        return;
    }
    if direct_live(c, "TAGMSG", target, None, &tags).await {
        return;
    }
    // Between accounts: to the target's IRC sessions here.
    let target = account_named(c, target).await;
    let target = target.as_str();
    let to = crate::hub::LiveFeed {
        user: Arc::from(target),
        id: 0,
    };
    let line = local_commands::tagged(&tags, format!("TAGMSG {target}"));
    let (message, reached) = c
        .chat
        .push_line(&c.nick, &Arc::from(target), line, "", &[to], c.origin());
    if reached == 0 && !c.is_reserved(target).await {
        return c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel");
    }
    if c.caps.has(caps::ECHO_MESSAGE) {
        render::push(c, &message);
    }
}

/// The account a nick a client typed stands for, whatever its case (see
/// [`crate::chat::Chat::resolve_user`]); the nick as typed if none.
pub async fn account_named(c: &Client, nick: &str) -> String {
    match c.chat.resolve_user(nick).await {
        Ok(Some(name)) => name.to_string(),
        _ => nick.to_string(),
    }
}

/// A guest speaking in a room it follows (not a +m one): live, never kept.
async fn say_live(c: &mut Client, command: &str, target: &str, body: &str) {
    let quiet = command == "NOTICE";
    if !c.guest_still_free().await {
        // Renamed: what it said is not sent under the account's name.
        return;
    }
    let Some(room) = c.channels.get(&target.to_ascii_lowercase()).cloned() else {
        if !quiet {
            c.numeric(
                ERR_CANNOTSENDTOCHAN,
                &[target],
                &format!("Cannot send to channel: you are not in {target}; JOIN it first"),
            );
        }
        return;
    };
    if view_of(c, &room).await.is_ok_and(|v| v.info.moderated) {
        if !quiet {
            c.numeric(
                ERR_CANNOTSENDTOCHAN,
                &[target],
                "Cannot send to channel (+m): only its owner and ops may speak",
            );
        }
        return;
    }
    let (from, origin) = (c.nick.clone(), c.origin());
    match c.chat.say_live(&from, true, &room, body, origin) {
        Ok(message) => {
            if c.caps.has(caps::ECHO_MESSAGE) {
                render::echo(c, &message, &room, command);
            }
        }
        Err(_) if quiet => {}
        Err(e) => c.failed(command, &e),
    }
}

fn refuse_message(c: &mut Client, command: &str, target: &str, e: &ChatError) {
    match (&e.refusal, e.code) {
        (_, Code::NoSuchUser) => c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel"),
        (Some(RoomRefusal::NoSuchRoom), _) => c.numeric(ERR_NOSUCHCHANNEL, &[target], "No such channel"),
        (Some(RoomRefusal::NotMember), _) => c.numeric(
            ERR_CANNOTSENDTOCHAN,
            &[target],
            &format!("Cannot send to channel: you are not in {target}; JOIN it first"),
        ),
        (Some(RoomRefusal::Moderated), _) => c.numeric(
            ERR_CANNOTSENDTOCHAN,
            &[target],
            "Cannot send to channel (+m): only its owner and ops may speak",
        ),
        (None, Code::BadArgs) if target.starts_with('#') && RoomName::parse(target).is_err() => {
            c.numeric(ERR_NOSUCHCHANNEL, &[target], "No such channel")
        }
        _ => c.failed(command, e),
    }
}

/// JOIN `#a,#b` (keys are ignored: rooms have none), or `JOIN 0` to leave every room.
async fn join(c: &mut Client, m: &Msg<'_>) {
    if c.is_guest() {
        return guest_join(c, m).await;
    }
    let me = me(c);
    if m.arg(0) == "0" {
        let rooms: Vec<Arc<str>> = match c.chat.followed(&me).await {
            Ok(rooms) => rooms,
            Err(e) => return c.failed("JOIN", &e),
        };
        for room in rooms {
            leave(c, &me, &room, None).await;
        }
        return;
    }
    let mut keys = m.arg(1).split(',');
    for channel in m.arg(0).split(',').filter(|t| !t.is_empty()) {
        let key = keys.next().filter(|k| !k.is_empty());
        if RoomName::parse(channel).is_err() {
            let shown: String = channel.chars().take(40).collect();
            c.numeric(
                ERR_BADCHANNAME,
                &[&shown],
                "Illegal channel name: # then 1 to 32 of A-Z a-z 0-9 _ . -",
            );
            continue;
        }
        if c.channels.contains_key(&channel.to_ascii_lowercase()) {
            continue;
        }
        // A local channel of that name (guests made it): the account joins it as it is.
        if local_commands::join(c, channel, key, false) {
            continue;
        }
        let origin = c.origin();
        match c.chat.join(&me, channel, origin).await {
            Ok((room, _)) => show_joined(c, &room).await,
            Err(e) => match e.refusal {
                Some(RoomRefusal::InviteOnly) => c.numeric(
                    ERR_INVITEONLYCHAN,
                    &[channel],
                    "Cannot join channel (+i): an op must INVITE you",
                ),
                Some(RoomRefusal::Full(_)) => c.numeric(ERR_CHANNELISFULL, &[channel], &e.message),
                Some(RoomRefusal::TooManyRooms(_)) => c.numeric(ERR_TOOMANYCHANNELS, &[channel], &e.message),
                _ => c.failed("JOIN", &e),
            },
        }
    }
}

/// A guest joins public rooms (not invite-only ones), which it follows live without ever
/// becoming a member; or, where no room has the name, a local channel, which it creates if
/// there is none (only accounts create rooms).
async fn guest_join(c: &mut Client, m: &Msg<'_>) {
    if m.arg(0) == "0" {
        let rooms: Vec<Arc<str>> = c.channels.values().cloned().collect();
        for room in rooms {
            if !local_commands::part(c, &room, None) {
                guest_leave(c, &room, None);
            }
        }
        return;
    }
    let mut keys = m.arg(1).split(',');
    for channel in m.arg(0).split(',').filter(|t| !t.is_empty()) {
        let key = keys.next().filter(|k| !k.is_empty());
        if c.channels.contains_key(&channel.to_ascii_lowercase()) {
            continue;
        }
        if c.channels.len() >= c.settings.max_rooms as usize {
            let text = format!(
                "You have joined too many channels: {} at most",
                c.settings.max_rooms
            );
            c.numeric(ERR_TOOMANYCHANNELS, &[channel], &text);
            continue;
        }
        if local_commands::join(c, channel, key, false) {
            continue;
        }
        let view = match c.chat.public_room(channel).await {
            Ok(view) => view,
            Err(e) => {
                match e.refusal {
                    Some(RoomRefusal::InviteOnly) => c.numeric(
                        ERR_INVITEONLYCHAN,
                        &[channel],
                        "Cannot join channel (+i): guests join public channels only",
                    ),
                    Some(RoomRefusal::NoSuchRoom) => {
                        local_commands::join(c, channel, key, true);
                    }
                    _ if RoomName::parse(channel).is_err() => c.numeric(
                        ERR_BADCHANNAME,
                        &[channel],
                        "Illegal channel name: # then 1 to 32 of A-Z a-z 0-9 _ . -",
                    ),
                    _ => c.failed("JOIN", &e),
                }
                continue;
            }
        };
        let room = view.info.name.clone();
        let (Some(feed), Some(guests)) = (c.feed(), c.settings.guests.as_ref()) else {
            return;
        };
        c.chat.guest_join(feed, &c.nick, &room);
        guests.enter(&c.nick, &room);
        c.channels.insert(room.to_ascii_lowercase(), room.clone());
        let me = c.mask();
        c.relay("", &me, "JOIN", &[&room], None);
        show_room(c, &room, &view);
    }
}

/// A guest leaves `room`: the IRC clients there see it PART.
fn guest_leave(c: &mut Client, room: &Arc<str>, reason: Option<&str>) {
    let (Some(feed), Some(guests)) = (c.feed(), c.settings.guests.as_ref()) else {
        return;
    };
    c.chat.guest_leave(feed, &c.nick, room);
    guests.leave(&c.nick, room);
    c.channels.remove(&room.to_ascii_lowercase());
    let mask = c.mask();
    c.relay("", &mask, "PART", &[room], reason);
}

/// Tells the client it is in `room`: its JOIN, the topic, and the names.
pub async fn show_joined(c: &mut Client, room: &Arc<str>) {
    c.channels.insert(room.to_ascii_lowercase(), room.clone());
    let me = c.mask();
    c.relay("", &me, "JOIN", &[room], None);
    let Some(account) = c.account().cloned() else {
        return;
    };
    match c.chat.room(&account, room).await {
        Ok(view) => {
            // read-marker: the room's mark after its JOIN, before the end of its names.
            if c.caps.has(caps::READ_MARKER) {
                if !view.info.topic.is_empty() {
                    c.numeric(RPL_TOPIC, &[room], &view.info.topic);
                }
                super::read_marker::send_mark(c, room).await;
                names(c, room, &view);
            } else {
                show_room(c, room, &view);
            }
        }
        Err(e) => c.failed("JOIN", &e),
    }
}

/// What follows a JOIN: the topic, if any, and the names.
fn show_room(c: &mut Client, room: &str, view: &crate::chat::rooms::RoomView) {
    if !view.info.topic.is_empty() {
        c.numeric(RPL_TOPIC, &[room], &view.info.topic);
    }
    names(c, room, view);
}

/// 353 lines of `room`'s members, as many to a line as fit, then 366.
fn names(c: &mut Client, room: &str, view: &crate::chat::rooms::RoomView) {
    let multi = c.caps.has(MULTI_PREFIX);
    // RFC 2812 §3.2.5: `=` a public channel, `*` a private one.
    let symbol = if view.info.invite_only { "*" } else { "=" };
    let guests = c
        .settings
        .guests
        .as_ref()
        .map(|g| g.in_channel(room))
        .unwrap_or_default();
    let members = view
        .info
        .members
        .iter()
        .map(|(name, role)| (name.as_str(), prefixed("", *role, multi)));
    let guests = guests.iter().map(|nick| (&**nick, String::new()));
    let names: Vec<(&str, String)> = members.chain(guests).collect();
    name_reply(c, symbol, room, names.iter().map(|(n, p)| (*n, p.as_str())));
}

/// `353` lines of `(nick, prefix)`s, as many to a line as fit (the full mask with
/// userhost-in-names), then `366`.
pub fn name_reply<'a>(
    c: &mut Client,
    symbol: &str,
    channel: &str,
    names: impl Iterator<Item = (&'a str, &'a str)>,
) {
    let full = c.caps.has(caps::USERHOST_IN_NAMES);
    // What the rest of a 353 line takes: `:server 353 nick = #room :` and CR LF.
    let room_for_names = 400usize.saturating_sub(c.settings.server_name.len() + c.nick.len() + channel.len());
    let mut line = String::new();
    for (nick, prefix) in names {
        let name = if full {
            format!("{prefix}{}", mask(nick))
        } else {
            format!("{prefix}{nick}")
        };
        if !line.is_empty() && line.len() + 1 + name.len() > room_for_names {
            c.numeric(RPL_NAMREPLY, &[symbol, channel], &line);
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&name);
    }
    if !line.is_empty() {
        c.numeric(RPL_NAMREPLY, &[symbol, channel], &line);
    }
    c.numeric(RPL_ENDOFNAMES, &[channel], "End of /NAMES list");
}

async fn names_command(c: &mut Client, m: &Msg<'_>) {
    if c.account().is_none() && !c.is_guest() {
        c.numeric(RPL_ENDOFNAMES, &["*"], "End of /NAMES list");
        return;
    }
    let channels = m.arg(0);
    if channels.is_empty() {
        c.numeric(RPL_ENDOFNAMES, &["*"], "End of /NAMES list");
        return;
    }
    for channel in channels.split(',').filter(|t| !t.is_empty()).take(1) {
        if local_commands::names_of(c, channel) {
            continue;
        }
        match view_of(c, channel).await {
            Ok(view) => {
                let shown = view.info.name.clone();
                names(c, &shown, &view);
            }
            // A room that does not exist, or that one may not see: no names (RFC 2812 §3.2.5).
            Err(_) => c.numeric(RPL_ENDOFNAMES, &[channel], "End of /NAMES list"),
        }
    }
}

async fn part(c: &mut Client, m: &Msg<'_>) {
    let reason = m.params.get(1).copied();
    if c.is_guest() {
        for channel in m.arg(0).split(',').filter(|t| !t.is_empty()) {
            if local_commands::part(c, channel, reason) {
                continue;
            }
            if c.settings.local.exists(channel) {
                c.numeric(ERR_NOTONCHANNEL, &[channel], "You're not on that channel");
                continue;
            }
            match c.channels.get(&channel.to_ascii_lowercase()).cloned() {
                Some(room) => guest_leave(c, &room, reason),
                None if c.chat.public_room(channel).await.is_err() => {
                    c.numeric(ERR_NOSUCHCHANNEL, &[channel], "No such channel")
                }
                None => c.numeric(ERR_NOTONCHANNEL, &[channel], "You're not on that channel"),
            }
        }
        return;
    }
    let me = me(c);
    for channel in m.arg(0).split(',').filter(|t| !t.is_empty()) {
        if local_commands::part(c, channel, reason) {
            continue;
        }
        if c.settings.local.exists(channel) {
            c.numeric(ERR_NOTONCHANNEL, &[channel], "You're not on that channel");
            continue;
        }
        leave(c, &me, channel, reason).await;
    }
}

async fn leave(c: &mut Client, me: &Username, channel: &str, reason: Option<&str>) {
    let origin = c.origin();
    match c.chat.leave(me, channel, origin).await {
        Ok(room) => {
            c.channels.remove(&room.to_ascii_lowercase());
            let mask = c.mask();
            c.relay("", &mask, "PART", &[&room], reason);
        }
        Err(e) => refuse_room(c, "PART", channel, None, &e),
    }
}

/// A refused change to a room, as its numeric.
fn refuse_room(c: &mut Client, command: &str, channel: &str, target: Option<&str>, e: &ChatError) {
    match &e.refusal {
        Some(RoomRefusal::NoSuchRoom) => c.numeric(ERR_NOSUCHCHANNEL, &[channel], "No such channel"),
        Some(RoomRefusal::NotMember) => c.numeric(ERR_NOTONCHANNEL, &[channel], "You're not on that channel"),
        Some(RoomRefusal::NotOp | RoomRefusal::NotOwner | RoomRefusal::TargetIsOwner) => {
            c.numeric(ERR_CHANOPRIVSNEEDED, &[channel], &e.message)
        }
        Some(RoomRefusal::TargetNotMember) => c.numeric(
            ERR_USERNOTINCHANNEL,
            &[target.unwrap_or("*"), channel],
            "They aren't on that channel",
        ),
        Some(RoomRefusal::NoSuchUser) => {
            c.numeric(ERR_NOSUCHNICK, &[target.unwrap_or("*")], "No such nick/channel")
        }
        _ if e.code == Code::NoSuchUser => {
            c.numeric(ERR_NOSUCHNICK, &[target.unwrap_or("*")], "No such nick/channel")
        }
        _ if e.code == Code::BadArgs && RoomName::parse(channel).is_err() => {
            c.numeric(ERR_NOSUCHCHANNEL, &[channel], "No such channel")
        }
        _ => c.failed(command, e),
    }
}

async fn topic(c: &mut Client, m: &Msg<'_>) {
    if local_commands::topic(c, m) {
        return;
    }
    let channel = m.arg(0);
    if m.params.len() < 2 {
        match view_of(c, channel).await {
            Ok(view) if view.info.topic.is_empty() => {
                c.numeric(RPL_NOTOPIC, &[&view.info.name], "No topic is set")
            }
            Ok(view) => c.numeric(RPL_TOPIC, &[&view.info.name], &view.info.topic),
            Err(e) => refuse_room(c, "TOPIC", channel, None, &e),
        }
        return;
    }
    let Some(me) = c.account().cloned() else {
        return c.numeric(
            ERR_CHANOPRIVSNEEDED,
            &[channel],
            "You're not channel operator: guests cannot set topics",
        );
    };
    let text = m.arg(1);
    let origin = c.origin();
    match c.chat.set_topic(&me, channel, text, origin).await {
        Ok(room) => {
            let mask = c.mask();
            c.relay("", &mask, "TOPIC", &[&room], Some(text.trim()));
        }
        Err(e) => refuse_room(c, "TOPIC", channel, None, &e),
    }
}

/// KICK `#a nick1,nick2`, or `#a,#b nick1,nick2` (RFC 2812 §3.2.8: channel and nick in
/// pairs), at most 4 (`TARGMAX`).
async fn kick(c: &mut Client, m: &Msg<'_>) {
    let reason = m.params.get(2).copied().filter(|r| !r.is_empty());
    let channels: Vec<&str> = m.arg(0).split(',').filter(|t| !t.is_empty()).collect();
    let targets: Vec<&str> = m.arg(1).split(',').filter(|t| !t.is_empty()).collect();
    let pairs: Vec<(&str, &str)> = match channels.as_slice() {
        [one] => targets.iter().map(|t| (*one, *t)).collect(),
        many if many.len() == targets.len() => many.iter().copied().zip(targets.iter().copied()).collect(),
        _ => {
            return c.numeric(
                ERR_NEEDMOREPARAMS,
                &["KICK"],
                "Not enough parameters: one channel, or a channel for each nick",
            )
        }
    };
    for (channel, target) in pairs.into_iter().take(4) {
        kick_one(c, channel, target, reason).await;
    }
}

async fn kick_one(c: &mut Client, channel: &str, target: &str, reason: Option<&str>) {
    if local_commands::kick(c, channel, target, reason).await {
        return;
    }
    let Some(me) = c.account().cloned() else {
        return guest_refused(
            c,
            channel,
            "You're not channel operator: guests cannot remove members of a room",
        )
        .await;
    };
    let origin = c.origin();
    match c.chat.kick(&me, channel, target, reason, origin).await {
        Ok(room) => {
            let mask = c.mask();
            let reason = reason.unwrap_or(me.as_str()).to_string();
            c.relay("", &mask, "KICK", &[&room, target], Some(&reason));
            if target == me.as_str() {
                c.channels.remove(&room.to_ascii_lowercase());
            }
        }
        Err(e) => refuse_target(c, "KICK", channel, target, &e).await,
    }
}

async fn invite(c: &mut Client, m: &Msg<'_>) {
    match m.params.len() {
        0 => {
            // The invitations to local channels not used yet; a room's are not listed.
            for channel in c.settings.local.invited_to(&c.nick) {
                c.numeric_params(RPL_INVITELIST, &[&channel]);
            }
            return c.numeric(RPL_ENDOFINVITELIST, &[], "End of /INVITE list");
        }
        1 => return c.numeric(ERR_NEEDMOREPARAMS, &["INVITE"], "Not enough parameters"),
        _ => {}
    }
    let (target, channel) = (m.arg(0), m.arg(1));
    let to = invitee(c, target).await;
    if local_commands::invite(c, target, channel, to.clone()) {
        return;
    }
    let Some(me) = c.account().cloned() else {
        return guest_refused(
            c,
            channel,
            "You're not channel operator: guests cannot invite to a room",
        )
        .await;
    };
    let member = |view: &crate::chat::rooms::RoomView| view.members.iter().any(|m| m.name == target);
    if c.chat.room(&me, channel).await.is_ok_and(|view| member(&view)) {
        return c.numeric(ERR_USERONCHANNEL, &[target, channel], "is already on channel");
    }
    match c.chat.invite(&me, channel, target).await {
        Ok(room) => {
            c.numeric_params(RPL_INVITING, &[target, &room]);
            // The invitee's IRC sessions here are told; elsewhere it sees the room on JOIN.
            if let Some(to) = to {
                let line = format!("INVITE {target} {room}");
                c.chat.push_line(&c.nick, &room, line, "", &[to], c.origin());
            }
        }
        Err(e) => refuse_room(c, "INVITE", channel, Some(target), &e),
    }
}

/// Where an INVITE to `target` goes: the guest's session, or each IRC session of the account
/// here (which may be none).
async fn invitee(c: &Client, target: &str) -> Option<crate::hub::LiveFeed> {
    if let Some((_, id)) = c.settings.guests.as_ref().and_then(|g| g.find(target)) {
        return Some(crate::hub::LiveFeed {
            user: Arc::from(""),
            id,
        });
    }
    c.is_reserved(target).await.then(|| crate::hub::LiveFeed {
        user: Arc::from(target),
        id: 0,
    })
}

/// A guest asked to change a room: 403 if there is no such room, else 482 with `why`.
async fn guest_refused(c: &mut Client, channel: &str, why: &str) {
    if c.chat.public_room(channel).await.is_err() {
        return c.numeric(ERR_NOSUCHCHANNEL, &[channel], "No such channel");
    }
    c.numeric(ERR_CHANOPRIVSNEEDED, &[channel], why);
}

/// A refused change to a member: 401 if the nick is nobody's, else as [`refuse_room`].
async fn refuse_target(c: &mut Client, command: &str, channel: &str, target: &str, e: &ChatError) {
    let not_member = e.refusal == Some(RoomRefusal::TargetNotMember);
    if not_member && !c.is_reserved(target).await {
        return c.numeric(ERR_NOSUCHNICK, &[target], "No such nick/channel");
    }
    refuse_room(c, command, channel, Some(target), e);
}

/// MODE on a channel (its flags, ops) or on oneself.
async fn mode(c: &mut Client, m: &Msg<'_>) {
    let target = m.arg(0);
    if !target.starts_with('#') {
        return super::oper::user_mode(c, m).await;
    }
    if c.account().is_none() && !c.is_guest() {
        return not_logged_in(c, "MODE");
    }
    if local_commands::mode(c, m).await {
        return;
    }
    let changes = m.arg(1);
    if changes.is_empty() {
        match view_of(c, target).await {
            Ok(view) => {
                let mut flags = String::from("+n");
                for (on, letter) in [
                    (view.info.invite_only, 'i'),
                    (view.info.moderated, 'm'),
                    (view.info.topic_locked, 't'),
                ] {
                    if on {
                        flags.push(letter);
                    }
                }
                c.numeric_params(RPL_CHANNELMODEIS, &[&view.info.name, &flags]);
            }
            Err(e) => refuse_room(c, "MODE", target, None, &e),
        }
        return;
    }
    let Some(me) = c.account().cloned() else {
        if changes.trim_start_matches('+') == "b" {
            return c.numeric(RPL_ENDOFBANLIST, &[target], "End of channel ban list");
        }
        return guest_refused(
            c,
            target,
            "You're not channel operator: guests cannot change a room's modes",
        )
        .await;
    };
    let mut args = m.params.iter().skip(2).copied();
    let mut on = true;
    for letter in changes.chars() {
        match letter {
            '+' => on = true,
            '-' => on = false,
            'b' if !on || m.params.len() <= 2 => {
                // Clients ask for the ban list on join: it is always empty.
                c.numeric(RPL_ENDOFBANLIST, &[target], "End of channel ban list");
            }
            'n' if on => {}
            'i' | 'm' | 't' => {
                let sign = if on { '+' } else { '-' };
                let change = format!("{sign}{letter}");
                let origin = c.origin();
                match c.chat.set_mode(&me, target, &change, None, origin).await {
                    Ok(room) => {
                        let mask = c.mask();
                        c.relay("", &mask, "MODE", &[&room, &change], None);
                    }
                    Err(e) => refuse_room(c, "MODE", target, None, &e),
                }
            }
            'o' => {
                let Some(nick) = args.next() else {
                    c.numeric(
                        ERR_NEEDMOREPARAMS,
                        &["MODE"],
                        "Not enough parameters: +o and -o take a nick",
                    );
                    continue;
                };
                let sign = if on { "+o" } else { "-o" };
                let origin = c.origin();
                match c.chat.set_mode(&me, target, sign, Some(nick), origin).await {
                    Ok(room) => {
                        let mask = c.mask();
                        c.relay("", &mask, "MODE", &[&room, sign, nick], None);
                    }
                    Err(e) => refuse_target(c, "MODE", target, nick, &e).await,
                }
            }
            other => {
                let why = match other {
                    'n' => "is always on: only members speak in a chatd room",
                    'k' => "is unknown mode char to me: rooms have no keys; +i and INVITE keep newcomers out",
                    'l' => "is unknown mode char to me: a room's size is bounded by the server (--max-room-members)",
                    'b' => "is unknown mode char to me: rooms have no bans; KICK removes a member, +i keeps newcomers out",
                    'q' => "is unknown mode char to me: a room's owner is who created it",
                    _ => "is unknown mode char to me",
                };
                c.numeric(ERR_UNKNOWNMODE, &[&other.to_string()], why);
            }
        }
    }
}

/// LIST, with what `ELIST=MNU` offers: channel names, masks (`#ch*`), masks not to match
/// (`!#ch*`), and sizes (`>2`, `<10`), any of them together, separated by commas.
async fn list(c: &mut Client, m: &Msg<'_>) {
    let wanted = ListFilter::parse(m.arg(0));
    c.numeric(RPL_LISTSTART, &["Channel"], "Users  Name");
    for (name, count, topic) in local_commands::list(c) {
        if wanted.admits(&name, count as i64) {
            c.numeric(RPL_LIST, &[&name, &count.to_string()], &topic);
        }
    }
    match c.chat.open_rooms("").await {
        Ok(rooms) => {
            for room in rooms.iter().filter(|r| wanted.admits(&r.name, r.members)) {
                let count = room.members.to_string();
                c.numeric(RPL_LIST, &[&room.name, &count], &room.topic);
            }
        }
        Err(e) => c.failed("LIST", &e),
    }
    c.numeric(RPL_LISTEND, &[], "End of /LIST");
}

/// What a LIST asks for.
#[derive(Default)]
struct ListFilter<'a> {
    names: Vec<&'a str>,
    masks: Vec<&'a str>,
    not: Vec<&'a str>,
    more_than: Option<i64>,
    fewer_than: Option<i64>,
}

impl<'a> ListFilter<'a> {
    fn parse(arg: &'a str) -> ListFilter<'a> {
        let mut filter = ListFilter::default();
        for item in arg.split(',').filter(|t| !t.is_empty()) {
            if let Some(mask) = item.strip_prefix('!') {
                filter.not.push(mask);
            } else if let Some(n) = item.strip_prefix('>').and_then(|n| n.parse().ok()) {
                filter.more_than = Some(n);
            } else if let Some(n) = item.strip_prefix('<').and_then(|n| n.parse().ok()) {
                filter.fewer_than = Some(n);
            } else if item.contains(['*', '?']) {
                filter.masks.push(item);
            } else {
                filter.names.push(item);
            }
        }
        filter
    }

    fn admits(&self, name: &str, members: i64) -> bool {
        let named = (self.names.is_empty() && self.masks.is_empty())
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self.masks.iter().any(|m| glob_matches(m, name));
        named
            && !self.not.iter().any(|m| glob_matches(m, name))
            && self.more_than.is_none_or(|n| members > n)
            && self.fewer_than.is_none_or(|n| members < n)
    }
}

/// Whether `nick` (exactly) is a guest's here.
fn is_guest(c: &Client, nick: &str) -> bool {
    c.settings.guests.as_ref().is_some_and(|g| g.is_guest(nick))
}

pub async fn lusers(c: &mut Client) {
    // Users are who is online: accounts with a live session, and guests (which are all here).
    let guests = c.settings.guests.as_ref().map_or(0, super::guests::Guests::count);
    let online = c.chat.online_count().await.unwrap_or(0) + guests;
    let here = c.chat.online_here() + guests;
    let unregistered = c
        .settings
        .counts
        .unregistered
        .load(std::sync::atomic::Ordering::Relaxed);
    let (here_max, online_max) = c.settings.counts.peaks(here, online);
    c.numeric(
        RPL_LUSERCLIENT,
        &[],
        &format!("There are 0 users and {online} invisible on 1 servers"),
    );
    let opers = c.settings.idents.opers().to_string();
    c.numeric_params(RPL_LUSEROP, &[&opers, "operator(s) online"]);
    let unregistered = unregistered.to_string();
    c.numeric_params(RPL_LUSERUNKNOWN, &[&unregistered, "unknown connection(s)"]);
    let rooms = c.chat.open_room_count().await.unwrap_or(0) + c.settings.local.count() as i64;
    let rooms = rooms.to_string();
    c.numeric_params(RPL_LUSERCHANNELS, &[&rooms, "channels formed"]);
    c.numeric(RPL_LUSERME, &[], &format!("I have {here} clients and 0 servers"));
    let current = |n: usize, most: usize, which: &str| {
        (
            n.to_string(),
            most.to_string(),
            format!("Current {which} users {n}, max {most}"),
        )
    };
    let (n, most, text) = current(here, here_max, "local");
    c.numeric_params(RPL_LOCALUSERS, &[&n, &most, &text]);
    let (n, most, text) = current(online, online_max, "global");
    c.numeric_params(RPL_GLOBALUSERS, &[&n, &most, &text]);
}

/// The message of the day: what chatd is, and how this door maps onto it.
pub fn motd(c: &mut Client) {
    let server = c.settings.server_name.clone();
    c.numeric(RPL_MOTDSTART, &[], &format!("- {server} Message of the day - "));
    for line in [
        "This is chatd: the same community as telnet, nc, HTTP and the chat page.",
        "Every message is stored before anyone sees it; channels are chatd rooms,",
        "and your nick is your chatd account. New here? /msg NickServ HELP",
    ] {
        c.numeric(RPL_MOTD, &[], &format!("- {line}"));
    }
    c.numeric(RPL_ENDOFMOTD, &[], "End of /MOTD command.");
}

async fn ison(c: &mut Client, m: &Msg<'_>) {
    let asked: Vec<&str> = m
        .params
        .iter()
        .flat_map(|p| p.split(' '))
        .filter(|n| !n.is_empty())
        .take(64)
        .collect();
    let online = c.chat.online_among(&asked).await.unwrap_or_default();
    let on: Vec<&str> = asked
        .into_iter()
        .filter(|n| online.contains(*n) || is_guest(c, n))
        .collect();
    c.numeric(RPL_ISON, &[], &on.join(" "));
}

async fn userhost(c: &mut Client, m: &Msg<'_>) {
    let asked: Vec<&str> = m.params.iter().take(5).copied().collect();
    let online = c.chat.online_among(&asked).await.unwrap_or_default();
    let replies: Vec<String> = asked
        .into_iter()
        .filter(|n| online.contains(*n) || is_guest(c, n))
        .map(|n| {
            let away = if c.settings.away.of(n).is_some() { '-' } else { '+' };
            format!("{n}={away}{n}@{HOST}")
        })
        .collect();
    c.numeric(RPL_USERHOST, &[], &replies.join(" "));
}

/// The user name and real name `nick`'s client gave, or the nick for both.
pub fn ident_of(c: &Client, nick: &str) -> (String, String) {
    match c.settings.idents.of(nick).filter(|i| i.nick == nick) {
        Some(ident) => (ident.username, ident.realname),
        None => (nick.to_string(), nick.to_string()),
    }
}

async fn whois(c: &mut Client, m: &Msg<'_>) {
    // WHOIS [server] nick: the nick is the last parameter.
    let nick = m.params.last().copied().unwrap_or("");
    let nick = nick.split(',').next().unwrap_or("");
    if let Some((nick, id)) = c.settings.guests.as_ref().and_then(|g| g.find(nick)) {
        // A guest: no account (no 330).
        let server = c.settings.server_name.clone();
        let (user, real) = ident_of(c, &nick);
        c.numeric(RPL_WHOISUSER, &[&nick, &user, HOST, "*"], &real);
        let channels = local_commands::whois_channels(c, id);
        if !channels.is_empty() {
            c.numeric(RPL_WHOISCHANNELS, &[&nick], &channels);
        }
        c.numeric(RPL_WHOISSERVER, &[&nick, &server], "chatd");
        if is_oper(c, &nick) {
            c.numeric(RPL_WHOISOPERATOR, &[&nick], "is an IRC operator");
        }
        if let Some(away) = c.settings.away.of(&nick) {
            c.numeric(RPL_AWAY, &[&nick], &away);
        }
        c.numeric(RPL_ENDOFWHOIS, &[&nick], "End of /WHOIS list");
        return;
    }
    let account = account_named(c, nick).await;
    let nick = account.as_str();
    let exists = c.chat.user_exists(nick).await.unwrap_or(false);
    let online = exists
        && c.chat
            .online_among(&[nick])
            .await
            .unwrap_or_default()
            .contains(nick);
    if !online {
        let why = if exists {
            "No such nick/channel: that account is not connected now (messages wait for it)"
        } else {
            "No such nick/channel"
        };
        c.numeric(ERR_NOSUCHNICK, &[nick], why);
    } else {
        let server = c.settings.server_name.clone();
        let (user, real) = ident_of(c, nick);
        c.numeric(RPL_WHOISUSER, &[nick, &user, HOST, "*"], &real);
        c.numeric(RPL_WHOISSERVER, &[nick, &server], "chatd");
        if is_oper(c, nick) {
            c.numeric(RPL_WHOISOPERATOR, &[nick], "is an IRC operator");
        }
        c.numeric(RPL_WHOISACCOUNT, &[nick, nick], "is logged in as");
        if let Some(away) = c.settings.away.of(nick) {
            c.numeric(RPL_AWAY, &[nick], &away);
        }
    }
    c.numeric(RPL_ENDOFWHOIS, &[nick], "End of /WHOIS list");
}

/// `WHOWAS nick [count]`: who left this node's door on that nick lately, newest first; an
/// account not connected is known too (its nick is its name).
async fn whowas(c: &mut Client, m: &Msg<'_>) {
    let nick = m.arg(0).split(',').next().unwrap_or("");
    if nick.is_empty() {
        return c.numeric(ERR_NONICKNAMEGIVEN, &[], "No nickname given");
    }
    let most = match m.arg(1).parse::<i64>() {
        Ok(n) if n > 0 => n as usize,
        _ => usize::MAX,
    };
    let server = c.settings.server_name.clone();
    let departed = c.settings.whowas.of(nick, most);
    for d in &departed {
        c.numeric(RPL_WHOWASUSER, &[&d.nick, &d.username, HOST, "*"], &d.realname);
        c.numeric(RPL_WHOISSERVER, &[&d.nick, &server], "chatd");
    }
    if departed.is_empty() {
        if c.chat.user_exists(nick).await.unwrap_or(false) {
            c.numeric(RPL_WHOWASUSER, &[nick, nick, HOST, "*"], nick);
            c.numeric(RPL_WHOISSERVER, &[nick, &server], "chatd");
        } else {
            c.numeric(ERR_WASNOSUCHNICK, &[nick], "There was no such nickname");
        }
    }
    c.numeric(RPL_ENDOFWHOWAS, &[nick], "End of WHOWAS");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_every_row_has_an_arm() {
        let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "keep the table in order");
        sorted.dedup();
        assert_eq!(names.len(), sorted.len(), "a command is in the table twice");
    }
}
