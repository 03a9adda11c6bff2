//! The outcome of a run, in two layers:
//!
//! - [`Measured`]: what a generator process counted and recorded, histograms whole; several
//!   processes' are merged exactly with [`Measured::merge`];
//! - [`Report`]: the figures computed from it, with the verdict, for `--json` (schema in
//!   docs/load.md) and the table people read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::meta::Meta;
use crate::net::Failures;
use crate::rss::NodeMemory;
use crate::stats::{Data, IntervalStats, Latency, Track};
use crate::verdict::Verdict;

/// The version of the JSON report's layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 3;

/// What one generator process measured. Times are seconds since its epoch, the start of the
/// run (`epoch_unix_ns` on the wall clock).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    pub epoch_unix_ns: u64,
    pub connect: ConnectRaw,
    pub run: Option<RunRaw>,
    pub delivery: Option<DeliveryRaw>,
    pub held: Option<Held>,
    /// (`rooms`) the room checks and latencies.
    #[serde(default)]
    pub rooms: Option<crate::rooms::RoomsRaw>,
    /// Connections open over time.
    pub open: Track,
    pub interrupted: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectRaw {
    pub attempted: u64,
    pub opened: u64,
    /// Connections not tried, or given up, because a signal stopped the run.
    #[serde(default)]
    pub stopped: u64,
    /// Connections opened to each `--addr`, in order.
    pub per_node: Vec<u64>,
    pub failures: Failures,
    pub busy_retries: u64,
    pub started: f64,
    pub ended: f64,
    pub auth: bool,
    pub requested_rate: Option<f64>,
    /// Connect latencies (greeting and probe included), and failures as errors.
    pub series: Option<Data>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRaw {
    pub what: String,
    pub started: f64,
    /// When issuing stopped (the deadline, or earlier with --requests or a signal).
    pub ended: f64,
    /// When the last reply came in.
    pub drained: f64,
    pub requested_rate: Option<f64>,
    pub sent: u64,
    pub sent_in_time: u64,
    /// Replies of any kind that came in the measured window (see [`crate::driver`]).
    #[serde(default)]
    pub answered_in_time: u64,
    /// Requests issued, and replies that came, per second of the measured window: each
    /// process's own, added up (processes' windows need not coincide).
    #[serde(default)]
    pub issued_rate: f64,
    #[serde(default)]
    pub answered_rate: f64,
    pub ok: u64,
    pub errors: u64,
    pub unanswered: u64,
    pub broken: u64,
    pub broken_example: Option<String>,
    pub statuses: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error_example: Option<String>,
    pub series: Data,
}

/// What one connection of a chat or rooms run adds to its [`RunRaw`].
pub struct ConnRun<'a> {
    pub sent: u64,
    pub sent_in_time: u64,
    pub unanswered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub broken: Option<&'a String>,
    pub error_example: Option<&'a String>,
}

impl RunRaw {
    /// Adds one connection's counts.
    pub fn add_conn(&mut self, conn: ConnRun<'_>) {
        self.sent += conn.sent;
        self.sent_in_time += conn.sent_in_time;
        self.unanswered += conn.unanswered;
        self.bytes_in += conn.bytes_in;
        self.bytes_out += conn.bytes_out;
        if let Some(b) = conn.broken {
            self.broken += 1;
            self.broken_example.get_or_insert_with(|| b.clone());
        }
        if let Some(e) = conn.error_example {
            self.error_example.get_or_insert_with(|| e.clone());
        }
    }

    /// Closes a run whose replies are OK or ERR: its statuses, its series, its rates.
    pub fn finish_ok_err(&mut self, series: Data, answered_in_time: u64) {
        if self.ok > 0 {
            self.statuses.insert("OK".into(), self.ok);
        }
        if self.errors > 0 {
            self.statuses.insert("ERR".into(), self.errors);
        }
        self.series = series;
        self.set_rates(answered_in_time);
    }

