//! Framing of the line protocol: splits the byte stream into lines, applies a terminal's line
//! editing (backspace, cancel), speaks the little telnet a person at a telnet client needs, and
//! turns overlong or non-UTF-8 lines into items (not errors) so the session can answer them and
//! go on.
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
//! - Negotiation follows RFC 1143 (what is already so is not answered, so it cannot loop):
//!   chatd agrees to echo (RFC 857), to suppress go-ahead in both directions (RFC 858) and to
//!   the timing mark (RFC 860), and refuses every other option. A telnet client that has chatd
//!   echo and suppress go-ahead is in character mode: it sends each key as it is typed.
//! - While chatd echoes, it does what a terminal does with the keys: it shows each character
//!   (control characters in caret notation), erases one with `BS SP BS` for each column it
//!   took, ends the line with CR LF, cancels it on Ctrl-C (showing `^C`) and erases it on Ctrl-U.
//!   So the screen shows exactly the line chatd holds.
//! - `IAC IP` (Ctrl-C) and `IAC AO` cancel the line being typed and start a fresh line on the
//!   screen (the terminal shows `^C` where the cursor was), after the answer to the timing mark
//!   telnet asks for with them; `IAC EL` erases the line, `IAC EC` a character; `IAC AYT` gets
//!   a visible line.
//! - `IAC SB` runs to `IAC SE`, but no further than the line end or [`MAX_SUBNEGOTIATION`]
//!   bytes: then the line it is on is answered as `BAD_ENCODING`.

use bytes::{Buf, BufMut, BytesMut};
use unicode_width::UnicodeWidthChar;

use super::reply::{escape, escape_into, needs_escape};

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
/// The options chatd agrees to: it echoes (RFC 857), sends no go-ahead (RFC 858), and answers
/// the timing mark (RFC 860).
const ECHO: u8 = 1;
const SGA: u8 = 3;
const TIMING_MARK: u8 = 6;

/// Ctrl-C and Ctrl-U, as a client in character mode sends them.
const ETX: u8 = 0x03;
const NAK: u8 = 0x15;
const BS: u8 = 0x08;
const DEL: u8 = 0x7f;
const VT: u8 = 0x0b;
const FF: u8 = 0x0c;

/// Longest subnegotiation (`IAC SB ... IAC SE`) waited for, in bytes.
pub const MAX_SUBNEGOTIATION: u16 = 256;

/// What `IAC AYT` is answered with.
pub const AYT_ANSWER: &[u8] = b"[chatd is here]\r\n";

/// Erases one column of the screen, when chatd echoes.
const ERASE_COLUMN: &[u8] = b"\x08 \x08";

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

/// One side of an option chatd agrees to, as RFC 1143 keeps it (without its queue: chatd never
/// changes its mind while its own request is unanswered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    No,
    /// chatd offered it (`--telnet-negotiate`) and waits for the answer.
    Offered,
    Yes,
}

/// What the client's screen still needs after a line was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Nothing,
    LineEnd,
    /// The key in caret notation (`^C`), then a line end.
    Key(u8),
}

/// The line decoder. Keeps only a few words of state; the bytes live in the caller's buffer.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// `buf[..cooked]`: the current line, edited.
    cooked: usize,
    /// `buf[raw..]`: bytes not looked at yet; `buf[cooked..raw]` is consumed input.
    raw: usize,
    /// `buf[..echoed]`: the part of the line shown on the client's screen, while chatd echoes.
    echoed: usize,
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
    /// chatd echoes what the client sends (RFC 857).
    echo: Opt,
    /// chatd sends no go-ahead (RFC 858); it never does, but a client asks before it sends
    /// each key as it is typed.
    sga: Opt,
    /// The client sends no go-ahead.
    client_sga: Opt,
    /// What the screen still needs after `IAC IP` or `IAC AO`: a line end (and where chatd
    /// echoes, the `^C` before it). It is written after the answer to the timing mark telnet
    /// asks for with them, since telnet discards what arrives before that answer, or before
    /// anything else chatd writes.
    owed: Owed,
}

