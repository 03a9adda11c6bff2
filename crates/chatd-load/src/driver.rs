//! The request driver shared by `ping` and `http`, in two shapes:
//!
//! - closed loop: `pipeline` requests in flight on every connection, each answered one
//!   replaced by a new one; latency counts from when a request was written;
//! - open loop (`--rate`): requests are due on a fixed schedule, spread evenly over the
//!   connections, and each one's latency counts from when it was *due*, not from when it went
//!   out, so a server that falls behind is charged for the queue it causes (the coordinated
//!   omission correction of wrk2).
//!
//! Either stops issuing at the deadline (or once `--requests` were issued) and then drains:
//! replies still in flight are waited for, up to `--drain` seconds, and counted; what is still
//! missing then is reported as unanswered.
//!
//! The open loop's verdict is on the rate replies came at, in the measured window (from the
//! start until issuing stopped): a reply counts in it if it came by the window's end plus the
//! round trip of the connection's first reply, the time a reply to the window's last request
//! takes when the server keeps up. Replies to a backlog the drain works off count in the
//! totals and latencies, never in the rate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::conn::Conn;
use crate::framer::Framer;
use crate::report::RunRaw;
use crate::request::Request;
use crate::stats::{Data, Live, Series};

/// Requests in flight on one connection at most in the open loop; later ones wait (their
/// latency still counts from when they were due).
pub const MAX_IN_FLIGHT: usize = 10_000;
/// How long replies are still read after a stop signal.
pub const STOP_DRAIN: Duration = Duration::from_secs(1);

/// How the timed phase runs.
pub struct Load {
    pub request: Request,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Requests per second over all connections (open loop).
    pub rate: Option<f64>,
    /// Requests to issue over all connections, instead of until the deadline.
    pub requests: Option<u64>,
    pub start: Instant,
    pub deadline: Instant,
    pub drain: Duration,
    pub stop: CancellationToken,
    pub live: Arc<Live>,
}

/// What `run_all` hands every connection.
struct Shared {
    load: Load,
    series: Series,
    /// Requests the closed loop may still issue with `--requests`.
    budget: Option<AtomicU64>,
    conns: usize,
}