    /// This process's issued and answered rates over its measured window (`started` to
    /// `ended`), with `answered_in_time` replies in it.
    pub fn set_rates(&mut self, answered_in_time: u64) {
        let window = (self.ended - self.started).max(1e-9);
        self.answered_in_time = answered_in_time;
        self.issued_rate = self.sent_in_time as f64 / window;
        self.answered_rate = answered_in_time as f64 / window;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryRaw {
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub misrouted: u64,
    pub unacked_delivered: u64,
    pub unanswered: u64,
    pub all: Option<Data>,
    pub same_node: Option<Data>,
    pub cross_node: Option<Data>,
}

/// The hold of the `connections` scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Held {
    pub secs: f64,
    /// Connections the server closed (or spoke on) while held.
    pub dropped: u64,
}

pub(crate) fn merge_data(into: &mut Option<Data>, other: &Option<Data>, shift: f64) {
    match (into.as_mut(), other) {
        (Some(a), Some(b)) => a.merge(b, shift),
        (None, Some(b)) => {
            let mut fresh = Data::new(std::time::Duration::from_secs_f64(b.interval_secs));
            fresh.offset_secs = b.offset_secs + shift;
            fresh.merge(b, shift);
            *into = Some(fresh);
        }
        _ => {}
    }
}

impl Measured {
    /// Adds another process's measurements; its epoch is taken from `epoch_unix_ns`.
    pub fn merge(&mut self, o: &Measured) {
        let shift = (o.epoch_unix_ns as f64 - self.epoch_unix_ns as f64) / 1e9;
        let first = self.connect.series.is_none() && self.connect.attempted == 0;
        let c = &mut self.connect;
        if first {
            c.started = o.connect.started + shift;
            c.ended = o.connect.ended + shift;
        }
        c.attempted += o.connect.attempted;
        c.opened += o.connect.opened;
        c.stopped += o.connect.stopped;
        if c.per_node.len() < o.connect.per_node.len() {
            c.per_node.resize(o.connect.per_node.len(), 0);
        }
        for (a, b) in c.per_node.iter_mut().zip(&o.connect.per_node) {
            *a += b;
        }
        c.failures.merge(&o.connect.failures);
        c.busy_retries += o.connect.busy_retries;
        c.started = c.started.min(o.connect.started + shift);
        c.ended = c.ended.max(o.connect.ended + shift);
        c.auth |= o.connect.auth;
        c.requested_rate = match (c.requested_rate, o.connect.requested_rate) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        merge_data(&mut c.series, &o.connect.series, shift);
        match (&mut self.run, &o.run) {
            (Some(a), Some(b)) => {
                a.started = a.started.min(b.started + shift);
                a.ended = a.ended.max(b.ended + shift);
                a.drained = a.drained.max(b.drained + shift);
                a.requested_rate = match (a.requested_rate, b.requested_rate) {
                    (Some(x), Some(y)) => Some(x + y),
                    (x, y) => x.or(y),
                };
                a.sent += b.sent;
                a.sent_in_time += b.sent_in_time;
                a.answered_in_time += b.answered_in_time;
                a.issued_rate += b.issued_rate;
                a.answered_rate += b.answered_rate;
                a.ok += b.ok;
                a.errors += b.errors;
                a.unanswered += b.unanswered;
                a.broken += b.broken;
                if a.broken_example.is_none() {
                    a.broken_example = b.broken_example.clone();
                }
                if a.error_example.is_none() {
                    a.error_example = b.error_example.clone();
                }
                for (k, v) in &b.statuses {
                    *a.statuses.entry(k.clone()).or_default() += v;
                }
                a.bytes_in += b.bytes_in;
                a.bytes_out += b.bytes_out;
                a.series.merge(&b.series, shift);
            }
            (None, Some(b)) => {
                let mut b = b.clone();
                b.started += shift;
                b.ended += shift;
                b.drained += shift;
                let mut series = Data::new(std::time::Duration::from_secs_f64(b.series.interval_secs));
                series.offset_secs = b.series.offset_secs + shift;
                series.merge(&b.series, shift);
                b.series = series;
                self.run = Some(b);
            }
            _ => {}
        }
        if let Some(b) = &o.delivery {
            let a = self.delivery.get_or_insert_with(DeliveryRaw::default);
            a.sent += b.sent;
            a.acked += b.acked;
            a.delivered += b.delivered;
            a.lost += b.lost;
            a.duplicates += b.duplicates;
            a.misrouted += b.misrouted;
            a.unacked_delivered += b.unacked_delivered;
            a.unanswered += b.unanswered;
            merge_data(&mut a.all, &b.all, shift);
            merge_data(&mut a.same_node, &b.same_node, shift);
            merge_data(&mut a.cross_node, &b.cross_node, shift);
        }
        if let Some(b) = &o.rooms {
            self.rooms.get_or_insert_with(Default::default).merge(b, shift);
        }
        if let Some(b) = &o.held {
            let a = self.held.get_or_insert_with(Held::default);
            a.secs = a.secs.max(b.secs);
            a.dropped += b.dropped;
        }
        self.interrupted |= o.interrupted;
        for w in &o.warnings {
            if !self.warnings.contains(w) {
                self.warnings.push(w.clone());
            }
        }
    }
}

/// What the connect phase did.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub opened: u64,
    /// Connections not tried, or given up, because a signal stopped the run.
    pub stopped: u64,
    pub per_node: Vec<u64>,
    pub failures: Failures,
    /// Connections that were told `SERVER_BUSY` and tried again after a pause.
    pub busy_retries: u64,
    pub secs: f64,
    /// Connections opened per second over the phase (users per second with `--auth`).
    pub per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_rate: Option<f64>,
    /// From starting to connect until the greeting (and probe reply) was read.
    pub latency: Latency,
    /// Whether each connection registered and logged in as its own user.
    pub auth: bool,
}

