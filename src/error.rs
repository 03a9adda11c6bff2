//! The one error type of chatd. Every failure a client can see maps to a protocol [`Code`];
//! the line protocol prints `ERR <CODE> <text>`, the HTTP facade maps the same codes to statuses.

use std::borrow::Cow;
use std::fmt;

/// The protocol's error codes, exactly as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    UnknownCommand,
    BadArgs,
    UserExists,
    BadCredentials,
    AuthRequired,
    NoSuchUser,
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

/// An error a client sees: a code and a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ChatError {
    pub code: Code,
    pub message: Cow<'static, str>,
    /// The server could not reach its store: the request may succeed if retried (HTTP 503).
    pub unavailable: bool,
}

impl ChatError {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
            unavailable: false,
        }
    }

    /// The store could not be reached (down, restarting, connections cut). Clients get
    /// `INTERNAL` with a message that says so; HTTP answers 503.
    pub fn unavailable(context: &str, err: impl fmt::Display) -> ChatError {
        tracing::warn!(error = %err, "{context}: the store is unavailable");
        ChatError {
            code: Code::Internal,
            message: format!("the store is unavailable ({context}); nothing was changed, try again").into(),
            unavailable: true,
        }
    }

    pub fn bad_args(message: impl Into<Cow<'static, str>>) -> ChatError {
        ChatError::new(Code::BadArgs, message)
    }

    /// A failure of the server itself (the store, a task). The detail goes to the log; the
    /// client is told only that the server failed, so nothing internal leaks.
    pub fn internal(context: &str, err: impl fmt::Display) -> ChatError {
        tracing::error!(error = %err, "{context}");
        ChatError::new(Code::Internal, format!("{context} failed; try again"))
    }
}

pub type ChatResult<T> = Result<T, ChatError>;
