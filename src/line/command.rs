//! The verbs of the line protocol at work: [`Command::parse`] finds a line's verb in the table
//! ([`super::verbs`]) and parses its arguments (borrowing from the line, no allocation);
//! [`Command::apply`] checks login as the verb's row asks, then runs it against the chat domain.

use std::io;
use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

use super::connection::Connection;
use super::reply::{escape, needs_escape, put_msg, room_line, Reply};
use super::session::flush;
use super::verbs::{self, is_blank, Verb, ARROW_KEYS};
use crate::chat::rooms::{HISTORY_LATEST, HISTORY_PAGE};
use crate::chat::{Chat, ConnAuthState, Username, INBOX_PAGE};
use crate::error::{ChatResult, Code};
use crate::hub::{Ended, Subscription};
use crate::store::Page;

/// Messages an INBOX reply reads from the store first; later reads are sized so that about
/// [`INBOX_READ_BYTES`] of messages are held at once, however large the messages are.
const INBOX_FIRST_READ: u32 = 8;
const INBOX_READ_BYTES: usize = 256 * 1024;

/// A parsed command line: the verb's row in the table, and what it was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    pub verb: &'static Verb,
    pub action: Action<'a>,
}

/// A verb with its arguments, borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
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
    Join {
        room: &'a str,
    },
    Leave {
        room: &'a str,
    },
    /// `HISTORY <#room|user> [after|before <id>]`.
    History {
        of: &'a str,
        page: HistoryPage,
    },
    Rooms,
    Members {
        room: &'a str,
    },
    Read {
        room: &'a str,
        id: Option<i64>,
    },
    Topic {
        room: &'a str,
        text: &'a str,
    },
    Invite {
        room: &'a str,
        user: &'a str,
    },
    Kick {
        room: &'a str,
        user: &'a str,
        reason: Option<&'a str>,
    },
    Mode {
        room: &'a str,
        mode: &'a str,
        user: Option<&'a str>,
    },
}

/// Which part of a history HISTORY asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The latest [`HISTORY_LATEST`].
    Latest,
    After(i64),
    Before(i64),
}

impl HistoryPage {
    fn page(self) -> Page {
        match self {
            HistoryPage::Latest => Page::Before(i64::MAX, HISTORY_LATEST),
            HistoryPage::After(id) => Page::After(id, HISTORY_PAGE),
            HistoryPage::Before(id) => Page::Before(id, HISTORY_PAGE),
        }
    }
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

