//! What every HTTP answer is wrapped in: requests a web page of another site makes its
//! visitors' browsers send are refused, and every response carries headers that keep the page
//! from being framed or its answers from being sniffed into something else.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::status::HttpError;
use super::PAGE;

/// Refuses cross-site requests (403 `FORBIDDEN`) and adds the security headers.
pub async fn guard(request: Request, next: Next) -> Response {
    let mut response = match foreign_site(request.method(), request.uri().path(), request.headers()) {
        Some(why) => HttpError::new(StatusCode::FORBIDDEN, "FORBIDDEN", why).into_response(),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    response
}

/// Why a request comes from another site's page, if it does. Browsers say where a request comes
/// from (`Origin` on every POST and on scripts' requests, `Sec-Fetch-Site` on all of them);
/// programs such as curl and Python's requests send neither, so they are never refused. The
/// one thing another site may do is link to the chat page.
fn foreign_site(method: &Method, path: &str, headers: &HeaderMap) -> Option<String> {
    let is_navigation_to_page = matches!(*method, Method::GET | Method::HEAD) && path == "/";
    if is_navigation_to_page {
        return None;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = origin
            .strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host));
        if !own {
            return Some(format!(
                "requests from pages of other sites ({origin}) are refused; this server serves http://{host}"
            ));
        }
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site" | "same-site") => Some("requests from pages of other sites are refused".into()),
        _ => None,
    }
}

/// A Content-Security-Policy that lets the embedded page run its one inline script and style
/// (by hash) and talk to this server only.
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = inline_hash(PAGE, "<script>", "</script>");
        let style = inline_hash(PAGE, "<style>", "</style>");
        let policy = format!(
            "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy).expect("the policy is ASCII")
    })
}

/// `'sha256-...'` of the text between the first `open` and the next `close`.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    use sha2::Digest;
    let Some(start) = page.find(open).map(|i| i + open.len()) else {
        return "'none'".into();
    };
    let end = page[start..].find(close).map_or(page.len(), |i| start + i);
    let digest = sha2::Sha256::digest(&page.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_other_sites_are_refused() {
        let curl = headers(&[("host", "127.0.0.1:5000")]);
        assert!(foreign_site(&Method::POST, "/register", &curl).is_none());
        let own = headers(&[("host", "127.0.0.1:5000"), ("origin", "http://127.0.0.1:5000")]);
        assert!(foreign_site(&Method::POST, "/register", &own).is_none());
        let other = headers(&[("host", "127.0.0.1:5000"), ("origin", "http://evil.example")]);
        assert!(foreign_site(&Method::POST, "/register", &other).is_some());
        let image = headers(&[("host", "127.0.0.1:5000"), ("sec-fetch-site", "cross-site")]);
        assert!(foreign_site(&Method::GET, "/auth", &image).is_some());
        assert!(
            foreign_site(&Method::GET, "/", &image).is_none(),
            "a link to the page"
        );
    }

    #[test]
    fn the_policy_hashes_the_page_inline_code() {
        let policy = csp().to_str().unwrap();
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}
