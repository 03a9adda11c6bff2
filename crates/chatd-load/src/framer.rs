//! Splitting a reply stream into replies, in place: one line per reply (chatd's `PING`,
//! Redis's inline commands) or one HTTP/1.1 response (Content-Length or chunked).

use memchr::memmem;

/// What one reply said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub success: bool,
    /// The HTTP status code; 0 for a line protocol.
    pub status: u16,
}

/// Splits a byte stream into replies.
pub trait Framer: Send + 'static {
    /// Looks at the unparsed bytes: how many of them it used, and the reply they ended, if
    /// one did; `(0, None)` when it needs more bytes. `Err` if the stream makes no sense (the
    /// connection is then dropped). A framer may use bytes without ending a reply (an HTTP
    /// body it reads through): it is then called again.
    fn frame(&mut self, buf: &[u8]) -> Result<(usize, Option<Answer>), String>;

    /// What is left of a reply begun but not ended, if that is worth saying when the
    /// connection gives up waiting (a body still arriving).
    fn unfinished(&self) -> Option<String> {
        None
    }
}

/// One line per reply; a success starts with `expect` (`OK PONG` for chatd, `+PONG` for Redis).
pub struct LineReply {
    pub expect: Vec<u8>,
}

impl Framer for LineReply {
    fn frame(&mut self, buf: &[u8]) -> Result<(usize, Option<Answer>), String> {
        Ok(match memchr::memchr(b'\n', buf) {
            Some(i) => {
                let success = buf.starts_with(&self.expect);
                (i + 1, Some(Answer { success, status: 0 }))
            }
            None => (0, None),
        })
    }
}

/// IRC: a `PONG` line is a reply; every other line (a notice, the server's own PING) is
/// passed over. An `ERROR` line is a failed reply (the server is closing the link).
pub struct IrcPong;

impl Framer for IrcPong {
    fn frame(&mut self, buf: &[u8]) -> Result<(usize, Option<Answer>), String> {
        Ok(match memchr::memchr(b'\n', buf) {
            Some(i) => {
                let line = &buf[..i];
                let answer = if memchr::memmem::find(line, b" PONG ").is_some() {
                    Some(Answer {
                        success: true,
                        status: 0,
                    })
                } else if line.starts_with(b"ERROR") {
                    Some(Answer {
                        success: false,
                        status: 0,
                    })
                } else {
                    None
                };
                (i + 1, answer)
            }
            None => (0, None),
        })
    }
}

/// One HTTP/1.1 response per reply (Content-Length or chunked body); a success is a 2xx.
///
/// Only the head is held whole (up to [`crate::conn::Bound::HTTP_HEAD`]); a body is read
/// through as it comes and never buffered, so a server cannot make the generator hold a large
/// or endless body, and chatd's 1 MiB `/get_messages` pages cost no more than a PONG.
pub struct HttpReply {
    header_end: memmem::Finder<'static>,
    state: Body,
}

/// Where a response is.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// Waiting for a head.
    None,
    /// Bytes of a Content-Length body still to come.
    Length { left: u64, answer: Answer },
    /// The next chunk-size line of a chunked body.
    ChunkSize { answer: Answer },
    /// Bytes of a chunk (and the CR LF after it) still to come.
    Chunk { left: u64, answer: Answer },
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer { answer: Answer },
}

impl HttpReply {
    pub fn new() -> HttpReply {
        HttpReply {
            header_end: memmem::Finder::new(b"\r\n\r\n"),
            state: Body::None,
        }
    }

    /// A response head at the start of `buf`: its length, what it answers and what follows it.
    fn head(&self, buf: &[u8]) -> Result<Option<(usize, Answer, Body)>, String> {
        if buf.starts_with(b"HELLO ") || buf.starts_with(b"ERR SERVER_BUSY") {
            return Err(
                "a chatd line port answered, not HTTP: point `load http` at the HTTP \
                        port (--http-port, 5000 by default)"
                    .into(),
            );
        }
        let Some(end) = self.header_end.find(buf) else {
            return Ok(None);
        };
        let head = &buf[..end];
        if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
            return Err(format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&head[..head.len().min(40)])
            ));
        }
        let status = std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("no status code in {:?}", String::from_utf8_lossy(&head[..12])))?;
        let answer = Answer {
            success: (200..300).contains(&status),
            status,
        };
        let mut length = 0;
        let mut chunked = false;
        for field in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = memchr::memchr(b':', field) else {
                continue;
            };
            let (name, value) = (&field[..colon], field[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("a bad Content-Length {:?}", String::from_utf8_lossy(value)))?;
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            }
        }
        let next = if chunked {
            Body::ChunkSize { answer }
        } else if length > 0 {
            Body::Length { left: length, answer }
        } else {
            Body::None
        };
        Ok(Some((end + 4, answer, next)))
    }
}

impl Default for HttpReply {
    fn default() -> Self {
        HttpReply::new()
    }
}

