//! IRCv3 capability negotiation (<https://ircv3.net/specs/extensions/capability-negotiation>)
//! and SASL PLAIN (<https://ircv3.net/specs/extensions/sasl-3.1>, RFC 4616).

use base64::Engine as _;

use super::client::Client;
use super::numeric::*;
use super::wire::Msg;

/// The capabilities a client has enabled, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(u16);

pub const SASL: u16 = 1;
pub const SERVER_TIME: u16 = 1 << 1;
pub const MESSAGE_TAGS: u16 = 1 << 2;
pub const ECHO_MESSAGE: u16 = 1 << 3;
pub const ACCOUNT_TAG: u16 = 1 << 4;
pub const CAP_NOTIFY: u16 = 1 << 5;
pub const MULTI_PREFIX: u16 = 1 << 6;
pub const BATCH: u16 = 1 << 7;
pub const CHATHISTORY: u16 = 1 << 8;
pub const READ_MARKER: u16 = 1 << 9;
pub const LABELED_RESPONSE: u16 = 1 << 10;
pub const USERHOST_IN_NAMES: u16 = 1 << 11;

/// Every capability the door offers, as `CAP LS` lists it, and its bit.
const OFFERED: &[(&str, u16)] = &[
    ("account-tag", ACCOUNT_TAG),
    ("batch", BATCH),
    ("cap-notify", CAP_NOTIFY),
    ("draft/chathistory", CHATHISTORY),
    ("draft/read-marker", READ_MARKER),
    ("echo-message", ECHO_MESSAGE),
    ("labeled-response", LABELED_RESPONSE),
    ("message-tags", MESSAGE_TAGS),
    ("multi-prefix", MULTI_PREFIX),
    ("sasl", SASL),
    ("server-time", SERVER_TIME),
    ("userhost-in-names", USERHOST_IN_NAMES),
];

impl Caps {
    pub fn has(self, cap: u16) -> bool {
        self.0 & cap != 0
    }

    /// Whether messages carry a `time` tag.
    pub fn time(self) -> bool {
        self.has(SERVER_TIME) || self.has(MESSAGE_TAGS)
    }

