//! The verdict: each rule a run must keep, what was measured against it, and whether it held.
//! The exit status follows: 0 when every rule held, 1 when one failed, 130 when a signal
//! stopped the run (see docs/load.md).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{fmt_us, ConnectReport, DeliveryReport, Measured, RoomsReport, RunReport};

/// The limits a run is judged by (`--max-errors`, `--max-error-rate`, `--min-rate-ratio`,
/// `--max-p50`, `--max-p99`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_errors: u64,
    pub max_error_rate: Option<f64>,
    pub min_rate_ratio: f64,
    pub max_p50_ms: Option<f64>,
    pub max_p99_ms: Option<f64>,
}

/// A latency limit in milliseconds: `250`, `2.5`, `250ms`, `1s`, `800us`.
pub fn parse_millis(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("us").or_else(|| t.strip_suffix("µs")) {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * scale),
        _ => Err(format!(
            "a latency in milliseconds (250, 2.5, 250ms, 1s), not {text:?}"
        )),
    }
}

/// The `q` quantile (in µs) of the latencies in `h` when `missing` more requests were never
/// answered, each slower than any that was; `None` when those alone reach past it.
pub fn quantile_with_missing(h: &Histogram<u64>, missing: u64, q: f64) -> Option<f64> {
    let answered = h.len();
    let rank = q * (answered + missing) as f64;
    if answered == 0 || rank > answered as f64 {
        return None;
    }
    Some(h.value_at_quantile(rank / answered as f64) as f64 / 1000.0)
}

/// A latency the `--max-p50`/`--max-p99` limits judge.
struct Judged<'a> {
    /// The names of its rules: ("p50 latency", "p99 latency").
    names: (&'static str, &'static str),
    /// What was timed, for the table: "replies, from due time".
    what: String,
    h: &'a Histogram<u64>,
    /// Requests that never got a latency, and what they are called ("unanswered", "lost").
    missing: (u64, &'static str),
}

/// The latencies a scenario's limits judge: the reply (`ping`, `http`), the ack and the
/// delivery (`chat`), the connect time (`connections`).
fn judged(m: &Measured) -> Vec<Judged<'_>> {
    let mut out = Vec::new();
    let Some(run) = &m.run else {
        if let Some(c) = &m.connect.series {
            out.push(Judged {
                names: ("p50 connect latency", "p99 connect latency"),
                what: "connect time".into(),
                h: &c.all.0,
                missing: (0, ""),
            });
        }
        return out;
    };
    let from = if run.requested_rate.is_some() {
        ", from due time"
    } else {
        ""
    };
    let delivery = m.delivery.as_ref();
    out.push(Judged {
        names: if delivery.is_some() {
            ("p50 ack latency", "p99 ack latency")
        } else {
            ("p50 latency", "p99 latency")
        },
        what: format!("{}{from}", run.what),
        h: &run.series.all.0,
        missing: (run.unanswered, "unanswered"),
    });
    if let Some(d) = delivery {
        if let Some(all) = &d.all {
            out.push(Judged {
                names: ("p50 delivery latency", "p99 delivery latency"),
                what: format!("deliveries{from}"),
                h: &all.all.0,
                missing: (d.lost, "lost"),
            });
        }
    }
    out
}

