//! `--trace` for HTTP: each request's line, headers and body, then the response's status line,
//! headers and body, one trace line each (a short JSON body pretty-printed, a line per line).
//! Credentials are masked, always: `Authorization` and `Cookie` headers, `password` and
//! `token` fields of JSON and form bodies and of query strings. Bodies are seen as they pass
//! (the extractors still read them, with their limits); an event stream's body is not shown.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::Frame;

use crate::trace::ConnTrace;

/// Bytes of a body shown at most.
const SHOWN_BODY: usize = 4096;
/// A JSON body up to this size is pretty-printed.
const PRETTY_UP_TO: usize = 1024;
/// Fields whose values are never shown.
const SECRET_FIELDS: [&str; 5] = [
    "password",
    "new_password",
    "old_password",
    "token",
    "access_token",
];

/// A traced connection's trace, shared by its requests.
#[derive(Clone)]
pub struct HttpTrace(pub Arc<Mutex<Box<ConnTrace>>>);

impl HttpTrace {
    pub fn new(trace: Box<ConnTrace>) -> HttpTrace {
        HttpTrace(Arc::new(Mutex::new(trace)))
    }

    fn show(&self, arrow: &str, text: &str) {
        let trace = self.0.lock().unwrap_or_else(|e| e.into_inner());
        trace.show(arrow, text);
    }
}

/// `POST /login HTTP/1.1`, secrets in the query masked.
pub fn request_line<B>(request: &axum::http::Request<B>) -> String {
    let uri = request.uri();
    let target = match uri.query() {
        Some(query) => format!("{}?{}", uri.path(), mask_form(query)),
        None => uri.path().to_string(),
    };
    format!("{} {target} {:?}", request.method(), request.version())
}

/// The middleware: nothing for a connection that is not traced.
pub async fn trace(request: Request, next: Next) -> Response {
    let Some(trace) = request.extensions().get::<HttpTrace>().cloned() else {
        return next.run(request).await;
    };
    trace.show("<-", &request_line(&request));
    show_headers(&trace, "<-", request.headers());
    let (parts, body) = request.into_parts();
    let body = Body::new(Traced::new(body, trace.clone(), "<-"));
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    trace.show(
        "->",
        &format!(
            "{:?} {} {}",
            response.version(),
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    );
    show_headers(&trace, "->", response.headers());
    let streaming = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        trace.show("->", "(an event stream: its events are not traced)");
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(Traced::new(body, trace, "->")))
}

fn show_headers(trace: &HttpTrace, arrow: &str, headers: &HeaderMap) {
    for (name, value) in headers {
        let shown = match name.as_str() {
            "authorization" => {
                let value = value.to_str().unwrap_or("");
                match value.split_once(' ') {
                    Some((scheme, _)) => format!("{scheme} ****"),
                    None => "****".to_string(),
                }
            }
            "cookie" | "set-cookie" => "****".to_string(),
            _ => crate::trace::escape(value.as_bytes()),
        };
        trace.show(arrow, &format!("{name}: {shown}"));
    }
    trace.show(arrow, "");
}

/// A body passed through as it is, and shown once it has been read (or dropped).
struct Traced {
    inner: Body,
    seen: Vec<u8>,
    cut: bool,
    trace: Option<HttpTrace>,
    arrow: &'static str,
}

impl Traced {
    fn new(inner: Body, trace: HttpTrace, arrow: &'static str) -> Traced {
        Traced {
            inner,
            seen: Vec::new(),
            cut: false,
            trace: Some(trace),
            arrow,
        }
    }

    fn finish(&mut self) {
        let Some(trace) = self.trace.take() else {
            return;
        };
        if self.seen.is_empty() {
            return;
        }
        for line in show_body(&self.seen, self.cut) {
            trace.show(self.arrow, &line);
        }
    }
}

impl HttpBody for Traced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = SHOWN_BODY.saturating_sub(this.seen.len());
                    this.seen.extend_from_slice(&data[..data.len().min(room)]);
                    this.cut |= data.len() > room;
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A body as trace lines: JSON with its secrets masked (pretty when short), a form with its
/// secrets masked, or text with its control bytes escaped.
fn show_body(bytes: &[u8], cut: bool) -> Vec<String> {
    let more = if cut { " ..." } else { "" };
    if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(bytes) {
        mask_json(&mut json);
        if bytes.len() <= PRETTY_UP_TO {
            let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
            return pretty.lines().map(str::to_string).collect();
        }
        return vec![format!("{json}{more}")];
    }
    let text = String::from_utf8_lossy(bytes);
    if text.contains('=') && !text.contains(['\n', ' ']) {
        return vec![format!("{}{more}", mask_form(&text))];
    }
    text.lines()
        .map(|l| crate::trace::escape(l.as_bytes()))
        .chain(cut.then(|| "...".to_string()))
        .collect()
}

fn mask_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if SECRET_FIELDS.contains(&key.to_ascii_lowercase().as_str()) {
                    *value = serde_json::Value::String("****".into());
                } else {
                    mask_json(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_json),
        _ => {}
    }
}

/// `user=alice&password=x` as `user=alice&password=****`.
fn mask_form(form: &str) -> String {
    form.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_FIELDS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=****")
            }
            _ => crate::trace::escape(pair.as_bytes()),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_bodies_and_queries_are_masked() {
        let body = br#"{"username":"alice","password":"wonderland"}"#;
        let shown = show_body(body, false).join("\n");
        assert!(shown.contains("\"password\": \"****\""), "{shown}");
        assert!(shown.contains("\"username\": \"alice\""), "{shown}");
        assert!(!shown.contains("wonderland"));
        let token = br#"{"status":"SUCCESS","token":"abc123"}"#;
        assert!(!show_body(token, false).join("").contains("abc123"));
        assert_eq!(mask_form("username=a&password=b"), "username=a&password=****");
        assert_eq!(show_body(b"a=1&token=zz", false), ["a=1&token=****"]);
        assert_eq!(show_body(b"hi\x07there", false), ["hi\\x07there"]);
    }
}
