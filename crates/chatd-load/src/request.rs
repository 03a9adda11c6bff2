//! The bytes of one request: a fixed line or HTTP request written once, or an HTTP request
//! whose body carries a value unique to each request.
//!
//! Template syntax (in `--body` / `--body-file`):
//! - `{{unique}}`: a value no other request of the run has, `<run id>-<connection>-<n>`;
//! - `{{n}}`: the request's number on its connection (0, 1, ...);
//! - `{{conn}}`: the connection's index in the run.
//!
//! Anything else between `{{` and `}}` is an error, so a typo does not go out as text.

use std::io::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u8>),
    Unique,
    N,
    Conn,
}

/// One request, written into a buffer per send.
#[derive(Debug, Clone)]
pub enum Request {
    /// The same bytes every time (with their line end).
    Fixed(Vec<u8>),
    /// An HTTP request: the head up to its headers, and a templated body whose length is
    /// written per request.
    Templated {
        head: Vec<u8>,
        body: Vec<Piece>,
        run_id: String,
    },
}

impl Request {
    /// An HTTP/1.1 request. `headers` are `Name: value` strings; a body gets a Content-Length
    /// (and `Content-Type: application/json` unless one of `headers` names a type).
    pub fn http(
        method: &str,
        host: &str,
        path: &str,
        headers: &[String],
        body: Option<&str>,
        run_id: &str,
    ) -> Result<Request, String> {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chatd-load\r\nAccept: */*\r\n");
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("a header is `Name: value`, not {h:?}"))?;
            head.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
        }
        let Some(body) = body else {
            head.push_str("\r\n");
            return Ok(Request::Fixed(head.into_bytes()));
        };
        if !headers
            .iter()
            .any(|h| h.trim_start().to_ascii_lowercase().starts_with("content-type:"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        let pieces = parse_template(body)?;
        if pieces.iter().all(|p| matches!(p, Piece::Text(_))) {
            head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            return Ok(Request::Fixed(head.into_bytes()));
        }
        Ok(Request::Templated {
            head: head.into_bytes(),
            body: pieces,
            run_id: run_id.to_string(),
        })
    }

    /// Appends request number `n` of connection `conn` to `out`.
    pub fn write(&self, out: &mut Vec<u8>, conn: usize, n: u64) {
        match self {
            Request::Fixed(bytes) => out.extend_from_slice(bytes),
            Request::Templated { head, body, run_id } => {
                out.extend_from_slice(head);
                let mut text = Vec::with_capacity(128);
                for piece in body {
                    match piece {
                        Piece::Text(t) => text.extend_from_slice(t),
                        Piece::Unique => {
                            let _ = write!(text, "{run_id}-{conn}-{n}");
                        }
                        Piece::N => {
                            let _ = write!(text, "{n}");
                        }
                        Piece::Conn => {
                            let _ = write!(text, "{conn}");
                        }
                    }
                }
                let _ = write!(out, "Content-Length: {}\r\n\r\n", text.len());
                out.extend_from_slice(&text);
            }
        }
    }
}

fn parse_template(body: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest.as_bytes()[..open].to_vec()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("an unclosed {{{{ in the body: {rest:?}"))?;
        pieces.push(match after[..close].trim() {
            "unique" => Piece::Unique,
            "n" => Piece::N,
            "conn" => Piece::Conn,
            other => {
                return Err(format!(
                "unknown template {{{{{other}}}}} in the body: use {{{{unique}}}}, {{{{n}}}} or {{{{conn}}}}"
            ))
            }
        });
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.as_bytes().to_vec()));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Request, conn: usize, n: u64) -> String {
        let mut out = Vec::new();
        r.write(&mut out, conn, n);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_get_is_written_once() {
        let r = Request::http("GET", "h:5", "/info", &["X-A: 1".into()], None, "r").unwrap();
        assert_eq!(
            text(&r, 0, 0),
            "GET /info HTTP/1.1\r\nHost: h:5\r\nUser-Agent: chatd-load\r\nAccept: */*\r\nX-A: 1\r\n\r\n"
        );
    }

    #[test]
    fn templated_bodies_are_unique_with_their_length() {
        let body = r#"{"recipient": "bob", "message": "m {{unique}} #{{n}} c{{conn}}"}"#;
        let r = Request::http("POST", "h", "/", &[], Some(body), "run1").unwrap();
        let one = text(&r, 3, 7);
        let (head, body) = one.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, r#"{"recipient": "bob", "message": "m run1-3-7 #7 c3"}"#);
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("Content-Type: application/json"), "{head}");
        assert_ne!(text(&r, 3, 8), one);
    }

    #[test]
    fn unknown_templates_are_refused() {
        let e = Request::http("POST", "h", "/", &[], Some("{{uniq}}"), "r").unwrap_err();
        assert!(e.contains("unknown template"), "{e}");
        assert!(Request::http("POST", "h", "/", &[], Some("{{unique"), "r").is_err());
        assert!(Request::http("GET", "h", "/", &["nocolon".into()], None, "r").is_err());
    }
}
