//! IRCv3 labeled-response (<https://ircv3.net/specs/extensions/labeled-response>): a client
//! that enabled it tags a command `@label=<id>`, and gets its response back with that label,
//! so it can tell which reply answers which command (CHATHISTORY, WHO, a message's echo).
//!
//! - no line in response: `@label=<id> :server ACK`;
//! - one line: that line, with the label among its tags;
//! - more: a `labeled-response` batch carrying the label, holding them all (lines already in
//!   a batch of their own, such as a `chathistory` one, stay in it: that batch is nested).
//!
//! A command's response is what it wrote to the connection's buffer while it ran; live
//! messages are written apart from commands, so none is ever taken for a response.

use bytes::{BufMut, BytesMut};

/// The longest label kept; a longer one is ignored (the spec allows servers to bound it).
pub const MAX_LABEL: usize = 64;

/// The label of a command's tags, if it has a usable one.
pub fn label_of(tags: Option<&str>) -> Option<&str> {
    tags?
        .split(';')
        .find_map(|tag| tag.strip_prefix("label="))
        .filter(|label| !label.is_empty() && label.len() <= MAX_LABEL)
}

/// Labels the response a command wrote into `out` from `from` on: see the module.
pub fn label(out: &mut BytesMut, from: usize, label: &str, server: &str, batch: &str) {
    let written = out.split_off(from);
    let lines: Vec<&[u8]> = written[..]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    let tag = format!("label={label}");
    match lines.len() {
        0 => {
            put_tagged(out, &tag, format!(":{server} ACK\r\n").as_bytes());
        }
        1 => put_tagged(out, &tag, lines[0]),
        _ => {
            let start = format!(":{server} BATCH +{batch} labeled-response\r\n");
            put_tagged(out, &tag, start.as_bytes());
            let inner = format!("batch={batch}");
            for line in lines {
                if has_batch_tag(line) {
                    out.put_slice(line);
                    out.put_u8(b'\n');
                } else {
                    put_tagged(out, &inner, line);
                }
            }
            out.put_slice(format!(":{server} BATCH -{batch}\r\n").as_bytes());
        }
    }
}

/// Writes `line` (ending in CR, LF or CR LF as it was written) with `tag` added to its tags.
fn put_tagged(out: &mut BytesMut, tag: &str, line: &[u8]) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.put_u8(b'@');
    out.put_slice(tag.as_bytes());
    match line.strip_prefix(b"@") {
        Some(rest) => {
            out.put_u8(b';');
            out.put_slice(rest);
        }
        None => {
            out.put_u8(b' ');
            out.put_slice(line);
        }
    }
    out.put_slice(b"\r\n");
}

fn has_batch_tag(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"@") else {
        return false;
    };
    let tags = rest.split(|&b| b == b' ').next().unwrap_or(b"");
    tags.split(|&b| b == b';').any(|t| t.starts_with(b"batch="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labeled(written: &str) -> String {
        let mut out = BytesMut::from(&b"before\r\n"[..]);
        out.put_slice(written.as_bytes());
        label(&mut out, 8, "abc", "srv", "l1");
        String::from_utf8(out[8..].to_vec()).unwrap()
    }

    #[test]
    fn no_reply_is_an_ack_one_is_tagged_more_are_a_batch() {
        assert_eq!(labeled(""), "@label=abc :srv ACK\r\n");
        assert_eq!(labeled(":srv PONG srv :x\r\n"), "@label=abc :srv PONG srv :x\r\n");
        assert_eq!(
            labeled("@time=t :a PRIVMSG #c :hi\r\n"),
            "@label=abc;time=t :a PRIVMSG #c :hi\r\n"
        );
        assert_eq!(
            labeled(
                ":srv BATCH +h1 chathistory #c\r\n@batch=h1;time=t :a PRIVMSG #c :hi\r\n:srv BATCH -h1\r\n"
            ),
            "@label=abc :srv BATCH +l1 labeled-response\r\n\
             @batch=l1 :srv BATCH +h1 chathistory #c\r\n\
             @batch=h1;time=t :a PRIVMSG #c :hi\r\n\
             @batch=l1 :srv BATCH -h1\r\n\
             :srv BATCH -l1\r\n"
        );
    }

    #[test]
    fn only_a_short_label_counts() {
        assert_eq!(label_of(Some("time=x;label=q1")), Some("q1"));
        assert_eq!(label_of(Some("label=")), None);
        assert_eq!(label_of(Some(&format!("label={}", "x".repeat(65)))), None);
        assert_eq!(label_of(None), None);
    }
}
