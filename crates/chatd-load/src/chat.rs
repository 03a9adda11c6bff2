//! `chat`: N users, each logged in as its own user on its own connection, SEND to each other
//! (closed loop, or open loop at a target total `--rate`). Measures acked SENDs per second,
//! ack latency and delivery latency (SEND due or written -> the recipient's `MSG` line read,
//! separately for sender and recipient on the same node and on different nodes when `--addr`
//! is repeated), and checks that every acked message reached its recipient exactly once.
//!
//! Every payload carries the run's prefix, the sender, a sequence number and the time it counts
//! from (µs since the run started): `<prefix>.<sender>.<seq>.<t_us>.xxxx`. So a recipient
//! needs no shared table to time a delivery, and the check at the end matches deliveries to
//! acks by message id. With `--procs`, each process's users SEND among themselves.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::conn::{open_all, Auth, Conn, Users};
use crate::driver::{Window, MAX_IN_FLIGHT, STOP_DRAIN};
use crate::irc;
use crate::ping::Timing;
use crate::report::{DeliveryRaw, Measured, RunRaw};
use crate::stats::{Live, Series};
use crate::{Common, Ctx};

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Users, each logged in on its own connection (registered first if missing).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub timing: Timing,
    /// SENDs in flight per user in the closed loop.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Message text length in bytes (at least what the tag needs).
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// Name the users PREFIX_0, PREFIX_1, ... and reuse them in later runs (register if
    /// missing); without it every run registers users of its own.
    #[arg(long, value_name = "PREFIX")]
    pub user_prefix: Option<String>,
    /// REGISTER/AUTH pairs in flight at once during setup (the server hashes each password).
    #[arg(long, default_value_t = 8)]
    pub auth_concurrency: usize,
    /// With `--proto irc`: make each user's account with `NickServ REGISTER` (chatd's IRC
    /// door, where a PRIVMSG between accounts is stored as a SEND). Leave it out for an IRC
    /// server without accounts.
    #[arg(long)]
    pub irc_register: bool,
}

/// How long to go on reading once everything acked was delivered, to catch late duplicates.
const LINGER: Duration = Duration::from_millis(300);
/// How often a user that is done checks whether everyone else is.
const POLL: Duration = Duration::from_millis(10);

/// What every user's task shares.
struct Shared {
    users: Arc<Users>,
    /// The users that are logged in, ascending: only they are sent to.
    targets: Vec<u32>,
    nodes: usize,
    epoch: Instant,
    start: Instant,
    deadline: Instant,
    drain: Duration,
    /// Time between one user's SENDs at a target rate.
    period: Option<Duration>,
    /// SENDs to make over all users with --requests (closed loop: a shared budget).
    requests: Option<u64>,
    budget: Option<AtomicU64>,
    pipeline: usize,
    payload: usize,
    /// Users speak IRC: `PRIVMSG <nick>`, deliveries are PRIVMSG lines. An IRC server
    /// acknowledges nothing, so a message counts as acknowledged once written.
    irc: bool,
    acks: Series,
    deliveries: Series,
    same_node: Series,
    cross_node: Series,
    live: Arc<Live>,
    stop: CancellationToken,
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
    sent_in_time: u64,
    /// (seq, message id) of each acked SEND.
    acks: Vec<(u32, u64)>,
    /// (sender, seq, message id) of each of this run's messages pushed to this user.
    deliveries: Vec<(u32, u32, u64)>,
    errors: u64,
    error_example: Option<String>,
    unanswered: u64,
    bytes_in: u64,
    bytes_out: u64,
    last_ack: Option<Instant>,
    /// The measured window, and the replies to SENDs (OK or ERR) that came in it.
    window: Window,
    broken: Option<String>,
}

struct User {
    conn: Conn,
    pos: usize,
    shared: Arc<Shared>,
    out: Outcome,
    wbuf: Vec<u8>,
    /// What each SEND in flight counts from (due or written) and its seq, oldest first.
    in_flight: VecDeque<(Instant, u32)>,
    seq: u32,
    sending: bool,
    done_sending: bool,
    ack_ns: Vec<u64>,
    delivery_ns: Vec<u64>,
    same_ns: Vec<u64>,
    cross_ns: Vec<u64>,
}

