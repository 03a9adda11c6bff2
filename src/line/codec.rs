//! Framing of the line protocol: splits the byte stream into lines, strips telnet negotiation,
//! and turns overlong or non-UTF-8 lines into items (not errors) so the session can answer
//! them and go on.

use bytes::{Buf, BytesMut};

/// Telnet "interpret as command".
const IAC: u8 = 255;
const SE: u8 = 240;
const SB: u8 = 250;
const WILL: u8 = 251;
const DONT: u8 = 254;

/// One framed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line of valid UTF-8, without its line ending; never blank. It lives in the scratch
    /// buffer the caller lent to [`LineCodec::decode`].
    Text(&'a str),
    /// A line longer than the limit; its bytes are discarded.
    TooLong,
    /// A line that is not valid UTF-8.
    BadEncoding,
}

/// The line decoder. Keeps only a few words of state; the bytes live in the caller's buffer.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// Bytes of the buffer already known to hold neither LF nor IAC.
    scanned: usize,
    /// Inside an overlong line: drop bytes up to the next LF.
    discarding: bool,
}

impl LineCodec {
    pub fn new(max_line: usize) -> LineCodec {
        LineCodec {
            max: max_line.max(1),
            scanned: 0,
            discarding: false,
        }
    }

    /// Takes the next line out of `buf`, or `None` if no complete line is buffered yet. A
    /// line's text is copied into `scratch` (a copy of a short line costs less than sharing
    /// the buffer), so the caller may go on using `buf` while it holds the line.
    pub fn decode<'s>(&mut self, buf: &mut BytesMut, scratch: &'s mut Vec<u8>) -> Option<Line<'s>> {
        loop {
            let found = buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n' || b == IAC)
                .map(|i| self.scanned + i);
            let Some(pos) = found else {
                self.scanned = buf.len();
                // A CR may still be followed by LF, so allow one byte over the limit.
                if self.discarding {
                    buf.clear();
                    self.scanned = 0;
                } else if buf.len() > self.max + 1 {
                    return Some(self.start_discarding(buf));
                }
                return None;
            };
            if buf[pos] == IAC {
                match telnet_command_len(&buf[pos..]) {
                    Some(len) => {
                        remove(buf, pos, len);
                        self.scanned = pos;
                        continue;
                    }
                    None => {
                        // An incomplete telnet command: wait for the rest, within the limit.
                        self.scanned = pos;
                        if self.discarding {
                            buf.clear();
                            self.scanned = 0;
                        } else if buf.len() > self.max + 64 {
                            return Some(self.start_discarding(buf));
                        }
                        return None;
                    }
                }
            }
            self.scanned = 0;
            if self.discarding {
                self.discarding = false;
                buf.advance(pos + 1);
                continue;
            }
            let end = if pos > 0 && buf[pos - 1] == b'\r' {
                pos - 1
            } else {
                pos
            };
            let line = &buf[..end];
            if line.len() > self.max {
                buf.advance(pos + 1);
                return Some(Line::TooLong);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                buf.advance(pos + 1);
                continue;
            }
            scratch.clear();
            scratch.extend_from_slice(line);
            buf.advance(pos + 1);
            return Some(match std::str::from_utf8(scratch) {
                Ok(text) => Line::Text(text),
                Err(_) => Line::BadEncoding,
            });
        }
    }

    fn start_discarding(&mut self, buf: &mut BytesMut) -> Line<'static> {
        buf.clear();
        self.scanned = 0;
        self.discarding = true;
        Line::TooLong
    }
}

/// Length of the telnet command at the start of `bytes` (which starts with IAC), or `None`
/// if it is not complete yet.
fn telnet_command_len(bytes: &[u8]) -> Option<usize> {
    match *bytes.get(1)? {
        // IAC IAC is an escaped 0xFF data byte; 0xFF is never valid UTF-8, so drop it too.
        IAC => Some(2),
        WILL..=DONT => bytes.get(2).map(|_| 3),
        SB => {
            // Subnegotiation runs to IAC SE.
            let end = bytes[2..].windows(2).position(|w| w == [IAC, SE])?;
            Some(2 + end + 2)
        }
        _ => Some(2),
    }
}

