//! What a request carries: its fields (from the query string and a JSON or form body, on any
//! method — the lab's clients send JSON bodies with GET) and its credentials.
//!
//! Bodies are bounded in bytes ([`MAX_BODY`]), in time ([`BODY_STALL`] without a byte, a
//! minimum rate after a grace, [`BODY_TIME`] in all) and in number, fairly between addresses
//! (see [`bodies`](super::bodies)). The credentials in the `Authorization` header are checked
//! before the body is read at all.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{Map, Value};

use super::bodies::{Pace, BODY_GRACE, MIN_BODY_RATE};
use super::status::HttpError;
use super::AppState;
use crate::chat::Username;
use crate::error::{ChatError, ChatResult, Code};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// A body that sends no byte for this long is abandoned (`408`).
pub const BODY_STALL: Duration = Duration::from_secs(5);
/// A body must be complete within this time (`408`).
pub const BODY_TIME: Duration = Duration::from_secs(30);

/// The request's fields: query parameters, overridden by the body's fields.
#[derive(Debug, Default)]
pub struct Payload(pub Map<String, Value>);

impl Payload {
    /// A text field; numbers are accepted as their decimal text.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// A required text field.
    pub fn require(&self, name: &str) -> Result<String, ChatError> {
        self.text(name)
            .ok_or_else(|| ChatError::bad_args(format!("the field {name:?} is missing or not text")))
    }

    /// An optional whole number >= 0.
    pub fn count(&self, name: &str) -> Result<Option<u64>, ChatError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| not_a_count(name)),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.parse().map(Some).map_err(|_| not_a_count(name)),
            Some(_) => Err(not_a_count(name)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn not_a_count(name: &str) -> ChatError {
    ChatError::bad_args(format!("the field {name:?} must be a whole number >= 0"))
}

impl FromRequest<Arc<AppState>> for Payload {
    type Rejection = HttpError;

    async fn from_request(request: Request<Body>, app: &Arc<AppState>) -> Result<Payload, HttpError> {
        let (parts, body) = request.into_parts();
        let mut fields = match parts.uri.query() {
            Some(query) => form_fields(query.as_bytes())?,
            None => Map::new(),
        };
        if fields.contains_key("token") {
            return Err(ChatError::bad_args(
                "tokens are not accepted in URLs (they end up in logs and history); \
                 send the header Authorization: Bearer <token>",
            )
            .into());
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        let body = read_body(&parts.headers, body, peer, app).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Payload(fields));
        }
        fields.extend(body_fields(&parts.headers, &body)?);
        Ok(Payload(fields))
    }
}

/// The body's bytes, within the limits on size, time and bodies at once.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    peer: std::net::IpAddr,
    app: &AppState,
) -> Result<bytes::Bytes, HttpError> {
    let too_large = || {
        ChatError::new(
            Code::LineTooLong,
            format!("the request body is over {} KiB", MAX_BODY / 1024),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large().into());
    }
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        return Ok(bytes::Bytes::new());
    }
    let declared = if chunked { None } else { declared };
    let _room = app
        .bodies
        .room(peer, declared)
        .await
        .map_err(|why| ChatError::new(Code::ServerBusy, why))?;
    let mut body = body;
    let mut buffer = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let pace = Pace::new(tokio::time::Instant::now(), BODY_TIME);
    loop {
        let deadline = pace.deadline(buffer.len());
        let stall = tokio::time::Instant::now() + BODY_STALL;
        let frame = match tokio::time::timeout_at(stall.min(deadline), body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ChatError::bad_args("the request body was cut short").into()),
            Err(_) if stall < deadline || pace.is_limit(deadline) => return Err(body_timeout()),
            Err(_) => return Err(body_too_slow()),
        };
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > MAX_BODY {
                return Err(too_large().into());
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

fn body_too_slow() -> HttpError {
    HttpError::new(
        StatusCode::REQUEST_TIMEOUT,
        "TIMEOUT",
        format!(
            "the request body arrived too slowly: after {} s it must keep coming at {} KiB/s or more",
            BODY_GRACE.as_secs(),
            MIN_BODY_RATE / 1024
        ),
    )
}

fn body_timeout() -> HttpError {
    HttpError::new(
        StatusCode::REQUEST_TIMEOUT,
        "TIMEOUT",
        format!(
            "the request body stopped arriving: each piece must come within {} s, all of it within {} s",
            BODY_STALL.as_secs(),
            BODY_TIME.as_secs()
        ),
    )
}

/// The fields of a non-empty body. JSON is read from a JSON content type. A form content type,
/// or none, is read as a form — except that without an `Origin` header (so not from a web
/// page: curl's `-d '{...}'`, Python's `data=json.dumps(...)`) a body that starts with `{` is
/// read as JSON.
fn body_fields(headers: &HeaderMap, body: &[u8]) -> ChatResult<Map<String, Value>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    let is_form = essence == "application/x-www-form-urlencoded" || essence.is_empty();
    let from_a_page = headers.contains_key(header::ORIGIN);
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_json || (is_form && !from_a_page && looks_like_json) {
        let text = std::str::from_utf8(body)
            .map_err(|_| ChatError::new(Code::BadEncoding, "the JSON body is not valid UTF-8"))?;
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ChatError::bad_args("the JSON body must be an object")),
            Err(e) => Err(ChatError::bad_args(format!("malformed JSON: {e}"))),
        };
    }
    if is_form {
        return form_fields(body);
    }
    Err(ChatError::bad_args(format!(
        "cannot read a {essence} body; send application/json or a form"
    )))
}

