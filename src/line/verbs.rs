//! The verb table: one row per verb of the line protocol. Parsing, the check before a verb
//! runs (login), the BAD_ARGS usage line, HELP, `HELP <verb>`, the list of verbs and "did you
//! mean" all read it, so a verb is added with one row here and its action in
//! [`super::command`].

use std::fmt;

use super::command::{Action, HistoryPage};
use super::reply::{escape, Reply};
use crate::chat::Username;
use crate::error::{ChatError, ChatResult, Code};

/// One verb: what it is called, what it takes, who may use it, and what HELP says of it.
pub struct Verb {
    /// Upper case, as HELP shows it; typed in any case.
    pub name: &'static str,
    /// The arguments as HELP and BAD_ARGS show them, e.g. `<user> <password>`; empty for none.
    pub args: &'static str,
    /// Said after `usage: <name> <args>` in a BAD_ARGS reply: what an argument must look like.
    pub args_note: &'static str,
    /// Answered with AUTH_REQUIRED before login. Checked after the arguments (a malformed line
    /// is BAD_ARGS whether or not one is logged in), before the verb's own code.
    pub needs_login: bool,
    /// Its line in the HELP list.
    pub summary: &'static str,
    /// `HELP <verb>`: usage, what it does, an example.
    pub help: &'static [&'static str],
    /// The arguments (the rest of the line after the verb and one blank) as an action; `None`
    /// when they do not fit, which is answered with BAD_ARGS and [`Verb::args`].
    pub parse: for<'a> fn(&'a str) -> Option<Action<'a>>,
}