/// The timed phase: requests answered (PING replies, acked SENDs, HTTP responses).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What `ok` counts.
    pub what: String,
    /// Seconds of issuing requests.
    pub secs: f64,
    /// Seconds after that until the last reply came in (bounded by --drain).
    pub drain_secs: f64,
    /// Open loop: the rate asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_rate: Option<f64>,
    /// Requests issued per second of the measured window (the timed phase).
    pub issued_rate: f64,
    /// Replies of any kind per second of the measured window: what the rate rule judges.
    pub answered_rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Requests still without a reply when the drain ended.
    pub unanswered: u64,
    /// `ok` per second of the phase and its drain.
    pub per_sec: f64,
    pub latency: Latency,
    /// Connections that broke off (closed by the server, or an unintelligible reply).
    pub broken: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_example: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_example: Option<String>,
    /// Replies by HTTP status code (`http`), or `expected`/`unexpected` (`ping`).
    pub statuses: BTreeMap<String, u64>,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
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
    /// From when the SEND was due (open loop) or written (closed loop) to reading the
    /// recipient's `MSG` line.
    pub latency: Latency,
    /// Sender and recipient on the same node / on different nodes (`--addr` repeated).
    pub same_node: Latency,
    pub cross_node: Latency,
}

/// (`rooms`) what the room checks found, and the rates of a room run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomsReport {
    pub rooms: u64,
    /// Members over all rooms, senders among them, and stalled ones (never reading).
    pub members: u64,
    pub senders: u64,
    pub stalled: u64,
    /// Members that joined their room, and those whose JOIN failed.
    pub joined: u64,
    pub join_failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_error_example: Option<String>,
    /// Deliveries the acked SENDs call for: each to every other reading member of its room.
    pub expected: u64,
    /// Deliveries (this run's `ROOM` lines read by reading members) per second, from the
    /// start of the timed phase to the last delivery or ack.
    pub deliveries_per_sec: f64,
    /// Acked SENDs per second over the same time.
    pub acked_per_sec: f64,
    /// Of `delivery.misrouted`: messages pushed back to their sender's own connection, and
    /// this run's messages pushed for a room the member is not in.
    pub to_sender: u64,
    pub foreign: u64,
    /// `ROOM` lines with a lower id than one the member had seen in its room.
    pub out_of_order: u64,
    /// Reading members whose connection ended before the run did.
    pub disconnected: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_example: Option<String>,
    pub stalled_kicked: u64,
    pub stalled_not_kicked: u64,
    /// (with `--stalled`) delivery latency to the reading members of rooms with a stalled
    /// member, and of rooms without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_stalled: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without_stalled: Option<Latency>,
    /// (with `--server-pid`) the servers' CPU seconds from the start of sending until every
    /// member was done reading, and that per delivery in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// Everything a run found out. Sections a scenario does not have are left out of the JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    #[serde(flatten)]
    pub meta: Meta,
    pub scenario: String,
    pub targets: Vec<String>,
    /// Every option of the run (secrets left out).
    pub params: serde_json::Value,
    /// Whether every rule held; `problems` lists the ones that did not.
    pub passed: bool,
    pub interrupted: bool,
    pub problems: Vec<String>,
    pub verdict: Verdict,
    pub warnings: Vec<String>,
    pub connect: ConnectReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<RoomsReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<NodeMemory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// `--server-metrics`: what each server counted during the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server: Vec<crate::server_metrics::ServerView>,
    /// Per-interval figures on the run's one time axis, for `--plot`, `--timeline-csv` and
    /// scripts.
    pub timeline: Timeline,
    /// With --procs: what each process reported of itself (the totals above are their sums).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<crate::procs::PartSummary>,
    /// The raw measurements behind the figures (histograms for `--hdr-out`).
    #[serde(skip)]
    pub measured: Measured,
}

