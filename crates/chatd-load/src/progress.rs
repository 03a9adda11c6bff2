//! The live progress line on standard error (only when it is a terminal): phase, done/target,
//! rate and ETA, connections open, errors. A `--procs` child writes the same counters as JSON
//! lines on standard output instead, for its parent to add up.

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::report::fmt_count;
use crate::stats::Live;

const EVERY: Duration = Duration::from_millis(250);

/// The counters of one moment, as a `--procs` child reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub phase: String,
    pub done: u64,
    pub target: u64,
    pub open: i64,
    pub errors: u64,
    /// Seconds left in a timed phase.
    pub left: Option<f64>,
}

impl Snapshot {
    pub fn of(live: &Live) -> Snapshot {
        let (phase, _, ends) = live.phase();
        Snapshot {
            phase: phase.to_string(),
            done: live.done.load(Ordering::Relaxed),
            target: live.target.load(Ordering::Relaxed),
            open: live.open.load(Ordering::Relaxed),
            errors: live.errors.load(Ordering::Relaxed),
            left: ends.map(|e| e.saturating_duration_since(Instant::now()).as_secs_f64()),
        }
    }

    /// The line shown, given the rate of `done` per second.
    pub fn line(&self, rate: f64) -> String {
        let mut s = format!("{}: {}", self.phase, fmt_count(self.done as f64));
        if self.target > 0 {
            s.push_str(&format!(
                "/{} ({:.0}%)",
                fmt_count(self.target as f64),
                100.0 * self.done as f64 / self.target as f64
            ));
        }
        s.push_str(&format!(", {}/s", fmt_count(rate)));
        let eta = match self.left {
            Some(left) => Some(left),
            None if self.target > self.done && rate > 0.0 => Some((self.target - self.done) as f64 / rate),
            None => None,
        };
        if let Some(eta) = eta {
            s.push_str(&format!(", ETA {eta:.0} s"));
        }
        s.push_str(&format!(
            " | {} open | {} errors",
            fmt_count(self.open as f64),
            fmt_count(self.errors as f64)
        ));
        s
    }
}

/// Keeps the rate of `done` between snapshots, across phases.
#[derive(Default)]
pub struct Rate {
    last: Option<(Instant, String, u64)>,
    rate: f64,
}

impl Rate {
    pub fn update(&mut self, s: &Snapshot) -> f64 {
        let now = Instant::now();
        if let Some((at, phase, done)) = &self.last {
            let dt = now.duration_since(*at).as_secs_f64().max(1e-3);
            let delta = if *phase == s.phase {
                s.done.saturating_sub(*done)
            } else {
                s.done
            };
            // Smooth a little, so the ETA does not jump about.
            self.rate = 0.5 * self.rate + 0.5 * delta as f64 / dt;
        }
        self.last = Some((now, s.phase.clone(), s.done));
        self.rate
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `live` on standard error if that is a terminal; otherwise does nothing.
    pub fn start(live: Arc<Live>, title: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        let bar = Progress::bar(title);
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut rate = Rate::default();
            let mut every = tokio::time::interval(EVERY);
            loop {
                every.tick().await;
                let s = Snapshot::of(&live);
                let r = rate.update(&s);
                shown.set_message(s.line(r));
                shown.tick();
            }
        });
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    /// A spinner line on standard error titled `title`.
    pub fn bar(title: String) -> ProgressBar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {prefix:.bold} {msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(title);
        bar
    }

    /// For a `--procs` child: writes `live` as a JSON line on standard output every 250 ms.
    pub fn lines(live: Arc<Live>) -> Progress {
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            loop {
                every.tick().await;
                let line = serde_json::json!({ "progress": Snapshot::of(&live) });
                println!("{line}");
            }
        });
        Progress {
            bar: None,
            ticker: Some(ticker),
        }
    }

    /// No progress line.
    pub fn none() -> Progress {
        Progress {
            bar: None,
            ticker: None,
        }
    }

    pub fn with(bar: ProgressBar, ticker: JoinHandle<()>) -> Progress {
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    pub fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_done_target_rate_and_eta() {
        let s = Snapshot {
            phase: "logging in".into(),
            done: 250,
            target: 1000,
            open: 250,
            errors: 1,
            left: None,
        };
        assert_eq!(
            s.line(50.0),
            "logging in: 250/1,000 (25%), 50/s, ETA 15 s | 250 open | 1 errors"
        );
    }
}