/// Form/query fields; a name given more than once becomes a list. Names and values must be
/// UTF-8 once percent-decoded (`BAD_ENCODING` otherwise: nothing is silently replaced).
pub fn form_fields(encoded: &[u8]) -> ChatResult<Map<String, Value>> {
    let mut fields = Map::new();
    for pair in encoded.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        let (name, value) = (percent_decode(name)?, Value::String(percent_decode(value)?));
        match fields.get_mut(&name) {
            None => {
                fields.insert(name, value);
            }
            Some(Value::Array(list)) => list.push(value),
            Some(first) => {
                let first = first.take();
                fields.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
    Ok(fields)
}

fn percent_decode(raw: &[u8]) -> ChatResult<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len()
                && hex_digit(raw[i + 1]).is_some()
                && hex_digit(raw[i + 2]).is_some() =>
            {
                out.push(hex_digit(raw[i + 1]).unwrap() * 16 + hex_digit(raw[i + 2]).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ChatError::new(Code::BadEncoding, "a form field is not valid UTF-8 once decoded"))
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The user proven by the `Authorization` header, checked before the body is read: `None`
/// without the header; a rejection (401) for wrong credentials.
pub struct HeaderAuth(pub Option<Username>);

impl FromRequestParts<Arc<AppState>> for HeaderAuth {
    type Rejection = ChatError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<HeaderAuth, ChatError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let user = match HeaderCredentials::of(&parts.headers) {
            HeaderCredentials::None => return Ok(HeaderAuth(None)),
            HeaderCredentials::Token(token) => app.tokens.user(&token).await?,
            HeaderCredentials::Password { user, password } => {
                app.chat.authenticate(&user, &password, peer, None).await?
            }
        };
        // The operator's view shows whose requests the connection carries.
        if let Some(conn) = parts.extensions.get::<Arc<crate::conns::ConnInfo>>() {
            conn.set_user(Some(user.as_str()));
        }
        Ok(HeaderAuth(Some(user)))
    }
}

/// Credentials in the `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCredentials {
    Token(String),
    Password { user: String, password: String },
    None,
}

impl HeaderCredentials {
    /// Bearer token or HTTP Basic from the Authorization header.
    pub fn of(headers: &HeaderMap) -> HeaderCredentials {
        let Some(auth) = headers.get(header::AUTHORIZATION) else {
            return HeaderCredentials::None;
        };
        let auth = auth.to_str().unwrap_or("").trim();
        let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                return HeaderCredentials::Password {
                    user: user.to_string(),
                    password: password.to_string(),
                };
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            return HeaderCredentials::Token(value.trim().to_string());
        }
        // Malformed or unknown credentials are wrong credentials, not missing ones.
        HeaderCredentials::Token(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_form_names_become_lists() {
        let fields = form_fields(b"a=1&b=two+words&a=3&c=%C3%A9&d=100%").unwrap();
        assert_eq!(fields["a"], serde_json::json!(["1", "3"]));
        assert_eq!(fields["b"], "two words");
        assert_eq!(fields["c"], "é");
        assert_eq!(fields["d"], "100%");
    }

    #[test]
    fn invalid_utf8_in_a_form_is_refused() {
        for bad in [&b"m=caf%FF"[..], b"m=caf\xff", b"%C3=x"] {
            assert_eq!(form_fields(bad).unwrap_err().code, Code::BadEncoding, "{bad:?}");
        }
    }

    #[test]
    fn header_credentials() {
        let mut headers = HeaderMap::new();
        assert_eq!(HeaderCredentials::of(&headers), HeaderCredentials::None);
        headers.insert(header::AUTHORIZATION, "Basic YWxpY2U6czNjcmV0".parse().unwrap());
        assert_eq!(
            HeaderCredentials::of(&headers),
            HeaderCredentials::Password {
                user: "alice".into(),
                password: "s3cret".into()
            }
        );
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            HeaderCredentials::of(&headers),
            HeaderCredentials::Token("abc".into())
        );
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(
            HeaderCredentials::of(&headers),
            HeaderCredentials::Token(String::new())
        );
    }

    #[test]
    fn json_only_with_a_json_type_or_without_an_origin() {
        let body = br#"{"username": "mallory"}"#;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert_eq!(
            body_fields(&headers, body).unwrap()["username"],
            "mallory",
            "curl -d"
        );
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        let fields = body_fields(&headers, body).unwrap();
        assert!(
            fields.get("username").is_none(),
            "a page's form is a form: {fields:?}"
        );
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(body_fields(&headers, body).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(body_fields(&headers, body).unwrap()["username"], "mallory");
    }
}
