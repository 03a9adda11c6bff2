//! What the `chat` and `rooms` scenarios need of IRC (`--proto irc`): their setup, a line's
//! source nick and command, and a PRIVMSG's target and text. IRC messages have no ids, so a
//! message is known by its sender and sequence number.

use crate::conn::{Setup, Users};
use crate::Ctx;

/// Sets a `chat` or `rooms` run up for `--proto irc`: whether it speaks IRC. Nicks are the
/// run's user names, so that on chatd they are the accounts' too; their accounts are made
/// with NickServ only with `register`. An IRC server acknowledges no PRIVMSG, so the run
/// needs a rate.
pub fn set_up(
    ctx: &Ctx,
    setup: &mut Setup,
    users: &Users,
    rate: Option<f64>,
    register: bool,
) -> anyhow::Result<bool> {
    if ctx.common.proto != crate::Proto::Irc {
        return Ok(false);
    }
    if rate.is_none_or(|r| r <= 0.0) {
        anyhow::bail!("with --proto irc, give --rate: an IRC server acknowledges no PRIVMSG, so there is no closed loop");
    }
    setup.irc = Some(format!("{}_", users.prefix()));
    if !register {
        setup.auth = None;
    }
    Ok(true)
}

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
        assert_eq!(crate::chat::run_tag(nick, text, b"run"), Some((3, 7, 1200)));
        assert_eq!(
            crate::chat::run_tag(b"run_4", text, b"run"),
            None,
            "another sender's name"
        );
        assert_eq!(parts(b"PING :x"), (&b""[..], &b"PING"[..], &b":x"[..]));
        assert_ne!(id(3, 7), id(7, 3));
    }
}
