//! What the `chat` and `rooms` scenarios read of IRC (`--proto irc`): a line's source nick
//! and command, a PRIVMSG's target and text, and the run's tag in that text. IRC messages
//! have no ids, so a message is known by its sender and sequence number.

use crate::chat::parse_u64;

/// A message's id in the delivery check: its sender and its seq.
pub fn id(sender: u32, seq: u32) -> u64 {
    (u64::from(sender) << 32) | u64::from(seq)
}

/// A line's source nick, command and the rest: `[@tags ][:nick!user@host ]COMMAND rest`.
pub fn parts(line: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut line = line;
    if line.starts_with(b"@") {
        line = line.splitn(2, |&b| b == b' ').nth(1).unwrap_or(b"");
    }
    let mut nick: &[u8] = b"";
    if let Some(rest) = line.strip_prefix(b":") {
        let mut parts = rest.splitn(2, |&b| b == b' ');
        let source = parts.next().unwrap_or(b"");
        nick = source.split(|&b| b == b'!').next().unwrap_or(b"");
        line = parts.next().unwrap_or(b"");
    }
    let mut parts = line.splitn(2, |&b| b == b' ');
    (nick, parts.next().unwrap_or(b""), parts.next().unwrap_or(b""))
}

/// A PRIVMSG's target and text (after the command).
pub fn privmsg(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = rest.splitn(2, |&b| b == b' ');
    let target = parts.next()?;
    let text = parts.next()?;
    Some((target, text.strip_prefix(b":").unwrap_or(text)))
}

/// The run's tag in a message's text, `<prefix>.<sender>.<seq>.<t_us>.`, if `from` is the
/// sender it names (`<prefix>_<sender>`): (sender, seq, t_us).
pub fn tagged(from: &[u8], text: &[u8], prefix: &[u8]) -> Option<(u32, u32, u64)> {
    let tag = text.strip_prefix(prefix)?.strip_prefix(b".")?;
    let mut parts = tag.splitn(4, |&b| b == b'.');
    let sender = parse_u64(parts.next()?)?;
    let seq = parse_u64(parts.next()?)? as u32;
    let t_us = parse_u64(parts.next()?)?;
    let named = parse_u64(from.strip_prefix(prefix)?.strip_prefix(b"_")?)?;
    (named == sender).then_some((sender as u32, seq, t_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_privmsg_is_read_whoever_sends_tags() {
        let line = b"@time=x;msgid=9 :run_3!run_3@host PRIVMSG #run.r0 :run.3.7.1200.xxx";
        let (nick, command, rest) = parts(line);
        assert_eq!((nick, command), (&b"run_3"[..], &b"PRIVMSG"[..]));
        let (target, text) = privmsg(rest).unwrap();
        assert_eq!(target, b"#run.r0");
        assert_eq!(tagged(nick, text, b"run"), Some((3, 7, 1200)));
        assert_eq!(tagged(b"run_4", text, b"run"), None, "another sender's name");
        assert_eq!(parts(b"PING :x"), (&b""[..], &b"PING"[..], &b":x"[..]));
        assert_ne!(id(3, 7), id(7, 3));
    }
}