impl User {
    async fn run(&mut self) -> Result<(), String> {
        let shared = self.shared.clone();
        let m = shared.targets.len().max(1);
        // The open loop's schedule: every `period`, from an offset that spreads the users
        // evenly over one period; at most `quota` SENDs with --requests.
        let quota = shared
            .requests
            .filter(|_| shared.period.is_some())
            .map(|n| n / m as u64 + u64::from((self.pos as u64) < n % m as u64));
        let mut next_due = shared
            .period
            .map(|p| shared.start + p.mul_f64(self.pos as f64 / m as f64));
        let mut give_up = shared.deadline + shared.drain;
        let mut stopped = shared.stop.is_cancelled();
        let mut linger_until = None;
        loop {
            let now = Instant::now();
            if self.sending && (stopped || now >= shared.deadline) {
                self.sending = false;
                self.out.window.stop_issuing(now.min(shared.deadline));
            }
            match (shared.period, next_due.as_mut()) {
                (Some(p), Some(due)) => {
                    while self.sending
                        && *due <= now
                        && *due < shared.deadline
                        && quota.is_none_or(|q| u64::from(self.seq) < q)
                        && self.in_flight.len() < MAX_IN_FLIGHT
                    {
                        let at = *due;
                        self.put_send(at);
                        *due += p;
                    }
                    if self.sending
                        && (*due >= shared.deadline || quota.is_some_and(|q| u64::from(self.seq) >= q))
                    {
                        // The schedule is done; it was spread up to the deadline.
                        self.sending = false;
                        self.out.window.stop_issuing(shared.deadline);
                    }
                }
                _ => {
                    while self.sending && self.in_flight.len() < shared.pipeline.max(1) {
                        if let Some(budget) = &shared.budget {
                            if budget
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                                .is_err()
                            {
                                self.sending = false;
                                self.out.window.stop_issuing(now);
                                break;
                            }
                        }
                        self.put_send(now);
                    }
                }
            }
            self.conn.flush(&mut self.wbuf).await?;
            if !self.sending && !self.done_sending && self.in_flight.is_empty() {
                self.done_sending = true;
                shared.done_sending.fetch_add(1, Ordering::AcqRel);
            }
            let now = Instant::now();
            if self.done_sending && linger_until.is_none() && shared.all_delivered() {
                linger_until = Some(now + LINGER);
            }
            if linger_until.is_some_and(|t| now >= t) || now >= give_up {
                break;
            }
            let wake = match next_due {
                Some(due) if self.sending && self.in_flight.len() < MAX_IN_FLIGHT => due,
                _ if self.done_sending => now + POLL,
                _ => give_up,
            };
            tokio::select! {
                read = self.conn.rbuf.fill(&mut self.conn.stream) => {
                    match read {
                        Ok(0) => return Err("the server closed the connection".into()),
                        Ok(n) => self.out.bytes_in += n as u64,
                        Err(e) => return Err(e.to_string()),
                    }
                    self.on_lines()?;
                }
                _ = tokio::time::sleep_until(wake.min(give_up).into()) => {}
                _ = shared.stop.cancelled(), if !stopped => {
                    stopped = true;
                    give_up = give_up.min(Instant::now() + STOP_DRAIN);
                }
            }
        }
        Ok(())
    }