fn remove(buf: &mut BytesMut, at: usize, len: usize) {
    if at == 0 {
        buf.advance(len);
    } else {
        let end = buf.len();
        buf.copy_within(at + len..end, at);
        buf.truncate(end - len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded line, owned, to compare.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Text(String),
        TooLong,
        BadEncoding,
    }

    fn lines(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Got> {
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        while let Some(line) = codec.decode(buf, &mut scratch) {
            got.push(match line {
                Line::Text(text) => Got::Text(text.to_string()),
                Line::TooLong => Got::TooLong,
                Line::BadEncoding => Got::BadEncoding,
            });
        }
        got
    }

    fn text(s: &str) -> Got {
        Got::Text(s.to_string())
    }

    #[test]
    fn splits_on_lf_and_drops_cr_before_it() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"PING\r\nECHO a\rb\nWHO"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING"), text("ECHO a\rb")]);
        assert_eq!(&buf[..], b"WHO");
        buf.extend_from_slice(b"\r\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("WHO")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn skips_blank_lines() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\r\n\n  \t\r\nPING\n"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
    }

    #[test]
    fn strips_telnet_negotiation() {
        let mut codec = LineCodec::new(100);
        // WILL/DO options, a NOP, a subnegotiation (terminal type) and an escaped 0xFF.
        let mut buf = BytesMut::from(
            &b"\xff\xfb\x1f\xff\xfd\x01\xff\xf1PI\xff\xfa\x18\x00xterm\xff\xf0NG\xff\xff\r\n"[..],
        );
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
    }

    #[test]
    fn telnet_command_split_across_reads() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::new();
        for chunk in [
            &b"\xff"[..],
            b"\xfd",
            b"\x03PI",
            b"NG\xff\xfa\x18",
            b"\x00vt1",
            b"00\xff",
            b"\xf0\r",
            b"\n",
        ] {
            buf.extend_from_slice(chunk);
            let got = lines(&mut codec, &mut buf);
            if chunk == b"\n" {
                assert_eq!(got, vec![text("PING")]);
            } else {
                assert!(got.is_empty(), "{chunk:?} gave {got:?}");
            }
        }
    }

    #[test]
    fn one_byte_per_read() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in b"SEND bob h\xc3\xa9llo\r\nPING\n" {
            buf.extend_from_slice(&[b]);
            got.extend(lines(&mut codec, &mut buf));
        }
        assert_eq!(got, vec![text("SEND bob héllo"), text("PING")]);
    }

    #[test]
    fn overlong_line_in_one_read_is_reported_once() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"123456789\nPING\n12345678\r\n"[..]);
        assert_eq!(
            lines(&mut codec, &mut buf),
            vec![Got::TooLong, text("PING"), text("12345678")]
        );
    }

    #[test]
    fn overlong_line_across_reads_is_discarded_to_its_end() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![Got::TooLong]);
        assert!(buf.is_empty(), "the overlong bytes are not kept");
        buf.extend_from_slice(b"more and more");
        assert!(lines(&mut codec, &mut buf).is_empty());
        buf.extend_from_slice(b" end\nPING\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
    }

    #[test]
    fn endless_subnegotiation_is_bounded() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"\xff\xfa"[..]);
        buf.extend_from_slice(&[b'x'; 100]);
        assert_eq!(lines(&mut codec, &mut buf), vec![Got::TooLong]);
        buf.extend_from_slice(b"\nPING\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
    }

    #[test]
    fn invalid_utf8_is_an_item_and_the_stream_goes_on() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"ECHO \xc3\x28\nPING\n"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![Got::BadEncoding, text("PING")]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes() {
        let mut codec = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"ABCD\r"[..]);
        assert!(lines(&mut codec, &mut buf).is_empty());
        buf.extend_from_slice(b"\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("ABCD")]);
    }
}
