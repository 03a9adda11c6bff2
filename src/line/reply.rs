//! What the server writes. A [`Reply`] is data lines followed by exactly one final `OK` or
//! `ERR <CODE>` line; it is the only way a command answers, so the protocol's shape is
//! enforced here. Live `MSG` pushes and the closing `BYE` are the only unsolicited lines.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::error::ChatError;
use crate::store::Message;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    data: Vec<String>,
    last: Result<Cow<'static, str>, ChatError>,
}

impl Reply {
    pub fn ok(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            data: Vec::new(),
            last: Ok(text.into()),
        }
    }

    pub fn err(error: ChatError) -> Reply {
        error.log();
        Reply {
            data: Vec::new(),
            last: Err(error),
        }
    }

    /// Data lines, then `OK <text>`. No data line may look like a final line.
    pub fn lines(data: Vec<String>, text: impl Into<Cow<'static, str>>) -> Reply {
        debug_assert!(data
            .iter()
            .all(|l| !is_final_line(l) && !l.contains(['\r', '\n'])));
        Reply {
            data,
            last: Ok(text.into()),
        }
    }

    pub fn write_to(&self, out: &mut BytesMut) {
        for line in &self.data {
            put_line(out, line);
        }
        match &self.last {
            Ok(text) if text.is_empty() => put_line(out, "OK"),
            Ok(text) => {
                out.put_slice(b"OK ");
                put_line(out, text);
            }
            Err(e) => error_line(out, e),
        }
    }
}

impl From<Result<Reply, ChatError>> for Reply {
    fn from(result: Result<Reply, ChatError>) -> Reply {
        result.unwrap_or_else(Reply::err)
    }
}

/// Whether a line is a final line (`OK`/`ERR`), which data lines must never look like.
pub fn is_final_line(line: &str) -> bool {
    line == "OK" || line.starts_with("OK ") || line == "ERR" || line.starts_with("ERR ")
}

/// `ERR <CODE> <text>` — also written on its own, e.g. `ERR SERVER_BUSY` before closing.
pub fn error_line(out: &mut BytesMut, error: &ChatError) {
    out.put_slice(b"ERR ");
    out.put_slice(error.code.as_str().as_bytes());
    if !error.message.is_empty() {
        out.put_u8(b' ');
        out.put_slice(error.message.as_bytes());
    }
    out.put_slice(b"\r\n");
}

/// `MSG <id> <from> <rfc3339-utc> <text>`: an INBOX data line and a live push alike. The
/// text is written with its control characters escaped ([`escape`]).
pub fn msg_line(message: &Message) -> String {
    let mut line = String::with_capacity(48 + message.sender.len() + message.body.len());
    let _ = write!(
        line,
        "MSG {} {} {} ",
        message.id,
        message.sender,
        rfc3339(message.created_at_us),
    );
    escape_into(&mut line, &message.body);
    line
}

/// `ROOM <id> <#room> <from> <rfc3339-utc> <text>`: a room's message or event (from `*`),
/// live or in HISTORY, escaped as `MSG` is.
pub fn room_line(message: &Message) -> String {
    let mut line =
        String::with_capacity(56 + message.recipient.len() + message.sender.len() + message.body.len());
    let from = if message.event.is_some() {
        "*"
    } else {
        &message.sender
    };
    let _ = write!(
        line,
        "ROOM {} {} {from} {} ",
        message.id,
        message.recipient,
        rfc3339(message.created_at_us),
    );
    escape_into(&mut line, &message.body);
    line
}

/// Writes a message's `MSG` line, with its line end, straight into `out`.
pub fn put_msg(out: &mut BytesMut, message: &Message) {
    put_line(out, &msg_line(message));
}

/// Writes a live message, `MSG` or `ROOM`, with its line end: rendered by the first session
/// it is pushed to, and shared by the others.
pub fn put_push(out: &mut BytesMut, message: &Message) {
    let line = message.rendered.get_or_init(|| {
        let mut line = match message.room() {
            Some(_) => room_line(message),
            None => msg_line(message),
        };
        line.push_str("\r\n");
        line.into_bytes().into_boxed_slice()
    });
    out.put_slice(line);
}

/// Whether a character is written escaped: C0 controls but TAB, DEL, C1 controls, and the
/// line and paragraph separators. None of them may reach a terminal raw: they could move the
/// cursor, erase or forge lines, or change the terminal's settings.
pub fn needs_escape(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0a'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}')
}