/// Every verb, in the order HELP lists them.
pub static VERBS: &[Verb] = &[
    Verb {
        name: "REGISTER",
        args: "<user> <password>",
        args_note: "",
        needs_login: false,
        summary: "create an account",
        help: &[
            "REGISTER <user> <password>: create an account.",
            "  user: 1-32 of A-Z a-z 0-9 _ . - (case matters); password: 1-1024 bytes, no spaces.",
            "  The password travels in clear text: use one you use nowhere else.",
            "  example: REGISTER alice wonderland",
        ],
        parse: |rest| words(rest).map(|[user, password]| Action::Register { user, password }),
    },
    Verb {
        name: "AUTH",
        args: "<user> <password>",
        args_note: "",
        needs_login: false,
        summary: "log in; new messages then arrive as MSG lines",
        help: &[
            "AUTH <user> <password>: log in. From then on messages to you arrive as MSG lines.",
            "  After 5 wrong passwords AUTH is refused (RATE_LIMITED) for a while.",
            "  example: AUTH alice wonderland",
        ],
        parse: |rest| words(rest).map(|[user, password]| Action::Auth { user, password }),
    },
    Verb {
        name: "SEND",
        args: "<user> <text>",
        args_note: "",
        needs_login: true,
        summary: "send a message (to #room: in a room); replies OK <id>",
        help: &[
            "SEND <user> <text>: send <text> (the rest of the line, kept exactly) to <user>.",
            "SEND <#room> <text>: say <text> in a room you are in; its other members get",
            "  ROOM <id> <#room> <you> <time> <text>.",
            "  Needs AUTH first; replies OK <id> once the message is stored.",
            "  example: SEND bob hello bob, are you there?",
            "  example: SEND #class the lab starts at 10",
        ],
        parse: |rest| word_and_text(rest).map(|(to, text)| Action::Send { to, text }),
    },
    Verb {
        name: "INBOX",
        args: "[after_id]",
        args_note: ", after_id a whole number >= 0",
        needs_login: true,
        summary: "up to 100 messages with id > after_id, oldest first",
        help: &[
            "INBOX [after_id]: your messages with id > after_id (default 0), oldest first,",
            "  at most 100, one MSG <id> <from> <time> <text> line each, then OK <count>.",
            "  To read more, repeat with the last id you saw until OK 0.",
            "  example: INBOX 41",
        ],
        parse: |rest| match rest.trim() {
            "" => Some(Action::Inbox { after_id: 0 }),
            n => n
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(|after_id| Action::Inbox { after_id }),
        },
    },
    Verb {
        name: "WHO",
        args: "[after <name>]",
        args_note: "",
        needs_login: true,
        summary: "the users online now, 1000 at a time (after AUTH)",
        help: &[
            "WHO [after <name>]: the users logged in now, in name order, one USER <name> line",
            "  each, then OK <count>. Needs AUTH first. At most 1000 names per reply: when there",
            "  are more the final line is OK 1000 more; ask again with WHO after <last name>.",
            "  example: WHO after bob",
        ],
        parse: |rest| {
            let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
            match (args.next(), args.next(), args.next()) {
                (None, ..) => Some(Action::Who { after: None }),
                (Some(after), Some(name), None) if after.eq_ignore_ascii_case("after") => {
                    Some(Action::Who { after: Some(name) })
                }
                _ => None,
            }
        },
    },
    Verb {
        name: "LOGOUT",
        args: "[ALL]",
        args_note: "",
        needs_login: true,
        summary: "log out here; ALL: everywhere, every session and token",
        help: &[
            "LOGOUT: log this connection out; it stays open (AUTH again to log back in).",
            "LOGOUT ALL: log out everywhere: every other connection logged in as you is closed",
            "  (it reads BYE logged out everywhere), and every session and token of yours",
            "  over HTTP ends, on every server sharing the store, within 5 s. This connection",
            "  stays open, logged out. Use it when you forgot to log out somewhere.",
        ],
        parse: |rest| match rest.trim() {
            "" => Some(Action::Logout { all: false }),
            all if all.eq_ignore_ascii_case("ALL") => Some(Action::Logout { all: true }),
            _ => None,
        },
    },
    Verb {
        name: "JOIN",
        args: "<#room>",
        args_note: "",
        needs_login: true,
        summary: "join a room, creating it if there is none",
        help: &[
            "JOIN <#room>: join a room; if there is none, it is created and you own it.",
            "  Replies OK joined <#room> (<n> members). From then on the room's messages and",
            "  events arrive as ROOM <id> <#room> <from> <time> <text> lines (events are from *),",
            "  and wait for you while you are away. A room name is # then 1-32 of",
            "  A-Z a-z 0-9 _ . - (any case: #Class is #class).",
            "  example: JOIN #class",
        ],
        parse: |rest| words(rest).map(|[room]| Action::Join { room }),
    },
    Verb {
        name: "LEAVE",
        args: "<#room>",
        args_note: "",
        needs_login: true,
        summary: "leave a room",
        help: &[
            "LEAVE <#room>: leave a room; replies OK left <#room>. Its messages stop.",
            "  example: LEAVE #class",
        ],
        parse: |rest| words(rest).map(|[room]| Action::Leave { room }),
    },
    Verb {
        name: "HISTORY",
        args: "<#room|user> [after|before <id>]",
        args_note: "",
        needs_login: true,
        summary: "a room's past, or your conversation with a user",
        help: &[
            "HISTORY <#room>: the room's latest 50 messages and events as ROOM lines, oldest",
            "  first, then OK <count>. HISTORY <#room> after <id>: up to 100 after that id;",
            "  HISTORY <#room> before <id>: up to 100 before it. Members only.",
            "HISTORY <user>: the same over your conversation with <user>, both sides, as",
            "  MSG <id> <from> <time> <text> lines, so you see what you sent too.",
            "  example: HISTORY #class before 120",
        ],
        parse: |rest| {
            let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
            let of = args.next()?;
            let page = match (args.next(), args.next(), args.next()) {
                (None, ..) => HistoryPage::Latest,
                (Some(dir), Some(id), None) => {
                    let id = id.parse::<i64>().ok().filter(|id| *id >= 0)?;
                    match dir.to_ascii_lowercase().as_str() {
                        "after" => HistoryPage::After(id),
                        "before" => HistoryPage::Before(id),
                        _ => return None,
                    }
                }
                _ => return None,
            };
            Some(Action::History { of, page })
        },
    },
    Verb {
        name: "ROOMS",
        args: "",
        args_note: "",
        needs_login: true,
        summary: "the rooms you are in, with unread counts",
        help: &[
            "ROOMS: one line per room you are in, JOINED <#room> <members> <unread> <topic>,",
            "  then OK <count>. Unread counts messages after your READ mark (not events).",
        ],
        parse: |rest| rest.trim().is_empty().then_some(Action::Rooms),
    },
    Verb {
        name: "MEMBERS",
        args: "<#room>",
        args_note: "",
        needs_login: true,
        summary: "who is in a room, and who is online",
        help: &[
            "MEMBERS <#room>: USER <name> <owner|op|member> <online|offline> lines, owner",
            "  first, then ops, then members, then OK <count>.",
            "  example: MEMBERS #class",
        ],
        parse: |rest| words(rest).map(|[room]| Action::Members { room }),
    },
    Verb {
        name: "READ",
        args: "<#room> [<id>]",
        args_note: ", id a whole number >= 0",
        needs_login: true,
        summary: "mark a room read (up to <id>)",
        help: &[
            "READ <#room> [<id>]: mark the room read up to <id> (default: its latest), for",
            "  every session of yours; ROOMS then counts only what came after.",
            "  example: READ #class",
        ],
        parse: |rest| {
            let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
            let room = args.next()?;
            let id = match args.next() {
                None => None,
                Some(id) => Some(id.parse::<i64>().ok().filter(|id| *id >= 0)?),
            };
            args.next().is_none().then_some(Action::Read { room, id })
        },
    },
    Verb {
        name: "TOPIC",
        args: "<#room> <text>",
        args_note: "",
        needs_login: true,
        summary: "set a room's topic",
        help: &[
            "TOPIC <#room> <text>: set the room's topic (at most 300 characters). While the",
            "  room is topic-locked (+t, the default) only its owner and ops may.",
            "  example: TOPIC #class Lab 3: sockets",
        ],
        parse: |rest| word_and_text(rest).map(|(room, text)| Action::Topic { room, text }),
    },
    Verb {
        name: "INVITE",
        args: "<#room> <user>",
        args_note: "",
        needs_login: true,
        summary: "let a user into an invite-only room",
        help: &[
            "INVITE <#room> <user>: let <user> JOIN the room while it is invite-only (+i).",
            "  Owner and ops only.",
            "  example: INVITE #team3 bob",
        ],
        parse: |rest| words(rest).map(|[room, user]| Action::Invite { room, user }),
    },
    Verb {
        name: "KICK",
        args: "<#room> <user> [reason]",
        args_note: "",
        needs_login: true,
        summary: "remove a member from a room",
        help: &[
            "KICK <#room> <user> [reason]: remove <user> from the room; they get the event",
            "  and nothing after it. Owner and ops only; only the owner removes an op.",
            "  example: KICK #class mallory spamming",
        ],
        parse: |rest| {
            let rest = rest.trim_start_matches(is_blank);
            let (room, rest) = rest.split_once(is_blank)?;
            let rest = rest.trim_start_matches(is_blank);
            let (user, reason) = rest.split_once(is_blank).unwrap_or((rest, ""));
            let reason = reason.trim_matches(is_blank);
            (!user.is_empty()).then_some(Action::Kick {
                room,
                user,
                reason: (!reason.is_empty()).then_some(reason),
            })
        },
    },
    Verb {
        name: "MODE",
        args: "<#room> <+|-><i|m|t|o user>",
        args_note: "",
        needs_login: true,
        summary: "change a room's flags, or make an op",
        help: &[
            "MODE <#room> <+|-><i|m|t|o user>: change the room. Owner and ops only.",
            "  +i invite-only: JOIN needs an INVITE;  +m moderated: only ops speak;",
            "  +t topic-locked (the default): only ops set the topic;  +o <user>: make an op.",
            "  A - instead of + undoes it.",
            "  example: MODE #announcements +m",
        ],
        parse: |rest| {
            let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
            let (room, mode, user) = (args.next()?, args.next()?, args.next());
            args.next().is_none().then_some(Action::Mode { room, mode, user })
        },
    },
    Verb {
        name: "PING",
        args: "",
        args_note: "",
        needs_login: false,
        summary: "replies OK PONG",
        help: &["PING: replies OK PONG; shows the server is there."],
        parse: |rest| rest.trim().is_empty().then_some(Action::Ping),
    },
    Verb {
        name: "ECHO",
        args: "<text>",
        args_note: "",
        needs_login: false,
        summary: "replies OK <text>",
        help: &[
            "ECHO <text>: replies OK <text>, exactly as sent.",
            "  example: ECHO hello",
        ],
        parse: |rest| Some(Action::Echo(rest)),
    },
    Verb {
        name: "HELP",
        args: "[command]",
        args_note: "",
        needs_login: false,
        summary: "this text, or more about one command",
        help: &["HELP [command]: the list of commands, or more about one of them."],
        parse: |rest| match rest.trim() {
            "" => Some(Action::Help(None)),
            verb => Some(Action::Help(Some(verb))),
        },
    },
    Verb {
        name: "QUIT",
        args: "",
        args_note: "",
        needs_login: false,
        summary: "close the connection",
        help: &[
            "QUIT: replies OK bye and closes the connection.",
            "  In telnet you can also press Ctrl-] and type quit.",
        ],
        // Whatever follows QUIT, the client wants to leave.
        parse: |_| Some(Action::Quit),
    },
];

