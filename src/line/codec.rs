//! Framing of the line protocol: splits the byte stream into lines, applies a terminal's line
//! editing (backspace, cancel), answers telnet negotiation, and turns overlong or non-UTF-8
//! lines into items (not errors) so the session can answer them and go on.
//!
//! The decoder edits the read buffer in place: the current line's bytes, after editing, sit at
//! the front of the buffer (`buf[..cooked]`); raw bytes not looked at yet follow from `raw` on.
//! Editing never makes a line longer than its raw bytes, so the line fits where they were. An
//! IAC that ends what has arrived is left unread until the byte after it comes, since that byte
//! decides whether the IAC is a command or a data byte of the line: the lines, and every byte
//! written back, are the same however the stream is cut into reads.
//!
//! - A line ends at LF, CR LF, CR NUL or a bare CR; a CR followed by LF or NUL is one line end.
//! - BS (0x08) and DEL (0x7F) delete the previous character of the line.
//! - `IAC x` is a telnet command only when `x` is one (240..=255); otherwise 0xFF is data, so
//!   the line is not UTF-8 and the next byte is read as usual (an LF still ends the line).
//! - Negotiation is answered by refusing: `DO x` gets `WONT x` (but `DO TIMING-MARK` gets
//!   `WILL TIMING-MARK`), `WILL x` gets `DONT x`; `WONT`/`DONT` are answers and get none.
//! - `IAC IP`, `IAC AO` and `IAC EL` cancel the line being typed; `IAC EC` deletes a character;
//!   `IAC AYT` gets a visible line.
//! - `IAC SB` runs to `IAC SE`, but no further than the line end or [`MAX_SUBNEGOTIATION`]
//!   bytes: then the line it is on is answered as `BAD_ENCODING`.

use bytes::{Buf, BufMut, BytesMut};

/// Telnet "interpret as command" and the commands that follow it (RFC 854).
pub const IAC: u8 = 255;
const SE: u8 = 240;
const AO: u8 = 245;
const IP: u8 = 244;
const AYT: u8 = 246;
const EC: u8 = 247;
const EL: u8 = 248;
const SB: u8 = 250;
const WILL: u8 = 251;
const WONT: u8 = 252;
const DO: u8 = 253;
const DONT: u8 = 254;
/// The one option chatd agrees to (RFC 860).
const TIMING_MARK: u8 = 6;

const BS: u8 = 0x08;
const DEL: u8 = 0x7f;
const VT: u8 = 0x0b;
const FF: u8 = 0x0c;

/// Longest subnegotiation (`IAC SB ... IAC SE`) waited for, in bytes.
pub const MAX_SUBNEGOTIATION: u16 = 256;

/// What `IAC AYT` is answered with.
pub const AYT_ANSWER: &[u8] = b"[chatd is here]\r\n";

/// One framed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line of valid UTF-8, without its line ending; never blank. It lives in the scratch
    /// buffer the caller lent to [`LineCodec::decode`].
    Text(&'a str),
    /// A line longer than the limit; its bytes are discarded.
    TooLong,
    /// A line that is not valid UTF-8 (or held a malformed telnet command).
    BadEncoding,
}

/// Where the telnet parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    Data,
    /// After IAC.
    Iac,
    /// After `IAC WILL/WONT/DO/DONT`: the option byte comes next.
    Option(u8),
    /// Inside `IAC SB`.
    Sub,
    /// Inside `IAC SB`, after an IAC.
    SubIac,
}

/// The line decoder. Keeps only a few words of state; the bytes live in the caller's buffer.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// `buf[..cooked]`: the current line, edited.
    cooked: usize,
    /// `buf[raw..]`: bytes not looked at yet; `buf[cooked..raw]` is consumed input.
    raw: usize,
    telnet: Telnet,
    /// Bytes of the subnegotiation so far.
    sub_len: u16,
    /// The last byte ended a line with CR: an LF or NUL right after it belongs to that end.
    after_cr: bool,
    /// Inside an overlong line: drop bytes up to the line end.
    discarding: bool,
    /// The line held a malformed telnet command: it is answered as `BAD_ENCODING`.
    malformed: bool,
    /// The client sent a telnet command: a person at a telnet client.
    is_telnet: bool,
}