/// The rule "p50 ..." (`q` = 0.5) or "p99 ..." (0.99) on one latency, with its limit; none for
/// a run a signal stopped before anything was timed.
fn latency_rule(q: f64, limit_ms: f64, j: &Judged, interrupted: bool) -> Option<Rule> {
    let name = if q < 0.9 { j.names.0 } else { j.names.1 };
    let answered = j.h.len();
    if answered == 0 && interrupted {
        return None;
    }
    let limit_us = limit_ms * 1000.0;
    let value = quantile_with_missing(j.h, j.missing.0, q);
    let passed = value.is_some_and(|v| v <= limit_us);
    let counting = if j.missing.0 > 0 {
        format!(", counting {} {} as slower than any", n(j.missing.0), j.missing.1)
    } else {
        String::new()
    };
    Some(Rule {
        rule: name,
        passed,
        actual: match value {
            _ if answered == 0 => format!("none measured ({})", j.what),
            Some(v) => format!("{} ({}{counting})", fmt_us(v), j.what),
            None => format!(
                "beyond every answer: {} of {} {}",
                n(j.missing.0),
                n(answered + j.missing.0),
                j.missing.1
            ),
        },
        limit: fmt_us(limit_us),
        by: match value {
            _ if passed || answered == 0 => None,
            Some(v) => Some(format!("{} over", fmt_us(v - limit_us))),
            None => Some(format!("{} {}", n(j.missing.0), j.missing.1)),
        },
    })
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
    rooms: Option<&RoomsReport>,
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
    // A stopped run is judged on what it tried before the stop, never on what the stop
    // left out.
    let cut = m.interrupted && connect.stopped > 0;
    let tried = if cut {
        connect.attempted.saturating_sub(connect.stopped)
    } else {
        connect.attempted
    };
    let short = tried.saturating_sub(connect.opened);
    rules.push(Rule {
        rule: if connect.auth {
            "users set up"
        } else {
            "connections opened"
        },
        passed: short == 0,
        actual: if cut {
            format!(
                "{} of {} tried before the stop ({} asked)",
                n(connect.opened),
                n(tried),
                n(connect.attempted)
            )
        } else {
            format!("{} of {}", n(connect.opened), n(connect.attempted))
        },
        limit: if cut {
            "all tried".into()
        } else {
            format!("all {}", n(connect.attempted))
        },
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
        if r.ok == 0 && total == 0 && connect.opened > 0 && !m.interrupted {
            rules.push(Rule {
                rule: "answers",
                passed: false,
                actual: "no request was answered".into(),
                limit: "at least one".into(),
                by: None,
            });
        }
        // The rate replies came at in the measured window, not the rate requests went out at:
        // a server that falls behind is sent everything and answers less.
        if let Some(asked) = r.requested_rate.filter(|_| r.sent > 0 || !m.interrupted) {
            let ratio = r.answered_rate / asked.max(1e-9);
            let issued = r.issued_rate / asked.max(1e-9);
            let passed = ratio >= limits.min_rate_ratio;
            rules.push(Rule {
                rule: "rate",
                passed,
                actual: format!(
                    "{}/s answered of {}/s asked ({:.1}%); {}/s issued",
                    n(r.answered_rate.round() as u64),
                    n(asked.round() as u64),
                    100.0 * ratio,
                    n(r.issued_rate.round() as u64),
                ),
                limit: format!("{:.1}%", 100.0 * limits.min_rate_ratio),
                by: (!passed).then(|| {
                    let mut by = format!("{:.1} points short", 100.0 * (limits.min_rate_ratio - ratio));
                    if issued < limits.min_rate_ratio && connect.opened > 0 {
                        by.push_str(&format!(
                            "; only {:.1}% was issued: the generator fell behind (try --procs or \
                             --threads), or requests waited for the {} in flight a connection may have",
                            100.0 * issued,
                            n(crate::driver::MAX_IN_FLIGHT as u64)
                        ));
                    }
                    by
                }),
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
    if let Some(r) = rooms {
        rules.extend(room_rules(r, connect));
    }
    for (q, limit) in [(0.5, limits.max_p50_ms), (0.99, limits.max_p99_ms)] {
        let Some(limit) = limit else { continue };
        for j in judged(m) {
            rules.extend(latency_rule(q, limit, &j, m.interrupted));
        }
    }
    Verdict {
        passed: rules.iter().all(|r| r.passed),
        rules,
    }
}

/// The rules of a `rooms` run beside exactly-once: every member joined, saw its room in order
/// and stayed connected, and every stalled member was disconnected.
fn room_rules(r: &RoomsReport, connect: &ConnectReport) -> Vec<Rule> {
    let mut rules = vec![
        Rule {
            rule: "rooms joined",
            passed: r.join_failed == 0,
            actual: format!(
                "{} of {} logged in{}",
                n(r.joined),
                n(connect.opened),
                r.join_error_example
                    .as_ref()
                    .map(|e| format!(" (first failure: {e})"))
                    .unwrap_or_default()
            ),
            limit: "all".into(),
            by: (r.join_failed > 0).then(|| format!("{} short", n(r.join_failed))),
        },
        Rule {
            rule: "in order",
            passed: r.out_of_order == 0,
            actual: format!("{} ROOM lines below an id seen before", n(r.out_of_order)),
            limit: "0".into(),
            by: None,
        },
        Rule {
            rule: "members connected",
            passed: r.disconnected == 0,
            actual: format!(
                "{} reading members disconnected{}",
                n(r.disconnected),
                r.disconnected_example
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            limit: "0".into(),
            by: None,
        },
    ];
    if r.stalled > 0 {
        let of = r.stalled_kicked + r.stalled_not_kicked;
        rules.push(Rule {
            rule: "stalled members disconnected",
            passed: r.stalled_not_kicked == 0,
            actual: format!("{} of {} joined", n(r.stalled_kicked), n(of)),
            limit: "all".into(),
            by: (r.stalled_not_kicked > 0).then(|| format!("{} still connected", n(r.stalled_not_kicked))),
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Measured, Report, RunRaw};
    use crate::stats::Data;

    #[test]
    fn latency_limits_read_as_milliseconds() {
        assert_eq!(parse_millis("250"), Ok(250.0));
        assert_eq!(parse_millis("2.5"), Ok(2.5));
        assert_eq!(parse_millis("250ms"), Ok(250.0));
        assert_eq!(parse_millis("1s"), Ok(1000.0));
        assert_eq!(parse_millis("1.5 s"), Ok(1500.0));
        assert_eq!(parse_millis("800us"), Ok(0.8));
        assert_eq!(parse_millis("800µs"), Ok(0.8));
        for bad in ["", "0", "-3", "fast", "1m", "NaN", "inf"] {
            assert!(parse_millis(bad).is_err(), "{bad:?}");
        }
    }

    fn histogram(values_ms: &[u64]) -> Histogram<u64> {
        let mut d = Data::default();
        for v in values_ms {
            d.all.0.record(v * 1_000_000).unwrap();
        }
        d.all.0
    }

    #[test]
    fn requests_never_answered_are_the_slowest() {
        // 98 fast answers and 2 slow ones.
        let mut values = vec![1; 98];
        values.extend([900, 900]);
        let h = histogram(&values);
        let p99 = |missing| quantile_with_missing(&h, missing, 0.99).map(|us| (us / 1000.0).round());
        assert_eq!(p99(0), Some(900.0));
        // 100 more fast answers would halve the slow share; 2 never answered double it.
        assert_eq!(
            quantile_with_missing(&h, 0, 0.5).map(|us| (us / 1000.0).round()),
            Some(1.0)
        );
        assert_eq!(
            p99(2),
            None,
            "4 of 102 past every answer: the p99 is beyond them all"
        );
        let fast = histogram(&[1; 100]);
        assert_eq!(
            quantile_with_missing(&fast, 1, 0.99).map(|us| (us / 1000.0).round()),
            Some(1.0)
        );
        assert_eq!(quantile_with_missing(&fast, 2, 0.99), None);
        assert_eq!(quantile_with_missing(&histogram(&[]), 0, 0.99), None);
    }

    /// An open-loop run: `sent` issued and `answered` replies in the 10 s window, `ok` of all
    /// replies with latencies of `ms` each.
    fn open_loop(asked: f64, issued: u64, answered: u64, ms: &[u64], unanswered: u64) -> Measured {
        let mut series = Data::default();
        series.all.0 = histogram(ms);
        series.ok = ms.len() as u64;
        let mut run = RunRaw {
            what: "replies".into(),
            started: 1.0,
            ended: 11.0,
            drained: 12.0,
            requested_rate: Some(asked),
            sent: issued + unanswered,
            sent_in_time: issued,
            ok: ms.len() as u64,
            unanswered,
            series,
            ..RunRaw::default()
        };
        run.set_rates(answered);
        let mut m = Measured {
            run: Some(run),
            ..Measured::default()
        };
        (m.connect.attempted, m.connect.opened) = (10, 10);
        m
    }

    fn judge_it(m: Measured, limits: &Limits) -> Report {
        Report::build(
            m,
            crate::meta::Meta::now(0, 1, 1024),
            "ping",
            vec!["127.0.0.1:1".into()],
            serde_json::json!({}),
            (Vec::new(), Vec::new()),
            limits,
        )
    }

    fn limits() -> Limits {
        Limits {
            max_errors: 0,
            max_error_rate: None,
            min_rate_ratio: 0.95,
            max_p50_ms: None,
            max_p99_ms: None,
        }
    }

    fn rule<'a>(r: &'a Report, name: &str) -> &'a Rule {
        r.verdict
            .rules
            .iter()
            .find(|x| x.rule == name)
            .unwrap_or_else(|| panic!("no rule {name}: {:?}", r.verdict))
    }

    /// Everything was sent on time; the server answered 52,000/s of the 60,000/s asked, the
    /// rest after the window: the rate rule fails on what was answered.
    #[test]
    fn the_rate_rule_judges_what_was_answered() {
        let r = judge_it(open_loop(60_000.0, 600_000, 520_000, &[5], 0), &limits());
        let rate = rule(&r, "rate");
        assert!(!rate.passed, "{rate:?}");
        assert_eq!(
            rate.actual,
            "52,000/s answered of 60,000/s asked (86.7%); 60,000/s issued"
        );
        assert_eq!(rate.by.as_deref(), Some("8.3 points short"));
        let run = r.run.as_ref().unwrap();
        assert_eq!((run.issued_rate, run.answered_rate), (60_000.0, 52_000.0));
        assert!(r
            .table()
            .contains("issued 60,000/s (100.0%), answered 52,000/s (86.7%)"));
        let kept_up = judge_it(open_loop(60_000.0, 600_000, 599_000, &[5], 0), &limits());
        assert!(rule(&kept_up, "rate").passed);
        assert!(kept_up.passed, "{:?}", kept_up.problems);
        // When the generator could not issue the rate itself, it says so.
        let slow = judge_it(open_loop(60_000.0, 300_000, 300_000, &[5], 0), &limits());
        assert!(rule(&slow, "rate")
            .by
            .as_deref()
            .unwrap()
            .contains("only 50.0% was issued"));
    }

    #[test]
    fn latency_limits_fail_the_run() {
        let mut ms = vec![2; 98];
        ms.extend([875, 875]);
        let mut l = limits();
        l.max_p50_ms = Some(10.0);
        l.max_p99_ms = Some(250.0);
        let r = judge_it(open_loop(100.0, 1000, 1000, &ms, 0), &l);
        let p50 = rule(&r, "p50 latency");
        assert!(p50.passed, "{p50:?}");
        let p99 = rule(&r, "p99 latency");
        assert!(!p99.passed, "{p99:?}");
        assert!(
            p99.actual.starts_with("875") && p99.actual.contains("replies, from due time"),
            "{p99:?}"
        );
        assert_eq!(p99.limit, "250.00 ms");
        assert!(p99.by.as_deref().unwrap().ends_with("ms over"), "{p99:?}");
        assert!(!r.passed);
        assert!(
            r.problems.iter().any(|p| p.starts_with("p99 latency")),
            "{:?}",
            r.problems
        );
        // Fast answers, but 2% never came: the p99 is beyond every answer.
        let r = judge_it(open_loop(100.0, 1000, 1000, &[2; 98], 2), &l);
        let p99 = rule(&r, "p99 latency");
        assert!(!p99.passed, "{p99:?}");
        assert_eq!(p99.actual, "beyond every answer: 2 of 100 unanswered");
        // Without the limits there are no latency rules.
        let r = judge_it(open_loop(100.0, 1000, 1000, &ms, 0), &limits());
        assert!(r.verdict.rules.iter().all(|x| !x.rule.contains("latency")));
    }

    /// A run stopped before its timed phase began has no rate, latency or answers to judge;
    /// what was not tried is not counted short.
    #[test]
    fn a_stopped_run_is_judged_on_what_it_did() {
        let mut m = open_loop(1000.0, 0, 0, &[], 0);
        m.interrupted = true;
        m.connect.attempted = 5000;
        m.connect.opened = 1200;
        m.connect.stopped = 3800;
        m.connect.auth = true;
        let mut l = limits();
        l.max_p99_ms = Some(100.0);
        let r = judge_it(m, &l);
        let failed: Vec<_> = r
            .verdict
            .rules
            .iter()
            .filter(|x| !x.passed)
            .map(|x| x.rule)
            .collect();
        assert_eq!(failed, ["interrupted"], "{:?}", r.verdict);
        assert_eq!(
            rule(&r, "users set up").actual,
            "1,200 of 1,200 tried before the stop (5,000 asked)"
        );
        assert!(r
            .verdict
            .rules
            .iter()
            .all(|x| x.rule != "rate" && x.rule != "p99 latency"));
    }
}
