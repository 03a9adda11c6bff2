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
    /// Looks at the unparsed bytes: `Ok(Some((len, answer)))` for one whole reply of `len`
    /// bytes at the start, `Ok(None)` if more bytes are needed, `Err` if the stream makes no
    /// sense (the connection is then dropped).
    fn frame(&mut self, buf: &[u8]) -> Result<Option<(usize, Answer)>, String>;
}

/// One line per reply; a success starts with `expect` (`OK PONG` for chatd, `+PONG` for Redis).
pub struct LineReply {
    pub expect: Vec<u8>,
}

impl Framer for LineReply {
    fn frame(&mut self, buf: &[u8]) -> Result<Option<(usize, Answer)>, String> {
        Ok(memchr::memchr(b'\n', buf).map(|i| {
            let success = buf.starts_with(&self.expect);
            (i + 1, Answer { success, status: 0 })
        }))
    }
}

/// One HTTP/1.1 response per reply (Content-Length or chunked body); a success is a 2xx.
pub struct HttpReply {
    header_end: memmem::Finder<'static>,
}

impl HttpReply {
    pub fn new() -> HttpReply {
        HttpReply {
            header_end: memmem::Finder::new(b"\r\n\r\n"),
        }
    }
}

impl Default for HttpReply {
    fn default() -> Self {
        HttpReply::new()
    }
}

impl Framer for HttpReply {
    fn frame(&mut self, buf: &[u8]) -> Result<Option<(usize, Answer)>, String> {
        if buf.starts_with(b"HELLO ") || buf.starts_with(b"ERR SERVER_BUSY") {
            return Err(
                "a chatd line port answered, not HTTP: point `load http` at the HTTP \
                        port (--http-port, 5000 by default)"
                    .into(),
            );
        }
        let Some(end) = self.header_end.find(buf) else {
            return if buf.len() > 64 * 1024 {
                Err("an HTTP header over 64 KiB".into())
            } else {
                Ok(None)
            };
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
        let body = end + 4;
        let mut length = None;
        let mut chunked = false;
        for field in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = memchr::memchr(b':', field) else {
                continue;
            };
            let (name, value) = (&field[..colon], field[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            }
        }
        if chunked {
            return Ok(chunked_end(buf, body)?.map(|len| (len, answer)));
        }
        let len = body + length.unwrap_or(0);
        Ok((buf.len() >= len).then_some((len, answer)))
    }
}

/// Where a chunked body that starts at `at` ends (trailers are not expected), if it is all here.
fn chunked_end(buf: &[u8], mut at: usize) -> Result<Option<usize>, String> {
    loop {
        let Some(eol) = memchr::memchr(b'\n', &buf[at..]) else {
            return Ok(None);
        };
        let line = buf[at..at + eol].trim_ascii();
        let hex = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad chunk size {:?}", String::from_utf8_lossy(line)))?;
        at += eol + 1;
        // The chunk's data, then CR LF (for the last, empty chunk: just the CR LF).
        let next = at + size + 2;
        if buf.len() < next {
            return Ok(None);
        }
        at = next;
        if size == 0 {
            return Ok(Some(at));
        }
    }
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

    #[test]
    fn line_replies() {
        let mut f = LineReply {
            expect: b"OK PONG".to_vec(),
        };
        assert_eq!(f.frame(b"OK PONG\r\nOK PO").unwrap(), Some((9, ok(0))));
        assert_eq!(f.frame(b"ERR BAD_ARGS x\r\n").unwrap(), Some((16, bad(0))));
        assert_eq!(f.frame(b"OK PO").unwrap(), None);
    }

    #[test]
    fn http_content_length() {
        let mut f = HttpReply::new();
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(f.frame(r).unwrap(), Some((r.len(), ok(200))));
        assert_eq!(f.frame(&r[..r.len() - 1]).unwrap(), None);
        let mut two = r.to_vec();
        two.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(f.frame(&two).unwrap(), Some((r.len(), ok(200))));
        assert_eq!(
            f.frame(&two[r.len()..]).unwrap(),
            Some((two.len() - r.len(), bad(401)))
        );
        assert!(f.frame(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let hint = f.frame(b"HELLO chatd/1 ready\r\n").unwrap_err();
        assert!(hint.contains("line port"), "{hint}");
    }

    #[test]
    fn http_chunked() {
        let mut f = HttpReply::new();
        let r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n";
        assert_eq!(f.frame(r).unwrap(), Some((r.len(), ok(200))));
        for cut in 1..40 {
            assert_eq!(f.frame(&r[..r.len() - cut]).unwrap(), None, "cut {cut}");
        }
    }
}
