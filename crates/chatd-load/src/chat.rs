//! `chat`: N users, each registered and logged in on its own connection, SEND to each other
//! (closed loop, or at a target total rate). Measures acked SENDs per second, ack latency and
//! delivery latency (SEND written -> the recipient's `MSG` line read), and checks that every
//! acked message reached its recipient exactly once.
//!
//! Every payload carries the run's prefix, the sender, a sequence number and the time it was
//! written (µs since the run started): `<prefix>.<sender>.<seq>.<t_us>.xxxx`. So a recipient
//! needs no shared table to time a delivery, and the check at the end matches deliveries to
//! acks by message id.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::{Interval, MissedTickBehavior};

use crate::conn::{open_all, Auth, Conn, Setup, Users};
use crate::net;
use crate::report::{DeliveryReport, Plot, Report, RunReport};
use crate::stats::{secs, Live, Series};
use crate::Common;

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Users, each registered (with a name unique to the run) and logged in on its own connection.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Seconds of sending, after every user is set up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Target SENDs per second over all users (open loop); without it, a closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// SENDs in flight per user in the closed loop.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Message text length in bytes (at least what the tag needs).
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// REGISTER/AUTH pairs in flight at once during setup (the server hashes each password).
    #[arg(long, default_value_t = 8)]
    pub auth_concurrency: usize,
}

/// How long after the deadline acks and deliveries are still waited for.
const DRAIN: Duration = Duration::from_secs(30);
/// How long to go on reading once everything acked was delivered, to catch late duplicates.
const LINGER: Duration = Duration::from_millis(300);
/// How often a user that is done checks whether everyone else is.
const POLL: Duration = Duration::from_millis(10);
/// SENDs in flight on one connection at most at a target rate; a tick beyond is skipped.
const MAX_IN_FLIGHT: usize = 10_000;

/// What every user's task shares.
struct Shared {
    users: Arc<Users>,
    /// The users that are logged in, ascending: only they are sent to.
    targets: Vec<u32>,
    epoch: Instant,
    deadline: Instant,
    give_up: Instant,
    /// Time between one user's SENDs at a target rate.
    period: Option<Duration>,
    pipeline: usize,
    payload: usize,
    acks: Series,
    deliveries: Series,
    live: Arc<Live>,
    acked: AtomicU64,
    delivered: AtomicU64,
    done_sending: AtomicUsize,
}

impl Shared {
    /// The recipient of SEND number `seq` from the user at `pos` in `targets`: the others in
    /// turn.
    fn target(&self, pos: usize, seq: u32) -> u32 {
        let m = self.targets.len();
        if m == 1 {
            return self.targets[0];
        }
        self.targets[(pos + 1 + seq as usize % (m - 1)) % m]
    }

    /// Whether every user has stopped sending and every acked message was delivered.
    fn all_delivered(&self) -> bool {
        self.done_sending.load(Ordering::Acquire) == self.targets.len()
            && self.delivered.load(Ordering::Acquire) >= self.acked.load(Ordering::Acquire)
    }
}

/// What one user's connection saw.
#[derive(Default)]
struct Outcome {
    index: u32,
    sent: u64,
    /// (seq, message id) of each acked SEND.
    acks: Vec<(u32, u64)>,
    /// (sender, seq, message id) of each of this run's messages pushed to this user.
    deliveries: Vec<(u32, u32, u64)>,
    acked_in_time: u64,
    errors: u64,
    error_example: Option<String>,
    unanswered: u64,
    skipped: u64,
    broken: Option<String>,
}

struct User {
    conn: Conn,
    pos: usize,
    shared: Arc<Shared>,
    out: Outcome,
    wbuf: Vec<u8>,
    /// When each SEND in flight was written and its seq, oldest first.
    in_flight: VecDeque<(Instant, u32)>,
    seq: u32,
    ticker: Option<Interval>,
    sending: bool,
    done_sending: bool,
    ack_ns: Vec<u64>,
    delivery_ns: Vec<u64>,
}