/// Runs the load on every connection; `what` names the answers ("replies", "responses").
pub async fn run_all<F: Framer>(
    conns: Vec<Conn>,
    framer: impl Fn() -> F,
    load: Load,
    epoch: Instant,
    what: &str,
) -> RunRaw {
    let m = conns.len();
    let rate = load.rate;
    let started = load.start.saturating_duration_since(epoch).as_secs_f64();
    let shared = Arc::new(Shared {
        budget: match (load.rate, load.requests) {
            (None, Some(n)) => Some(AtomicU64::new(n)),
            _ => None,
        },
        series: Series::new(epoch, load.start),
        conns: m,
        load,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (pos, conn) in conns.into_iter().enumerate() {
        let mut c = ConnRun {
            conn,
            framer: framer(),
            shared: shared.clone(),
            pos,
            out: ConnOut::default(),
            wbuf: Vec::with_capacity(4096),
            in_flight: VecDeque::new(),
        };
        tasks.spawn(async move {
            let result = c.run().await;
            c.shared.load.live.closed();
            c.out.unanswered = c.in_flight.len() as u64;
            c.out.broken = result.err();
            c.out
        });
    }
    let mut raw = RunRaw {
        what: what.to_string(),
        started,
        requested_rate: rate,
        ..RunRaw::default()
    };
    let mut last = shared.load.start;
    let mut issued_until = shared.load.start;
    let mut answered_in_time = 0;
    while let Some(done) = tasks.join_next().await {
        let o = done.expect("driver tasks do not panic");
        raw.sent += o.sent;
        raw.sent_in_time += o.sent_in_time;
        answered_in_time += o.window.answered;
        raw.unanswered += o.unanswered;
        raw.bytes_in += o.bytes_in;
        raw.bytes_out += o.bytes_out;
        for (k, v) in o.statuses {
            *raw.statuses.entry(k).or_default() += v;
        }
        if let Some(why) = o.broken {
            raw.broken += 1;
            raw.broken_example.get_or_insert(why);
        }
        last = last.max(o.last_reply.unwrap_or(last));
        issued_until = issued_until.max(o.window.until.unwrap_or(shared.load.deadline));
    }
    let shared = Arc::into_inner(shared).expect("every connection task has finished");
    let data: Data = shared.series.snapshot_until(issued_until);
    raw.ok = data.ok;
    raw.errors = data.errors;
    raw.series = data;
    raw.ended = issued_until.saturating_duration_since(epoch).as_secs_f64();
    raw.drained = last.saturating_duration_since(epoch).as_secs_f64().max(raw.ended);
    raw.set_rates(answered_in_time);
    raw
}

/// What one connection did.
#[derive(Default)]
struct ConnOut {
    sent: u64,
    /// Issued before the deadline (for the achieved rate).
    sent_in_time: u64,
    unanswered: u64,
    bytes_in: u64,
    bytes_out: u64,
    statuses: BTreeMap<String, u64>,
    broken: Option<String>,
    last_reply: Option<Instant>,
    window: Window,
}

/// One connection's measured window, and the replies that came in it (see the module's
/// documentation).
#[derive(Debug, Default)]
pub struct Window {
    /// When the connection stopped issuing requests: the end of the window.
    pub until: Option<Instant>,
    /// How long its first reply took.
    first_reply: Option<Duration>,
    /// Replies of any kind that came in the window.
    pub answered: u64,
}

impl Window {
    /// Stops issuing: the window ends `at`.
    pub fn stop_issuing(&mut self, at: Instant) {
        self.until.get_or_insert(at);
    }

    /// A reply came at `now` to a request that counts from `from`.
    pub fn reply(&mut self, now: Instant, from: Instant) {
        self.first_reply
            .get_or_insert_with(|| now.saturating_duration_since(from));
    }

    /// Counts `n` replies read at `now` if they came in the window: while requests are
    /// issued, or up to one first-reply round trip after.
    pub fn answered(&mut self, now: Instant, n: u64) {
        let within = match (self.until, self.first_reply) {
            (Some(end), lag) => now <= end + lag.unwrap_or_default(),
            (None, _) => true,
        };
        if within {
            self.answered += n;
        }
    }
}

struct ConnRun<F> {
    conn: Conn,
    framer: F,
    shared: Arc<Shared>,
    pos: usize,
    out: ConnOut,
    wbuf: Vec<u8>,
    /// When each request in flight counts from (due or written), oldest first: replies come
    /// back in order.
    in_flight: VecDeque<Instant>,
}

impl<F: Framer> ConnRun<F> {
    async fn run(&mut self) -> Result<(), String> {
        let shared = self.shared.clone();
        let load = &shared.load;
        let m = shared.conns.max(1);
        // The open loop's schedule for this connection: every `period`, from an offset that
        // spreads the connections evenly over one period; at most `quota` with --requests.
        let period = load
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(m as f64 / r));
        let quota = load
            .requests
            .map(|n| n / m as u64 + u64::from((self.pos as u64) < n % m as u64));
        let mut next_due = period.map(|p| load.start + p.mul_f64(self.pos as f64 / m as f64));
        let mut scheduled = 0u64;
        let mut give_up = load.deadline + load.drain;
        let mut stopped = load.stop.is_cancelled();
        let mut latencies: Vec<u64> = Vec::with_capacity(64);
        let mut sending = true;
        loop {
            let now = Instant::now();
            if sending && (stopped || now >= load.deadline) {
                sending = false;
                self.out.window.stop_issuing(now.min(load.deadline));
            }
            if let (Some(p), Some(due)) = (period, next_due.as_mut()) {
                while sending
                    && *due <= now
                    && *due < load.deadline
                    && quota.is_none_or(|q| scheduled < q)
                    && self.in_flight.len() < MAX_IN_FLIGHT
                {
                    self.put(*due, *due < load.deadline);
                    *due += p;
                    scheduled += 1;
                }
                if sending && (*due >= load.deadline || quota.is_some_and(|q| scheduled >= q)) {
                    // The schedule is done; it was spread up to the deadline.
                    sending = false;
                    self.out.window.stop_issuing(load.deadline);
                }
            } else {
                while sending && self.in_flight.len() < load.pipeline.max(1) {
                    if let Some(budget) = &shared.budget {
                        let took = budget
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok();
                        if !took {
                            sending = false;
                            self.out.window.stop_issuing(now);
                            break;
                        }
                    }
                    self.put(now, true);
                }
            }
            self.conn.flush(&mut self.wbuf).await?;
            if !sending && self.in_flight.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(format!(
                    "{} replies still missing after the drain{}",
                    self.in_flight.len(),
                    self.framer
                        .unfinished()
                        .map(|what| format!(" ({what})"))
                        .unwrap_or_default()
                ));
            }
            let wake = match next_due {
                Some(due) if sending && self.in_flight.len() < MAX_IN_FLIGHT => due,
                _ => give_up,
            };
            tokio::select! {
                read = self.conn.rbuf.fill(&mut self.conn.stream) => match read {
                    Err(e) => return Err(e.to_string()),
                    Ok(0) => return Err("the server closed the connection".into()),
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(wake.into()) => continue,
                _ = load.stop.cancelled(), if !stopped => {
                    stopped = true;
                    give_up = give_up.min(Instant::now() + STOP_DRAIN);
                    continue;
                }
            }
            let now = Instant::now();
            let mut errors = 0;
            latencies.clear();
            loop {
                let (len, answer) = self.framer.frame(self.conn.rbuf.pending())?;
                self.conn.rbuf.consume(len);
                self.out.bytes_in += len as u64;
                let Some(answer) = answer else {
                    if len == 0 {
                        break;
                    }
                    continue;
                };
                let from = self.in_flight.pop_front().ok_or("a reply to no request")?;
                self.out.window.reply(now, from);
                let key = match answer.status {
                    0 if answer.success => "expected".to_string(),
                    0 => "unexpected".to_string(),
                    code => code.to_string(),
                };
                *self.out.statuses.entry(key).or_default() += 1;
                if answer.success {
                    latencies.push(now.saturating_duration_since(from).as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
            if !latencies.is_empty() || errors > 0 {
                self.out.last_reply = Some(now);
                self.out.window.answered(now, latencies.len() as u64 + errors);
            }
            shared.series.record(now, &latencies, errors);
            load.live.add(latencies.len() as u64, errors);
        }
    }

    /// Appends one request, whose latency counts from `from`.
    fn put(&mut self, from: Instant, in_time: bool) {
        let before = self.wbuf.len();
        self.shared
            .load
            .request
            .write(&mut self.wbuf, self.conn.index, self.out.sent);
        self.out.bytes_out += (self.wbuf.len() - before) as u64;
        self.in_flight.push_back(from);
        self.out.sent += 1;
        self.out.sent_in_time += u64::from(in_time);
    }
}
