//! The verbs of the line protocol: [`Command::parse`] turns a line into a command (borrowing
//! from the line, no allocation), [`Command::apply`] runs it against the chat domain.

use std::io;
use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

use super::connection::Connection;
use super::reply::{escape, needs_escape, put_msg, Reply};
use super::session::flush;
use crate::chat::{Chat, ConnAuthState, Username, INBOX_PAGE};
use crate::error::{ChatError, ChatResult, Code};
use crate::hub::{Ended, Subscription};

/// Messages an INBOX reply reads from the store first; later reads are sized so that about
/// [`INBOX_READ_BYTES`] of messages are held at once, however large the messages are.
const INBOX_FIRST_READ: u32 = 8;
const INBOX_READ_BYTES: usize = 256 * 1024;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Ping,
    Echo(&'a str),
    /// `HELP` or `HELP <verb>`.
    Help(Option<&'a str>),
    Quit,
    Register {
        user: &'a str,
        password: &'a str,
    },
    Auth {
        user: &'a str,
        password: &'a str,
    },
    Send {
        to: &'a str,
        text: &'a str,
    },
    Inbox {
        after_id: i64,
    },
    /// `WHO` or `WHO after <name>`.
    Who {
        after: Option<&'a str>,
    },
    /// `LOGOUT` (this connection) or `LOGOUT ALL` (everywhere).
    Logout {
        all: bool,
    },
}

/// What a connection knows about its client.
pub struct Context {
    pub chat: Chat,
    /// The client's address, for the limit on failed logins.
    pub peer: IpAddr,
    /// Present once logged in. Boxed: most of an idle connection's memory is this struct.
    pub session: Option<Box<LoggedIn>>,
    pub auth: ConnAuthState,
    /// Set by QUIT: close after this reply.
    pub quit: bool,
}

/// A logged-in connection: who it is, and its live feed.
pub struct LoggedIn {
    pub user: Username,
    pub feed: Subscription,
    /// Cancelled by the hub when the session falls too far behind its live messages.
    pub kick: CancellationToken,
}

impl Context {
    pub fn new(chat: Chat, peer: IpAddr) -> Context {
        Context {
            chat,
            peer,
            session: None,
            auth: ConnAuthState::default(),
            quit: false,
        }
    }

    /// Who the connection is logged in as; `None` too once its session was ended by a
    /// logout elsewhere (the connection is about to be closed).
    pub fn user(&self) -> Option<&Username> {
        self.session
            .as_ref()
            .filter(|s| s.feed.ended() != Some(Ended::LoggedOut))
            .map(|s| &s.user)
    }
}

pub const HELP: &[&str] = &[
    "Commands (verbs in any case; every reply ends with a line OK ... or ERR <CODE> ...):",
    "  REGISTER <user> <password>   create an account",
    "  AUTH <user> <password>       log in; new messages then arrive as MSG lines",
    "  SEND <user> <text>           send a message (after AUTH); replies OK <id>",
    "  INBOX [after_id]             up to 100 messages with id > after_id, oldest first",
    "  WHO [after <name>]           the users online now, 1000 at a time (after AUTH)",
    "  LOGOUT [ALL]                 log out here; ALL: everywhere, every session and token",
    "  PING                         replies OK PONG",
    "  ECHO <text>                  replies OK <text>",
    "  HELP [command]               this text, or more about one command",
    "  QUIT                         close the connection",
    "A first session (you type the lines after >):",
    "  > REGISTER alice wonderland",
    "  < OK registered alice; now AUTH alice <password>",
    "  > AUTH alice wonderland",
    "  < OK logged in as alice",
    "  > SEND bob hello bob",
    "  < OK 1",
    "  < MSG 2 bob 2026-11-24T17:05:12.481Z hi alice      (a message arriving)",
    "Passwords travel in clear text: use one you use nowhere else.",
    "To leave: QUIT. If telnet hangs, press Ctrl-] and type quit at the telnet> prompt.",
    "In telnet, press Ctrl-] and type mode character (then Enter): each key is then sent as you",
    "  type it, and a message arriving never mixes with the line you are typing.",
];

/// `HELP <verb>`: usage, what it does, an example.
const VERB_HELP: &[(&str, &[&str])] = &[
    (
        "REGISTER",
        &[
            "REGISTER <user> <password>: create an account.",
            "  user: 1-32 of A-Z a-z 0-9 _ . - (case matters); password: 1-128 bytes, no spaces.",
            "  The password travels in clear text: use one you use nowhere else.",
            "  example: REGISTER alice wonderland",
        ],
    ),
    (
        "AUTH",
        &[
            "AUTH <user> <password>: log in. From then on messages to you arrive as MSG lines.",
            "  After 5 wrong passwords AUTH is refused (RATE_LIMITED) for a while.",
            "  example: AUTH alice wonderland",
        ],
    ),
    (
        "SEND",
        &[
            "SEND <user> <text>: send <text> (the rest of the line, kept exactly) to <user>.",
            "  Needs AUTH first; replies OK <id> once the message is stored.",
            "  example: SEND bob hello bob, are you there?",
        ],
    ),
    (
        "INBOX",
        &[
            "INBOX [after_id]: your messages with id > after_id (default 0), oldest first,",
            "  at most 100, one MSG <id> <from> <time> <text> line each, then OK <count>.",
            "  To read more, repeat with the last id you saw until OK 0.",
            "  example: INBOX 41",
        ],
    ),
    (
        "WHO",
        &[
            "WHO [after <name>]: the users logged in now, in name order, one USER <name> line",
            "  each, then OK <count>. Needs AUTH first. At most 1000 names per reply: when there",
            "  are more the final line is OK 1000 more; ask again with WHO after <last name>.",
            "  example: WHO after bob",
        ],
    ),
    (
        "LOGOUT",
        &[
            "LOGOUT: log this connection out; it stays open (AUTH again to log back in).",
            "LOGOUT ALL: log out everywhere: every other connection logged in as you is closed",
            "  (it reads BYE logged out everywhere), and every session and token of yours",
            "  over HTTP ends, on every server sharing the store, within 5 s. This connection",
            "  stays open, logged out. Use it when you forgot to log out somewhere.",
        ],
    ),
    ("PING", &["PING: replies OK PONG; shows the server is there."]),
    (
        "ECHO",
        &[
            "ECHO <text>: replies OK <text>, exactly as sent.",
            "  example: ECHO hello",
        ],
    ),
    (
        "HELP",
        &["HELP [command]: the list of commands, or more about one of them."],
    ),
    (
        "QUIT",
        &[
            "QUIT: replies OK bye and closes the connection.",
            "  In telnet you can also press Ctrl-] and type quit.",
        ],
    ),
];

/// Every verb, for "did you mean".
const VERBS: &[&str] = &[
    "REGISTER", "AUTH", "SEND", "INBOX", "WHO", "LOGOUT", "PING", "ECHO", "HELP", "QUIT",
];

impl<'a> Command<'a> {
    pub fn parse(line: &'a str) -> ChatResult<Command<'a>> {
        let line = line.trim_start_matches(is_blank);
        let (verb, rest) = line.split_once(is_blank).unwrap_or((line, ""));
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        if is("PING") {
            no_args(rest, "PING").map(|_| Command::Ping)
        } else if is("ECHO") {
            Ok(Command::Echo(rest))
        } else if is("SEND") {
            let rest = rest.trim_start_matches(is_blank);
            match rest.split_once(is_blank) {
                Some((to, text)) if !text.is_empty() => Ok(Command::Send { to, text }),
                _ => Err(ChatError::bad_args("usage: SEND <user> <text>")),
            }
        } else if is("INBOX") {
            match rest.trim() {
                "" => Ok(Command::Inbox { after_id: 0 }),
                n => n
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(|after_id| Command::Inbox { after_id })
                    .ok_or_else(|| {
                        ChatError::bad_args("usage: INBOX [after_id], after_id a whole number >= 0")
                    }),
            }
        } else if is("WHO") {
            let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
            match (args.next(), args.next(), args.next()) {
                (None, ..) => Ok(Command::Who { after: None }),
                (Some(after), Some(name), None) if after.eq_ignore_ascii_case("after") => {
                    Ok(Command::Who { after: Some(name) })
                }
                _ => Err(ChatError::bad_args("usage: WHO [after <name>]")),
            }
        } else if is("LOGOUT") {
            match rest.trim() {
                "" => Ok(Command::Logout { all: false }),
                all if all.eq_ignore_ascii_case("ALL") => Ok(Command::Logout { all: true }),
                _ => Err(ChatError::bad_args("usage: LOGOUT [ALL]")),
            }
        } else if is("AUTH") {
            two_args(rest, "AUTH <user> <password>").map(|(user, password)| Command::Auth { user, password })
        } else if is("REGISTER") {
            two_args(rest, "REGISTER <user> <password>")
                .map(|(user, password)| Command::Register { user, password })
        } else if is("HELP") {
            match rest.trim() {
                "" => Ok(Command::Help(None)),
                verb => Ok(Command::Help(Some(verb))),
            }
        } else if is("QUIT") {
            Ok(Command::Quit)
        } else {
            let hint = if verb.contains('\x1b') {
                ARROW_KEYS.to_string()
            } else {
                match did_you_mean(verb) {
                    Some(near) => format!("did you mean {near}? HELP lists the commands"),
                    None => "try HELP".to_string(),
                }
            };
            Err(ChatError::new(
                Code::UnknownCommand,
                format!("unknown command \"{}\"; {hint}", escape(truncate(verb, 32))),
            ))
        }
    }

    /// Runs the command for one connection and writes its reply into the connection. Verbs
    /// that wait on the store or a hasher run in a boxed future of their own, so an idle
    /// connection's task stays small; PING and ECHO allocate nothing beyond their reply. INBOX
    /// writes its messages as the client takes them, flushing as it goes.
    pub async fn apply(
        self,
        cx: &mut Context,
        conn: &mut Connection,
        shutdown: &CancellationToken,
    ) -> io::Result<()> {
        let reply = match self {
            Command::Ping => Reply::ok("PONG"),
            Command::Echo(text) => Reply::ok(text.to_owned()),
            Command::Help(verb) => help(verb),
            Command::Quit => {
                cx.quit = true;
                Reply::ok("bye")
            }
            Command::Register { user, password } => Box::pin(register(cx, user, password)).await.into(),
            Command::Auth { user, password } => Box::pin(auth(cx, user, password)).await.into(),
            Command::Send { to, text } => Box::pin(send(cx, to, text)).await.into(),
            Command::Inbox { after_id } => return Box::pin(inbox(cx, conn, shutdown, after_id)).await,
            Command::Who { after } => Box::pin(who(cx, after)).await.into(),
            Command::Logout { all } => Box::pin(logout(cx, all)).await.into(),
        };
        reply.write_to(conn.out());
        Ok(())
    }
}

fn help(verb: Option<&str>) -> Reply {
    let Some(verb) = verb else {
        return Reply::lines(HELP.iter().map(|l| l.to_string()).collect(), "");
    };
    match VERB_HELP.iter().find(|(name, _)| name.eq_ignore_ascii_case(verb)) {
        Some((_, lines)) => Reply::lines(lines.iter().map(|l| l.to_string()).collect(), ""),
        None => {
            let hint = match did_you_mean(verb) {
                Some(near) => format!("did you mean HELP {near}? "),
                None => String::new(),
            };
            Reply::err(ChatError::bad_args(format!(
                "there is no command \"{}\"; {hint}the commands are {}",
                escape(truncate(verb, 32)),
                VERBS.join(" ")
            )))
        }
    }
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
        .map(|verb| (edit_distance(typed.as_bytes(), verb.as_bytes()), *verb))
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

async fn register(cx: &mut Context, user: &str, password: &str) -> ChatResult<Reply> {
    let user = cx.chat.register(user, password, cx.peer).await?;
    Ok(Reply::ok(format!(
        "registered {user}; now AUTH {user} <password>"
    )))
}

async fn auth(cx: &mut Context, user: &str, password: &str) -> ChatResult<Reply> {
    let user = cx
        .chat
        .authenticate(user, password, cx.peer, Some(&mut cx.auth))
        .await?;
    crate::activity::logged_in(user.as_str(), cx.peer);
    let reply = Reply::ok(format!("logged in as {user}"));
    if cx.user() != Some(&user) {
        // Leave the old user's presence before joining as the new one.
        drop(cx.session.take());
        let kick = CancellationToken::new();
        let feed = cx.chat.go_online(&user, kick.clone(), None).await?;
        cx.session = Some(Box::new(LoggedIn { user, feed, kick }));
    }
    Ok(reply)
}

async fn send(cx: &mut Context, to: &str, text: &str) -> ChatResult<Reply> {
    let from = logged_in(cx)?;
    let message = cx.chat.send(from, to, text, None).await.map_err(|mut e| {
        // The domain quotes an unknown name as Rust does; a person at telnet reads the keys
        // they pressed in caret notation.
        if e.code == Code::NoSuchUser && to.chars().any(needs_escape) {
            e.message = format!("there is no user \"{}\"", escape(to)).into();
        }
        if matches!(e.code, Code::BadArgs | Code::NoSuchUser)
            && (to.contains('\x1b') || text.contains('\x1b'))
        {
            e.message = format!("{}; {ARROW_KEYS}", e.message).into();
        }
        e
    })?;
    Ok(Reply::ok(message.id.to_string()))
}

/// Writes up to [`INBOX_PAGE`] messages, reading them from the store a few at a time and
/// writing them as the client takes them, so a reply of large messages to a client that reads
/// slowly (or not at all) holds a bounded number of bytes, not the whole reply.
async fn inbox(
    cx: &mut Context,
    conn: &mut Connection,
    shutdown: &CancellationToken,
    after_id: i64,
) -> io::Result<()> {
    let user = match logged_in(cx) {
        Ok(user) => user.clone(),
        Err(e) => {
            Reply::err(e).write_to(conn.out());
            return Ok(());
        }
    };
    let (mut after, mut sent, mut read) = (after_id, 0u32, INBOX_FIRST_READ);
    while sent < INBOX_PAGE {
        let limit = read.min(INBOX_PAGE - sent);
        let page = match cx.chat.inbox(&user, after, limit).await {
            Ok(page) => page,
            Err(e) => {
                // Lines already written stay; the final line says the rest failed.
                Reply::err(e).write_to(conn.out());
                return Ok(());
            }
        };
        let bytes: usize = page.iter().map(|m| m.body.len()).sum();
        for message in &page {
            put_msg(conn.out(), message);
            sent += 1;
            after = message.id;
            if conn.wants_flush() {
                flush(conn, cx, shutdown).await?;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
            }
        }
        if (page.len() as u32) < limit {
            break;
        }
        let average = (bytes / page.len().max(1)).max(1);
        read = (INBOX_READ_BYTES / average).clamp(1, INBOX_PAGE as usize) as u32;
    }
    Reply::ok(sent.to_string()).write_to(conn.out());
    Ok(())
}

/// `USER <name>` lines, then `OK <count>`, or `OK <count> more` when there are more after
/// the last name.
async fn who(cx: &mut Context, after: Option<&str>) -> ChatResult<Reply> {
    logged_in(cx)?;
    let page = cx.chat.who(after.unwrap_or("")).await?;
    let count = page.users.len();
    Ok(Reply::lines(
        page.users.iter().map(|u| format!("USER {u}")).collect(),
        if page.more {
            format!("{count} more")
        } else {
            count.to_string()
        },
    ))
}

/// Leaves this connection's session; with `all`, every session and token of the user too.
/// The connection stays open, logged out, either way.
async fn logout(cx: &mut Context, all: bool) -> ChatResult<Reply> {
    let user = logged_in(cx)?.clone();
    // Offline before the rest are ended, so that this connection is not closed with them.
    drop(cx.session.take());
    if !all {
        return Ok(Reply::ok(format!("logged out {user}; AUTH to log in again")));
    }
    let ended = cx.chat.log_out_everywhere(&user).await?;
    Ok(Reply::ok(format!(
        "logged out everywhere: every session of {user} ended ({} tokens)",
        ended.tokens
    )))
}

fn logged_in(cx: &Context) -> ChatResult<&Username> {
    cx.user()
        .ok_or_else(|| ChatError::new(Code::AuthRequired, "log in first: AUTH <user> <password>"))
}

/// What separates a verb from its arguments: a space, or a TAB, form feed or vertical tab,
/// which a person may type by mistake (Ctrl-L, Tab) and cannot see.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c')
}

/// The hint for a line holding an escape sequence: what an arrow key sends.
const ARROW_KEYS: &str =
    "arrow keys do not edit or recall lines here: correct with Backspace, and HELP lists the commands";

fn no_args(rest: &str, verb: &str) -> ChatResult<()> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(ChatError::bad_args(format!("{verb} takes no arguments")))
    }
}