/// Appends `text` to `out` with what [`needs_escape`] escaped: a C0 control as caret notation
/// (`^@` for NUL, `^[` for ESC, `^M` for CR), DEL as `^?`, and the others as `<U+XXXX>`.
pub fn escape_into(out: &mut String, text: &str) {
    if !text.chars().any(needs_escape) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\x7f' => out.push_str("^?"),
            c if c < ' ' && c != '\t' => {
                out.push('^');
                out.push(char::from(c as u8 ^ 0x40));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "<U+{:04X}>", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `text` escaped as [`escape_into`] does.
pub fn escape(text: &str) -> Cow<'_, str> {
    if text.chars().any(needs_escape) {
        let mut out = String::with_capacity(text.len() + 8);
        escape_into(&mut out, text);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// A server time (microseconds since the epoch) as RFC 3339 UTC with milliseconds.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn put_line(out: &mut BytesMut, line: &str) {
    out.reserve(line.len() + 2);
    out.put_slice(line.as_bytes());
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn written(reply: Reply) -> String {
        let mut out = BytesMut::new();
        reply.write_to(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn final_lines() {
        assert_eq!(written(Reply::ok("PONG")), "OK PONG\r\n");
        assert_eq!(written(Reply::ok("")), "OK\r\n");
        assert_eq!(
            written(Reply::err(ChatError::new(Code::NoSuchUser, "no bob"))),
            "ERR NO_SUCH_USER no bob\r\n"
        );
        assert_eq!(
            written(Reply::lines(vec!["USER a".into(), "USER b".into()], "2")),
            "USER a\r\nUSER b\r\nOK 2\r\n"
        );
    }

    #[test]
    fn message_lines() {
        let m = Message {
            id: 7,
            sender: "alice".into(),
            recipient: "bob".into(),
            body: "hi  there ".into(),
            created_at_us: 1_700_000_000_123_456,
            client_timestamp: None,
            event: None,
            origin: 0,
            rendered: Default::default(),
        };
        assert_eq!(msg_line(&m), "MSG 7 alice 2023-11-14T22:13:20.123Z hi  there ");
    }

    #[test]
    fn room_lines_show_events_from_star() {
        let mut m = Message {
            id: 9,
            sender: "alice".into(),
            recipient: "#Class".into(),
            body: "hello\x1b".into(),
            created_at_us: 1_700_000_000_123_456,
            client_timestamp: None,
            event: None,
            origin: 0,
            rendered: Default::default(),
        };
        assert_eq!(
            room_line(&m),
            "ROOM 9 #Class alice 2023-11-14T22:13:20.123Z hello^["
        );
        let mut out = BytesMut::new();
        put_push(&mut out, &m);
        put_push(&mut out, &m);
        assert_eq!(
            &out[..],
            &b"ROOM 9 #Class alice 2023-11-14T22:13:20.123Z hello^[\r\n".repeat(2)[..]
        );
        m.body = "alice joined".into();
        m.event = Some(Box::new(crate::store::RoomEvent {
            kind: crate::store::EventKind::Join,
            subject: "alice".into(),
        }));
        assert_eq!(
            room_line(&m),
            "ROOM 9 #Class * 2023-11-14T22:13:20.123Z alice joined"
        );
    }

    #[test]
    fn control_characters_are_written_escaped() {
        assert_eq!(
            escape("plain\ttab, émoji 🙂, עברית"),
            "plain\ttab, émoji 🙂, עברית"
        );
        assert_eq!(escape("\x1b[2K\x1b[1GMSG 7 admin"), "^[[2K^[[1GMSG 7 admin");
        assert_eq!(escape("\0\x07\x08\r\n\x7f"), "^@^G^H^M^J^?");
        assert_eq!(escape("a\u{9b}b\u{2028}c\u{2029}"), "a<U+009B>b<U+2028>c<U+2029>");
        let m = Message {
            id: 8,
            sender: "mallory".into(),
            recipient: "bob".into(),
            body: "\x1b]52;c;aGk=\x07".into(),
            created_at_us: 1_700_000_000_123_456,
            client_timestamp: None,
            event: None,
            origin: 0,
            rendered: Default::default(),
        };
        assert_eq!(
            msg_line(&m),
            "MSG 8 mallory 2023-11-14T22:13:20.123Z ^[]52;c;aGk=^G"
        );
    }
}
