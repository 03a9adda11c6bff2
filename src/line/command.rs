//! The verbs of the line protocol: [`Command::parse`] turns a line into a command (borrowing
//! from the line, no allocation), [`Command::apply`] runs it against the chat domain.

use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

use crate::chat::{Chat, ConnAuthState, Username, INBOX_PAGE};
use crate::error::{ChatError, ChatResult, Code};
use crate::hub::Subscription;
use crate::line::reply::{msg_line, Reply};

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Ping,
    Echo(&'a str),
    Help,
    Quit,
    Register { user: &'a str, password: &'a str },
    Auth { user: &'a str, password: &'a str },
    Send { to: &'a str, text: &'a str },
    Inbox { after_id: i64 },
    Who,
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

    pub fn user(&self) -> Option<&Username> {
        self.session.as_ref().map(|s| &s.user)
    }
}

pub const HELP: &[&str] = &[
    "Commands (verbs in any case; replies end with OK or ERR <CODE>):",
    "  REGISTER <user> <password>   create an account",
    "  AUTH <user> <password>       log in; new messages then arrive as MSG lines",
    "  SEND <user> <text>           send a message (after AUTH); replies OK <id>",
    "  INBOX [after_id]             up to 100 messages with id > after_id, oldest first",
    "  WHO                          the users online now",
    "  PING                         replies OK PONG",
    "  ECHO <text>                  replies OK <text>",
    "  HELP                         this text",
    "  QUIT                         close the connection",
];

impl<'a> Command<'a> {
    pub fn parse(line: &'a str) -> ChatResult<Command<'a>> {
        let line = line.trim_start_matches(' ');
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        if is("PING") {
            no_args(rest, "PING").map(|_| Command::Ping)
        } else if is("ECHO") {
            Ok(Command::Echo(rest))
        } else if is("SEND") {
            let rest = rest.trim_start_matches(' ');
            match rest.split_once(' ') {
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
            no_args(rest, "WHO").map(|_| Command::Who)
        } else if is("AUTH") {
            two_args(rest, "AUTH <user> <password>").map(|(user, password)| Command::Auth { user, password })
        } else if is("REGISTER") {
            two_args(rest, "REGISTER <user> <password>")
                .map(|(user, password)| Command::Register { user, password })
        } else if is("HELP") {
            Ok(Command::Help)
        } else if is("QUIT") {
            Ok(Command::Quit)
        } else {
            Err(ChatError::new(
                Code::UnknownCommand,
                format!("unknown command {:?}; try HELP", truncate(verb, 32)),
            ))
        }
    }

    /// Runs the command for one connection. Verbs that wait on the store or a hasher run in a
    /// boxed future of their own, so an idle connection's task stays small; PING and ECHO
    /// allocate nothing beyond their reply.
    pub async fn apply(self, cx: &mut Context) -> Reply {
        match self {
            Command::Ping => Reply::ok("PONG"),
            Command::Echo(text) => Reply::ok(text.to_owned()),
            Command::Help => Reply::lines(HELP.iter().map(|l| l.to_string()).collect(), ""),
            Command::Quit => {
                cx.quit = true;
                Reply::ok("bye")
            }
            Command::Register { user, password } => Box::pin(register(cx, user, password)).await.into(),
            Command::Auth { user, password } => Box::pin(auth(cx, user, password)).await.into(),
            Command::Send { to, text } => Box::pin(send(cx, to, text)).await.into(),
            Command::Inbox { after_id } => Box::pin(inbox(cx, after_id)).await.into(),
            Command::Who => Box::pin(who(cx)).await.into(),
        }
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
    let reply = Reply::ok(format!("logged in as {user}"));
    if cx.user() != Some(&user) {
        // Leave the old user's presence before joining as the new one.
        drop(cx.session.take());
        let kick = CancellationToken::new();
        let feed = cx.chat.go_online(&user, kick.clone())?;
        cx.session = Some(Box::new(LoggedIn { user, feed, kick }));
    }
    Ok(reply)
}

async fn send(cx: &mut Context, to: &str, text: &str) -> ChatResult<Reply> {
    let from = logged_in(cx)?;
    let message = cx.chat.send(from, to, text, None).await?;
    Ok(Reply::ok(message.id.to_string()))
}

async fn inbox(cx: &mut Context, after_id: i64) -> ChatResult<Reply> {
    let user = logged_in(cx)?;
    let messages = cx.chat.inbox(user, after_id, INBOX_PAGE).await?;
    let count = messages.len();
    Ok(Reply::lines(
        messages.iter().map(|m| msg_line(m)).collect(),
        count.to_string(),
    ))
}

async fn who(cx: &mut Context) -> ChatResult<Reply> {
    let users = cx.chat.who().await?;
    let count = users.len();
    Ok(Reply::lines(
        users.iter().map(|u| format!("USER {u}")).collect(),
        count.to_string(),
    ))
}

fn logged_in(cx: &Context) -> ChatResult<&Username> {
    cx.user()
        .ok_or_else(|| ChatError::new(Code::AuthRequired, "log in first: AUTH <user> <password>"))
}

fn no_args(rest: &str, verb: &str) -> ChatResult<()> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(ChatError::bad_args(format!("{verb} takes no arguments")))
    }
}

fn two_args<'a>(rest: &'a str, usage: &'static str) -> ChatResult<(&'a str, &'a str)> {
    let mut args = rest.split(' ').filter(|a| !a.is_empty());
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
        assert_eq!(Command::parse("who"), Ok(Command::Who));
        assert_eq!(Command::parse("Help"), Ok(Command::Help));
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
        assert_eq!(Command::parse("PING  "), Ok(Command::Ping));
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
    fn help_lines_never_look_final() {
        assert!(HELP.iter().all(|l| !crate::line::reply::is_final_line(l)));
    }
}
