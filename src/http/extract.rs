//! What a request carries: its fields (from the query string and a JSON or form body, on any
//! method — the lab's clients send JSON bodies with GET) and its credentials.

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{header, HeaderMap, Request};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::{ChatError, Code};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

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
}

fn not_a_count(name: &str) -> ChatError {
    ChatError::bad_args(format!("the field {name:?} must be a whole number >= 0"))
}

impl<S: Send + Sync> FromRequest<S> for Payload {
    type Rejection = ChatError;

    async fn from_request(request: Request<Body>, _state: &S) -> Result<Payload, ChatError> {
        let (parts, body) = request.into_parts();
        let mut fields = match parts.uri.query() {
            Some(query) => form_fields(query.as_bytes()),
            None => Map::new(),
        };
        let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            ChatError::new(
                Code::LineTooLong,
                format!("the request body is over {} KiB", MAX_BODY / 1024),
            )
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Payload(fields));
        }
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let is_form = content_type.starts_with("application/x-www-form-urlencoded");
        // `curl -d '{...}'` labels JSON as a form; a body that is a JSON object is read as one.
        let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let from_body = if is_form && !looks_like_json {
            form_fields(&body)
        } else if is_form
            || content_type.is_empty()
            || content_type.starts_with("application/json")
            || content_type.contains("+json")
        {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(ChatError::bad_args("the JSON body must be an object")),
                Err(e) => return Err(ChatError::bad_args(format!("malformed JSON: {e}"))),
            }
        } else {
            return Err(ChatError::bad_args(format!(
                "cannot read a {content_type} body; send application/json or a form"
            )));
        };
        fields.extend(from_body);
        Ok(Payload(fields))
    }
}

/// Form/query fields; a name given more than once becomes a list.
pub fn form_fields(encoded: &[u8]) -> Map<String, Value> {
    let mut fields = Map::new();
    for (name, value) in form_urlencoded::parse(encoded) {
        let value = Value::String(value.into_owned());
        match fields.get_mut(name.as_ref()) {
            None => {
                fields.insert(name.into_owned(), value);
            }
            Some(Value::Array(list)) => list.push(value),
            Some(first) => {
                let first = first.take();
                fields.insert(name.into_owned(), Value::Array(vec![first, value]));
            }
        }
    }
    fields
}

/// How a request proves who it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    Token(String),
    Password { user: String, password: String },
    None,
}

impl Credentials {
    /// Bearer token or HTTP Basic from the Authorization header; else a `token` field; else a
    /// `password` field for the user named by `user_field`.
    pub fn of(headers: &HeaderMap, payload: &Payload, user_field: &str) -> Credentials {
        if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let (scheme, value) = auth.trim().split_once(' ').unwrap_or((auth, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                return Credentials::Token(value.trim().to_string());
            }
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                return match decoded.as_deref().and_then(|d| d.split_once(':')) {
                    Some((user, password)) => Credentials::Password {
                        user: user.to_string(),
                        password: password.to_string(),
                    },
                    // Malformed Basic credentials are wrong credentials, not missing ones.
                    None => Credentials::Token(String::new()),
                };
            }
        }
        if let Some(token) = payload.text("token") {
            return Credentials::Token(token);
        }
        match (payload.text(user_field), payload.text("password")) {
            (Some(user), Some(password)) => Credentials::Password { user, password },
            _ => Credentials::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_form_names_become_lists() {
        let fields = form_fields(b"a=1&b=two+words&a=3&c=%C3%A9");
        assert_eq!(fields["a"], serde_json::json!(["1", "3"]));
        assert_eq!(fields["b"], "two words");
        assert_eq!(fields["c"], "é");
    }

    #[test]
    fn credentials_in_order_of_preference() {
        let payload = Payload(form_fields(b"username=bob&password=pw"));
        let mut headers = HeaderMap::new();
        assert_eq!(
            Credentials::of(&headers, &payload, "username"),
            Credentials::Password {
                user: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            Credentials::of(&headers, &Payload::default(), "username"),
            Credentials::None
        );
        headers.insert(header::AUTHORIZATION, "Basic YWxpY2U6czNjcmV0".parse().unwrap());
        assert_eq!(
            Credentials::of(&headers, &payload, "username"),
            Credentials::Password {
                user: "alice".into(),
                password: "s3cret".into()
            }
        );
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            Credentials::of(&headers, &payload, "username"),
            Credentials::Token("abc".into())
        );
    }
}