/// HELP's lines before the list of verbs.
const HELP_BEFORE: &[&str] =
    &["Commands (verbs in any case; every reply ends with a line OK ... or ERR <CODE> ...):"];

/// HELP's lines after the list of verbs: a first session, and what a telnet user should know.
const HELP_AFTER: &[&str] = &[
    "A first session (you type the lines after >):",
    "  > REGISTER alice wonderland",
    "  < OK registered alice; now AUTH alice <password>",
    "  > AUTH alice wonderland",
    "  < OK logged in as alice",
    "  > SEND bob hello bob",
    "  < OK 1",
    "  < MSG 2 bob 2026-11-24T17:05:12.481Z hi alice      (a message arriving)",
    "A class in a room:",
    "  > JOIN #class",
    "  < OK joined #class (12 members)",
    "  > SEND #class hello everyone",
    "  < OK 40",
    "  < ROOM 41 #class bob 2026-11-24T17:06:02.113Z hi alice   (others speak)",
    "  > HISTORY #class                                       (what you missed)",
    "Passwords travel in clear text: use one you use nowhere else.",
    "To leave: QUIT. If telnet hangs, press Ctrl-] and type quit at the telnet> prompt.",
    "In telnet, press Ctrl-] and type mode character (then Enter): each key is then sent as you",
    "  type it, and a message arriving never mixes with the line you are typing.",
];