/// The run over time, every series on the same axis (seconds since the run started).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// Named series: "connect", "replies", "acks", "delivery", ...
    pub series: Vec<(String, Vec<IntervalStats>)>,
    pub open: Track,
    /// The most connections open at once (summed over the processes with --procs).
    pub peak_open: u64,
    /// Each server's RSS in KiB (with --server-pid).
    pub rss: Vec<(u32, Track)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// When the phases began: (name, seconds).
    pub phases: Vec<(String, f64)>,
}

impl Report {
    /// The figures of `m` (and of the servers' memory and RSS over time), with the verdict of
    /// `limits`.
    pub fn build(
        m: Measured,
        meta: Meta,
        scenario: &str,
        targets: Vec<String>,
        params: serde_json::Value,
        (memory, rss): (Vec<NodeMemory>, Vec<(u32, Track)>),
        limits: &crate::verdict::Limits,
    ) -> Report {
        let c = &m.connect;
        let connect_secs = (c.ended - c.started).max(0.0);
        let connect = ConnectReport {
            attempted: c.attempted,
            opened: c.opened,
            stopped: c.stopped,
            per_node: c.per_node.clone(),
            failures: c.failures.clone(),
            busy_retries: c.busy_retries,
            secs: connect_secs,
            per_sec: c.opened as f64 / connect_secs.max(1e-9),
            requested_rate: c.requested_rate,
            latency: c.series.as_ref().map(Data::latency).unwrap_or_default(),
            auth: c.auth,
        };
        let mut timeline = Timeline {
            open: m.open.clone(),
            peak_open: m.open.points.iter().map(|p| p.1 as u64).max().unwrap_or(0),
            rss,
            ..Timeline::default()
        };
        if let Some(s) = &c.series {
            timeline.series.push(("connect".into(), s.intervals()));
        }
        timeline.phases.push(("connect".into(), c.started));
        let run = m.run.as_ref().map(|r| {
            let secs = (r.ended - r.started).max(1e-9);
            let total = (r.drained - r.started).max(1e-9);
            timeline.series.push((r.what.clone(), r.series.intervals()));
            timeline.phases.push((format!("{} (timed)", r.what), r.started));
            timeline.phases.push(("drain".into(), r.ended));
            timeline.target_rate = r.requested_rate;
            RunReport {
                what: r.what.clone(),
                secs,
                drain_secs: (r.drained - r.ended).max(0.0),
                requested_rate: r.requested_rate,
                issued_rate: r.issued_rate,
                answered_rate: r.answered_rate,
                sent: r.sent,
                ok: r.ok,
                errors: r.errors,
                unanswered: r.unanswered,
                per_sec: r.ok as f64 / total,
                latency: r.series.latency(),
                broken: r.broken,
                broken_example: r.broken_example.clone(),
                error_example: r.error_example.clone(),
                statuses: r.statuses.clone(),
                bytes_in_per_sec: r.bytes_in as f64 / total,
                bytes_out_per_sec: r.bytes_out as f64 / total,
            }
        });
        let delivery = m.delivery.as_ref().map(|d| {
            let lat = |x: &Option<Data>| x.as_ref().map(Data::latency).unwrap_or_default();
            if let Some(all) = &d.all {
                timeline.series.push(("delivery".into(), all.intervals()));
            }
            if d.cross_node.as_ref().is_some_and(|x| x.ok > 0) {
                for (name, x) in [
                    ("delivery same node", &d.same_node),
                    ("delivery cross node", &d.cross_node),
                ] {
                    if let Some(x) = x {
                        timeline.series.push((name.into(), x.intervals()));
                    }
                }
            }
            DeliveryReport {
                sent: d.sent,
                acked: d.acked,
                delivered: d.delivered,
                lost: d.lost,
                duplicates: d.duplicates,
                misrouted: d.misrouted,
                unacked_delivered: d.unacked_delivered,
                unanswered: d.unanswered,
                latency: lat(&d.all),
                same_node: lat(&d.same_node),
                cross_node: lat(&d.cross_node),
            }
        });
        let rooms = m.rooms.as_ref().map(|r| {
            let secs = (r.last_event - r.started).max(1e-9);
            let lat = |x: &Option<Data>| x.as_ref().map(Data::latency);
            RoomsReport {
                rooms: r.rooms,
                members: r.members,
                senders: r.senders,
                stalled: r.stalled,
                joined: r.joined,
                join_failed: r.join_failed,
                join_error_example: r.join_error_example.clone(),
                expected: r.expected,
                deliveries_per_sec: delivery.as_ref().map_or(0.0, |d| d.delivered as f64 / secs),
                acked_per_sec: delivery.as_ref().map_or(0.0, |d| d.acked as f64 / secs),
                to_sender: r.to_sender,
                foreign: r.foreign,
                out_of_order: r.out_of_order,
                disconnected: r.disconnected,
                disconnected_example: r.disconnected_example.clone(),
                stalled_kicked: r.stalled_kicked,
                stalled_not_kicked: r.stalled_not_kicked,
                with_stalled: lat(&r.with_stalled),
                without_stalled: lat(&r.without_stalled),
                server_cpu_s: r.server_cpu_s,
                server_cpu_us_per_delivery: r.server_cpu_s.and_then(|cpu| {
                    let delivered = delivery.as_ref().map_or(0, |d| d.delivered);
                    (delivered > 0).then(|| cpu * 1e6 / delivered as f64)
                }),
            }
        });
        let mut warnings = m.warnings.clone();
        for n in &memory {
            if let Some(w) = &n.warning {
                warnings.push(w.clone());
            }
        }
        let verdict = crate::verdict::judge(
            limits,
            &m,
            &connect,
            run.as_ref(),
            delivery.as_ref(),
            rooms.as_ref(),
        );
        Report {
            schema_version: SCHEMA_VERSION,
            meta,
            scenario: scenario.to_string(),
            targets,
            params,
            passed: verdict.passed,
            interrupted: m.interrupted,
            problems: verdict.failed(),
            verdict,
            warnings,
            connect,
            run,
            delivery,
            rooms,
            memory,
            held: m.held.clone(),
            server: Vec::new(),
            timeline,
            parts: Vec::new(),
            measured: m,
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
        "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, stddev {}, n={})",
        fmt_us(l.min_us),
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
        fmt_us(l.mean_us),
        fmt_us(l.stddev_us),
        fmt_count(l.count as f64)
    )
}

/// Bytes per second in the unit that reads best.
pub fn fmt_bytes_per_sec(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB/s", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB/s", b / 1024.0)
    }
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
    if n < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