impl User {
    async fn run(&mut self) -> Result<(), String> {
        if self.ticker.is_none() {
            for _ in 0..self.shared.pipeline.max(1) {
                self.put_send();
            }
            self.flush().await?;
        }
        let mut linger_until = None;
        loop {
            let now = Instant::now();
            if self.sending && now >= self.shared.deadline {
                self.sending = false;
            }
            if !self.sending && !self.done_sending && self.in_flight.is_empty() {
                self.done_sending = true;
                self.shared.done_sending.fetch_add(1, Ordering::AcqRel);
            }
            if self.done_sending && linger_until.is_none() && self.shared.all_delivered() {
                linger_until = Some(now + LINGER);
            }
            if linger_until.is_some_and(|t| now >= t) || now >= self.shared.give_up {
                break;
            }
            let wake = if self.sending {
                self.shared.deadline
            } else if self.done_sending {
                now + POLL
            } else {
                self.shared.give_up
            };
            tokio::select! {
                read = self.conn.rbuf.fill(&mut self.conn.stream) => {
                    match read {
                        Ok(0) => return Err("the server closed the connection".into()),
                        Ok(_) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                    self.on_lines()?;
                }
                _ = tick(&mut self.ticker), if self.sending => {
                    if self.in_flight.len() < MAX_IN_FLIGHT {
                        self.put_send();
                    } else {
                        self.out.skipped += 1;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Handles every complete line read: pushes, and replies to our SENDs.
    fn on_lines(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let now_us = now.duration_since(self.shared.epoch).as_micros() as u64;
        let prefix = self.shared.users.prefix().as_bytes();
        self.ack_ns.clear();
        self.delivery_ns.clear();
        let (mut acked, mut errors, mut answered) = (0u64, 0u64, 0usize);
        while let Some(range) = self.conn.rbuf.line_range() {
            let line = &self.conn.rbuf.bytes()[range];
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                if let Some(d) = parse_delivery(rest, prefix) {
                    self.out.deliveries.push((d.sender, d.seq, d.id));
                    self.delivery_ns.push(now_us.saturating_sub(d.t_us) * 1000);
                }
            } else if line.starts_with(b"OK") || line.starts_with(b"ERR") {
                let (sent_at, seq) = self.in_flight.pop_front().ok_or("a reply to no SEND")?;
                answered += 1;
                if let Some(id) = line.strip_prefix(b"OK ").and_then(parse_u64) {
                    self.out.acks.push((seq, id));
                    acked += 1;
                    if now < self.shared.deadline {
                        self.ack_ns.push((now - sent_at).as_nanos() as u64);
                    }
                } else {
                    errors += 1;
                    self.out
                        .error_example
                        .get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
                }
            }
            // Anything else (a BYE) is left to the end of the stream that follows it.
        }
        if now < self.shared.deadline {
            self.shared.acks.record(now, &self.ack_ns, errors);
            self.shared.live.add(self.ack_ns.len() as u64, errors);
            self.out.acked_in_time += self.ack_ns.len() as u64;
        }
        self.shared.deliveries.record(now, &self.delivery_ns, 0);
        self.out.errors += errors;
        if acked > 0 {
            self.shared.acked.fetch_add(acked, Ordering::AcqRel);
        }
        if !self.delivery_ns.is_empty() {
            self.shared
                .delivered
                .fetch_add(self.delivery_ns.len() as u64, Ordering::AcqRel);
        }
        // In the closed loop every answered SEND makes room for the next.
        if self.ticker.is_none() && self.sending && now < self.shared.deadline {
            for _ in 0..answered {
                self.put_send();
            }
        }
        Ok(())
    }

    /// Appends the next SEND to the write buffer.
    fn put_send(&mut self) {
        let shared = &self.shared;
        let target = shared.target(self.pos, self.seq);
        self.wbuf.extend_from_slice(b"SEND ");
        shared.users.write_name(&mut self.wbuf, target as usize);
        self.wbuf.push(b' ');
        let text = self.wbuf.len();
        let t_us = shared.epoch.elapsed().as_micros() as u64;
        let _ = write!(
            self.wbuf,
            "{}.{}.{}.{t_us}.",
            shared.users.prefix(),
            self.conn.index,
            self.seq
        );
        while self.wbuf.len() - text < shared.payload {
            self.wbuf.push(b'x');
        }
        self.wbuf.extend_from_slice(b"\r\n");
        self.in_flight.push_back((Instant::now(), self.seq));
        self.seq += 1;
        self.out.sent += 1;
    }

    /// Writes out the SENDs gathered, in one write.
    async fn flush(&mut self) -> Result<(), String> {
        if !self.wbuf.is_empty() {
            self.conn
                .stream
                .write_all(&self.wbuf)
                .await
                .map_err(|e| e.to_string())?;
            self.wbuf.clear();
        }
        Ok(())
    }
}

/// The next tick of `ticker`; never, without one.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One of this run's messages as pushed: `<id> <from> <time> <prefix>.<sender>.<seq>.<t_us>.`
struct Delivery {
    id: u64,
    sender: u32,
    seq: u32,
    t_us: u64,
}

/// Reads a `MSG` line (after `MSG `); `None` if it is not one of this run's messages.
fn parse_delivery(rest: &[u8], prefix: &[u8]) -> Option<Delivery> {
    let mut fields = rest.splitn(4, |&b| b == b' ');
    let id = parse_u64(fields.next()?)?;
    let from = fields.next()?;
    let _time = fields.next()?;
    let tag = fields.next()?.strip_prefix(prefix)?.strip_prefix(b".")?;
    let mut parts = tag.splitn(4, |&b| b == b'.');
    let sender = parse_u64(parts.next()?)? as u32;
    let seq = parse_u64(parts.next()?)? as u32;
    let t_us = parse_u64(parts.next()?)?;
    // The sender the server names must be the one the tag names; otherwise leave the line out,
    // and the message counts as lost.
    let named = parse_u64(from.strip_prefix(prefix)?.strip_prefix(b"_")?)?;
    (named == u64::from(sender)).then_some(Delivery {
        id,
        sender,
        seq,
        t_us,
    })
}

/// A decimal number of ASCII digits only.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

pub async fn run(args: ChatArgs, target: SocketAddr, live: Arc<Live>) -> anyhow::Result<Report> {
    net::raise_open_files_limit();
    let users = Arc::new(Users::for_this_run());
    let setup = Setup {
        target,
        conns: args.users,
        concurrency: args.common.connect_concurrency,
        timeout: args.common.connect_timeout(),
        busy_retries: args.common.busy_retries,
        greeting: true,
        probe: None,
        auth: Some(Auth {
            users: users.clone(),
            concurrency: args.auth_concurrency,
            timeout: Duration::from_secs(120),
        }),
        buf_size: 16 * 1024,
        sources: net::source_addrs(target, args.users),
    };
    live.set_phase("registering");
    let (mut conns, connect, _) = open_all(Arc::new(setup), live.clone()).await;
    conns.sort_by_key(|c| c.index);

    live.set_phase("sending");
    let duration = Duration::from_secs_f64(args.duration);
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        users,
        targets: conns.iter().map(|c| c.index as u32).collect(),
        epoch,
        deadline: epoch + duration,
        give_up: epoch + duration + DRAIN,
        period: args
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(conns.len() as f64 / r)),
        pipeline: args.pipeline,
        payload: args.payload,
        acks: Series::new(epoch),
        deliveries: Series::new(epoch),
        live: live.clone(),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        done_sending: AtomicUsize::new(0),
    });
    let m = conns.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (pos, conn) in conns.into_iter().enumerate() {
        // Spread the users' ticks evenly over one period, so the total rate is smooth.
        let ticker = shared.period.map(|period| {
            let offset = period.mul_f64(pos as f64 / m as f64);
            let mut t = tokio::time::interval_at((epoch + offset).into(), period);
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            t
        });
        let mut user = User {
            out: Outcome {
                index: conn.index as u32,
                ..Outcome::default()
            },
            conn,
            pos,
            shared: shared.clone(),
            wbuf: Vec::with_capacity(4096),
            in_flight: VecDeque::with_capacity(args.pipeline.max(16)),
            seq: 0,
            ticker,
            sending: true,
            done_sending: false,
            ack_ns: Vec::with_capacity(64),
            delivery_ns: Vec::with_capacity(64),
        };
        tasks.spawn(async move {
            let result = user.run().await;
            if !user.done_sending {
                // Never leave the others waiting for a user that broke off.
                user.shared.done_sending.fetch_add(1, Ordering::AcqRel);
            }
            user.out.unanswered = user.in_flight.len() as u64;
            user.out.broken = result.err();
            user.shared.live.closed();
            user.out
        });
    }
    let mut outcomes = Vec::with_capacity(m);
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("user tasks do not panic"));
    }
    live.set_phase("checking");
    let (delivery, mut problems) = check(&shared, &outcomes);

