//! IRC on the wire: framing lines out of the read buffer, parsing a line into its tags,
//! source, command and parameters, and writing lines back.
//!
//! The grammar is RFC 1459 §2.3.1 and RFC 2812 §2.3.1 as the Modern IRC documentation
//! (<https://modern.ircdocs.horse/#message-format>) restates it, with IRCv3 message tags
//! (<https://ircv3.net/specs/extensions/message-tags>):
//!
//! ```text
//! [@tags SPACE] [:source SPACE] command *(SPACE param) [SPACE :trailing] CRLF
//! ```
//!
//! A line is at most [`MAX_LINE`] bytes with its CR LF, not counting its tags, which may take
//! [`MAX_TAGS`] more. Lines end in LF, with or without a CR before it, as clients send both.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, BytesMut};

/// The longest line without its tags, CR LF included (RFC 1459 §2.3).
pub const MAX_LINE: usize = 512;
/// The most bytes of tags a client may send before the rest of a line (IRCv3 message-tags:
/// 4094 of client tags, plus the `@` and the space).
pub const MAX_TAGS: usize = 4096;
/// The most bytes a line may take in the read buffer.
const MAX_FRAME: usize = MAX_LINE + MAX_TAGS;
/// The most parameters a message has (RFC 2812 §2.3: 14 middle ones and a trailing one).
const MAX_PARAMS: usize = 15;

/// A framed line, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Line(&'a str),
    /// Longer than [`MAX_LINE`] (its tags apart); discarded up to its line end.
    TooLong,
    /// Not UTF-8, or holding a NUL: the line as it came.
    BadEncoding(&'a [u8]),
}

/// Cuts lines out of a connection's read buffer.
#[derive(Debug, Default)]
pub struct Framer {
    /// Discarding the rest of a line that was too long.
    skipping: bool,
}

impl Framer {
    /// The next complete line in `buf`, copied into `scratch`; `None` until one is complete.
    /// A line too long is answered once, when it is cut, and its rest skipped as it arrives.
    pub fn next<'s>(&mut self, buf: &mut BytesMut, scratch: &'s mut Vec<u8>) -> Option<Frame<'s>> {
        loop {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_FRAME && !self.skipping {
                    self.skipping = true;
                    buf.clear();
                    return Some(Frame::TooLong);
                }
                if self.skipping {
                    buf.clear();
                }
                return None;
            };
            if self.skipping {
                self.skipping = false;
                buf.advance(end + 1);
                continue;
            }
            scratch.clear();
            scratch.extend_from_slice(&buf[..end]);
            buf.advance(end + 1);
            if scratch.last() == Some(&b'\r') {
                scratch.pop();
            }
            if scratch.iter().all(|&b| b == b' ' || b == b'\r') {
                // RFC 2812 §2.3.1: empty messages are silently ignored.
                continue;
            }
            // The tags, `@` and the space after them included, then the rest.
            let tags = match scratch.first() {
                Some(b'@') => scratch
                    .iter()
                    .position(|&b| b == b' ')
                    .map_or(scratch.len(), |space| space + 1),
                _ => 0,
            };
            let body = scratch.len() - tags;
            if body + 2 > MAX_LINE || tags > MAX_TAGS {
                return Some(Frame::TooLong);
            }
            if scratch.contains(&0) {
                return Some(Frame::BadEncoding(scratch));
            }
            return Some(match std::str::from_utf8(scratch) {
                Ok(line) => Frame::Line(line),
                Err(_) => Frame::BadEncoding(scratch),
            });
        }
    }
}

/// A parsed line, borrowing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The tags as sent, unescaped only when read ([`Msg::tag`]).
    pub tags: Option<&'a str>,
    pub command: &'a str,
    pub params: Vec<&'a str>,
}

