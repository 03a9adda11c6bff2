//! What every HTTP answer is wrapped in: requests for a name this server does not answer to
//! are refused (DNS rebinding), requests a web page of another site makes its visitors'
//! browsers send are refused, and every response carries headers that keep the page from being
//! framed or its answers from being sniffed into something else.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::status::HttpError;
use super::{AppState, PAGE};

/// Checks the `Host` header, refuses cross-site requests (403 `FORBIDDEN`) and adds the
/// security headers.
pub async fn guard(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let refusal = match app
        .hosts
        .misdirected(request.method(), request.uri().path(), request.headers())
    {
        Some(why) => Some(HttpError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "MISDIRECTED",
            why,
        )),
        None => foreign_site(request.method(), request.uri().path(), request.headers())
            .map(|why| HttpError::new(StatusCode::FORBIDDEN, "FORBIDDEN", why)),
    };
    let mut response = match refusal {
        Some(refusal) => refusal.into_response(),
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

/// The names this server answers to, for the `Host` check against DNS rebinding: a web page
/// of `evil.example`, whose name the attacker then points at 127.0.0.1 (or a class laptop),
/// is same-origin with itself, so the browser lets it read the answers; but its requests say
/// `Host: evil.example`. An IP address in `Host` cannot be rebound (the origin is the address
/// itself), so every address is accepted; names must be `localhost` (or `*.localhost`), this
/// machine's host name (also with `.local`), or one given with `--allowed-host`.
pub struct Hosts {
    names: Vec<String>,
    /// Classroom mode: every request reads or sends as someone, so every one is checked.
    lab: bool,
}

impl Hosts {
    pub fn new(hostname: &str, allowed: &[String], lab: bool) -> Hosts {
        let mut names: Vec<String> = vec!["localhost".into()];
        let hostname = normalise(hostname);
        if !hostname.is_empty() {
            names.push(format!("{hostname}.local"));
            names.push(hostname);
        }
        names.extend(allowed.iter().map(|n| normalise(n)).filter(|n| !n.is_empty()));
        Hosts { names, lab }
    }

    /// Why a request is for a name this server does not answer to, if it is. Without `--lab`,
    /// reading the page or `/info`, and `/api`, change nothing and read no one's messages, so
    /// they are answered whatever the name (the page then shows the hint its first request
    /// gets).
    fn misdirected(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<String> {
        let reads_public = matches!(*method, Method::GET | Method::HEAD) && matches!(path, "/" | "/info");
        let harmless = reads_public || path == "/api";
        if harmless && !self.lab {
            return None;
        }
        // HTTP/1.0 clients may send none; browsers always do.
        let host = headers.get(header::HOST)?;
        let name = host.to_str().ok().and_then(host_name);
        match name {
            Some(name) if self.answers_to(&name) => None,
            _ => {
                let shown = String::from_utf8_lossy(host.as_bytes());
                let shown = name.unwrap_or_else(|| shown.chars().take(64).collect());
                Some(format!(
                    "this server does not answer to the name {shown:?} (the request's Host header);                      if that is one of its names, start chatd with --allowed-host {shown}"
                ))
            }
        }
    }

    fn answers_to(&self, name: &str) -> bool {
        name.parse::<IpAddr>().is_ok() || name.ends_with(".localhost") || self.names.iter().any(|n| n == name)
    }
}

/// The name of a `Host` header value, without its port, in lower case and without a final dot
/// (`[::1]:5000` gives `::1`); `None` if it is not a host at all.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = normalise(name);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    valid.then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
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
    fn the_host_must_be_an_address_or_one_of_the_names() {
        let hosts = Hosts::new("Ada-Laptop", &["chat.example.edu".into()], false);
        let post =
            |host: &'static str| hosts.misdirected(&Method::POST, "/auth", &headers(&[("host", host)]));
        for ok in [
            "127.0.0.1:5000",
            "192.168.1.20",
            "[::1]:5000",
            "[fe80::1]",
            "localhost:5000",
            "LOCALHOST.",
            "app.localhost:5000",
            "ada-laptop:5000",
            "ada-laptop.local",
            "Chat.Example.Edu:443",
        ] {
            assert!(post(ok).is_none(), "{ok}");
        }
        for bad in [
            "evil.example:5000",
            "127.0.0.1.evil.example",
            "ada-laptop.evil",
            "a b",
            "x:y",
        ] {
            let why = post(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(why.contains("--allowed-host"), "{why}");
        }
        // The page and /info answer whatever the name, unless in classroom mode.
        let evil = headers(&[("host", "evil.example")]);
        assert!(hosts.misdirected(&Method::GET, "/", &evil).is_none());
        assert!(hosts.misdirected(&Method::GET, "/get_messages", &evil).is_some());
        let lab = Hosts::new("ada-laptop", &[], true);
        assert!(lab.misdirected(&Method::GET, "/", &evil).is_some());
        assert!(
            lab.misdirected(&Method::GET, "/info", &headers(&[])).is_none(),
            "no Host at all"
        );
    }

    #[test]
    fn the_policy_hashes_the_page_inline_code() {
        let policy = csp().to_str().unwrap();
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}