    let acked_in_time: u64 = outcomes.iter().map(|o| o.acked_in_time).sum();
    let broken: Vec<&String> = outcomes.iter().filter_map(|o| o.broken.as_ref()).collect();
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    if let Some(e) = outcomes.iter().find_map(|o| o.error_example.as_ref()) {
        problems.push(format!("{errors} SENDs failed, e.g. {e:?}"));
    }
    let skipped: u64 = outcomes.iter().map(|o| o.skipped).sum();
    if skipped > 0 {
        problems.push(format!(
            "{skipped} SENDs were not made: over {MAX_IN_FLIGHT} in flight on one connection"
        ));
    }
    if connect.opened < args.users as u64 {
        problems.push(format!(
            "only {} of {} users were set up",
            connect.opened, args.users
        ));
    }
    let run = RunReport {
        what: "acked SENDs",
        secs: secs(duration),
        ok: acked_in_time,
        errors,
        per_sec: acked_in_time as f64 / secs(duration).max(1e-9),
        latency: shared.acks.latency(),
        broken: broken.len() as u64,
        broken_example: broken.first().map(|s| s.to_string()),
    };
    Ok(Report {
        scenario: "chat",
        target: target.to_string(),
        params: serde_json::to_value(&args)?,
        passed: problems.is_empty(),
        problems,
        plot: Plot {
            throughput_label: "acked SENDs / s",
            throughput: shared.acks.intervals(),
            latencies: vec![
                ("ack", shared.acks.intervals()),
                ("delivery", shared.deliveries.intervals()),
            ],
            distributions: vec![
                ("ack", shared.acks.distribution()),
                ("delivery", shared.deliveries.distribution()),
            ],
        },
        connect,
        run: Some(run),
        delivery: Some(delivery),
        memory: None,
        held: None,
    })
}

