//! The live progress line on standard error (only when it is a terminal): phase, connections
//! open, requests per second, errors.

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use crate::report::fmt_count;
use crate::stats::Live;

const EVERY: Duration = Duration::from_millis(250);

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
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {prefix:.bold} {msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(title);
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64, live.phase());
            let mut every = tokio::time::interval(EVERY);
            loop {
                every.tick().await;
                let (now, ok, phase) = (Instant::now(), live.ok.load(Ordering::Relaxed), live.phase());
                // The counter restarts with each phase.
                let done = if phase == last.2 {
                    ok.saturating_sub(last.1)
                } else {
                    ok
                };
                let rate = done as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                shown.set_message(format!(
                    "{phase}: {} open, {}/s, {} errors",
                    fmt_count(live.open.load(Ordering::Relaxed) as f64),
                    fmt_count(rate),
                    fmt_count(live.errors.load(Ordering::Relaxed) as f64),
                ));
                shown.tick();
                last = (now, ok, phase);
            }
        });
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
