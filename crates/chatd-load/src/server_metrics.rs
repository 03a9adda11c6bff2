//! `--server-metrics URL`: the server's own view of the run, beside the generator's. Its
//! `/metrics` (chatd's admin listener) is read before the run and after it, and what moved in
//! between is reported: messages committed, group-commit batches and their mean size, commit
//! and delivery times, pushes, slow-reader kicks, logins, refused connections, store errors.
//! Read with a small HTTP/1.1 client of our own (the generator has no HTTP library).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Samples by `name{labels}`, as the exposition writes them.
pub type Samples = HashMap<String, f64>;

/// What the server counted during the run (after minus before).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerView {
    pub url: String,
    pub committed_direct: u64,
    pub committed_room: u64,
    pub commits: u64,
    /// Writes per group commit, on average over the run.
    pub mean_batch: f64,
    pub mean_commit_ms: f64,
    /// From a SEND's hand-over to the writer to its commit and hand-over for delivery.
    pub mean_delivery_ms: f64,
    pub pushes: u64,
    pub slow_reader_kicks: u64,
    pub logins_ok: u64,
    pub logins_refused: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub store_errors: u64,
}

/// Reads `url` (`http://host:port/metrics`); `token`, if any, as a Bearer token.
pub async fn scrape(url: &str, token: Option<&str>) -> anyhow::Result<Samples> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--server-metrics {url}: only http:// URLs"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let read = async {
        let mut stream = TcpStream::connect(host).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        stream.take(16 << 20).read_to_end(&mut body).await?;
        anyhow::Ok(body)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .with_context(|| format!("--server-metrics {url}: no answer within 10 s"))?
        .with_context(|| format!("--server-metrics {url}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("--server-metrics {url}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "--server-metrics {url}: {status} (a token? set CHATD_ADMIN_TOKEN)"
    );
    anyhow::ensure!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "--server-metrics {url}: a chunked answer is not read here"
    );
    Ok(parse(body))
}

fn token() -> Option<String> {
    std::env::var("CHATD_ADMIN_TOKEN").ok().filter(|t| !t.is_empty())
}

/// Reads every URL before the run: one that cannot be read stops the run before it starts.
pub async fn before(urls: &[String]) -> anyhow::Result<Vec<Samples>> {
    let mut all = Vec::new();
    for url in urls {
        all.push(scrape(url, token().as_deref()).await?);
    }
    Ok(all)
}

/// Reads every URL after the run and puts what moved into the report (a URL that cannot be
/// read now is a warning).
pub async fn after(report: &mut crate::report::Report, urls: &[String], before: Vec<Samples>) {
    for (url, before) in urls.iter().zip(before) {
        match scrape(url, token().as_deref()).await {
            Ok(after) => report.server.push(view(url, &before, &after)),
            Err(e) => report.warnings.push(format!("{e:#}")),
        }
    }
}

/// The samples of a Prometheus or OpenMetrics text exposition.
pub fn parse(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            // The value follows the name and its labels (label values may hold spaces).
            let split = match l.rfind('}') {
                Some(close) => close + 1,
                None => l.find(' ')?,
            };
            let (key, rest) = l.split_at(split);
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_string(), value))
        })
        .collect()
}

/// What moved between `before` and `after`.
pub fn view(url: &str, before: &Samples, after: &Samples) -> ServerView {
    let moved = |key: &str| after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0);
    let summed = |prefix: &str| -> f64 {
        let sum = |s: &Samples| {
            s.iter()
                .filter(|(k, _)| k.starts_with(prefix) && k[prefix.len()..].starts_with('{'))
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        sum(after) - sum(before)
    };
    let commits = moved("chatd_commit_batch_size_count");
    let count = |v: f64| v.max(0.0).round() as u64;
    let mean = |sum: &str, count: &str| {
        let n = moved(count);
        if n > 0.0 {
            moved(sum) / n
        } else {
            0.0
        }
    };
    ServerView {
        url: url.to_string(),
        committed_direct: count(moved(r#"chatd_messages_committed_total{kind="direct"}"#)),
        committed_room: count(moved(r#"chatd_messages_committed_total{kind="room"}"#)),
        commits: count(commits),
        mean_batch: mean("chatd_commit_batch_size_sum", "chatd_commit_batch_size_count"),
        mean_commit_ms: 1e3 * mean("chatd_commit_seconds_sum", "chatd_commit_seconds_count"),
        mean_delivery_ms: 1e3 * mean("chatd_delivery_seconds_sum", "chatd_delivery_seconds_count"),
        pushes: count(moved("chatd_pushes_total")),
        slow_reader_kicks: count(moved("chatd_slow_reader_kicks_total")),
        logins_ok: count(moved(r#"chatd_logins_total{outcome="ok"}"#)),
        logins_refused: count(summed("chatd_logins_total") - moved(r#"chatd_logins_total{outcome="ok"}"#)),
        connections_accepted: count(summed("chatd_connections_accepted_total")),
        connections_refused: count(summed("chatd_connections_refused_total")),
        store_errors: count(moved("chatd_store_errors_total")),
    }
}

impl ServerView {
    /// The report's rows.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let n = |v: u64| crate::report::fmt_count(v as f64);
        vec![
            ("server", format!("its own view, from {}", self.url)),
            (
                "  committed",
                format!(
                    "{} direct, {} room, in {} commits (mean batch {:.1}, mean commit {:.2} ms)",
                    n(self.committed_direct),
                    n(self.committed_room),
                    n(self.commits),
                    self.mean_batch,
                    self.mean_commit_ms
                ),
            ),
            (
                "  delivery",
                format!(
                    "mean {:.2} ms from SEND to commit and hand-over; {} pushes; {} slow readers kicked",
                    self.mean_delivery_ms,
                    n(self.pushes),
                    n(self.slow_reader_kicks)
                ),
            ),
            (
                "  connections",
                format!(
                    "{} accepted, {} refused; logins {} ok, {} refused; store errors {}",
                    n(self.connections_accepted),
                    n(self.connections_refused),
                    n(self.logins_ok),
                    n(self.logins_refused),
                    n(self.store_errors)
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposition_is_read_and_what_moved_is_reported() {
        let before = parse(
            "# TYPE chatd_commit_batch_size histogram\nchatd_commit_batch_size_sum 10.0\n\
             chatd_commit_batch_size_count 2\nchatd_messages_committed_total{kind=\"direct\"} 10\n\
             chatd_logins_total{outcome=\"ok\"} 1\n# EOF\n",
        );
        let after = parse(
            "chatd_commit_batch_size_sum 110.0\nchatd_commit_batch_size_count 6\n\
             chatd_messages_committed_total{kind=\"direct\"} 110\nchatd_logins_total{outcome=\"ok\"} 5\n\
             chatd_logins_total{outcome=\"rate_limited\"} 2\n\
             chatd_connections_refused_total{door=\"line\",reason=\"server_full\"} 3\n# EOF\n",
        );
        let v = view("http://x/metrics", &before, &after);
        assert_eq!(v.committed_direct, 100);
        assert_eq!(v.commits, 4);
        assert_eq!(v.mean_batch, 25.0);
        assert_eq!(v.logins_ok, 4);
        assert_eq!(v.logins_refused, 2);
        assert_eq!(v.connections_refused, 3);
    }
}
