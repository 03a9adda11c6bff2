//! The one error type of chatd. Every failure a client can see maps to a protocol [`Code`];
//! the line protocol prints `ERR <CODE> <text>`, the HTTP facade maps the same codes to statuses.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The protocol's error codes, exactly as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    UnknownCommand,
    BadArgs,
    UserExists,
    BadCredentials,
    AuthRequired,
    NoSuchUser,
    NoSuchRoom,
    NotMember,
    Forbidden,
    LineTooLong,
    BadEncoding,
    RateLimited,
    ServerBusy,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::UnknownCommand => "UNKNOWN_COMMAND",
            Code::BadArgs => "BAD_ARGS",
            Code::UserExists => "USER_EXISTS",
            Code::BadCredentials => "BAD_CREDENTIALS",
            Code::AuthRequired => "AUTH_REQUIRED",
            Code::NoSuchUser => "NO_SUCH_USER",
            Code::NoSuchRoom => "NO_SUCH_ROOM",
            Code::NotMember => "NOT_MEMBER",
            Code::Forbidden => "FORBIDDEN",
            Code::LineTooLong => "LINE_TOO_LONG",
            Code::BadEncoding => "BAD_ENCODING",
            Code::RateLimited => "RATE_LIMITED",
            Code::ServerBusy => "SERVER_BUSY",
            Code::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client sees: a code and a human-readable explanation. What the client must not
/// see (a database's own message) travels in `detail`, for the edge that answers to log.
/// Building an error never logs: the facades log it once, when they answer with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ChatError {
    pub code: Code,
    pub message: Cow<'static, str>,
    /// The server could not reach its store: the request may succeed if retried (HTTP 503).
    pub unavailable: bool,
    /// What went wrong inside the server, for the log only.
    pub detail: Option<Arc<str>>,
    /// For a change to a room that was refused, which rule refused it: doors whose protocol
    /// has a reply per rule (IRC's numerics) answer with it.
    pub refusal: Option<crate::store::RoomRefusal>,
}

impl ChatError {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
            unavailable: false,
            detail: None,
            refusal: None,
        }
    }

    /// The store could not be reached (down, restarting, connections cut, no answer in time).
    /// Clients get `INTERNAL` with a message that says so; HTTP answers 503. Whether the
    /// command took effect is said by `outcome`, since a write may have committed just before
    /// the connection to the store was lost.
    pub fn unavailable(context: &str, outcome: Outcome, detail: impl fmt::Display) -> ChatError {
        ChatError {
            code: Code::Internal,
            message: format!("the store is unavailable ({context}); {}", outcome.advice()).into(),
            unavailable: true,
            detail: Some(Arc::from(detail.to_string())),
            refusal: None,
        }
    }

    pub fn bad_args(message: impl Into<Cow<'static, str>>) -> ChatError {
        ChatError::new(Code::BadArgs, message)
    }

    /// A failure of the server itself (the store, a task). The client is told only that the
    /// server failed, so nothing internal leaks; `detail` is for the log.
    pub fn internal(context: &str, detail: impl fmt::Display) -> ChatError {
        ChatError {
            code: Code::Internal,
            message: format!("{context} failed; try again").into(),
            unavailable: false,
            detail: Some(Arc::from(detail.to_string())),
            refusal: None,
        }
    }

    /// Logs a failure of the server (not of the client's request), once, where it is answered.
    pub fn log(&self) {
        if let Some(detail) = &self.detail {
            if self.unavailable {
                tracing::warn!(error = %detail, "{}", self.message);
            } else {
                tracing::error!(error = %detail, "{}", self.message);
            }
        }
    }
}

/// Whether a command that failed for want of the store took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was changed: the store was not reached, or the change was rolled back.
    Unchanged,
    /// The change was sent and the answer lost: it may have been stored.
    Unknown,
}

impl Outcome {
    fn advice(self) -> &'static str {
        match self {
            Outcome::Unchanged => "nothing was changed, try again",
            Outcome::Unknown => "it may or may not have been stored; check before trying again",
        }
    }
}

pub type ChatResult<T> = Result<T, ChatError>;