impl Framer for HttpReply {
    fn frame(&mut self, buf: &[u8]) -> Result<(usize, Option<Answer>), String> {
        match self.state {
            Body::None => {
                let Some((len, answer, next)) = self.head(buf)? else {
                    return Ok((0, None));
                };
                self.state = next;
                // A response without a body ends with its head.
                Ok((len, matches!(next, Body::None).then_some(answer)))
            }
            Body::Length { left, answer } => {
                let (used, left) = take(left, buf);
                if left == 0 {
                    self.state = Body::None;
                    Ok((used, Some(answer)))
                } else {
                    self.state = Body::Length { left, answer };
                    Ok((used, None))
                }
            }
            Body::ChunkSize { answer } => {
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    return Ok((0, None));
                };
                let line = buf[..eol].trim_ascii();
                let hex = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                let size = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad chunk size {:?}", String::from_utf8_lossy(line)))?;
                self.state = if size == 0 {
                    Body::Trailer { answer }
                } else {
                    // The chunk's data, then CR LF.
                    Body::Chunk {
                        left: size.saturating_add(2),
                        answer,
                    }
                };
                Ok((eol + 1, None))
            }
            Body::Chunk { left, answer } => {
                let (used, left) = take(left, buf);
                self.state = if left == 0 {
                    Body::ChunkSize { answer }
                } else {
                    Body::Chunk { left, answer }
                };
                Ok((used, None))
            }
            Body::Trailer { answer } => {
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    return Ok((0, None));
                };
                if buf[..eol].trim_ascii().is_empty() {
                    self.state = Body::None;
                    Ok((eol + 1, Some(answer)))
                } else {
                    Ok((eol + 1, None))
                }
            }
        }
    }

    fn unfinished(&self) -> Option<String> {
        match self.state {
            Body::None => None,
            Body::Length { left, .. } => Some(format!("a response body with {left} bytes still to come")),
            Body::ChunkSize { .. } | Body::Chunk { .. } | Body::Trailer { .. } => {
                Some("a chunked response body still coming".into())
            }
        }
    }
}

/// How much of `buf` a body with `left` bytes still to come uses, and how many are left then.
fn take(left: u64, buf: &[u8]) -> (usize, u64) {
    let used = left.min(buf.len() as u64);
    (used as usize, left - used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u16) -> Answer {
        Answer {
            success: true,
            status,
        }
    }

    fn bad(status: u16) -> Answer {
        Answer {
            success: false,
            status,
        }
    }

    /// Every reply in `input` with the bytes it took, fed as the stream arrives in pieces of
    /// `piece` bytes (the unparsed rest kept, as the read buffer keeps it).
    fn replies(f: &mut impl Framer, input: &[u8], piece: usize) -> Result<Vec<(usize, Answer)>, String> {
        let (mut out, mut pending, mut fed, mut len) = (Vec::new(), Vec::new(), 0, 0);
        while fed < input.len() {
            let more = piece.min(input.len() - fed);
            pending.extend_from_slice(&input[fed..fed + more]);
            fed += more;
            loop {
                let (used, answer) = f.frame(&pending)?;
                pending.drain(..used);
                len += used;
                match answer {
                    Some(a) => {
                        out.push((len, a));
                        len = 0;
                    }
                    None if used == 0 => break,
                    None => {}
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn line_replies() {
        let mut f = LineReply {
            expect: b"OK PONG".to_vec(),
        };
        assert_eq!(f.frame(b"OK PONG\r\nOK PO").unwrap(), (9, Some(ok(0))));
        assert_eq!(f.frame(b"ERR BAD_ARGS x\r\n").unwrap(), (16, Some(bad(0))));
        assert_eq!(f.frame(b"OK PO").unwrap(), (0, None));
    }

    #[test]
    fn http_content_length() {
        let mut f = HttpReply::new();
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        let mut two = r.to_vec();
        two.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
        let want = vec![(r.len(), ok(200)), (two.len() - r.len(), bad(401))];
        for piece in [1, 2, 7, two.len()] {
            assert_eq!(
                replies(&mut f, &two, piece).unwrap(),
                want,
                "in pieces of {piece}"
            );
            assert!(f.unfinished().is_none());
        }
        assert_eq!(replies(&mut f, &r[..r.len() - 1], 100).unwrap(), vec![]);
        assert!(f.unfinished().unwrap().contains("1 bytes still to come"));
        assert!(HttpReply::new().frame(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let hint = HttpReply::new().frame(b"HELLO chatd/1 ready\r\n").unwrap_err();
        assert!(hint.contains("line port"), "{hint}");
        let bad_length = HttpReply::new()
            .frame(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n")
            .unwrap_err();
        assert!(bad_length.contains("Content-Length"), "{bad_length}");
    }

    #[test]
    fn http_chunked() {
        let r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n";
        let with_trailer =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\nX-T: 1\r\n\r\n";
        let mut both = r.to_vec();
        both.extend_from_slice(with_trailer);
        for piece in [1, 3, both.len()] {
            let mut f = HttpReply::new();
            assert_eq!(
                replies(&mut f, &both, piece).unwrap(),
                vec![(r.len(), ok(200)), (with_trailer.len(), bad(404))],
                "in pieces of {piece}"
            );
        }
        let body = r.len() - (memmem::find(r, b"\r\n\r\n").unwrap() + 4);
        for cut in 1..40 {
            let mut f = HttpReply::new();
            assert_eq!(
                replies(&mut f, &r[..r.len() - cut], 4).unwrap(),
                vec![],
                "cut {cut}"
            );
            assert_eq!(f.unfinished().is_some(), cut <= body, "cut {cut}");
        }
    }

    /// A body is read through as it comes: the unparsed bytes never hold more than a head.
    #[test]
    fn http_bodies_are_never_held() {
        let mut f = HttpReply::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n";
        assert_eq!(f.frame(head).unwrap(), (head.len(), None));
        let body = [b'x'; 4096];
        for _ in 0..100 {
            assert_eq!(f.frame(&body).unwrap(), (body.len(), None));
        }
        assert!(f.unfinished().unwrap().contains("999999590400 bytes"));
    }
}