    /// The live session of this connection, which what it sends carries so that it is
    /// answered `OK <id>` rather than pushed its own message; 0 before login.
    pub fn origin(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| s.feed.id())
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

impl<'a> Command<'a> {
    /// Finds the verb in the table and parses its arguments; a line that names no verb, or
    /// whose arguments do not fit, is answered here for every verb alike.
    pub fn parse(line: &'a str) -> ChatResult<Command<'a>> {
        let line = line.trim_start_matches(is_blank);
        let (name, rest) = line.split_once(is_blank).unwrap_or((line, ""));
        let verb = Verb::find(name).ok_or_else(|| verbs::unknown(name))?;
        let action = (verb.parse)(rest).ok_or_else(|| verb.usage())?;
        Ok(Command { verb, action })
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
        // The one check before any verb's own code: login, if its row says so.
        let me = match self.verb.admit(cx.user()) {
            Ok(me) => me,
            Err(e) => {
                Reply::err(e).write_to(conn.out());
                return Ok(());
            }
        };
        let reply = match (self.action, me) {
            (Action::Ping, _) => Reply::ok("PONG"),
            (Action::Echo(text), _) => Reply::ok(text.to_owned()),
            (Action::Help(verb), _) => verbs::help(verb),
            (Action::Quit, _) => {
                cx.quit = true;
                Reply::ok("bye")
            }
            (Action::Register { user, password }, _) => Box::pin(register(cx, user, password)).await.into(),
            (Action::Auth { user, password }, _) => Box::pin(auth(cx, user, password)).await.into(),
            (Action::Send { to, text }, Some(me)) => Box::pin(send(cx, &me, to, text)).await.into(),
            (Action::Inbox { after_id }, Some(me)) => {
                return Box::pin(inbox(cx, conn, shutdown, me, after_id)).await
            }
            (Action::Who { after }, Some(_)) => Box::pin(who(cx, after)).await.into(),
            (Action::Logout { all }, Some(me)) => Box::pin(logout(cx, me, all)).await.into(),
            (Action::Join { room }, Some(me)) => {
                let origin = cx.origin();
                let joined = cx.chat.join(&me, room, origin).await;
                joined
                    .map(|(room, n)| Reply::ok(format!("joined {room} ({n} members)")))
                    .into()
            }
            (Action::Leave { room }, Some(me)) => {
                let origin = cx.origin();
                let left = cx.chat.leave(&me, room, origin).await;
                left.map(|room| Reply::ok(format!("left {room}"))).into()
            }
            (Action::History { of, page }, Some(me)) => Box::pin(history(cx, &me, of, page)).await.into(),
            (Action::Rooms, Some(me)) => Box::pin(rooms(cx, &me)).await.into(),
            (Action::Members { room }, Some(me)) => Box::pin(members(cx, &me, room)).await.into(),
            (Action::Read { room, id }, Some(me)) => {
                let read = cx.chat.mark_read(&me, room, id).await;
                read.map(|_| Reply::ok("")).into()
            }
            (Action::Topic { room, text }, Some(me)) => {
                let origin = cx.origin();
                let set = cx.chat.set_topic(&me, room, text, origin).await;
                set.map(|_| Reply::ok("")).into()
            }
            (Action::Invite { room, user }, Some(me)) => {
                let invited = cx.chat.invite(&me, room, user).await;
                invited.map(|_| Reply::ok("")).into()
            }
            (Action::Kick { room, user, reason }, Some(me)) => {
                let origin = cx.origin();
                let kicked = cx.chat.kick(&me, room, user, reason, origin).await;
                kicked.map(|_| Reply::ok("")).into()
            }
            (Action::Mode { room, mode, user }, Some(me)) => {
                let origin = cx.origin();
                let set = cx.chat.set_mode(&me, room, mode, user, origin).await;
                set.map(|_| Reply::ok("")).into()
            }
            // An action that acts as someone, under a row that does not ask for login: refused
            // as before login, so that such a row cannot go unnoticed.
            (_, None) => Reply::err(verbs::auth_required()),
        };
        reply.write_to(conn.out());
        Ok(())
    }
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

async fn send(cx: &mut Context, from: &Username, to: &str, text: &str) -> ChatResult<Reply> {
    if to.starts_with('#') {
        let message = cx.chat.say(from, to, text, None, cx.origin()).await?;
        return Ok(Reply::ok(message.id.to_string()));
    }
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
    user: Username,
    after_id: i64,
) -> io::Result<()> {
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

/// `HISTORY <#room>`: ROOM lines; `HISTORY <user>`: the conversation as MSG lines with the
/// sender shown, both sides. Then `OK <count>`.
async fn history(cx: &mut Context, me: &Username, of: &str, page: HistoryPage) -> ChatResult<Reply> {
    let (lines, count): (Vec<String>, usize) = if of.starts_with('#') {
        let (_, rows) = cx.chat.room_history(me, of, page.page()).await?;
        (rows.iter().map(|m| room_line(m)).collect(), rows.len())
    } else {
        let rows = cx.chat.conversation_page(me, of, page.page()).await?;
        (
            rows.iter().map(|m| super::reply::msg_line(m)).collect(),
            rows.len(),
        )
    };
    Ok(Reply::lines(lines, count.to_string()))
}

/// `JOINED <#room> <members> <unread> <topic>` lines, then `OK <count>`.
async fn rooms(cx: &mut Context, me: &Username) -> ChatResult<Reply> {
    let rooms = cx.chat.rooms(me).await?;
    let lines: Vec<String> = rooms
        .iter()
        .map(|r| {
            format!(
                "JOINED {} {} {} {}",
                r.name,
                r.members,
                r.unread,
                escape(&r.topic)
            )
        })
        .map(|l| l.trim_end().to_string())
        .collect();
    let count = lines.len();
    Ok(Reply::lines(lines, count.to_string()))
}

/// `USER <name> <owner|op|member> <online|offline>` lines, then `OK <count>`.
async fn members(cx: &mut Context, me: &Username, room: &str) -> ChatResult<Reply> {
    let view = cx.chat.room(me, room).await?;
    let lines: Vec<String> = view
        .members
        .iter()
        .map(|m| {
            let online = if m.online { "online" } else { "offline" };
            format!("USER {} {} {online}", m.name, m.role.as_str())
        })
        .collect();
    let count = lines.len();
    Ok(Reply::lines(lines, count.to_string()))
}

/// Leaves this connection's session; with `all`, every session and token of the user too.
/// The connection stays open, logged out, either way.
async fn logout(cx: &mut Context, user: Username, all: bool) -> ChatResult<Reply> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Code {
        Command::parse(line).unwrap_err().code
    }

    /// What a line asks for, without its verb's row.
    fn action(line: &str) -> ChatResult<Action<'_>> {
        Command::parse(line).map(|c| c.action)
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(action("ping"), Ok(Action::Ping));
        assert_eq!(action("PiNg"), Ok(Action::Ping));
        assert_eq!(action("who"), Ok(Action::Who { after: None }));
        assert_eq!(action("Help"), Ok(Action::Help(None)));
        assert_eq!(action("help send"), Ok(Action::Help(Some("send"))));
        assert_eq!(action("quit"), Ok(Action::Quit));
    }

    #[test]
    fn send_keeps_the_text_exactly() {
        assert_eq!(
            action("SEND bob  hello  world "),
            Ok(Action::Send {
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
        assert_eq!(action("ECHO  a b "), Ok(Action::Echo(" a b ")));
        assert_eq!(action("ECHO"), Ok(Action::Echo("")));
    }

    #[test]
    fn register_and_auth_take_two_arguments() {
        assert_eq!(
            action("REGISTER alice pw"),
            Ok(Action::Register {
                user: "alice",
                password: "pw"
            })
        );
        assert_eq!(
            action("auth  alice   pw"),
            Ok(Action::Auth {
                user: "alice",
                password: "pw"
            })
        );
        assert_eq!(code("REGISTER alice"), Code::BadArgs);
        assert_eq!(code("AUTH alice pw extra"), Code::BadArgs);
    }

    #[test]
    fn inbox_takes_an_optional_id() {
        assert_eq!(action("INBOX"), Ok(Action::Inbox { after_id: 0 }));
        assert_eq!(action("inbox 42"), Ok(Action::Inbox { after_id: 42 }));
        assert_eq!(code("INBOX -1"), Code::BadArgs);
        assert_eq!(code("INBOX x"), Code::BadArgs);
    }

    #[test]
    fn arguments_where_none_belong() {
        assert_eq!(code("PING now"), Code::BadArgs);
        assert_eq!(code("WHO me"), Code::BadArgs);
        assert_eq!(code("LOGOUT now"), Code::BadArgs);
        assert_eq!(action("PING  "), Ok(Action::Ping));
    }

    #[test]
    fn who_pages_and_logout_everywhere() {
        assert_eq!(action("WHO after bob"), Ok(Action::Who { after: Some("bob") }));
        assert_eq!(action("who AFTER  bob "), Ok(Action::Who { after: Some("bob") }));
        assert_eq!(code("WHO after"), Code::BadArgs);
        assert_eq!(code("WHO after a b"), Code::BadArgs);
        assert_eq!(action("logout"), Ok(Action::Logout { all: false }));
        assert_eq!(action("LOGOUT all"), Ok(Action::Logout { all: true }));
    }

    #[test]
    fn unknown_verbs() {
        assert_eq!(code("FROB x"), Code::UnknownCommand);
        assert_eq!(code("PINGX"), Code::UnknownCommand);
        let long = "X".repeat(100);
        let err = action(&long).unwrap_err();
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
            action("\x0cREGISTER alice\tpw\x0c"),
            Ok(Action::Register {
                user: "alice",
                password: "pw"
            })
        );
        assert_eq!(action("\t PING \x0b"), Ok(Action::Ping));
        assert_eq!(action("WHO\x0c"), Ok(Action::Who { after: None }));
        assert_eq!(
            action("WHO\tafter\tbob\x0c"),
            Ok(Action::Who { after: Some("bob") })
        );
        // SEND's text after the recipient is kept exactly, tabs and form feeds included.
        assert_eq!(
            action("\x0cSEND\tbob \thello\x0c "),
            Ok(Action::Send {
                to: "bob",
                text: "\thello\x0c "
            })
        );
    }

    #[test]
    fn control_keys_in_errors_are_shown_in_caret_notation() {
        let message = |line: &str| action(line).unwrap_err().message;
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
        verbs::help(Some("\x07x")).write_to(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("there is no command \"^Gx\""), "{text}");
    }
}