impl Report {
    /// The table people read.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = Vec::new();
        rows.push((
            "scenario",
            format!(
                "{} against {}{}",
                self.scenario,
                self.targets.join(", "),
                if self.meta.procs > 1 {
                    format!(" from {} processes", self.meta.procs)
                } else {
                    String::new()
                }
            ),
        ));
        rows.push(("parameters", self.params.to_string()));
        if self.interrupted {
            rows.push((
                "INTERRUPTED",
                "stopped by a signal: the figures cover the run so far".into(),
            ));
        }
        let c = &self.connect;
        rows.push((
            if c.auth { "users" } else { "connections" },
            format!(
                "{} of {} opened{} in {:.2} s: {}/s{}",
                fmt_count(c.opened as f64),
                fmt_count(c.attempted as f64),
                if c.auth { " and logged in" } else { "" },
                c.secs,
                fmt_count(c.per_sec),
                c.requested_rate
                    .map(|r| format!(" (asked for {}/s)", fmt_count(r)))
                    .unwrap_or_default()
            ),
        ));
        if c.per_node.len() > 1 {
            rows.push((
                "  per node",
                c.per_node
                    .iter()
                    .zip(&self.targets)
                    .map(|(n, t)| format!("{t} {}", fmt_count(*n as f64)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
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
                if let Some(h) = &f.hint {
                    let _ = write!(s, "; hint: {h}");
                }
                s
            },
        ));
        if c.busy_retries > 0 {
            rows.push(("  busy retries", fmt_count(c.busy_retries as f64)));
        }
        if c.stopped > 0 {
            rows.push((
                "  not tried",
                format!("{}: the run was stopped first", fmt_count(c.stopped as f64)),
            ));
        }
        if let Some(h) = &self.held {
            rows.push((
                "held",
                format!(
                    "{:.1} s, {} open at the peak; closed by the server meanwhile: {}",
                    h.secs,
                    fmt_count(self.timeline.peak_open as f64),
                    h.dropped
                ),
            ));
        }
        for m in &self.memory {
            rows.push((
                "server memory",
                format!(
                    "pid {}: RSS {:.1} MiB before{}, {:.1} MiB peak: {:.2} KiB per connection over {}",
                    m.server_pid,
                    m.before_kib as f64 / 1024.0,
                    if m.before_conns > 0 {
                        format!(" (at {} connections)", m.before_conns)
                    } else {
                        String::new()
                    },
                    m.holding_kib as f64 / 1024.0,
                    m.per_conn_kib,
                    fmt_count(m.conns as f64),
                ),
            ));
        }
        if let Some(r) = &self.run {
            rows.push((
                &r.what,
                format!(
                    "{} in {:.1} s (+{:.2} s drain): {}/s; errors {}, unanswered {}",
                    fmt_count(r.ok as f64),
                    r.secs,
                    r.drain_secs,
                    fmt_count(r.per_sec),
                    fmt_count(r.errors as f64),
                    fmt_count(r.unanswered as f64),
                ),
            ));
            if let Some(req) = r.requested_rate {
                let share = |rate: f64| 100.0 * rate / req.max(1e-9);
                rows.push((
                    "  rate",
                    format!(
                        "asked {}/s, issued {}/s ({:.1}%), answered {}/s ({:.1}%) in the timed phase",
                        fmt_count(req),
                        fmt_count(r.issued_rate),
                        share(r.issued_rate),
                        fmt_count(r.answered_rate),
                        share(r.answered_rate)
                    ),
                ));
            }
            rows.push((
                if r.requested_rate.is_some() {
                    "  latency (from due time)"
                } else {
                    "  latency"
                },
                fmt_latency(&r.latency),
            ));
            if !r.statuses.is_empty() {
                rows.push((
                    "  statuses",
                    r.statuses
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", fmt_count(*v as f64)))
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
            if r.bytes_in_per_sec > 0.0 {
                rows.push((
                    "  throughput",
                    format!(
                        "in {}, out {}",
                        fmt_bytes_per_sec(r.bytes_in_per_sec),
                        fmt_bytes_per_sec(r.bytes_out_per_sec)
                    ),
                ));
            }
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
            if d.cross_node.count > 0 {
                rows.push(("  same node", fmt_latency(&d.same_node)));
                rows.push(("  cross node", fmt_latency(&d.cross_node)));
            }
        }
        if let Some(r) = &self.rooms {
            rows.push((
                "rooms",
                format!(
                    "{} rooms, {} members ({} senders, {} stalled), {} joined; \
                     deliveries {}/s, acked {}/s; expected {} deliveries",
                    r.rooms,
                    r.members,
                    r.senders,
                    r.stalled,
                    r.joined,
                    fmt_count(r.deliveries_per_sec),
                    fmt_count(r.acked_per_sec),
                    r.expected
                ),
            ));
            if let (Some(cpu), Some(per)) = (r.server_cpu_s, r.server_cpu_us_per_delivery) {
                rows.push((
                    "  server CPU",
                    format!("{cpu:.2} s from the first send to the last delivery: {per:.2} µs per delivery"),
                ));
            }
            rows.push((
                "  checks",
                format!(
                    "out of order {}, misrouted to the sender {} and to other rooms {}, \
                     reading members disconnected {}{}",
                    r.out_of_order,
                    r.to_sender,
                    r.foreign,
                    r.disconnected,
                    if r.stalled > 0 {
                        format!(
                            ", stalled members disconnected {} of {}",
                            r.stalled_kicked,
                            r.stalled_kicked + r.stalled_not_kicked
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
            if let (Some(with), Some(without)) = (&r.with_stalled, &r.without_stalled) {
                rows.push(("  with stalled", fmt_latency(with)));
                rows.push(("  without", fmt_latency(without)));
            }
        }
        for server in &self.server {
            rows.extend(server.rows());
        }
        for w in &self.warnings {
            rows.push(("warning", w.clone()));
        }
        for rule in &self.verdict.rules {
            rows.push((
                "  rule",
                format!(
                    "{} {}: {} (limit {})",
                    if rule.passed { "ok  " } else { "FAIL" },
                    rule.rule,
                    rule.actual,
                    rule.limit
                ),
            ));
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
        assert_eq!(fmt_bytes_per_sec(2048.0), "2.0 KiB/s");
    }
}
