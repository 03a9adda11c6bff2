//! The outcome of a run: one JSON object for scripts (`--json`), or a table for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::conn::ConnectReport;
use crate::connections::Memory;
use crate::stats::{IntervalStats, Latency, Series};

/// Everything a run found out. Sections a scenario does not have are left out of the JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    /// The scenario's own arguments.
    pub params: serde_json::Value,
    /// False when a check failed (e.g. a lost or duplicated message); `problems` says which.
    pub passed: bool,
    pub problems: Vec<String>,
    pub connect: ConnectReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// Figures per second (per tenth of a second for a connect phase) and distributions, for
    /// `--plot` and in the JSON.
    pub plot: Plot,
}

/// The timed phase: requests answered (PING replies, acked SENDs, HTTP responses).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What `ok` counts.
    pub what: &'static str,
    pub secs: f64,
    pub ok: u64,
    pub errors: u64,
    /// `ok` per second of the timed phase.
    pub per_sec: f64,
    pub latency: Latency,
    /// Connections that broke off (closed by the server, or an unintelligible reply).
    pub broken: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_example: Option<String>,
}

/// Whether what was acknowledged arrived, once, where it was sent, and how fast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryReport {
    pub sent: u64,
    pub acked: u64,
    /// Pushed `MSG` lines that carried this run's messages.
    pub delivered: u64,
    /// Acked but never pushed to the recipient.
    pub lost: u64,
    /// Pushed more than once to the recipient.
    pub duplicates: u64,
    /// Pushed to another connection than the recipient's, or with the wrong sender.
    pub misrouted: u64,
    /// Pushed but never acked (the ack did not come in time).
    pub unacked_delivered: u64,
    /// SENDs still without a reply when the run gave up waiting.
    pub unanswered: u64,
    /// From writing the SEND to reading the recipient's `MSG` line.
    pub latency: Latency,
}

/// The hold of the `connections` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub secs: f64,
    /// Connections the server closed (or spoke on) while held.
    pub dropped: u64,
}

/// What `--plot` draws.
#[derive(Debug, Serialize)]
pub struct Plot {
    pub throughput_label: &'static str,
    pub throughput: Vec<IntervalStats>,
    /// p50/p99 per interval of each named latency.
    pub latencies: Vec<(&'static str, Vec<IntervalStats>)>,
    /// (quantile, µs) points of each named latency's distribution.
    #[serde(skip)]
    pub distributions: Vec<(&'static str, Vec<(f64, f64)>)>,
}

impl Report {
    /// The report of a request/response scenario (`ping`, `http`): throughput and one latency.
    /// `names` is what one answer is called and its throughput's label, e.g.
    /// `("reply", "replies / s")`.
    pub fn requests(
        scenario: &'static str,
        target: String,
        params: serde_json::Value,
        connect: ConnectReport,
        (run, series): (RunReport, &Series),
        (what, throughput_label): (&'static str, &'static str),
    ) -> Report {
        let mut problems = Vec::new();
        if connect.opened == 0 {
            problems.push("no connection could be opened".into());
        }
        Report {
            scenario,
            target,
            params,
            passed: problems.is_empty(),
            problems,
            plot: Plot {
                throughput_label,
                throughput: series.intervals(),
                latencies: vec![(what, series.intervals())],
                distributions: vec![(what, series.distribution())],
            },
            connect,
            run: Some(run),
            delivery: None,
            memory: None,
            held: None,
        }
    }
}

/// A latency in the unit that reads best.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_latency(l: &Latency) -> String {
    if l.count == 0 {
        return "none measured".into();
    }
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
        fmt_us(l.p50_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
        fmt_us(l.mean_us),
        l.count
    )
}

/// Thousands separated by commas, for counts and rates.
pub fn fmt_count(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 {
        out.insert(0, '-');
    }
    out
}

impl Report {
    /// The table people read.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = Vec::new();
        rows.push(("scenario", format!("{} against {}", self.scenario, self.target)));
        rows.push(("parameters", self.params.to_string()));
        let c = &self.connect;
        rows.push((
            if c.auth { "users" } else { "connections" },
            format!(
                "{} of {} opened{} in {:.2} s: {}/s",
                fmt_count(c.opened as f64),
                fmt_count(c.attempted as f64),
                if c.auth { " and logged in" } else { "" },
                c.secs,
                fmt_count(c.per_sec)
            ),
        ));
        rows.push(("  connect time", fmt_latency(&c.latency)));
        let f = &c.failures;
        rows.push((
            "  failures",
            if f.total() == 0 {
                "none".into()
            } else {
                let mut s = format!(
                    "refused {}, SERVER_BUSY {}, timeout {}, other {}",
                    f.refused, f.server_busy, f.timeout, f.other
                );
                if let Some(e) = &f.other_example {
                    let _ = write!(s, " (first other: {e})");
                }
                s
            },
        ));
        if c.busy_retries > 0 {
            rows.push(("  busy retries", fmt_count(c.busy_retries as f64)));
        }
        if let Some(h) = &self.held {
            rows.push((
                "held",
                format!("{:.1} s; closed by the server meanwhile: {}", h.secs, h.dropped),
            ));
        }
        if let Some(m) = &self.memory {
            rows.push((
                "server memory",
                format!(
                    "RSS {:.1} MiB before{}, {:.1} MiB holding: {:.2} KiB per connection (pid {})",
                    m.before_kib as f64 / 1024.0,
                    if m.before_conns > 0 {
                        format!(" (at {} connections)", m.before_conns)
                    } else {
                        String::new()
                    },
                    m.holding_kib as f64 / 1024.0,
                    m.per_conn_kib,
                    m.server_pid
                ),
            ));
        }
        if let Some(r) = &self.run {
            rows.push((
                r.what,
                format!(
                    "{} in {:.1} s: {}/s; errors {}",
                    fmt_count(r.ok as f64),
                    r.secs,
                    fmt_count(r.per_sec),
                    fmt_count(r.errors as f64)
                ),
            ));
            rows.push(("  latency", fmt_latency(&r.latency)));
            if r.broken > 0 {
                rows.push((
                    "  broken conns",
                    format!("{} ({})", r.broken, r.broken_example.as_deref().unwrap_or("")),
                ));
            }
        }
        if let Some(d) = &self.delivery {
            rows.push((
                "delivery",
                format!(
                    "sent {}, acked {}, delivered {}; lost {}, duplicates {}, misrouted {}, \
                     delivered unacked {}, unanswered {}",
                    d.sent,
                    d.acked,
                    d.delivered,
                    d.lost,
                    d.duplicates,
                    d.misrouted,
                    d.unacked_delivered,
                    d.unanswered
                ),
            ));
            rows.push(("  latency", fmt_latency(&d.latency)));
        }
        rows.push((
            "result",
            if self.passed {
                "PASS".into()
            } else {
                format!("FAIL: {}", self.problems.join("; "))
            },
        ));
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:width$}  {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(0.0), "0");
        assert_eq!(fmt_us(54.2), "54 µs");
        assert_eq!(fmt_us(1500.0), "1.50 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }
}