/// Matches every delivery to an ack by message id: each acked message must have reached its
/// recipient exactly once, from its sender.
fn check(shared: &Shared, outcomes: &[Outcome]) -> (DeliveryReport, Vec<String>) {
    struct Expected {
        sender: u32,
        seq: u32,
        recipient: u32,
        times: u32,
    }
    let mut problems = Vec::new();
    let mut expected: HashMap<u64, Expected> = HashMap::new();
    let mut report = DeliveryReport::default();
    for o in outcomes {
        report.sent += o.sent;
        report.unanswered += o.unanswered;
        let pos = shared
            .targets
            .binary_search(&o.index)
            .expect("every outcome is a target");
        for &(seq, id) in &o.acks {
            report.acked += 1;
            let wanted = Expected {
                sender: o.index,
                seq,
                recipient: shared.target(pos, seq),
                times: 0,
            };
            match expected.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(wanted);
                }
                Entry::Occupied(_) => problems.push(format!("message id {id} was acked twice")),
            }
        }
    }
    for o in outcomes {
        for &(sender, seq, id) in &o.deliveries {
            report.delivered += 1;
            match expected.get_mut(&id) {
                None => report.unacked_delivered += 1,
                Some(e) if e.sender != sender || e.seq != seq || e.recipient != o.index => {
                    report.misrouted += 1
                }
                Some(e) => e.times += 1,
            }
        }
    }
    for e in expected.values() {
        match e.times {
            0 => report.lost += 1,
            1 => {}
            n => report.duplicates += u64::from(n - 1),
        }
    }
    report.latency = shared.deliveries.latency();
    if report.lost > 0 {
        problems.push(format!("{} acked messages were never delivered", report.lost));
    }
    if report.duplicates > 0 {
        problems.push(format!("{} deliveries were duplicates", report.duplicates));
    }
    if report.misrouted > 0 {
        problems.push(format!("{} deliveries went to the wrong user", report.misrouted));
    }
    if report.unanswered > 0 {
        problems.push(format!("{} SENDs were never answered", report.unanswered));
    }
    (report, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551"), Some(18446744073709551));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"-1"), None);
    }

    #[test]
    fn deliveries_are_recognised_by_prefix_and_sender() {
        let line = b"17 lab_3 2026-11-24T17:05:12.481Z lab.3.42.123456.xxxxx";
        let d = parse_delivery(line, b"lab").unwrap();
        assert_eq!((d.id, d.sender, d.seq, d.t_us), (17, 3, 42, 123456));
        assert!(parse_delivery(line, b"other").is_none(), "another run's message");
        let wrong_sender = b"17 lab_4 2026-11-24T17:05:12.481Z lab.3.42.123456.xxxxx";
        assert!(parse_delivery(wrong_sender, b"lab").is_none());
        assert!(parse_delivery(b"17 lab_3 2026 hello there", b"lab").is_none());
    }
}