    /// Handles every complete line read: pushes, and replies to our SENDs.
    fn on_lines(&mut self) -> Result<(), String> {
        let shared = self.shared.clone();
        let now = Instant::now();
        let now_us = now.duration_since(shared.epoch).as_micros() as u64;
        let prefix = shared.users.prefix().as_bytes();
        self.ack_ns.clear();
        self.delivery_ns.clear();
        self.same_ns.clear();
        self.cross_ns.clear();
        let (mut acked, mut errors) = (0u64, 0u64);
        while let Some(range) = self.conn.rbuf.line_range() {
            let line = &self.conn.rbuf.bytes()[range];
            let irc_line = shared.irc.then(|| irc::parts(line));
            if let Some((from, command, rest)) = irc_line {
                match command {
                    b"PRIVMSG" => {
                        let tagged = irc::privmsg(rest).and_then(|(_, text)| run_tag(from, text, prefix));
                        if let Some((sender, seq, t_us)) = tagged {
                            let d = Delivery {
                                id: irc::id(sender, seq),
                                sender,
                                seq,
                                t_us,
                            };
                            self.delivered(&d, now_us);
                        }
                    }
                    b"PING" => {
                        self.wbuf.extend_from_slice(b"PONG ");
                        self.wbuf.extend_from_slice(rest);
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                    [b'4', _, _] => {
                        errors += 1;
                        self.out
                            .error_example
                            .get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
                    }
                    _ => {}
                }
            } else if let Some(rest) = line.strip_prefix(b"MSG ") {
                if let Some(d) = parse_delivery(rest, prefix) {
                    self.delivered(&d, now_us);
                }
            } else if line.starts_with(b"OK") || line.starts_with(b"ERR") {
                let (from, seq) = self.in_flight.pop_front().ok_or("a reply to no SEND")?;
                self.out.window.reply(now, from);
                if let Some(id) = line.strip_prefix(b"OK ").and_then(parse_u64) {
                    self.out.acks.push((seq, id));
                    acked += 1;
                    self.ack_ns
                        .push(now.saturating_duration_since(from).as_nanos() as u64);
                } else {
                    errors += 1;
                    self.out
                        .error_example
                        .get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
                }
            }
            // Anything else (a BYE) is left to the end of the stream that follows it.
        }
        if acked + errors > 0 {
            self.out.last_ack = Some(now);
            self.out.window.answered(now, acked + errors);
        }
        shared.acks.record(now, &self.ack_ns, errors);
        shared.live.add(self.ack_ns.len() as u64, errors);
        shared.deliveries.record(now, &self.delivery_ns, 0);
        shared.same_node.record(now, &self.same_ns, 0);
        shared.cross_node.record(now, &self.cross_ns, 0);
        self.out.errors += errors;
        if acked > 0 {
            shared.acked.fetch_add(acked, Ordering::AcqRel);
        }
        if !self.delivery_ns.is_empty() {
            shared
                .delivered
                .fetch_add(self.delivery_ns.len() as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Counts one of this run's messages read at `now_us`.
    fn delivered(&mut self, d: &Delivery, now_us: u64) {
        self.out.deliveries.push((d.sender, d.seq, d.id));
        let ns = now_us.saturating_sub(d.t_us) * 1000;
        self.delivery_ns.push(ns);
        if d.sender as usize % self.shared.nodes == self.conn.node {
            self.same_ns.push(ns);
        } else {
            self.cross_ns.push(ns);
        }
    }

    /// Appends the next SEND to the write buffer; its latencies count from `from`.
    fn put_send(&mut self, from: Instant) {
        let shared = &self.shared;
        let target = shared.target(self.pos, self.seq);
        let before = self.wbuf.len();
        self.wbuf
            .extend_from_slice(if shared.irc { b"PRIVMSG " } else { b"SEND " });
        shared.users.write_name(&mut self.wbuf, target as usize);
        self.wbuf.extend_from_slice(if shared.irc { b" :" } else { b" " });
        let text = self.wbuf.len();
        let t_us = from.saturating_duration_since(shared.epoch).as_micros() as u64;
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
        self.out.bytes_out += (self.wbuf.len() - before) as u64;
        if shared.irc {
            // Nothing will answer it: written is as acknowledged as it gets.
            let now = Instant::now();
            self.out
                .acks
                .push((self.seq, irc::id(self.conn.index as u32, self.seq)));
            self.out.last_ack = Some(now);
            self.out.window.answered(now, 1);
            shared.acks.record(now, &[1], 0);
            shared.live.add(1, 0);
            shared.acked.fetch_add(1, Ordering::AcqRel);
        } else {
            self.in_flight.push_back((from, self.seq));
        }
        self.seq += 1;
        self.out.sent += 1;
        self.out.sent_in_time += u64::from(from < shared.deadline);
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
    let (sender, seq, t_us) = run_tag(from, fields.next()?, prefix)?;
    Some(Delivery {
        id,
        sender,
        seq,
        t_us,
    })
}

/// The run's tag in a message's text, `<prefix>.<sender>.<seq>.<t_us>.`: (sender, seq, t_us).
/// The sender the server names (`from`, `<prefix>_<sender>`) must be the one the tag names;
/// otherwise the line is left out, and the message counts as lost.
pub(crate) fn run_tag(from: &[u8], text: &[u8], prefix: &[u8]) -> Option<(u32, u32, u64)> {
    let tag = text.strip_prefix(prefix)?.strip_prefix(b".")?;
    let mut parts = tag.splitn(4, |&b| b == b'.');
    let sender = parse_u64(parts.next()?)?;
    let seq = parse_u64(parts.next()?)? as u32;
    let t_us = parse_u64(parts.next()?)?;
    let named = parse_u64(from.strip_prefix(prefix)?.strip_prefix(b"_")?)?;
    (named == sender).then_some((sender as u32, seq, t_us))
}

/// A decimal number of ASCII digits only.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

pub async fn run(args: &ChatArgs, ctx: &Ctx) -> anyhow::Result<Measured> {
    let users = Arc::new(Users::of_run(args.user_prefix.as_deref(), &ctx.run_id)?);
    let mine = ctx.share(args.users);
    let mut m = Measured::default();
    ctx.check_open_files(mine.len(), &mut m.warnings);
    let mut setup = ctx.setup(mine, args.users);
    setup.auth = Some(Auth {
        users: users.clone(),
        concurrency: args.auth_concurrency,
        timeout: Duration::from_secs(120),
    });
    setup.buf_size = 16 * 1024;
    let irc = irc::set_up(ctx, &mut setup, &users, args.timing.rate, args.irc_register)?;
    let (mut conns, connect) = open_all(setup, ctx.live.clone(), ctx.epoch).await;
    m.connect = connect;
    conns.sort_by_key(|c| c.index);

    let share = ctx.share(args.users).len() as f64 / args.users.max(1) as f64;
    let rate = args.timing.rate.filter(|r| *r > 0.0).map(|r| r * share);
    let requests = args.timing.requests.map(|n| (n as f64 * share).round() as u64);
    let duration = args.timing.duration();
    let start = Instant::now();
    ctx.live.set_phase(
        "sending",
        requests
            .or(rate.map(|r| (r * duration.as_secs_f64()) as u64))
            .unwrap_or(0),
        Some(start + duration),
    );
    let shared = Arc::new(Shared {
        users,
        targets: conns.iter().map(|c| c.index as u32).collect(),
        nodes: ctx.targets.len().max(1),
        epoch: ctx.epoch,
        start,
        deadline: start + duration,
        drain: ctx.drain(),
        period: rate.map(|r| Duration::from_secs_f64(conns.len().max(1) as f64 / r)),
        requests,
        budget: match (rate, requests) {
            (None, Some(n)) => Some(AtomicU64::new(n)),
            _ => None,
        },
        pipeline: args.pipeline,
        payload: args.payload,
        irc,
        acks: Series::new(ctx.epoch, start),
        deliveries: Series::new(ctx.epoch, start),
        same_node: Series::new(ctx.epoch, start),
        cross_node: Series::new(ctx.epoch, start),
        live: ctx.live.clone(),
        stop: ctx.stop.clone(),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        done_sending: AtomicUsize::new(0),
    });
    let n = conns.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (pos, conn) in conns.into_iter().enumerate() {
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
            sending: true,
            done_sending: false,
            ack_ns: Vec::with_capacity(64),
            delivery_ns: Vec::with_capacity(64),
            same_ns: Vec::with_capacity(64),
            cross_ns: Vec::with_capacity(64),
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
    let mut outcomes = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("user tasks do not panic"));
    }
    ctx.live.set_phase("checking", 0, None);
    let shared = Arc::into_inner(shared).expect("every user task has finished");

    let last = outcomes.iter().filter_map(|o| o.last_ack).max().unwrap_or(start);
    let issued_until = outcomes
        .iter()
        .map(|o| o.window.until.unwrap_or(shared.deadline))
        .max()
        .unwrap_or(start);
    let since = |t: Instant| t.saturating_duration_since(ctx.epoch).as_secs_f64();
    let acks = shared.acks.snapshot_until(issued_until);
    let mut run = RunRaw {
        what: if shared.irc {
            "PRIVMSGs written"
        } else {
            "acked SENDs"
        }
        .into(),
        started: since(start),
        ended: since(issued_until),
        drained: since(last.max(issued_until)),
        requested_rate: rate,
        ok: acks.ok,
        errors: acks.errors,
        ..RunRaw::default()
    };
    m.delivery = Some(check(&shared, &outcomes, issued_until));
    let mut answered_in_time = 0;
    for o in &outcomes {
        answered_in_time += o.window.answered;
        run.add_conn(crate::report::ConnRun {
            sent: o.sent,
            sent_in_time: o.sent_in_time,
            unanswered: o.unanswered,
            bytes_in: o.bytes_in,
            bytes_out: o.bytes_out,
            broken: o.broken.as_ref(),
            error_example: o.error_example.as_ref(),
        });
    }
    run.finish_ok_err(acks, answered_in_time);
    m.run = Some(run);
    Ok(m)
}

/// Matches every delivery to an ack by message id: each acked message must have reached its
/// recipient exactly once, from its sender.
fn check(shared: &Shared, outcomes: &[Outcome], issued_until: Instant) -> DeliveryRaw {
    struct Expected {
        sender: u32,
        seq: u32,
        recipient: u32,
        times: u32,
    }
    let mut expected: HashMap<u64, Expected> = HashMap::new();
    let mut report = DeliveryRaw::default();
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
                Entry::Occupied(_) => report.duplicates += 1,
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
    report.all = Some(shared.deliveries.snapshot_until(issued_until));
    report.same_node = Some(shared.same_node.snapshot_until(issued_until));
    report.cross_node = Some(shared.cross_node.snapshot_until(issued_until));
    report
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