/// The width of a verb with its arguments in the HELP list, so that the summaries line up.
const SYNOPSIS_WIDTH: usize = 28;

impl Verb {
    /// The verb called `name`, in any case.
    pub fn find(name: &str) -> Option<&'static Verb> {
        VERBS.iter().find(|v| v.name.eq_ignore_ascii_case(name))
    }

    /// The check every verb passes before its own code runs: login, for a verb that needs it.
    /// Gives the logged-in user to such a verb, and nothing to the others.
    pub fn admit(&self, user: Option<&Username>) -> ChatResult<Option<Username>> {
        match (self.needs_login, user) {
            (false, _) => Ok(None),
            (true, Some(user)) => Ok(Some(user.clone())),
            (true, None) => Err(auth_required()),
        }
    }

    /// The BAD_ARGS answer to arguments that do not fit.
    pub fn usage(&self) -> ChatError {
        if self.args.is_empty() {
            ChatError::bad_args(format!("{} takes no arguments", self.name))
        } else {
            ChatError::bad_args(format!("usage: {} {}{}", self.name, self.args, self.args_note))
        }
    }

    /// The verb with its arguments, as HELP lists it (longer than the column: on a line of
    /// its own, its summary under it).
    fn synopsis(&self) -> String {
        if self.args.is_empty() {
            self.name.to_string()
        } else {
            format!("{} {}", self.name, self.args)
        }
    }
}

impl fmt::Debug for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Verb {
    fn eq(&self, other: &Verb) -> bool {
        self.name == other.name
    }
}

impl Eq for Verb {}

pub fn auth_required() -> ChatError {
    ChatError::new(Code::AuthRequired, "log in first: AUTH <user> <password>")
}

/// `HELP`: every verb in table order between the introduction and a first session; `HELP
/// <verb>`: that verb's row.
pub fn help(verb: Option<&str>) -> Reply {
    let Some(verb) = verb else {
        let list = VERBS.iter().flat_map(|v| {
            let synopsis = v.synopsis();
            if synopsis.len() > SYNOPSIS_WIDTH {
                vec![
                    format!("  {synopsis}"),
                    format!("  {:SYNOPSIS_WIDTH$} {}", "", v.summary),
                ]
            } else {
                vec![format!("  {synopsis:<SYNOPSIS_WIDTH$} {}", v.summary)]
            }
        });
        let lines = HELP_BEFORE
            .iter()
            .map(|l| l.to_string())
            .chain(list)
            .chain(HELP_AFTER.iter().map(|l| l.to_string()));
        return Reply::lines(lines.collect(), "");
    };
    match Verb::find(verb) {
        Some(verb) => Reply::lines(verb.help.iter().map(|l| l.to_string()).collect(), ""),
        None => {
            let hint = match did_you_mean(verb) {
                Some(near) => format!("did you mean HELP {near}? "),
                None => String::new(),
            };
            let names: Vec<&str> = VERBS.iter().map(|v| v.name).collect();
            Reply::err(ChatError::bad_args(format!(
                "there is no command \"{}\"; {hint}the commands are {}",
                escape(truncate(verb, 32)),
                names.join(" ")
            )))
        }
    }
}