fn two_args<'a>(rest: &'a str, usage: &'static str) -> ChatResult<(&'a str, &'a str)> {
    let mut args = rest.split(is_blank).filter(|a| !a.is_empty());
    match (args.next(), args.next(), args.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(ChatError::bad_args(format!("usage: {usage}"))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Code {
        Command::parse(line).unwrap_err().code
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(Command::parse("ping"), Ok(Command::Ping));
        assert_eq!(Command::parse("PiNg"), Ok(Command::Ping));
        assert_eq!(Command::parse("who"), Ok(Command::Who { after: None }));
        assert_eq!(Command::parse("Help"), Ok(Command::Help(None)));
        assert_eq!(Command::parse("help send"), Ok(Command::Help(Some("send"))));
        assert_eq!(Command::parse("quit"), Ok(Command::Quit));
    }

    #[test]
    fn send_keeps_the_text_exactly() {
        assert_eq!(
            Command::parse("SEND bob  hello  world "),
            Ok(Command::Send {
                to: "bob",
                text: " hello  world "
            })
        );
        assert_eq!(code("SEND bob"), Code::BadArgs);
        assert_eq!(code("SEND bob "), Code::BadArgs);
        assert_eq!(code("SEND"), Code::BadArgs);
    }

    #[test]
    fn echo_keeps_the_text_exactly() {
        assert_eq!(Command::parse("ECHO  a b "), Ok(Command::Echo(" a b ")));
        assert_eq!(Command::parse("ECHO"), Ok(Command::Echo("")));
    }

    #[test]
    fn register_and_auth_take_two_arguments() {
        assert_eq!(
            Command::parse("REGISTER alice pw"),
            Ok(Command::Register {
                user: "alice",
                password: "pw"
            })
        );
        assert_eq!(
            Command::parse("auth  alice   pw"),
            Ok(Command::Auth {
                user: "alice",
                password: "pw"
            })
        );
        assert_eq!(code("REGISTER alice"), Code::BadArgs);
        assert_eq!(code("AUTH alice pw extra"), Code::BadArgs);
    }

    #[test]
    fn inbox_takes_an_optional_id() {
        assert_eq!(Command::parse("INBOX"), Ok(Command::Inbox { after_id: 0 }));
        assert_eq!(Command::parse("inbox 42"), Ok(Command::Inbox { after_id: 42 }));
        assert_eq!(code("INBOX -1"), Code::BadArgs);
        assert_eq!(code("INBOX x"), Code::BadArgs);
    }

    #[test]
    fn arguments_where_none_belong() {
        assert_eq!(code("PING now"), Code::BadArgs);
        assert_eq!(code("WHO me"), Code::BadArgs);
        assert_eq!(code("LOGOUT now"), Code::BadArgs);
        assert_eq!(Command::parse("PING  "), Ok(Command::Ping));
    }

    #[test]
    fn who_pages_and_logout_everywhere() {
        assert_eq!(
            Command::parse("WHO after bob"),
            Ok(Command::Who { after: Some("bob") })
        );
        assert_eq!(
            Command::parse("who AFTER  bob "),
            Ok(Command::Who { after: Some("bob") })
        );
        assert_eq!(code("WHO after"), Code::BadArgs);
        assert_eq!(code("WHO after a b"), Code::BadArgs);
        assert_eq!(Command::parse("logout"), Ok(Command::Logout { all: false }));
        assert_eq!(Command::parse("LOGOUT all"), Ok(Command::Logout { all: true }));
    }

    #[test]
    fn unknown_verbs() {
        assert_eq!(code("FROB x"), Code::UnknownCommand);
        assert_eq!(code("PINGX"), Code::UnknownCommand);
        let long = "X".repeat(100);
        let err = Command::parse(&long).unwrap_err();
        assert!(err.message.contains(&"X".repeat(32)), "{}", err.message);
        assert!(
            !err.message.contains(&"X".repeat(33)),
            "the verb is quoted only in part: {}",
            err.message
        );
    }

    #[test]
    fn form_feed_and_tab_around_a_command_are_blanks() {
        // Ctrl-L before REGISTER, Tab between arguments, a form feed at the end.
        assert_eq!(
            Command::parse("\x0cREGISTER alice\tpw\x0c"),
            Ok(Command::Register {
                user: "alice",
                password: "pw"
            })
        );
        assert_eq!(Command::parse("\t PING \x0b"), Ok(Command::Ping));
        assert_eq!(Command::parse("WHO\x0c"), Ok(Command::Who { after: None }));
        assert_eq!(
            Command::parse("WHO\tafter\tbob\x0c"),
            Ok(Command::Who { after: Some("bob") })
        );
        // SEND's text after the recipient is kept exactly, tabs and form feeds included.
        assert_eq!(
            Command::parse("\x0cSEND\tbob \thello\x0c "),
            Ok(Command::Send {
                to: "bob",
                text: "\thello\x0c "
            })
        );
    }

    #[test]
    fn control_keys_in_errors_are_shown_in_caret_notation() {
        let message = |line: &str| Command::parse(line).unwrap_err().message;
        assert_eq!(
            message("\x01PING"),
            "unknown command \"^APING\"; did you mean PING? HELP lists the commands"
        );
        // An arrow key: what it sends, and that it does not edit the line.
        let arrow = message("\x1b[A");
        assert!(
            arrow.starts_with("unknown command \"^[[A\"; arrow keys"),
            "{arrow}"
        );
        assert!(!arrow.contains('\x1b') && !arrow.contains("\\u{"), "{arrow}");
        let mut out = bytes::BytesMut::new();
        help(Some("\x07x")).write_to(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("there is no command \"^Gx\""), "{text}");
    }

    #[test]
    fn help_lines_never_look_final() {
        let verb_lines = VERB_HELP.iter().flat_map(|(_, lines)| lines.iter());
        assert!(HELP
            .iter()
            .chain(verb_lines)
            .all(|l| !crate::line::reply::is_final_line(l)));
        assert!(VERBS.iter().all(|v| VERB_HELP.iter().any(|(name, _)| name == v)));
    }

    #[test]
    fn typos_get_a_suggestion() {
        let message = |line: &str| Command::parse(line).unwrap_err().message;
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
    }

    #[test]
    fn help_for_one_verb() {
        let mut out = bytes::BytesMut::new();
        help(Some("send")).write_to(&mut out);
        assert!(out.starts_with(b"SEND <user> <text>"), "{out:?}");
        out.clear();
        help(Some("sedn")).write_to(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("ERR BAD_ARGS") && text.contains("did you mean HELP SEND?"),
            "{text}"
        );
    }
}