impl LineCodec {
    pub fn new(max_line: usize) -> LineCodec {
        LineCodec {
            max: max_line.max(1),
            cooked: 0,
            raw: 0,
            echoed: 0,
            telnet: Telnet::Data,
            sub_len: 0,
            after_cr: false,
            discarding: false,
            malformed: false,
            is_telnet: false,
            echo: Opt::No,
            sga: Opt::No,
            client_sga: Opt::No,
            owed: Owed::Nothing,
        }
    }

    /// Whether chatd echoes what the client types (the client agreed to RFC 857 ECHO).
    pub fn echoing(&self) -> bool {
        self.echo == Opt::Yes
    }

    /// Offers character mode (`--telnet-negotiate`): `IAC WILL ECHO IAC WILL SGA`. A telnet
    /// client that agrees sends each key as it is typed and shows what chatd echoes.
    pub fn offer_character_mode(&mut self, out: &mut BytesMut) {
        for (state, option) in [(&mut self.echo, ECHO), (&mut self.sga, SGA)] {
            if *state == Opt::No {
                *state = Opt::Offered;
                out.put_slice(&[IAC, WILL, option]);
            }
        }
    }

    /// The part of a line received so far (after editing), once `decode` returned `None`.
    pub fn partial<'b>(&self, buf: &'b BytesMut) -> &'b [u8] {
        if self.discarding {
            &[]
        } else {
            &buf[..self.cooked.min(buf.len())]
        }
    }

    /// What live messages written between replies need in front of them, for a person at a
    /// telnet client: a line end, so they start on a fresh line, not glued to the line being
    /// typed (after a cancelled line, the one it is owed). Where chatd echoes it knows where
    /// the cursor is, and writes none at the start of a line. A client that never spoke telnet
    /// gets nothing.
    pub fn before_push(&mut self, out: &mut BytesMut) {
        if self.owed != Owed::Nothing {
            self.pay(out);
        } else if self.is_telnet && !(self.echoing() && self.echoed == 0) {
            out.put_slice(b"\r\n");
        }
    }

    /// What live messages need after them, for a person at a telnet client: the part of the
    /// line typed so far, again (as chatd echoed it, or escaped), so typing goes on where it
    /// was. `buf` is the buffer [`LineCodec::decode`] works on.
    pub fn after_push(&self, buf: &BytesMut, out: &mut BytesMut) {
        if !self.is_telnet {
            return;
        }
        if self.echoing() {
            render(&buf[..self.echoed], |bytes| out.put_slice(bytes));
            return;
        }
        let partial = self.partial(buf);
        // A character cut in two by the packets is left for the terminal to finish.
        let valid = match std::str::from_utf8(partial) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&partial[..e.valid_up_to()]).unwrap_or_default(),
        };
        out.put_slice(escape(valid).as_bytes());
    }

    /// Takes the next line out of `buf`, or `None` if no complete line is buffered yet. A
    /// line's text is copied into `scratch` (a copy of a short line costs less than sharing
    /// the buffer), so the caller may go on using `buf` while it holds the line. Answers to
    /// telnet commands, and the echo while chatd echoes, are appended to `answers`.
    pub fn decode<'s>(
        &mut self,
        buf: &mut BytesMut,
        scratch: &'s mut Vec<u8>,
        answers: &mut BytesMut,
    ) -> Option<Line<'s>> {
        loop {
            match self.next_event(buf, answers)? {
                Event::TooLong => {
                    self.pay(answers);
                    // The line holds as much as fits: show it, then the error goes below it.
                    if self.echoing() {
                        self.echo_typed(buf, answers, true);
                        answers.put_slice(b"\r\n");
                    }
                    self.cooked = 0;
                    self.echoed = 0;
                    self.discarding = true;
                    return Some(Line::TooLong);
                }
                Event::LineEnd => {
                    self.pay(answers);
                    let malformed = std::mem::take(&mut self.malformed);
                    let discarded = std::mem::take(&mut self.discarding);
                    if self.echoing() && !discarded {
                        self.echo_typed(buf, answers, true);
                        answers.put_slice(b"\r\n");
                    }
                    let line = &buf[..self.cooked];
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
        self.echoed = 0;
    }

    /// Runs the byte stream until a line ends or a line becomes too long; `None` once every
    /// buffered byte was looked at (the buffer then holds only the partial line, and an IAC
    /// whose meaning the next byte decides).
    fn next_event(&mut self, buf: &mut BytesMut, answers: &mut BytesMut) -> Option<Event> {
        while self.raw < buf.len() {
            let mut event = None;
            let mut run = 0;
            if self.telnet == Telnet::Data && !self.after_cr {
                // The common case: copy ordinary bytes up to the next one that means something.
                let rest = &buf[self.raw..];
                run = rest
                    .iter()
                    .position(|&b| matches!(b, b'\n' | b'\r' | IAC | BS | DEL | ETX | NAK))
                    .unwrap_or(rest.len());
                if run > 0 {
                    event = self.push_run(buf, run);
                }
            }
            if run == 0 {
                let byte = buf[self.raw];
                self.raw += 1;
                event = self.step(buf, byte, answers);
            }
            if event.is_some() {
                return event;
            }
            if self.echoing() {
                self.echo_typed(buf, answers, false);
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

    /// Appends `run` ordinary bytes from `buf[raw..]` to the line, or as many as fit.
    fn push_run(&mut self, buf: &mut BytesMut, run: usize) -> Option<Event> {
        let start = self.raw;
        self.raw += run;
        if self.discarding {
            return None;
        }
        let fits = run.min(self.max - self.cooked);
        if self.cooked != start {
            buf.copy_within(start..start + fits, self.cooked);
        }
        self.cooked += fits;
        (fits < run).then_some(Event::TooLong)
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
                        self.erase_char(buf, answers);
                        None
                    }
                    // Keys that a terminal's line editing would act on, when chatd does its
                    // part; otherwise data as any other byte.
                    ETX if self.echoing() => {
                        self.cancel(b'C');
                        self.pay(answers);
                        None
                    }
                    NAK if self.echoing() => {
                        self.erase_line(buf, answers);
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
        if self.cooked == self.max {
            return Some(Event::TooLong);
        }
        buf[self.cooked] = byte;
        self.cooked += 1;
        None
    }

    /// Echoes what the line gained since the last echo: up to a character whose other bytes
    /// are still to come, or (`all`) everything.
    fn echo_typed(&mut self, buf: &BytesMut, answers: &mut BytesMut, all: bool) {
        if self.echoed >= self.cooked {
            return;
        }
        let new = &buf[self.echoed..self.cooked];
        let end = if all {
            new.len()
        } else {
            new.len() - incomplete_tail(new)
        };
        if end > 0 {
            self.pay(answers);
            render(&new[..end], |bytes| answers.put_slice(bytes));
            self.echoed += end;
        }
    }

    /// Deletes the last character (not byte) of the line; where chatd echoes, on the screen
    /// too.
    fn erase_char(&mut self, buf: &BytesMut, answers: &mut BytesMut) {
        while self.cooked > 0 {
            self.cooked -= 1;
            if buf[self.cooked] & 0xC0 != 0x80 {
                break;
            }
        }
        self.unshow(buf, answers);
    }

    /// Deletes the line being typed (Ctrl-U, `IAC EL`); where chatd echoes, on the screen too.
    fn erase_line(&mut self, buf: &BytesMut, answers: &mut BytesMut) {
        self.cooked = 0;
        self.discarding = false;
        self.malformed = false;
        self.unshow(buf, answers);
    }

    /// Erases from the screen what was shown past the end of the line: `BS SP BS` for each
    /// column it took.
    fn unshow(&mut self, buf: &BytesMut, answers: &mut BytesMut) {
        if self.echoed > self.cooked {
            if self.echoing() {
                self.pay(answers);
                let columns = render(&buf[self.cooked..self.echoed], |_| {});
                for _ in 0..columns {
                    answers.put_slice(ERASE_COLUMN);
                }
            }
            self.echoed = self.cooked;
        }
    }

    /// Drops the line being typed; the screen is owed a fresh line (`^C` and a line end where
    /// chatd echoes, since the terminal shows nothing of the key itself).
    fn cancel(&mut self, key: u8) {
        self.cooked = 0;
        self.echoed = 0;
        self.discarding = false;
        self.malformed = false;
        self.owed = if self.echoing() {
            Owed::Key(key)
        } else {
            Owed::LineEnd
        };
    }

    /// Writes what the screen is owed, if anything.
    fn pay(&mut self, answers: &mut BytesMut) {
        match std::mem::replace(&mut self.owed, Owed::Nothing) {
            Owed::Nothing => {}
            Owed::LineEnd => answers.put_slice(b"\r\n"),
            Owed::Key(key) => answers.put_slice(&[b'^', key, b'\r', b'\n']),
        }
    }

    /// A two-byte telnet command.
    fn command(&mut self, buf: &BytesMut, command: u8, answers: &mut BytesMut) {
        match command {
            // Ctrl-C (and Ctrl-O, abort output) in telnet's line mode: the terminal shows ^C
            // (or ^O) where the cursor is, and the next line is to start below it.
            IP => self.cancel(b'C'),
            AO => self.cancel(b'O'),
            EL => self.erase_line(buf, answers),
            EC => self.erase_char(buf, answers),
            AYT => {
                // Where chatd echoes, on a line of its own with the typed text again below.
                self.pay(answers);
                let typed = self.echoing() && self.echoed > 0;
                if typed {
                    answers.put_slice(b"\r\n");
                }
                answers.put_slice(AYT_ANSWER);
                if typed {
                    render(&buf[..self.echoed], |bytes| answers.put_slice(bytes));
                }
            }
            // NOP, data mark, break, go ahead, and SE out of place: nothing to do.
            _ => {}
        }
    }

    /// Answers `IAC <verb> <option>`: agrees to ECHO and SGA, answers the timing mark, refuses
    /// the rest.
    fn negotiate(&mut self, verb: u8, option: u8, answers: &mut BytesMut) {
        if (verb, option) == (DO, TIMING_MARK) {
            // Telnet discards what it receives until this answer: a fresh line owed comes
            // after it.
            answers.put_slice(&[IAC, WILL, TIMING_MARK]);
            self.pay(answers);
            return;
        }
        self.pay(answers);
        let on = matches!(verb, WILL | DO);
        match (verb, option) {
            (DO | DONT, ECHO) => {
                let was = self.echoing();
                agree(&mut self.echo, on, [WILL, WONT], ECHO, answers);
                if !was && self.echoing() {
                    // What was typed so far is on the screen already: the terminal showed it.
                    self.echoed = self.cooked;
                }
            }
            (DO | DONT, SGA) => agree(&mut self.sga, on, [WILL, WONT], SGA, answers),
            (WILL | WONT, SGA) => agree(&mut self.client_sga, on, [DO, DONT], SGA, answers),
            (DO, _) => answers.put_slice(&[IAC, WONT, option]),
            (WILL, _) => answers.put_slice(&[IAC, DONT, option]),
            // WONT and DONT of options chatd refuses anyway say what is already so.
            _ => {}
        }
    }
}

/// Moves one option to what the client asks for (`on`), and answers (`[yes, no]`) only a
/// change: a request for what is already so, or the answer to chatd's own offer, gets no
/// reply (RFC 1143), so negotiation cannot loop.
fn agree(state: &mut Opt, on: bool, [yes, no]: [u8; 2], option: u8, answers: &mut BytesMut) {
    let answer = match (*state, on) {
        (Opt::No, true) => Some(yes),
        (Opt::Yes, false) => Some(no),
        _ => None,
    };
    *state = if on { Opt::Yes } else { Opt::No };
    if let Some(answer) = answer {
        answers.put_slice(&[IAC, answer, option]);
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character whose other bytes have not
/// arrived yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let from = bytes.len().saturating_sub(3);
    match (from..bytes.len()).rev().find(|&i| bytes[i] & 0xC0 != 0x80) {
        Some(lead) => match std::str::from_utf8(&bytes[lead..]) {
            Err(e) if e.error_len().is_none() => bytes.len() - lead,
            _ => 0,
        },
        None => 0,
    }
}

/// Writes typed bytes as chatd echoes them, through `out`, and returns how many columns they
/// take on the screen: text as it is, a TAB as one space (so erasing it takes one column,
/// wherever it stands), other control characters escaped as in messages (`^C`, `^[`,
/// `<U+009B>`), and each byte that is not UTF-8 as `?`.
fn render(typed: &[u8], mut out: impl FnMut(&[u8])) -> usize {
    let mut columns = 0;
    for chunk in typed.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\t' {
                out(b" ");
                columns += 1;
            } else if needs_escape(c) {
                let mut escaped = String::new();
                escape_into(&mut escaped, c.encode_utf8(&mut [0; 4]));
                out(escaped.as_bytes());
                columns += escaped.len();
            } else {
                out(c.encode_utf8(&mut [0; 4]).as_bytes());
                columns += c.width().unwrap_or(0);
            }
        }
        for _ in chunk.invalid() {
            out(b"?");
            columns += 1;
        }
    }
    columns
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
        let mut answers = BytesMut::new();
        let got = decode_all(codec, buf, &mut answers);
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

    /// The lines and the bytes written back for `input` on a codec that echoes.
    fn echoed(input: &[u8]) -> (Vec<Got>, String) {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfd\x01"[..]);
        buf.extend_from_slice(input);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        let answers = answers.strip_prefix(b"\xff\xfb\x01").expect("WILL ECHO first");
        (got, String::from_utf8(answers.to_vec()).unwrap())
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
    fn strips_telnet_commands_and_refuses_other_options() {
        let mut codec = LineCodec::new(100);
        // WILL NAWS, DO STATUS, a NOP, a subnegotiation (terminal type), a WONT.
        let mut buf = BytesMut::from(
            &b"\xff\xfb\x1f\xff\xfd\x05\xff\xf1PI\xff\xfa\x18\x00xterm\xff\xf0NG\xff\xfc\x05\r\n"[..],
        );
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(got, vec![text("PING")]);
        assert_eq!(answers, b"\xff\xfe\x1f\xff\xfc\x05");
        assert!(codec.is_telnet);
        assert!(!codec.echoing());
    }

    #[test]
    fn agrees_to_echo_and_suppress_go_ahead_once() {
        let mut codec = LineCodec::new(100);
        // What Debian's telnet sends for `mode character`, twice; the client's own SGA.
        let mut buf =
            BytesMut::from(&b"\xff\xfd\x03\xff\xfd\x01\xff\xfd\x03\xff\xfd\x01\xff\xfb\x03\xff\xfb\x03"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert!(got.is_empty());
        assert_eq!(answers, b"\xff\xfb\x03\xff\xfb\x01\xff\xfd\x03");
        assert!(codec.echoing());
        // `mode line`: DONT SGA, WILL LINEMODE, DONT ECHO; then the same again.
        buf.extend_from_slice(b"\xff\xfe\x03\xff\xfb\x22\xff\xfe\x01\xff\xfe\x03\xff\xfe\x01");
        let (_, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(answers, b"\xff\xfc\x03\xff\xfe\x22\xff\xfc\x01");
        assert!(!codec.echoing());
    }

    #[test]
    fn an_offer_is_not_answered_twice() {
        let mut codec = LineCodec::new(100);
        let mut out = BytesMut::new();
        codec.offer_character_mode(&mut out);
        assert_eq!(&out[..], b"\xff\xfb\x01\xff\xfb\x03");
        // The client agrees to both: no reply, and chatd echoes.
        let mut buf = BytesMut::from(&b"\xff\xfd\x01\xff\xfd\x03hi"[..]);
        let (_, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(answers, b"hi");
        // A client that refuses gets no reply either, and nothing is echoed.
        let mut codec = LineCodec::new(100);
        codec.offer_character_mode(&mut BytesMut::new());
        let mut buf = BytesMut::from(&b"\xff\xfe\x01\xff\xfe\x03PING\r\n"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!((got, answers), (vec![text("PING")], vec![]));
    }

    #[test]
    fn echo_shows_the_line_as_it_is_held() {
        // Typed text, a backspace, a line end.
        assert_eq!(
            echoed(b"PNIG\x7f\x7f\x7fING\r\0"),
            (
                vec![text("PING")],
                "PNIG\x08 \x08\x08 \x08\x08 \x08ING\r\n".to_string()
            )
        );
        // A character is erased by its width: é one column, 中 two, ESC shown as ^[ two.
        assert_eq!(
            echoed("é中\x1b\x7f\x7f\x7f\n".as_bytes()).1,
            "é中^[\x08 \x08\x08 \x08\x08 \x08\x08 \x08\x08 \x08\r\n"
        );
        // An arrow key is shown in caret notation; TAB as a space; Enter on nothing is a line.
        assert_eq!(
            echoed(b"\x1b[A\r\na\tb\r\n\r\n"),
            (
                vec![text("\x1b[A"), text("a\tb")],
                "^[[A\r\na b\r\n\r\n".to_string()
            )
        );
    }

    #[test]
    fn while_echoing_ctrl_c_cancels_and_ctrl_u_erases_the_line() {
        assert_eq!(
            echoed(b"SEND bob oops\x03PING\r\0"),
            (vec![text("PING")], "SEND bob oops^C\r\nPING\r\n".to_string())
        );
        assert_eq!(
            echoed(b"ab\x15PING\n"),
            (vec![text("PING")], "ab\x08 \x08\x08 \x08PING\r\n".to_string())
        );
        // Without echo they are data, as any other byte.
        assert_eq!(all(b"a\x03b\n"), vec![text("a\x03b")]);
    }

    #[test]
    fn ctrl_c_in_line_mode_starts_a_fresh_line_after_the_timing_mark() {
        // Telnet discards what arrives before the answer to its timing mark.
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"PIN\xff\xf4\xff\xfd\x06PING\r\0"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(got, vec![text("PING")]);
        assert_eq!(answers, b"\xff\xfb\x06\r\n");
        // Without a timing mark, before whatever is written next: the reply to a line, an
        // answer, a push.
        let mut buf = BytesMut::from(&b"PIN\xff\xf4PING\r\0"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!((got, answers), (vec![text("PING")], b"\r\n".to_vec()));
        let mut buf = BytesMut::from(&b"PIN\xff\xf4\xff\xfd\x05"[..]);
        let (_, answers) = lines_and_answers(&mut codec, &mut buf);
        assert_eq!(answers, b"\r\n\xff\xfc\x05");
        let mut buf = BytesMut::from(&b"PIN\xff\xf4"[..]);
        assert_eq!(lines_and_answers(&mut codec, &mut buf), (vec![], vec![]));
        let mut out = BytesMut::new();
        codec.before_push(&mut out);
        assert_eq!(&out[..], b"\r\n", "one line end, not two");
        // Where chatd echoes, the ^C too.
        assert_eq!(echoed(b"ab\xff\xf4cd\r").1, "ab^C\r\ncd\r\n");
    }

    #[test]
    fn a_push_redraws_the_typed_line() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"PING\r\nSEND bob h\xc3"[..]);
        let mut answers = BytesMut::new();
        decode_all(&mut codec, &mut buf, &mut answers);
        let (mut before, mut after) = (BytesMut::new(), BytesMut::new());
        codec.before_push(&mut before);
        codec.after_push(&buf, &mut after);
        assert_eq!((&before[..], &after[..]), (&b""[..], &b""[..]), "not telnet");
        // A telnet client in line mode: a fresh line, then what is known of the line.
        buf.extend_from_slice(b"\xa9\xff\xfc\x01");
        decode_all(&mut codec, &mut buf, &mut answers);
        codec.before_push(&mut before);
        codec.after_push(&buf, &mut after);
        assert_eq!(
            (&before[..], &after[..]),
            (&b"\r\n"[..], "SEND bob hé".as_bytes())
        );
        // Where chatd echoes, the cursor is known: at the start of a line, no line end.
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfd\x01"[..]);
        decode_all(&mut codec, &mut buf, &mut answers);
        let (mut before, mut after) = (BytesMut::new(), BytesMut::new());
        codec.before_push(&mut before);
        codec.after_push(&buf, &mut after);
        assert_eq!((&before[..], &after[..]), (&b""[..], &b""[..]));
        buf.extend_from_slice(b"a\tb\x1b");
        decode_all(&mut codec, &mut buf, &mut answers);
        codec.before_push(&mut before);
        codec.after_push(&buf, &mut after);
        assert_eq!((&before[..], &after[..]), (&b"\r\n"[..], &b"a b^["[..]));
    }

    #[test]
    fn answers_the_timing_mark_and_are_you_there() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfd\x06\xff\xf6"[..]);
        let (got, answers) = lines_and_answers(&mut codec, &mut buf);
        assert!(got.is_empty());
        assert_eq!(answers, [&b"\xff\xfb\x06"[..], AYT_ANSWER].concat());
        // While echoing, the answer gets a line of its own and the typed text comes back.
        assert_eq!(echoed(b"ab\xff\xf6").1, "ab\r\n[chatd is here]\r\nab");
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
        assert_eq!(all(b"SEND bob oops\xff\xf8WHO\n"), vec![text("WHO")]);
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

    /// Everything the decoder makes of `input` cut into reads at `cuts`: the lines, every byte
    /// written back, the partial line left, and whether the client spoke telnet.
    type Outcome = (Vec<Got>, Vec<u8>, Vec<u8>, bool);

    fn run(max: usize, offer: bool, input: &[u8], cuts: &[usize]) -> Outcome {
        let mut codec = LineCodec::new(max);
        let mut answers = BytesMut::new();
        if offer {
            codec.offer_character_mode(&mut answers);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            buf.extend_from_slice(&input[from..cut]);
            from = cut;
            got.extend(decode_all(&mut codec, &mut buf, &mut answers));
        }
        let partial = codec.partial(&buf).to_vec();
        (got, answers.to_vec(), partial, codec.is_telnet)
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
            for (max, offer) in [(100, false), (8, false), (100, true), (8, true)] {
                let whole = run(max, offer, input, &[]);
                for i in 0..=input.len() {
                    assert_eq!(
                        run(max, offer, input, &[i]),
                        whole,
                        "\"{}\" cut at {i} (max {max}, offer {offer})",
                        input.escape_ascii()
                    );
                    checked += 1;
                    if input.len() > 48 {
                        continue;
                    }
                    for j in i..=input.len() {
                        assert_eq!(
                            run(max, offer, input, &[i, j]),
                            whole,
                            "\"{}\" cut at {i} and {j} (max {max}, offer {offer})",
                            input.escape_ascii()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// Random inputs from the same pieces, cut at random places, give what one read gives.
    #[test]
    fn random_cuts_give_what_one_read_gives() {
        const PIECES: &[&[u8]] = &[
            b"PING",
            b"ECHO x",
            b"\r",
            b"\n",
            b"\r\n",
            b"\r\0",
            b"\xff",
            b"\xff\xff",
            b"\xff\xf4",
            b"\xff\xf5",
            b"\xff\xf6",
            b"\xff\xf7",
            b"\xff\xf8",
            b"\xff\xf1",
            b"\xff\xfd\x01",
            b"\xff\xfe\x01",
            b"\xff\xfd\x03",
            b"\xff\xfb\x03",
            b"\xff\xfc\x03",
            b"\xff\xfd\x06",
            b"\xff\xfb\x1f",
            b"\xff\xfa\x18\x00xterm\xff\xf0",
            b"\xff\xfa",
            b"\xff\xf0",
            b"\x08",
            b"\x7f",
            b"\x03",
            b"\x15",
            b"\x1b[A",
            b"\t",
            b"\x0c",
            b" ",
            "é".as_bytes(),
            "中".as_bytes(),
            "🙂".as_bytes(),
            b"\xc3",
            b"\x80",
            b"0123456789abcdef",
        ];
        // xorshift64*: the same inputs on every run, so a failure can be replayed.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |below: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % below
        };
        for round in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..1 + next(40) {
                input.extend_from_slice(PIECES[next(PIECES.len())]);
            }
            let mut cuts: Vec<usize> = (0..next(12)).map(|_| next(input.len() + 1)).collect();
            cuts.sort_unstable();
            let (max, offer) = ([6, 16, 4096][next(3)], next(2) == 1);
            assert_eq!(
                run(max, offer, &input, &cuts),
                run(max, offer, &input, &[]),
                "round {round}: \"{}\" cut at {cuts:?} (max {max}, offer {offer})",
                input.escape_ascii()
            );
        }
    }
}
