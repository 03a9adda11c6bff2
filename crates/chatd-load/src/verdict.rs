//! The verdict: each rule a run must keep, what was measured against it, and whether it held.
//! The exit status follows: 0 when every rule held, 1 when one failed, 130 when a signal
//! stopped the run (see docs/load.md).

use serde::Serialize;

use crate::report::{ConnectReport, DeliveryReport, Measured, RunReport};

/// The limits a run is judged by (`--max-errors`, `--max-error-rate`, `--min-rate-ratio`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_errors: u64,
    pub max_error_rate: Option<f64>,
    pub min_rate_ratio: f64,
}

/// One rule, and how the run fared against it.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub rule: &'static str,
    pub passed: bool,
    /// What was measured, e.g. "19,936 of 25,000".
    pub actual: String,
    /// What it had to be.
    pub limit: String,
    /// How far off a failed rule is, e.g. "5,064 short".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub rules: Vec<Rule>,
}

impl Verdict {
    /// One line per failed rule.
    pub fn failed(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| !r.passed)
            .map(|r| {
                format!(
                    "{}: {} (limit {}{})",
                    r.rule,
                    r.actual,
                    r.limit,
                    r.by.as_ref().map(|b| format!("; {b}")).unwrap_or_default()
                )
            })
            .collect()
    }
}

fn n(v: u64) -> String {
    crate::report::fmt_count(v as f64)
}

pub fn judge(
    limits: &Limits,
    m: &Measured,
    connect: &ConnectReport,
    run: Option<&RunReport>,
    delivery: Option<&DeliveryReport>,
) -> Verdict {
    let mut rules = Vec::new();
    rules.push(Rule {
        rule: "interrupted",
        passed: !m.interrupted,
        actual: if m.interrupted {
            "stopped by a signal"
        } else {
            "ran to the end"
        }
        .into(),
        limit: "run to the end".into(),
        by: None,
    });
    let short = connect.attempted.saturating_sub(connect.opened);
    rules.push(Rule {
        rule: if connect.auth {
            "users set up"
        } else {
            "connections opened"
        },
        passed: short == 0,
        actual: format!("{} of {}", n(connect.opened), n(connect.attempted)),
        limit: format!("all {}", n(connect.attempted)),
        by: (short > 0).then(|| format!("{} short", n(short))),
    });
    if let Some(h) = &m.held {
        rules.push(Rule {
            rule: "connections held",
            passed: h.dropped == 0,
            actual: format!("{} closed by the server while held", n(h.dropped)),
            limit: "0".into(),
            by: None,
        });
    }
    if let Some(r) = run {
        let errors = r.errors + r.unanswered + r.broken;
        let total = r.ok + errors;
        let share = errors as f64 / total.max(1) as f64;
        let passed = errors <= limits.max_errors || limits.max_error_rate.is_some_and(|max| share <= max);
        rules.push(Rule {
            rule: "errors",
            passed,
            actual: format!(
                "{} errors ({} failed replies, {} unanswered, {} broken connections) of {} = {:.3}%",
                n(errors),
                n(r.errors),
                n(r.unanswered),
                n(r.broken),
                n(total),
                100.0 * share
            ),
            limit: match limits.max_error_rate {
                Some(rate) => format!("{} or {:.3}%", n(limits.max_errors), 100.0 * rate),
                None => n(limits.max_errors),
            },
            by: (!passed).then(|| format!("{} over", n(errors - limits.max_errors))),
        });
        if run.is_some_and(|r| r.ok == 0) && total == 0 && connect.opened > 0 {
            rules.push(Rule {
                rule: "answers",
                passed: false,
                actual: "no request was answered".into(),
                limit: "at least one".into(),
                by: None,
            });
        }
        if let Some(asked) = r.requested_rate {
            let ratio = r.achieved_rate / asked.max(1e-9);
            let passed = ratio >= limits.min_rate_ratio;
            rules.push(Rule {
                rule: "rate",
                passed,
                actual: format!(
                    "{}/s issued of {}/s asked ({:.1}%)",
                    n(r.achieved_rate as u64),
                    n(asked as u64),
                    100.0 * ratio
                ),
                limit: format!("{:.1}%", 100.0 * limits.min_rate_ratio),
                by: (!passed).then(|| format!("{:.1} points short", 100.0 * (limits.min_rate_ratio - ratio))),
            });
        }
    }
    if let Some(d) = delivery {
        let bad = d.lost + d.duplicates + d.misrouted;
        rules.push(Rule {
            rule: "exactly once",
            passed: bad == 0,
            actual: format!(
                "{} lost, {} duplicates, {} misrouted of {} acked",
                n(d.lost),
                n(d.duplicates),
                n(d.misrouted),
                n(d.acked)
            ),
            limit: "0 each".into(),
            by: None,
        });
    }
    Verdict {
        passed: rules.iter().all(|r| r.passed),
        rules,
    }
}