/// The answer to a verb not in the table, with the verb it is most likely a typo of.
pub fn unknown(verb: &str) -> ChatError {
    let hint = if verb.contains('\x1b') {
        ARROW_KEYS.to_string()
    } else {
        match did_you_mean(verb) {
            Some(near) => format!("did you mean {near}? HELP lists the commands"),
            None => "try HELP".to_string(),
        }
    };
    ChatError::new(
        Code::UnknownCommand,
        format!("unknown command \"{}\"; {hint}", escape(truncate(verb, 32))),
    )
}

/// The verb `typed` is most likely a typo of: one edit (a letter added, dropped, changed, or
/// two swapped) away, or two for longer verbs.
fn did_you_mean(typed: &str) -> Option<&'static str> {
    if typed.len() > 16 || typed.is_empty() {
        return None;
    }
    let typed = typed.to_ascii_uppercase();
    VERBS
        .iter()
        .map(|verb| (edit_distance(typed.as_bytes(), verb.name.as_bytes()), verb.name))
        .filter(|(distance, verb)| *distance <= if verb.len() >= 5 { 2 } else { 1 })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, verb)| verb)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours each cost one.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// What separates a verb from its arguments: a space, or a TAB, form feed or vertical tab,
/// which a person may type by mistake (Ctrl-L, Tab) and cannot see.
pub fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c')
}

/// The hint for a line holding an escape sequence: what an arrow key sends.
pub const ARROW_KEYS: &str =
    "arrow keys do not edit or recall lines here: correct with Backspace, and HELP lists the commands";

/// Exactly `N` arguments separated by blanks, borrowed from `rest`.
fn words<const N: usize>(rest: &str) -> Option<[&str; N]> {
    let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
    let mut out = [""; N];
    for slot in &mut out {
        *slot = args.next()?;
    }
    args.next().is_none().then_some(out)
}