impl LineCodec {
    pub fn new(max_line: usize) -> LineCodec {
        LineCodec {
            max: max_line.max(1),
            cooked: 0,
            raw: 0,
            telnet: Telnet::Data,
            sub_len: 0,
            after_cr: false,
            discarding: false,
            malformed: false,
            is_telnet: false,
        }
    }

    /// Whether the client has spoken telnet (sent any telnet command).
    pub fn is_telnet(&self) -> bool {
        self.is_telnet
    }

    /// The part of a line received so far (after editing), once `decode` returned `None`.
    pub fn partial<'b>(&self, buf: &'b BytesMut) -> &'b [u8] {
        if self.discarding {
            &[]
        } else {
            &buf[..self.cooked.min(buf.len())]
        }
    }

    /// Takes the next line out of `buf`, or `None` if no complete line is buffered yet. A
    /// line's text is copied into `scratch` (a copy of a short line costs less than sharing
    /// the buffer), so the caller may go on using `buf` while it holds the line. Answers to
    /// telnet commands are appended to `answers`.
    pub fn decode<'s>(
        &mut self,
        buf: &mut BytesMut,
        scratch: &'s mut Vec<u8>,
        answers: &mut BytesMut,
    ) -> Option<Line<'s>> {
        loop {
            match self.next_event(buf, answers)? {
                Event::TooLong => return Some(Line::TooLong),
                Event::LineEnd => {
                    let line = &buf[..self.cooked];
                    let malformed = std::mem::take(&mut self.malformed);
                    let discarded = std::mem::take(&mut self.discarding);
                    let blank = line.iter().all(|&b| matches!(b, b' ' | b'\t' | VT | FF));
                    if discarded || (blank && !malformed) {
                        self.consume(buf);
                        continue;
                    }
                    if malformed {
                        self.consume(buf);
                        return Some(Line::BadEncoding);
                    }
                    scratch.clear();
                    scratch.extend_from_slice(line);
                    self.consume(buf);
                    return Some(match std::str::from_utf8(scratch) {
                        Ok(text) => Line::Text(text),
                        Err(_) => Line::BadEncoding,
                    });
                }
            }
        }
    }

    /// Drops the line just ended (and the raw bytes it came from) from the buffer.
    fn consume(&mut self, buf: &mut BytesMut) {
        buf.advance(self.raw);
        self.cooked = 0;
        self.raw = 0;
    }

    /// Runs the byte stream until a line ends or a line becomes too long; `None` once every
    /// buffered byte was looked at (the buffer then holds only the partial line, and an IAC
    /// whose meaning the next byte decides).
    fn next_event(&mut self, buf: &mut BytesMut, answers: &mut BytesMut) -> Option<Event> {
        while self.raw < buf.len() {
            if self.telnet == Telnet::Data && !self.after_cr {
                // The common case: copy ordinary bytes up to the next one that means something.
                let rest = &buf[self.raw..];
                let run = rest
                    .iter()
                    .position(|&b| matches!(b, b'\n' | b'\r' | IAC | BS | DEL))
                    .unwrap_or(rest.len());
                if run > 0 {
                    if let Some(event) = self.push_run(buf, run) {
                        return Some(event);
                    }
                    continue;
                }
            }
            let byte = buf[self.raw];
            self.raw += 1;
            if let Some(event) = self.step(buf, byte, answers) {
                return Some(event);
            }
        }
        if self.discarding {
            buf.clear();
            self.cooked = 0;
            self.raw = 0;
            return None;
        }
        // Everything was looked at: close the gap, so the buffer holds only the partial line,
        // and an IAC still waiting for its next byte, unread. (Kept as consumed input, the
        // IAC would be gone when the byte after it, data, makes it a 0xFF of the line.)
        let pending = usize::from(self.telnet == Telnet::Iac);
        if pending == 1 {
            buf[self.cooked] = IAC;
            self.telnet = Telnet::Data;
        }
        buf.truncate(self.cooked + pending);
        self.raw = self.cooked;
        None
    }

    /// Appends `run` ordinary bytes from `buf[raw..]` to the line.
    fn push_run(&mut self, buf: &mut BytesMut, run: usize) -> Option<Event> {
        let start = self.raw;
        self.raw += run;
        if self.discarding {
            return None;
        }
        if self.cooked + run > self.max {
            return Some(self.start_discarding());
        }
        if self.cooked != start {
            buf.copy_within(start..start + run, self.cooked);
        }
        self.cooked += run;
        None
    }

    /// Handles one byte that is not a plain data byte in the data state.
    fn step(&mut self, buf: &mut BytesMut, byte: u8, answers: &mut BytesMut) -> Option<Event> {
        match self.telnet {
            Telnet::Data => {
                if std::mem::take(&mut self.after_cr) && matches!(byte, b'\n' | 0) {
                    return None;
                }
                match byte {
                    b'\n' => Some(Event::LineEnd),
                    b'\r' => {
                        self.after_cr = true;
                        Some(Event::LineEnd)
                    }
                    IAC => {
                        self.telnet = Telnet::Iac;
                        None
                    }
                    BS | DEL => {
                        self.erase_char(buf);
                        None
                    }
                    _ => self.push_byte(buf, byte),
                }
            }
            Telnet::Iac => {
                self.telnet = Telnet::Data;
                match byte {
                    // IAC IAC is an escaped 0xFF data byte; IAC and anything that is not a
                    // command is 0xFF followed by that byte. Either way the 0xFF is data (and
                    // never valid UTF-8); the byte after a lone IAC is read as usual. The IAC
                    // is still in the buffer (see `next_event`), so the 0xFF takes its place
                    // or one before it, never the place of the byte read again.
                    IAC => self.push_byte(buf, IAC),
                    0..=239 => {
                        self.raw -= 1;
                        self.push_byte(buf, IAC)
                    }
                    WILL..=DONT => {
                        self.telnet = Telnet::Option(byte);
                        None
                    }
                    SB => {
                        self.telnet = Telnet::Sub;
                        self.sub_len = 0;
                        None
                    }
                    _ => {
                        self.is_telnet = true;
                        self.command(buf, byte, answers);
                        None
                    }
                }
            }
            Telnet::Option(verb) => {
                self.telnet = Telnet::Data;
                if matches!(byte, b'\r' | b'\n') {
                    // Not an option a client would negotiate: a stray IAC, then a line end.
                    self.raw -= 1;
                    self.malformed = true;
                    return None;
                }
                self.is_telnet = true;
                self.negotiate(verb, byte, answers);
                None
            }
            Telnet::Sub | Telnet::SubIac => {
                if self.telnet == Telnet::SubIac && byte == SE {
                    self.telnet = Telnet::Data;
                    self.is_telnet = true;
                    return None;
                }
                self.telnet = if byte == IAC && self.telnet == Telnet::Sub {
                    Telnet::SubIac
                } else {
                    Telnet::Sub
                };
                self.sub_len += 1;
                if matches!(byte, b'\r' | b'\n') || self.sub_len > MAX_SUBNEGOTIATION {
                    // Never closed: it costs the line it is on, and no more.
                    self.telnet = Telnet::Data;
                    self.malformed = true;
                    if matches!(byte, b'\r' | b'\n') {
                        self.raw -= 1;
                    }
                }
                None
            }
        }
    }

    /// Appends one byte to the line.
    fn push_byte(&mut self, buf: &mut BytesMut, byte: u8) -> Option<Event> {
        if self.discarding {
            return None;
        }
        if self.cooked + 1 > self.max {
            return Some(self.start_discarding());
        }
        buf[self.cooked] = byte;
        self.cooked += 1;
        None
    }

    /// Deletes the last character (not byte) of the line.
    fn erase_char(&mut self, buf: &BytesMut) {
        while self.cooked > 0 {
            self.cooked -= 1;
            if buf[self.cooked] & 0xC0 != 0x80 {
                break;
            }
        }
    }

    /// A two-byte telnet command.
    fn command(&mut self, buf: &BytesMut, command: u8, answers: &mut BytesMut) {
        match command {
            IP | AO | EL => {
                self.cooked = 0;
                self.discarding = false;
                self.malformed = false;
            }
            EC => self.erase_char(buf),
            AYT => answers.put_slice(AYT_ANSWER),
            // NOP, data mark, break, go ahead, and SE out of place: nothing to do.
            _ => {}
        }
    }

    /// Answers `IAC <verb> <option>` by refusing everything but the timing mark.
    fn negotiate(&self, verb: u8, option: u8, answers: &mut BytesMut) {
        let answer = match (verb, option) {
            (DO, TIMING_MARK) => WILL,
            (DO, _) => WONT,
            (WILL, _) => DONT,
            // WONT and DONT are answers, or say what is already so: never answered.
            _ => return,
        };
        answers.put_slice(&[IAC, answer, option]);
    }

    fn start_discarding(&mut self) -> Event {
        self.cooked = 0;
        self.discarding = true;
        Event::TooLong
    }
}