    fn names(self) -> String {
        OFFERED
            .iter()
            .filter(|(_, bit)| self.has(*bit))
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The SASL mechanisms offered.
pub const MECHANISMS: &str = "PLAIN";
/// Most bytes of a client's SASL response, base64-decoded: an account, a password of up to
/// 1,024 bytes and an authorisation name fit easily.
const MAX_SASL: usize = 4096;
/// A chunk of this many bytes means more follow (sasl-3.1).
const SASL_CHUNK: usize = 400;

/// `CAP LS|LIST|REQ|END`.
pub fn cap(c: &mut Client, m: &Msg<'_>) {
    let sub = m.arg(0).to_ascii_uppercase();
    match sub.as_str() {
        "LS" => {
            if !c.registered {
                c.cap_negotiating = true;
            }
            let version: u32 = m.arg(1).parse().unwrap_or(0);
            if version >= 302 {
                c.cap_302 = true;
                // cap-notify is implied by 302 (capability-negotiation, "cap-notify").
                c.caps.0 |= CAP_NOTIFY;
            }
            let list = OFFERED
                .iter()
                .map(|(name, bit)| match (*bit, c.cap_302) {
                    (SASL, true) => format!("sasl={MECHANISMS}"),
                    _ => (*name).to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ");
            c.cap_reply("LS", &list);
        }
        "LIST" => {
            let names = c.caps.names();
            c.cap_reply("LIST", &names);
        }
        "REQ" => {
            if !c.registered {
                c.cap_negotiating = true;
            }
            let asked = m.arg(1);
            let mut caps = c.caps.0;
            let mut ok = !asked.trim().is_empty();
            for item in asked.split(' ').filter(|s| !s.is_empty()) {
                let (off, name) = match item.strip_prefix('-') {
                    Some(name) => (true, name),
                    None => (false, item),
                };
                match OFFERED.iter().find(|(n, _)| *n == name) {
                    Some((_, bit)) if off => caps &= !bit,
                    Some((_, bit)) => caps |= bit,
                    None => ok = false,
                }
            }
            // All or nothing: one unknown name refuses the whole request.
            if ok {
                c.caps.0 = caps;
                c.cap_reply("ACK", asked.trim());
            } else {
                c.cap_reply("NAK", asked.trim());
            }
        }
        "END" => {
            c.cap_negotiating = false;
            if !matches!(c.sasl, Sasl::Idle) {
                // Registration does not wait for an exchange left unfinished (sasl-3.1).
                c.sasl = Sasl::Idle;
                c.numeric(ERR_SASLABORTED, &[], "SASL authentication aborted");
            }
        }
        _ => {
            let shown: String = m.arg(0).chars().take(20).collect();
            c.numeric(
                ERR_INVALIDCAPCMD,
                &[&shown],
                "Invalid CAP command: LS, LIST, REQ or END",
            );
        }
    }
}

/// Where a SASL exchange stands.
#[derive(Debug, Default)]
pub enum Sasl {
    #[default]
    Idle,
    /// `AUTHENTICATE PLAIN` was accepted; collecting the client's response.
    Plain(Vec<u8>),
}

/// What a client's `AUTHENTICATE` line leads to.
pub enum Step {
    /// Nothing more to do now.
    Wait,
    /// The response is complete: check these credentials.
    Check { account: String, password: String },
}

/// `AUTHENTICATE <mechanism>`, then `AUTHENTICATE <base64>` chunks.
pub fn authenticate(c: &mut Client, m: &Msg<'_>) -> Step {
    let arg = m.arg(0);
    if !c.caps.has(SASL) {
        c.numeric(
            ERR_SASLFAIL,
            &[],
            "SASL authentication failed: request the sasl capability first (CAP REQ :sasl)",
        );
        return Step::Wait;
    }
    if c.account().is_some() {
        c.numeric(ERR_SASLALREADY, &[], "You have already authenticated using SASL");
        return Step::Wait;
    }
    if arg == "*" {
        c.sasl = Sasl::Idle;
        c.numeric(ERR_SASLABORTED, &[], "SASL authentication aborted");
        return Step::Wait;
    }
    match &mut c.sasl {
        Sasl::Idle => {
            if arg.eq_ignore_ascii_case("PLAIN") {
                c.sasl = Sasl::Plain(Vec::new());
                c.raw("AUTHENTICATE", &["+"], None);
            } else {
                c.numeric(RPL_SASLMECHS, &[MECHANISMS], "are available SASL mechanisms");
                c.numeric(
                    ERR_SASLFAIL,
                    &[],
                    "SASL authentication failed: only PLAIN is offered",
                );
            }
            Step::Wait
        }
        Sasl::Plain(collected) => {
            if arg != "+" {
                collected.extend_from_slice(arg.as_bytes());
            }
            if arg.len() > SASL_CHUNK {
                // sasl-3.1: a single line over 400 bytes is 905.
                c.sasl = Sasl::Idle;
                c.numeric(
                    ERR_SASLTOOLONG,
                    &[],
                    "SASL message too long: 400 bytes per AUTHENTICATE",
                );
                return Step::Wait;
            }
            if collected.len() > MAX_SASL * 4 / 3 + 4 {
                c.sasl = Sasl::Idle;
                c.numeric(
                    ERR_SASLFAIL,
                    &[],
                    "SASL authentication failed: the response is too long",
                );
                return Step::Wait;
            }
            if arg.len() == SASL_CHUNK {
                return Step::Wait;
            }
            let Sasl::Plain(collected) = std::mem::take(&mut c.sasl) else {
                unreachable!("matched above");
            };
            match decode_plain(&collected) {
                Some((account, password)) => Step::Check { account, password },
                None => {
                    c.numeric(
                        ERR_SASLFAIL,
                        &[],
                        "SASL authentication failed: PLAIN is base64 of authzid NUL account NUL password",
                    );
                    Step::Wait
                }
            }
        }
    }
}

/// A PLAIN response (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`, base64. An authzid,
/// if given, must name the same account: nobody logs in as someone else.
fn decode_plain(base64: &[u8]) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(base64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split('\0');
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || (!authzid.is_empty() && authzid != authcid) {
        return None;
    }
    Some((authcid.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.encode(s).into_bytes()
    }

    #[test]
    fn plain_takes_an_account_and_a_password_and_no_one_elses_authzid() {
        assert_eq!(
            decode_plain(&b64("\0alice\0pw")),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            decode_plain(&b64("alice\0alice\0pw")),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(decode_plain(&b64("bob\0alice\0pw")), None);
        assert_eq!(decode_plain(&b64("alice\0pw")), None);
        assert_eq!(decode_plain(b"not base64!"), None);
    }

    #[test]
    fn caps_list_by_name() {
        let caps = Caps(SERVER_TIME | ECHO_MESSAGE);
        assert_eq!(caps.names(), "echo-message server-time");
        assert!(caps.time());
        assert!(!Caps(ECHO_MESSAGE).time());
    }
}