/// One argument, then the rest of the line kept exactly (after the one blank that ends the
/// argument), which must not be empty: `SEND <user> <text>`.
fn word_and_text(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(is_blank);
    rest.split_once(is_blank).filter(|(_, text)| !text.is_empty())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::Command;
    use super::*;
    use crate::line::reply::is_final_line;

    fn written(reply: Reply) -> String {
        let mut out = bytes::BytesMut::new();
        reply.write_to(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn message(line: &str) -> String {
        Command::parse(line).unwrap_err().message.into_owned()
    }

    #[test]
    fn every_verb_has_help() {
        for (i, verb) in VERBS.iter().enumerate() {
            assert!(!verb.name.is_empty() && verb.name == verb.name.to_ascii_uppercase());
            assert!(
                VERBS[..i].iter().all(|v| v.name != verb.name),
                "{} twice",
                verb.name
            );
            assert!(!verb.summary.is_empty(), "{} has a summary", verb.name);
            assert!(
                verb.help.first().is_some_and(|l| l.starts_with(verb.name)),
                "HELP {} starts with the verb: {:?}",
                verb.name,
                verb.help
            );
            let text = written(help(Some(&verb.name.to_ascii_lowercase())));
            assert_eq!(text, verb.help.join("\r\n") + "\r\nOK\r\n");
        }
        let all_lines = HELP_BEFORE
            .iter()
            .chain(HELP_AFTER)
            .chain(VERBS.iter().flat_map(|v| v.help.iter()));
        assert!(all_lines.clone().all(|l| !is_final_line(l)));
        assert!(all_lines.clone().all(|l| !l.contains(['\r', '\n'])));
    }

    #[test]
    fn help_lists_every_verb_in_table_order() {
        let text = written(help(None));
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], HELP_BEFORE[0]);
        let mut at = 0;
        for verb in VERBS {
            let start = format!("  {} ", verb.synopsis());
            let alone = format!("  {}", verb.synopsis());
            let found = lines[at..]
                .iter()
                .position(|l| l.starts_with(&start) || **l == alone)
                .unwrap_or_else(|| panic!("HELP lists {} after line {at}:\n{text}", verb.name));
            at += found;
            if verb.synopsis().len() > SYNOPSIS_WIDTH {
                at += 1;
            }
            assert!(lines[at].ends_with(verb.summary), "{}", lines[at]);
            // The summaries line up.
            assert_eq!(lines[at].find(verb.summary), Some(3 + SYNOPSIS_WIDTH));
            at += 1;
        }
        assert!(text.ends_with(&format!("{}\r\nOK\r\n", HELP_AFTER.last().unwrap())));
        assert_eq!(
            lines.iter().filter(|l| is_final_line(l)).count(),
            1,
            "one final line:\n{text}"
        );
    }

    #[test]
    fn a_verb_needing_login_is_refused_before_login() {
        let alice = Username::parse("alice").unwrap();
        for verb in VERBS {
            let before = verb.admit(None);
            if verb.needs_login {
                let e = before.unwrap_err();
                assert_eq!(e.code, Code::AuthRequired, "{}", verb.name);
                assert_eq!(e.message, "log in first: AUTH <user> <password>");
                assert_eq!(verb.admit(Some(&alice)), Ok(Some(alice.clone())));
            } else {
                assert_eq!(before, Ok(None), "{}", verb.name);
            }
        }
        // Before login only these work: the rest answer AUTH_REQUIRED.
        let open: Vec<&str> = VERBS.iter().filter(|v| !v.needs_login).map(|v| v.name).collect();
        assert_eq!(open, ["REGISTER", "AUTH", "PING", "ECHO", "HELP", "QUIT"]);
        // Arguments come first: a malformed line is BAD_ARGS whether logged in or not.
        assert_eq!(Command::parse("SEND bob").unwrap_err().code, Code::BadArgs);
        assert_eq!(Command::parse("WHO me").unwrap_err().code, Code::BadArgs);
    }

    #[test]
    fn wrong_arity_answers_bad_args_with_the_synopsis() {
        for (line, reply) in [
            ("PING now", "PING takes no arguments"),
            ("REGISTER alice", "usage: REGISTER <user> <password>"),
            ("auth alice pw extra", "usage: AUTH <user> <password>"),
            ("SEND bob", "usage: SEND <user> <text>"),
            ("SEND", "usage: SEND <user> <text>"),
            (
                "INBOX 1 2",
                "usage: INBOX [after_id], after_id a whole number >= 0",
            ),
            ("WHO after", "usage: WHO [after <name>]"),
            ("LOGOUT ALL now", "usage: LOGOUT [ALL]"),
        ] {
            let e = Command::parse(line).unwrap_err();
            assert_eq!((e.code, &*e.message), (Code::BadArgs, reply), "{line}");
        }
        // Too few or too many arguments, for every verb: either it takes them, or the answer
        // is its usage.
        for verb in VERBS {
            for line in [verb.name.to_string(), format!("{} a b c d e f g h", verb.name)] {
                if let Err(e) = Command::parse(&line) {
                    assert_eq!(e.code, Code::BadArgs, "{line}");
                    assert_eq!(e.message, verb.usage().message, "{line}");
                    assert!(e.message.contains(verb.args), "{line}: {}", e.message);
                }
            }
        }
    }

    #[test]
    fn did_you_mean_comes_from_the_table() {
        for verb in VERBS {
            // A letter dropped, in lower case.
            let typo = verb.name[..verb.name.len() - 1].to_ascii_lowercase();
            assert_eq!(
                message(&typo),
                format!(
                    "unknown command \"{typo}\"; did you mean {}? HELP lists the commands",
                    verb.name
                )
            );
            let text = written(help(Some(&typo)));
            assert!(
                text.contains(&format!("did you mean HELP {}? ", verb.name)),
                "{text}"
            );
        }
        let names: Vec<&str> = VERBS.iter().map(|v| v.name).collect();
        let text = written(help(Some("FROB")));
        assert!(
            text.starts_with("ERR BAD_ARGS there is no command \"FROB\"; the commands are ")
                && text.ends_with(&format!("the commands are {}\r\n", names.join(" "))),
            "{text}"
        );
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert!(
            message("PNIG").contains("did you mean PING?"),
            "{}",
            message("PNIG")
        );
        assert!(message("sned bob hi").contains("did you mean SEND?"));
        assert!(message("REGSITER a b").contains("did you mean REGISTER?"));
        assert!(message("inbx").contains("did you mean INBOX?"));
        assert!(!message("FROB").contains("did you mean"));
        assert!(!message("XYZZY").contains("did you mean"));
        assert_eq!(message("FROB"), "unknown command \"FROB\"; try HELP");
    }

    #[test]
    fn help_for_one_verb() {
        let text = written(help(Some("send")));
        assert!(text.starts_with("SEND <user> <text>"), "{text}");
        let text = written(help(Some("sedn")));
        assert!(
            text.starts_with("ERR BAD_ARGS") && text.contains("did you mean HELP SEND?"),
            "{text}"
        );
    }
}
