//! The validated inputs of the domain: user names, passwords and message text. Every rule a
//! store could refuse is checked here, before a message joins a batch, and both facades go
//! through these same checks.

use std::sync::Arc;

use crate::error::{ChatError, ChatResult};

/// Longest message body in bytes, whichever facade it comes through.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest client-supplied timestamp (`POST /`), in bytes.
pub const MAX_CLIENT_TIMESTAMP_BYTES: usize = 64;

/// A valid user name: 1-32 of `[A-Za-z0-9_.-]`. Names are case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(Arc<str>);

impl Username {
    pub fn parse(name: &str) -> ChatResult<Username> {
        let valid = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Username(Arc::from(name)))
        } else {
            Err(ChatError::bad_args(
                "user names are 1-32 characters of A-Z a-z 0-9 _ . -",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest password in bytes: IRC clients and SASL tooling use long generated passwords, and
/// argon2's cost does not depend on the length.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A valid password: 1 to [`MAX_PASSWORD_BYTES`] bytes, no spaces or control characters.
pub struct Password<'a>(&'a str);

impl<'a> Password<'a> {
    pub fn parse(password: &'a str) -> ChatResult<Password<'a>> {
        let valid = (1..=MAX_PASSWORD_BYTES).contains(&password.len())
            && !password.chars().any(|c| c == ' ' || c.is_control());
        if valid {
            Ok(Password(password))
        } else {
            Err(ChatError::bad_args("passwords are 1-1024 bytes without spaces"))
        }
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// Checks a message body: 1 to [`MAX_MESSAGE_BYTES`] bytes of text that a terminal shows as
/// text — no control character (Unicode category Cc: C0, DEL and C1) except TAB, and no line or
/// paragraph separator (U+2028, U+2029), which would let one message forge the look of others.
pub fn check_message_text(body: &str) -> ChatResult<()> {
    if body.is_empty() {
        return Err(ChatError::bad_args("the message is empty"));
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(ChatError::bad_args(format!(
            "the message is over {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    check_text("the message", body)
}

/// Checks a client's timestamp: at most [`MAX_CLIENT_TIMESTAMP_BYTES`] bytes, the same
/// characters as a message.
pub fn check_client_timestamp(stamp: &str) -> ChatResult<()> {
    if stamp.len() > MAX_CLIENT_TIMESTAMP_BYTES {
        return Err(ChatError::bad_args(format!(
            "the timestamp is over {MAX_CLIENT_TIMESTAMP_BYTES} bytes"
        )));
    }
    check_text("the timestamp", stamp)
}

fn check_text(what: &str, text: &str) -> ChatResult<()> {
    match text.chars().find(|&c| forbidden(c)) {
        None => Ok(()),
        Some(c) => Err(ChatError::bad_args(format!(
            "{what} contains the control character {} ({}); only printable text and TAB are allowed",
            char_name(c),
            codepoint(c)
        ))),
    }
}

/// Characters no message may hold.
pub fn forbidden(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

fn codepoint(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

fn char_name(c: char) -> &'static str {
    match c {
        '\0' => "NUL",
        '\u{7}' => "BEL",
        '\u{8}' => "BS",
        '\n' => "LF",
        '\r' => "CR",
        '\u{1b}' => "ESC",
        '\u{7f}' => "DEL",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{80}'..='\u{9f}' => "C1",
        _ => "C0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn user_names() {
        for ok in ["a", "Alice_1", "x.y-z", &"n".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "al ice", "ali:ce", "élise", &"n".repeat(33)] {
            assert_eq!(Username::parse(bad).unwrap_err().code, Code::BadArgs, "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(Password::parse("pw").is_ok());
        assert!(Password::parse(&"p".repeat(1024)).is_ok());
        for bad in ["", "two words", "tab\there", &"p".repeat(1025)] {
            assert_eq!(Password::parse(bad).err().unwrap().code, Code::BadArgs, "{bad}");
        }
    }

    #[test]
    fn message_text() {
        for ok in [
            "hi",
            "tab\there",
            "emoji 🎉",
            "שלום عربى",
            &"x".repeat(MAX_MESSAGE_BYTES),
        ] {
            assert!(check_message_text(ok).is_ok(), "{ok:?}");
        }
        for (bad, named) in [
            ("nul\0", "NUL (U+0000)"),
            ("esc\u{1b}[2K", "ESC (U+001B)"),
            ("bel\u{7}", "BEL"),
            ("del\u{7f}", "DEL"),
            ("csi\u{9b}", "C1 (U+009B)"),
            ("ls\u{2028}", "LINE SEPARATOR (U+2028)"),
            ("cr\r", "CR"),
        ] {
            let e = check_message_text(bad).unwrap_err();
            assert_eq!(e.code, Code::BadArgs);
            assert!(e.message.contains(named), "{bad:?}: {}", e.message);
        }
        assert!(check_message_text("").is_err());
        assert!(check_message_text(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
    }

    #[test]
    fn client_timestamps() {
        assert!(check_client_timestamp("2026-12-02T10:00:00Z").is_ok());
        assert!(check_client_timestamp(&"1".repeat(64)).is_ok());
        assert!(check_client_timestamp(&"1".repeat(65)).is_err());
        assert!(check_client_timestamp("x\0").is_err());
    }
}