enum Event {
    LineEnd,
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded line, owned, to compare.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Text(String),
        TooLong,
        BadEncoding,
    }

    fn lines(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Got> {
        lines_and_answers(codec, buf).0
    }

    fn lines_and_answers(codec: &mut LineCodec, buf: &mut BytesMut) -> (Vec<Got>, Vec<u8>) {
        let mut scratch = Vec::new();
        let mut answers = BytesMut::new();
        let mut got = Vec::new();
        while let Some(line) = codec.decode(buf, &mut scratch, &mut answers) {
            got.push(match line {
                Line::Text(text) => Got::Text(text.to_string()),
                Line::TooLong => Got::TooLong,
                Line::BadEncoding => Got::BadEncoding,
            });
        }
        (got, answers.to_vec())
    }

    fn decode_all(codec: &mut LineCodec, buf: &mut BytesMut, answers: &mut BytesMut) -> Vec<Got> {
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        while let Some(line) = codec.decode(buf, &mut scratch, answers) {
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

    fn all(input: &[u8]) -> Vec<Got> {
        lines(&mut LineCodec::new(100), &mut BytesMut::from(input))
    }

    #[test]
    fn every_line_end_ends_exactly_one_line() {
        assert_eq!(
            all(b"A\nB\r\nC\r\0D\rE\n"),
            vec![text("A"), text("B"), text("C"), text("D"), text("E")]
        );
        assert_eq!(all(b"A\r\r\nB\n"), vec![text("A"), text("B")]);
        assert_eq!(all(b"ECHO a\rb\n"), vec![text("ECHO a"), text("b")]);
    }

    #[test]
    fn a_cr_at_the_end_of_a_read_and_its_lf_in_the_next_are_one_line_end() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"PING\r"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
        for next in [&b"\n"[..], b"\0"] {
            buf.extend_from_slice(next);
            assert!(lines(&mut codec, &mut buf).is_empty());
            buf.extend_from_slice(b"WHO\r");
            assert_eq!(lines(&mut codec, &mut buf), vec![text("WHO")]);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_lines_wait_for_their_end() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"PING\r\nWH"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
        assert_eq!(codec.partial(&buf), b"WH");
        buf.extend_from_slice(b"O\r\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("WHO")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn skips_blank_lines() {
        assert_eq!(all(b"\r\n\n  \t\r\n\x0c\n\x0b\r\0PING\n"), vec![text("PING")]);
    }

    #[test]
    fn backspace_and_delete_edit_the_line() {
        assert_eq!(all(b"PNIG\x08\x08\x08ING\r\0"), vec![text("PING")]);
        assert_eq!(all(b"PINGG\x7f\r\n"), vec![text("PING")]);
        // A whole character, not a byte; more backspaces than characters do no harm.
        assert_eq!(all(b"ECHO caf\xc3\xa9\x7fe\n"), vec![text("ECHO cafe")]);
        assert_eq!(all(b"ab\x08\x08\x08\x08PING\n"), vec![text("PING")]);
        assert_eq!(all(b"x\x7f\nPING\n"), vec![text("PING")]);
    }

    #[test]
    fn strips_and_refuses_telnet_negotiation() {
        let mut codec = LineCodec::new(100);
        // WILL NAWS, DO ECHO, a NOP, a subnegotiation (terminal type), a WONT.
        let mut buf = BytesMut::from(
            &b"\xff\xfb\x1f\xff\xfd\x01\xff\xf1PI\xff\xfa\x18\x00xterm\xff\xf0NG\xff\xfc\x05\r\n"[..],
        );
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(got, vec![text("PING")]);
        assert_eq!(answers, b"\xff\xfe\x1f\xff\xfc\x01");
        assert!(codec.is_telnet());
    }

    #[test]
    fn answers_the_timing_mark_and_are_you_there() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfd\x06\xff\xf6"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert!(got.is_empty());
        assert_eq!(answers, [&b"\xff\xfb\x06"[..], AYT_ANSWER].concat());
    }

    #[test]
    fn answers_are_never_answered() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfc\x01\xff\xfe\x03PING\n"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(got, vec![text("PING")]);
        assert!(answers.is_empty());
    }

    #[test]
    fn interrupt_and_abort_output_cancel_the_line() {
        assert_eq!(
            all(b"SEND bob oops\xff\xf4\xff\xfd\x06PING\r\n"),
            vec![text("PING")]
        );
        assert_eq!(all(b"SEND bob oops\xff\xf5WHO\n"), vec![text("WHO")]);
    }

    #[test]
    fn a_stray_0xff_is_data_and_never_eats_the_line_end() {
        assert_eq!(
            all(b"SEND bob caf\xff\nSEND carol x\n"),
            vec![Got::BadEncoding, text("SEND carol x")]
        );
        assert_eq!(all(b"A\xff\rPING\n"), vec![Got::BadEncoding, text("PING")]);
        assert_eq!(all(b"A\xffBC\nPING\n"), vec![Got::BadEncoding, text("PING")]);
        assert_eq!(all(b"A\xff\xff\nPING\n"), vec![Got::BadEncoding, text("PING")]);
        assert_eq!(all(b"A\xff\xfb\nPING\n"), vec![Got::BadEncoding, text("PING")]);
    }

    #[test]
    fn an_unterminated_subnegotiation_costs_only_its_line() {
        let mut input = b"\xff\xfa".to_vec();
        for _ in 0..10 {
            input.extend_from_slice(b"PING\n");
        }
        let got = all(&input);
        assert_eq!(got[0], Got::BadEncoding);
        assert_eq!(got[1..], vec![text("PING"); 9]);
        // Without a line end, a bound.
        let mut codec = LineCodec::new(4096);
        let mut buf = BytesMut::from(&b"\xff\xfa"[..]);
        buf.extend_from_slice(&[b'x'; 1000]);
        buf.extend_from_slice(b"\nPING\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![Got::BadEncoding, text("PING")]);
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
            if chunk == b"\xf0\r" {
                assert_eq!(got, vec![text("PING")]);
            } else {
                assert!(got.is_empty(), "{chunk:?} gave {got:?}");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn one_byte_per_read() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in b"SEND bob h\xc3\xa9llo\r\nPIN\x7fNG\r\0WHO\r" {
            buf.extend_from_slice(&[b]);
            got.extend(lines(&mut codec, &mut buf));
        }
        assert_eq!(got, vec![text("SEND bob héllo"), text("PING"), text("WHO")]);
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
        assert!(buf.is_empty());
        buf.extend_from_slice(b" end\nPING\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
    }

    #[test]
    fn invalid_utf8_is_an_item_and_the_stream_goes_on() {
        assert_eq!(
            all(b"ECHO \xc3\x28\nPING\n"),
            vec![Got::BadEncoding, text("PING")]
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes() {
        let mut codec = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"ABCD"[..]);
        assert!(lines(&mut codec, &mut buf).is_empty());
        buf.extend_from_slice(b"\r\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![text("ABCD")]);
        // Backspaces make room again.
        let mut buf = BytesMut::from(&b"ABCD\x7f\x7fEF\n"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![text("ABEF")]);
    }

    #[test]
    fn a_0xff_at_the_end_of_a_read_never_eats_the_next_one() {
        // The byte after it decides what it is; until then it waits, unread.
        let mut codec = LineCodec::new(4096);
        let mut buf = BytesMut::from(&b"PING\ncaf\xff"[..]);
        assert_eq!(lines(&mut codec, &mut buf), vec![text("PING")]);
        buf.extend_from_slice(b"\nPING\n");
        assert_eq!(lines(&mut codec, &mut buf), vec![Got::BadEncoding, text("PING")]);
        // A character-mode client typing a lone 0xFF, one byte a read.
        let mut got = Vec::new();
        for &b in b"caf\xff\r\0PING\r\0" {
            buf.extend_from_slice(&[b]);
            got.extend(lines(&mut codec, &mut buf));
        }
        assert_eq!(got, vec![Got::BadEncoding, text("PING")]);
        assert!(buf.is_empty());
    }

    /// Everything the decoder makes of `input` cut into reads at `cuts`: the lines, every byte
    /// written back, the partial line left, and whether the client spoke telnet.
    type Outcome = (Vec<Got>, Vec<u8>, Vec<u8>, bool);

    fn run(max: usize, input: &[u8], cuts: &[usize]) -> Outcome {
        let mut codec = LineCodec::new(max);
        let mut answers = BytesMut::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            buf.extend_from_slice(&input[from..cut]);
            from = cut;
            got.extend(decode_all(&mut codec, &mut buf, &mut answers));
        }
        let partial = codec.partial(&buf).to_vec();
        (got, answers.to_vec(), partial, codec.is_telnet())
    }

    /// Inputs that touch every state of the decoder: line ends, editing, UTF-8, 0xFF as data,
    /// telnet commands and negotiation, subnegotiations, and, once chatd echoes, keys a
    /// terminal would act on.
    const CORPUS: &[&[u8]] = &[
        b"PING\r\nECHO hi\nWHO\r\0SEND bob x\rECHO y\r\r\n\n",
        b"\xff\xfb\x1f\xff\xfd\x05\xff\xf1PI\xff\xfa\x18\x00xterm\xff\xf0NG\xff\xfc\x05\r\n",
        b"\xff\xfa\x18\x00vt\xff\xff100\xff\xf0ECHO a\xff\xfa\x01\x02\nPING\n",
        b"SEND bob caf\xff\nSEND carol x\ncaf\xff",
        b"A\xff\xff\nB\xff\xfb\nC\xff\rD\xff\xfd\rE\xffx\n\xff",
        b"PNIG\x08\x08\x08ING\r\0ECHO caf\xc3\xa9\x7fe\n\x7f\x7fx\n",
        "ECHO 中文 🙂\x7f\x7fé\u{9b}\n".as_bytes(),
        b"ECHO \xc3\x28 \xe4\xb8\nECHO \xf0\x9f\x99\n\x80\x80\x7f\n",
        b"SEND bob oops\xff\xf4\xff\xfd\x06PING\r\nx\xff\xf5y\xff\xf8z\xff\xf7w\xff\xf6\n",
        b"\xff\xfd\x03\xff\xfd\x01abc\x7f\x03PING\r\0x\x15ECHO \xe4\xb8\xad\x7f\t\x1b[A\r\n",
        b"\xff\xfd\x01\xff\xfb\x03caf\xc3\xa9\x7f\xff\xff\x7f\x08\xff\xf6x\xff\xfe\x01y\n",
        b"\x0c\r\n \t\x0b\n\0PING\n\x03\x15\x1b\n",
        b"123456789\nPING\n12345678\r\nab\xc3\xa9cdefgh\xff\xffxyz\n\xff\xfd\x01abcdefghijk\r\n",
        b"\xff\xfa",
        b"\xff\xfaPING\nPING\n\xff\xfb\nPING\n",
    ];

    /// Every input of the corpus, cut at every byte (and short ones at every pair of bytes),
    /// gives what it gives in one read: the same lines, the same bytes back, the same rest.
    #[test]
    fn every_cut_gives_what_one_read_gives() {
        let mut checked = 0;
        for &input in CORPUS {
            for max in [100, 8] {
                let whole = run(max, input, &[]);
                for i in 0..=input.len() {
                    assert_eq!(
                        run(max, input, &[i]),
                        whole,
                        "\"{}\" cut at {i} (max {max})",
                        input.escape_ascii()
                    );
                    checked += 1;
                    if input.len() > 48 {
                        continue;
                    }
                    for j in i..=input.len() {
                        assert_eq!(
                            run(max, input, &[i, j]),
                            whole,
                            "\"{}\" cut at {i} and {j} (max {max})",
                            input.escape_ascii()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