impl<'a> Msg<'a> {
    /// Parses a framed line; `None` if it names no command.
    pub fn parse(line: &'a str) -> Option<Msg<'a>> {
        let mut rest = line.trim_start_matches(' ');
        let mut tags = None;
        if let Some(after) = rest.strip_prefix('@') {
            let (t, r) = after.split_once(' ')?;
            tags = Some(t);
            rest = r.trim_start_matches(' ');
        }
        if rest.starts_with(':') {
            // A source from a client is ignored (RFC 2812 §2.3: clients should not send one).
            let (_, r) = rest.split_once(' ')?;
            rest = r.trim_start_matches(' ');
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if command.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing);
                break;
            }
            if params.len() == MAX_PARAMS - 1 {
                // The fifteenth parameter takes the rest of the line (RFC 2812 §2.3).
                params.push(rest);
                break;
            }
            let (param, r) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(param);
            rest = r;
        }
        Some(Msg {
            tags,
            command,
            params,
        })
    }

    /// Parameter `i`, or `""`.
    pub fn arg(&self, i: usize) -> &'a str {
        self.params.get(i).copied().unwrap_or("")
    }
}

/// Writes a line: `prefix`, then `middle` parameters, then `trailing` (always with its `:`,
/// so it may hold spaces or be empty), cut to [`MAX_LINE`] with its CR LF. The tags, if any,
/// go first and do not count.
pub fn put(
    out: &mut BytesMut,
    tags: &str,
    source: &str,
    command: &str,
    middle: &[&str],
    trailing: Option<&str>,
) {
    out.reserve(MAX_LINE + tags.len());
    if !tags.is_empty() {
        out.put_u8(b'@');
        out.put_slice(tags.as_bytes());
        out.put_u8(b' ');
    }
    let start = out.len();
    if !source.is_empty() {
        out.put_u8(b':');
        out.put_slice(source.as_bytes());
        out.put_u8(b' ');
    }
    out.put_slice(command.as_bytes());
    for param in middle {
        out.put_u8(b' ');
        out.put_slice(param.as_bytes());
    }
    if let Some(trailing) = trailing {
        out.put_slice(b" :");
        out.put_slice(trailing.as_bytes());
    }
    // Cut on a character boundary: a numeric's text may be long, never a message's, which
    // is split before it is written (see [`split_text`]).
    let most = start + MAX_LINE - 2;
    if out.len() > most {
        let mut cut = most;
        while cut > start && (out[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.put_slice(b"\r\n");
}

/// Splits a message's text into pieces of at most `room` bytes, on character boundaries and,
/// where it can, at a space: a long message reaches an IRC client as several lines.
pub fn split_text(text: &str, room: usize) -> Vec<&str> {
    let room = room.max(16);
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > room {
        let mut cut = room;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(space) = rest[..cut].rfind(' ').filter(|&s| s > room / 2) {
            cut = space + 1;
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// A server time (microseconds since the epoch) as IRCv3 server-time writes it:
/// `2026-12-07T10:02:03.120Z`.
pub fn server_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Tags for a message as a client with these capabilities reads them.
pub fn tags(out: &mut String, time: Option<i64>, msgid: Option<i64>, account: Option<&str>) {
    let sep = |out: &mut String| {
        if !out.is_empty() {
            out.push(';');
        }
    };
    if let Some(micros) = time {
        sep(out);
        let _ = write!(out, "time={}", server_time(micros));
    }
    // A live line's id is below 0, and shown `l<n>` (it is in no stream's history).
    match msgid {
        Some(id) if id < 0 => {
            sep(out);
            let _ = write!(out, "msgid=l{}", -id);
        }
        Some(id) => {
            sep(out);
            let _ = write!(out, "msgid={id}");
        }
        None => {}
    }
    if let Some(account) = account {
        sep(out);
        let _ = write!(out, "account={account}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<String> {
        let mut framer = Framer::default();
        let mut buf = BytesMut::from(input);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        while let Some(frame) = framer.next(&mut buf, &mut scratch) {
            out.push(match frame {
                Frame::Line(l) => l.to_string(),
                Frame::TooLong => "<too long>".into(),
                Frame::BadEncoding(_) => "<bad>".into(),
            });
        }
        out
    }

    #[test]
    fn lines_end_in_lf_with_or_without_cr_and_empty_ones_are_ignored() {
        assert_eq!(
            frames(b"NICK a\r\nUSER a 0 * :A\n\r\n\nPING x"),
            ["NICK a", "USER a 0 * :A"]
        );
    }

    #[test]
    fn a_line_over_512_bytes_is_cut_once_and_its_rest_skipped() {
        let mut long = b"PRIVMSG #a :".to_vec();
        long.extend(std::iter::repeat_n(b'x', 600));
        long.extend_from_slice(b"\r\nPING ok\r\n");
        assert_eq!(frames(&long), ["<too long>", "PING ok"]);
        // Tags do not count against the 512 bytes.
        let mut tagged = b"@+draft/reply=".to_vec();
        tagged.extend(std::iter::repeat_n(b'y', 1000));
        tagged.extend_from_slice(b" PRIVMSG #a :hi\r\n");
        assert_eq!(frames(&tagged).len(), 1);
        assert!(frames(&tagged)[0].ends_with("PRIVMSG #a :hi"));
        // But tags have their own bound: 4096 bytes with the `@` and the space.
        for (size, fits) in [(4081, true), (4082, false)] {
            let mut tags = b"@foo=bar;+baz=".to_vec();
            tags.extend(std::iter::repeat_n(b'a', size));
            tags.extend_from_slice(b" TAGMSG #test\r\n");
            assert_eq!(frames(&tags)[0] != "<too long>", fits, "{size}");
        }
        // A line with no end at all is cut as soon as it cannot fit.
        let endless = vec![b'z'; MAX_FRAME + 10];
        let mut framer = Framer::default();
        let mut buf = BytesMut::from(&endless[..]);
        let mut scratch = Vec::new();
        assert_eq!(framer.next(&mut buf, &mut scratch), Some(Frame::TooLong));
        buf.extend_from_slice(b"zzz\r\nPING 1\r\n");
        assert_eq!(framer.next(&mut buf, &mut scratch), Some(Frame::Line("PING 1")));
    }

    #[test]
    fn nul_and_invalid_utf8_are_refused() {
        assert_eq!(
            frames(b"PRIVMSG #a :\xff\r\nPRIVMSG #a :a\0b\r\nPING y\r\n"),
            ["<bad>", "<bad>", "PING y"]
        );
    }

    #[test]
    fn messages_parse_into_tags_command_and_params() {
        let m = Msg::parse("@time=x;+a=b\\sc :src PRIVMSG #a,#b :hello  world ").unwrap();
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, ["#a,#b", "hello  world "]);
        assert_eq!(m.tags, Some("time=x;+a=b\\sc"));
        let m = Msg::parse("USER  guest 0 *  :Real Name").unwrap();
        assert_eq!(m.params, ["guest", "0", "*", "Real Name"]);
        let m = Msg::parse("PING :").unwrap();
        assert_eq!(m.params, [""]);
        assert!(Msg::parse(":only-a-source").is_none());
        let many = format!(
            "CMD {}",
            (1..=20).map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
        );
        let m = Msg::parse(&many).unwrap();
        assert_eq!(m.params.len(), 15);
        assert_eq!(m.params[14], "15 16 17 18 19 20");
    }

    #[test]
    fn lines_are_written_with_a_trailing_parameter_and_cut_to_512_bytes() {
        let mut out = BytesMut::new();
        put(&mut out, "", "srv", "001", &["alice"], Some("Welcome"));
        assert_eq!(&out[..], b":srv 001 alice :Welcome\r\n");
        out.clear();
        let long = "é".repeat(400);
        put(&mut out, "time=t", "srv", "NOTICE", &["alice"], Some(&long));
        let line = std::str::from_utf8(&out).expect("cut on a character boundary");
        assert!(line.starts_with("@time=t :srv NOTICE alice :é"));
        let without_tags = line.len() - "@time=t ".len();
        assert!((509..=512).contains(&without_tags), "{without_tags}");
        assert!(line.ends_with("é\r\n"));
    }

    #[test]
    fn long_text_splits_at_spaces_on_character_boundaries() {
        assert_eq!(split_text("short", 100), ["short"]);
        let text = "word ".repeat(50);
        let pieces = split_text(&text, 60);
        assert!(pieces.iter().all(|p| p.len() <= 60));
        assert_eq!(pieces.concat(), text);
        assert!(pieces[0].ends_with(' '));
        let wide = "ü".repeat(100);
        let pieces = split_text(&wide, 33);
        assert!(pieces.iter().all(|p| p.len() <= 33));
        assert_eq!(pieces.concat(), wide);
    }

    #[test]
    fn tags_carry_time_msgid_and_account() {
        let mut t = String::new();
        tags(&mut t, Some(1_796_000_000_123_456), Some(42), Some("alice"));
        assert_eq!(t, "time=2026-11-30T00:53:20.123Z;msgid=42;account=alice");
    }
}
