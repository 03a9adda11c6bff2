//! `rooms`: `--rooms` rooms of `--members` members each, every member logged in as its own user
//! on its own connection; the first `--senders` members of each room SEND to it (closed loop,
//! one SEND in flight per sender, or open loop at a total `--rate`), and every other member
//! reads. Measures acked SENDs per second, deliveries per second and the latency of each
//! delivery (SEND due or written -> a member's `ROOM` line read), and checks what a room
//! promises: every acked message reaches every other member of its room exactly once, never
//! its sender, and each member sees its room's ids in increasing order.
//!
//! `--stalled N` members never read after joining: the server must disconnect them (their push
//! queue overflows) without the others losing anything. They are left out of the delivery
//! check, and the latency of rooms with and without one is reported apart, to compare.
//!
//! Payloads are tagged as in [`crate::chat`]: `<prefix>.<sender>.<seq>.<t_us>.xxxx`. Rooms
//! are named `#<prefix>.r<i>`. The run is one process (`--threads` for more cores): the check
//! needs every member's deliveries in one place.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::chat::{parse_u64, run_tag};
use crate::conn::{open_all, Auth, Conn, Users};
use crate::driver::{Window, MAX_IN_FLIGHT, STOP_DRAIN};
use crate::irc;
use crate::ping::Timing;
use crate::report::{DeliveryRaw, Measured, RunRaw};
use crate::stats::{Data, Live, Series};
use crate::{Common, Ctx};

#[derive(Debug, Clone, Args, Serialize)]
pub struct RoomsArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Rooms, each with its own members.
    #[arg(long, default_value_t = 3)]
    pub rooms: usize,
    /// Members per room, each a user logged in on its own connection (registered if missing).
    #[arg(long, default_value_t = 5)]
    pub members: usize,
    /// Members per room that SEND to it (the room's first ones); the others only read.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub timing: Timing,
    /// Members (over all rooms, one room after another) that never read after joining: the
    /// server must disconnect them; they are left out of the delivery check.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Message text length in bytes (at least what the tag needs).
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// Name the users PREFIX_0, PREFIX_1, ... and the rooms #PREFIX.r0, ..., and reuse them in
    /// later runs (with the same --rooms and --members); without it every run has its own.
    #[arg(long, value_name = "PREFIX")]
    pub user_prefix: Option<String>,
    /// REGISTER/AUTH pairs in flight at once during setup (the server hashes each password).
    #[arg(long, default_value_t = 8)]
    pub auth_concurrency: usize,
    /// With `--proto irc`: make each member's account with `NickServ REGISTER` (chatd's IRC
    /// door, where only accounts join rooms and every message is stored). Leave it out for an
    /// IRC server without accounts.
    #[arg(long)]
    pub irc_register: bool,
}

/// The most members a run may have over all rooms.
pub const MAX_MEMBERS: usize = 200_000;
/// How long to go on reading once everything acked was delivered, to catch late duplicates.
const LINGER: Duration = Duration::from_millis(300);
/// How often a member that is done checks whether everyone else is.
const POLL: Duration = Duration::from_millis(10);
/// How long one JOIN may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is where: member `i` (the run's user `i`) is in room `i / members`, at slot
/// `i % members`; slots below `senders` send; the stalled ones are the rooms' last slots,
/// dealt out one room after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub stalled: usize,
}

impl Layout {
    pub fn of(args: &RoomsArgs) -> anyhow::Result<Layout> {
        Layout::new(args.rooms, args.members, args.senders, args.stalled)
    }

    /// A layout, if it makes sense and is within bounds.
    pub fn new(rooms: usize, members: usize, senders: usize, stalled: usize) -> anyhow::Result<Layout> {
        let l = Layout {
            rooms,
            members,
            senders,
            stalled,
        };
        if l.rooms == 0 || l.members == 0 || l.senders == 0 {
            anyhow::bail!("--rooms, --members and --senders are at least 1");
        }
        if l.senders > l.members {
            anyhow::bail!("--senders ({}) is more than --members ({})", l.senders, l.members);
        }
        if l.stalled > l.rooms * (l.members - l.senders) {
            anyhow::bail!(
                "--stalled {} is more than the members that do not send ({} rooms x {})",
                l.stalled,
                l.rooms,
                l.members - l.senders
            );
        }
        if l.total() > MAX_MEMBERS {
            anyhow::bail!(
                "--rooms x --members is {}, more than the {MAX_MEMBERS} members one run may have",
                l.total()
            );
        }
        Ok(l)
    }

    pub fn total(&self) -> usize {
        self.rooms * self.members
    }

    pub fn room_of(&self, i: usize) -> usize {
        i / self.members
    }

    pub fn is_sender(&self, i: usize) -> bool {
        i % self.members < self.senders
    }

    pub fn is_stalled(&self, i: usize) -> bool {
        let from_end = self.members - 1 - i % self.members;
        from_end * self.rooms + self.room_of(i) < self.stalled
    }

    pub fn room_has_stalled(&self, room: usize) -> bool {
        self.is_stalled(room * self.members + self.members - 1)
    }
}

/// What the room checks found, beside the exactly-once counts of [`DeliveryRaw`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomsRaw {
    pub rooms: u64,
    pub members: u64,
    pub senders: u64,
    pub stalled: u64,
    /// Members that joined their room (of those logged in).
    pub joined: u64,
    pub join_failed: u64,
    pub join_error_example: Option<String>,
    /// Deliveries the acked SENDs call for: each to every other reading member of its room.
    pub expected: u64,
    /// Of the misrouted deliveries: messages pushed back to their sender's own connection, and
    /// this run's messages pushed for a room the member is not in.
    #[serde(default)]
    pub to_sender: u64,
    #[serde(default)]
    pub foreign: u64,
    /// `ROOM` lines with a lower id than one the member saw before in its room.
    pub out_of_order: u64,
    /// Reading members whose connection ended before the run did.
    pub disconnected: u64,
    pub disconnected_example: Option<String>,
    /// Stalled members the server disconnected, and those it did not.
    pub stalled_kicked: u64,
    pub stalled_not_kicked: u64,
    /// When the first SEND was due and the last delivery or ack came (seconds since the epoch).
    pub started: f64,
    pub last_event: f64,
    /// Delivery latencies in rooms with a stalled member, and in rooms without (with --stalled).
    pub with_stalled: Option<Data>,
    pub without_stalled: Option<Data>,
    /// (with `--server-pid`) CPU seconds the servers used from the start of sending until
    /// every member was done reading.
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
}

impl RoomsRaw {
    pub fn merge(&mut self, o: &RoomsRaw, shift: f64) {
        let first = self.members == 0;
        self.rooms += o.rooms;
        self.members += o.members;
        self.senders += o.senders;
        self.stalled += o.stalled;
        self.joined += o.joined;
        self.join_failed += o.join_failed;
        self.join_error_example = self.join_error_example.take().or(o.join_error_example.clone());
        self.expected += o.expected;
        self.to_sender += o.to_sender;
        self.foreign += o.foreign;
        self.out_of_order += o.out_of_order;
        self.disconnected += o.disconnected;
        self.disconnected_example = self
            .disconnected_example
            .take()
            .or(o.disconnected_example.clone());
        self.stalled_kicked += o.stalled_kicked;
        self.stalled_not_kicked += o.stalled_not_kicked;
        self.started = if first {
            o.started + shift
        } else {
            self.started.min(o.started + shift)
        };
        self.last_event = self.last_event.max(o.last_event + shift);
        self.server_cpu_s = match (self.server_cpu_s, o.server_cpu_s) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        crate::report::merge_data(&mut self.with_stalled, &o.with_stalled, shift);
        crate::report::merge_data(&mut self.without_stalled, &o.without_stalled, shift);
    }
}

/// Set once every member has joined (or failed to): what the timed phase runs by.
struct Plan {
    start: Instant,
    deadline: Instant,
    /// Time between one sender's SENDs at a target rate.
    period: Option<Duration>,
    /// SENDs over all senders with --requests: a shared budget (closed loop), or a quota each.
    requests: Option<u64>,
    budget: Option<AtomicU64>,
    /// Senders that joined; each has its position among them.
    senders: usize,
    /// Reading members (joined, not stalled) per room.
    readers: Vec<u64>,
    acks: Series,
    deliveries: Series,
    same_node: Series,
    cross_node: Series,
    with_stalled: Series,
    without_stalled: Series,
}

/// What every member's task shares.
struct Shared {
    users: Arc<Users>,
    layout: Layout,
    room_names: Vec<String>,
    nodes: usize,
    epoch: Instant,
    drain: Duration,
    payload: usize,
    /// Members speak IRC: JOIN until 366, PRIVMSG to the room, deliveries are PRIVMSG lines.
    /// An IRC server acknowledges nothing, so a message counts as sent once written, and
    /// order is checked per sender (IRC has no ids).
    irc: bool,
    plan: OnceLock<Plan>,
    started: tokio::sync::watch::Receiver<bool>,
    live: Arc<Live>,
    stop: CancellationToken,
    /// Deliveries the acks so far call for, and deliveries read so far.
    expected: AtomicU64,
    delivered: AtomicU64,
    done_sending: AtomicUsize,
}

impl Shared {
    /// Whether every sender has stopped and every acked message was delivered.
    fn all_delivered(&self, plan: &Plan) -> bool {
        self.done_sending.load(Ordering::Acquire) >= plan.senders
            && self.delivered.load(Ordering::Acquire) >= self.expected.load(Ordering::Acquire)
    }
}

/// What one member's connection saw.
#[derive(Debug, Default)]
pub struct Record {
    pub index: u32,
    pub joined: bool,
    pub join_error: Option<String>,
    pub sent: u64,
    pub sent_in_time: u64,
    /// (seq, message id) of each acked SEND.
    pub acks: Vec<(u32, u64)>,
    /// (message id, sender) of each of this run's messages pushed to this member in its room.
    pub deliveries: Vec<(u64, u32)>,
    /// This run's messages pushed for a room the member is not in.
    pub foreign: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub error_example: Option<String>,
    pub unanswered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub last_event: Option<Instant>,
    pub window: Window,
    /// Why the connection ended early (for a stalled member: `None` if it was never closed).
    pub broken: Option<String>,
    /// (stalled members) whether the server closed the connection.
    pub kicked: bool,
}

/// A member's state beside its connection.
struct State {
    shared: Arc<Shared>,
    index: usize,
    room: usize,
    stalled: bool,
    /// Position among the senders that joined.
    sender_pos: Option<usize>,
    node: usize,
    out: Record,
    last_id: u64,
    in_flight: VecDeque<(Instant, u32)>,
    seq: u32,
    ack_ns: Vec<u64>,
    delivery_ns: Vec<u64>,
    same_ns: Vec<u64>,
    cross_ns: Vec<u64>,
    acked_now: u64,
    errors_now: u64,
    /// Whether this member counts as done sending (a reader is from the start).
    done_sending: bool,
    /// IRC: the newest seq seen from each sender.
    last_seq: HashMap<u32, u32>,
}

impl State {
    /// Counts this member as done sending, once.
    fn finish_sending(&mut self) {
        if !self.done_sending {
            self.done_sending = true;
            self.shared.done_sending.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// One `ROOM` line: `<id> <#room> <from> <time> <text>`, and its tag if it is this run's.
struct RoomLine<'a> {
    id: u64,
    room: &'a [u8],
    /// (sender, seq, t_us) when the text is this run's and `from` is the sender it names.
    tag: Option<(u32, u32, u64)>,
}

fn parse_room_line<'a>(rest: &'a [u8], prefix: &[u8]) -> Option<RoomLine<'a>> {
    let mut fields = rest.splitn(5, |&b| b == b' ');
    let id = parse_u64(fields.next()?)?;
    let room = fields.next()?;
    let from = fields.next()?;
    let _time = fields.next()?;
    let text = fields.next()?;
    let tag = run_tag(from, text, prefix);
    Some(RoomLine { id, room, tag })
}

/// A `PRIVMSG <#room> :<text>` from `from` as a [`RoomLine`] with its IRC id.
fn parse_irc_privmsg<'a>(from: &[u8], rest: &'a [u8], prefix: &[u8]) -> Option<RoomLine<'a>> {
    let (room, text) = irc::privmsg(rest)?;
    let tag = run_tag(from, text, prefix);
    let id = tag.map_or(0, |(sender, seq, _)| irc::id(sender, seq));
    Some(RoomLine { id, room, tag })
}

impl State {
    /// Handles one `ROOM` line (after `ROOM `) read at `now`.
    fn on_room(&mut self, rest: &[u8], now: Instant) {
        let shared = self.shared.clone();
        if let Some(line) = parse_room_line(rest, shared.users.prefix().as_bytes()) {
            self.on_delivery(line, now);
        }
    }

    /// Handles one IRC `PRIVMSG` (after the command) from `from`, read at `now`.
    fn on_privmsg(&mut self, from: &[u8], rest: &[u8], now: Instant) {
        let shared = self.shared.clone();
        let Some(line) = parse_irc_privmsg(from, rest, shared.users.prefix().as_bytes()) else {
            return;
        };
        if !rest.starts_with(b"#") {
            return;
        }
        if let Some((sender, seq, _)) = line.tag {
            match self.last_seq.entry(sender) {
                Entry::Occupied(mut last) => {
                    if seq <= *last.get() {
                        self.out.out_of_order += 1;
                    }
                    last.insert(seq.max(*last.get()));
                }
                Entry::Vacant(v) => {
                    v.insert(seq);
                }
            }
        }
        self.on_delivery(line, now);
    }

    fn on_delivery(&mut self, line: RoomLine<'_>, now: Instant) {
        let shared = self.shared.clone();
        if !line
            .room
            .eq_ignore_ascii_case(shared.room_names[self.room].as_bytes())
        {
            self.out.foreign += u64::from(line.tag.is_some());
            return;
        }
        if !shared.irc && line.id < self.last_id {
            self.out.out_of_order += 1;
        }
        self.last_id = self.last_id.max(line.id);
        let Some((sender, _seq, t_us)) = line.tag else {
            return;
        };
        if self.stalled {
            return;
        }
        self.out.deliveries.push((line.id, sender));
        self.out.last_event = Some(now);
        let now_us = now.duration_since(shared.epoch).as_micros() as u64;
        let ns = now_us.saturating_sub(t_us) * 1000;
        self.delivery_ns.push(ns);
        if sender as usize % shared.nodes == self.node {
            self.same_ns.push(ns);
        } else {
            self.cross_ns.push(ns);
        }
    }

    /// Handles a reply to a SEND read at `now`.
    fn on_reply(&mut self, line: &[u8], now: Instant) -> Result<(), String> {
        let (from, seq) = self.in_flight.pop_front().ok_or("a reply to no SEND")?;
        self.out.window.reply(now, from);
        if let Some(id) = line.strip_prefix(b"OK ").and_then(parse_u64) {
            self.out.acks.push((seq, id));
            self.acked_now += 1;
            self.ack_ns
                .push(now.saturating_duration_since(from).as_nanos() as u64);
        } else {
            self.errors_now += 1;
            self.out
                .error_example
                .get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
        }
        Ok(())
    }

    /// Records what the lines of one read brought.
    fn record(&mut self, now: Instant) {
        let shared = self.shared.clone();
        let (acked, errors) = (self.acked_now, self.errors_now);
        if acked + errors > 0 {
            self.out.last_event = Some(now);
            self.out.window.answered(now, acked + errors);
        }
        if let Some(plan) = shared.plan.get() {
            plan.acks.record(now, &self.ack_ns, errors);
            plan.deliveries.record(now, &self.delivery_ns, 0);
            plan.same_node.record(now, &self.same_ns, 0);
            plan.cross_node.record(now, &self.cross_ns, 0);
            if shared.layout.stalled > 0 {
                let split = if shared.layout.room_has_stalled(self.room) {
                    &plan.with_stalled
                } else {
                    &plan.without_stalled
                };
                split.record(now, &self.delivery_ns, 0);
            }
            if acked > 0 {
                let fan_out = plan.readers[self.room].saturating_sub(1);
                shared.expected.fetch_add(acked * fan_out, Ordering::AcqRel);
            }
        }
        shared.live.add(acked, errors);
        self.out.errors += errors;
        if !self.delivery_ns.is_empty() {
            shared
                .delivered
                .fetch_add(self.delivery_ns.len() as u64, Ordering::AcqRel);
        }
        self.ack_ns.clear();
        self.delivery_ns.clear();
        self.same_ns.clear();
        self.cross_ns.clear();
        self.acked_now = 0;
        self.errors_now = 0;
    }

    /// Appends the next SEND to `wbuf`; its latencies count from `from`.
    fn put_send(&mut self, wbuf: &mut Vec<u8>, from: Instant, deadline: Instant) {
        let shared = &self.shared;
        let before = wbuf.len();
        wbuf.extend_from_slice(if shared.irc { b"PRIVMSG " } else { b"SEND " });
        wbuf.extend_from_slice(shared.room_names[self.room].as_bytes());
        wbuf.extend_from_slice(if shared.irc { b" :" } else { b" " });
        let text = wbuf.len();
        let t_us = from.saturating_duration_since(shared.epoch).as_micros() as u64;
        let _ = write!(
            wbuf,
            "{}.{}.{}.{t_us}.",
            shared.users.prefix(),
            self.index,
            self.seq
        );
        while wbuf.len() - text < shared.payload {
            wbuf.push(b'x');
        }
        wbuf.extend_from_slice(b"\r\n");
        self.out.bytes_out += (wbuf.len() - before) as u64;
        if shared.irc {
            // Nothing will answer it: sent is as acknowledged as it gets.
            let id = irc::id(self.index as u32, self.seq);
            self.out.acks.push((self.seq, id));
            self.acked_now += 1;
            self.ack_ns.push(1);
        } else {
            self.in_flight.push_back((from, self.seq));
        }
        self.seq += 1;
        self.out.sent += 1;
        self.out.sent_in_time += u64::from(from < deadline);
    }
}

struct Member {
    conn: Conn,
    wbuf: Vec<u8>,
    st: State,
}

impl Member {
    /// Reads once more into the read buffer; an error once the connection ended.
    async fn read(&mut self) -> Result<(), String> {
        match self.conn.rbuf.fill(&mut self.conn.stream).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.st.out.bytes_in += n as u64;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Handles every complete line read: `ROOM` lines, and replies to our SENDs.
    fn on_lines(&mut self) -> Result<(), String> {
        if self.st.shared.irc {
            return self.on_irc_lines();
        }
        let now = Instant::now();
        while let Some(range) = self.conn.rbuf.line_range() {
            let line = &self.conn.rbuf.bytes()[range];
            if let Some(rest) = line.strip_prefix(b"ROOM ") {
                self.st.on_room(rest, now);
            } else if line.starts_with(b"OK") || line.starts_with(b"ERR") {
                self.st.on_reply(line, now)?;
            }
            // Anything else (a BYE) is left to the end of the stream that follows it.
        }
        self.st.record(now);
        Ok(())
    }

    /// Handles every complete IRC line read: PRIVMSGs to the room, PINGs (answered), and
    /// error numerics (counted as errors).
    fn on_irc_lines(&mut self) -> Result<(), String> {
        let now = Instant::now();
        while let Some(range) = self.conn.rbuf.line_range() {
            let line = &self.conn.rbuf.bytes()[range];
            let (from, command, rest) = irc::parts(line);
            match command {
                b"PRIVMSG" => self.st.on_privmsg(from, rest, now),
                b"PING" => {
                    self.wbuf.extend_from_slice(b"PONG ");
                    self.wbuf.extend_from_slice(rest);
                    self.wbuf.extend_from_slice(b"\r\n");
                }
                [b'4', _, _] => {
                    self.st.errors_now += 1;
                    self.st
                        .out
                        .error_example
                        .get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
                }
                b"ERROR" => return Err(String::from_utf8_lossy(line).into_owned()),
                _ => {}
            }
        }
        self.st.record(now);
        Ok(())
    }

    /// JOINs the member's room: `Ok` once joined (IRC: at the end of its names, `366`).
    async fn join(&mut self) -> Result<(), String> {
        let irc = self.st.shared.irc;
        let mut line = b"JOIN ".to_vec();
        line.extend_from_slice(self.st.shared.room_names[self.st.room].as_bytes());
        line.extend_from_slice(b"\r\n");
        self.conn.flush(&mut line).await?;
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let stop = self.st.shared.stop.clone();
        loop {
            while let Some(range) = self.conn.rbuf.line_range() {
                let line = &self.conn.rbuf.bytes()[range];
                let refused = || Err(format!("JOIN: {}", String::from_utf8_lossy(line)));
                if irc {
                    match irc::parts(line).1 {
                        b"366" => return Ok(()),
                        b"ERROR" | [b'4', _, _] => return refused(),
                        _ => {}
                    }
                } else if let Some(rest) = line.strip_prefix(b"ROOM ") {
                    self.st.on_room(rest, Instant::now());
                } else if line.starts_with(b"OK") {
                    return Ok(());
                } else if line.starts_with(b"ERR") {
                    return refused();
                }
            }
            tokio::select! {
                read = self.read() => read?,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err("JOIN: no reply in time".into());
                }
                _ = stop.cancelled() => return Err("JOIN: stopped".into()),
            }
        }
    }

    /// Reads (and keeps reading) until the timed phase starts.
    async fn wait_for_start(&mut self) -> Result<(), String> {
        let mut started = self.st.shared.started.clone();
        loop {
            self.on_lines()?;
            if *started.borrow_and_update() {
                return Ok(());
            }
            tokio::select! {
                read = self.read() => read?,
                _ = started.changed() => {}
            }
        }
    }

    /// A stalled member: reads nothing until `finished`, then whether the server closed the
    /// connection meanwhile (reading what it had sent, up to `wait`).
    async fn stall(&mut self, finished: CancellationToken, wait: Duration) {
        finished.cancelled().await;
        let deadline = Instant::now() + wait;
        loop {
            let read = tokio::time::timeout_at(deadline.into(), self.conn.rbuf.fill(&mut self.conn.stream));
            match read.await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.st.out.kicked = true;
                    return;
                }
                Ok(Ok(n)) => {
                    self.st.out.bytes_in += n as u64;
                    while self.conn.rbuf.line_range().is_some() {}
                }
                Err(_) => return,
            }
        }
    }

    /// The timed phase of a reading member (a sender too, if it is one).
    async fn run(&mut self) -> Result<(), String> {
        let shared = self.st.shared.clone();
        let plan = shared.plan.get().expect("set before the start");
        let senders = plan.senders.max(1);
        let mut sending = self.st.sender_pos.is_some();
        let pos = self.st.sender_pos.unwrap_or(0);
        let quota = plan
            .requests
            .filter(|_| plan.period.is_some())
            .map(|n| n / senders as u64 + u64::from((pos as u64) < n % senders as u64));
        let mut next_due = plan
            .period
            .map(|p| plan.start + p.mul_f64(pos as f64 / senders as f64));
        let mut give_up = plan.deadline + shared.drain;
        let mut stopped = shared.stop.is_cancelled();
        let mut linger_until = None;
        loop {
            let now = Instant::now();
            if sending && (stopped || now >= plan.deadline) {
                sending = false;
                self.st.out.window.stop_issuing(now.min(plan.deadline));
            }
            match (plan.period, next_due.as_mut()) {
                (Some(p), Some(due)) => {
                    while sending
                        && *due <= now
                        && *due < plan.deadline
                        && quota.is_none_or(|q| u64::from(self.st.seq) < q)
                        && self.st.in_flight.len() < MAX_IN_FLIGHT
                    {
                        let at = *due;
                        self.st.put_send(&mut self.wbuf, at, plan.deadline);
                        *due += p;
                    }
                    if sending
                        && (*due >= plan.deadline || quota.is_some_and(|q| u64::from(self.st.seq) >= q))
                    {
                        sending = false;
                        self.st.out.window.stop_issuing(plan.deadline);
                    }
                }
                _ => {
                    // The closed loop: one SEND in flight per sender.
                    if sending && self.st.in_flight.is_empty() {
                        let spent = plan.budget.as_ref().is_some_and(|b| {
                            b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                                .is_err()
                        });
                        if spent {
                            sending = false;
                            self.st.out.window.stop_issuing(now);
                        } else {
                            self.st.put_send(&mut self.wbuf, now, plan.deadline);
                        }
                    }
                }
            }
            self.conn.flush(&mut self.wbuf).await?;
            if shared.irc {
                // What was just written counts as acknowledged now, whether or not anything
                // comes to read.
                self.st.record(Instant::now());
            }
            if !sending && self.st.in_flight.is_empty() {
                self.st.finish_sending();
            }
            let now = Instant::now();
            if linger_until.is_none() && self.st.done_sending && shared.all_delivered(plan) {
                linger_until = Some(now + LINGER);
            }
            if linger_until.is_some_and(|t| now >= t) || now >= give_up {
                break;
            }
            let wake = match next_due {
                Some(due) if sending && self.st.in_flight.len() < MAX_IN_FLIGHT => due,
                _ if self.st.done_sending => now + POLL,
                _ => give_up,
            };
            tokio::select! {
                read = self.read() => {
                    read?;
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
}

pub async fn run(args: &RoomsArgs, ctx: &Ctx) -> anyhow::Result<Measured> {
    let layout = Layout::of(args)?;
    if ctx.common.part.is_some() {
        anyhow::bail!("rooms runs in one process: leave out --procs (--threads uses more cores)");
    }
    let users = Arc::new(Users::of_run(args.user_prefix.as_deref(), &ctx.run_id)?);
    let total = layout.total();
    let mut m = Measured::default();
    ctx.check_open_files(total, &mut m.warnings);
    let mut setup = ctx.setup(0..total, total);
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

    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        room_names: (0..layout.rooms)
            .map(|r| format!("#{}.r{r}", users.prefix()))
            .collect(),
        users,
        layout,
        nodes: ctx.targets.len().max(1),
        epoch: ctx.epoch,
        drain: ctx.drain(),
        payload: args.payload,
        irc,
        plan: OnceLock::new(),
        started: start_rx,
        live: ctx.live.clone(),
        stop: ctx.stop.clone(),
        expected: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        done_sending: AtomicUsize::new(0),
    });

    // Join: every member at once, each reporting whether it joined (and, if it sends, its
    // place among the senders once all have).
    ctx.live.set_phase("joining", conns.len() as u64, None);
    let finished = CancellationToken::new();
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, bool)>();
    let (pos_tx, mut tasks) = (
        Arc::new(std::sync::Mutex::new(HashMap::new())),
        tokio::task::JoinSet::new(),
    );
    let n = conns.len();
    for conn in conns {
        let i = conn.index;
        let mut member = Member {
            wbuf: Vec::with_capacity(4096),
            st: State {
                shared: shared.clone(),
                index: i,
                room: layout.room_of(i),
                stalled: layout.is_stalled(i),
                sender_pos: None,
                node: conn.node,
                out: Record {
                    index: i as u32,
                    ..Record::default()
                },
                last_id: 0,
                in_flight: VecDeque::new(),
                seq: 0,
                ack_ns: Vec::with_capacity(64),
                delivery_ns: Vec::with_capacity(64),
                same_ns: Vec::with_capacity(64),
                cross_ns: Vec::with_capacity(64),
                acked_now: 0,
                errors_now: 0,
                done_sending: true,
                last_seq: HashMap::new(),
            },
            conn,
        };
        let (joined_tx, positions, finished, wait) = (
            joined_tx.clone(),
            pos_tx.clone(),
            finished.clone(),
            ctx.drain().max(Duration::from_secs(1)),
        );
        tasks.spawn(async move {
            let joined = member.join().await;
            member.st.out.joined = joined.is_ok();
            // A JOIN a stop signal cut short is not a failed one.
            member.st.out.join_error = joined.err().filter(|_| !member.st.shared.stop.is_cancelled());
            let _ = joined_tx.send((member.st.index, member.st.out.joined));
            drop(joined_tx);
            if member.st.out.joined {
                if member.st.stalled {
                    member.stall(finished, wait).await;
                } else {
                    let result = member.wait_for_start().await;
                    member.st.sender_pos = positions
                        .lock()
                        .expect("no panics while held")
                        .get(&member.st.index)
                        .copied();
                    member.st.done_sending = member.st.sender_pos.is_none();
                    let result = match result {
                        Ok(()) => member.run().await,
                        Err(e) => Err(e),
                    };
                    // Never leave the others waiting for a sender that broke off.
                    member.st.finish_sending();
                    member.st.out.broken = result.err();
                }
            }
            member.st.out.unanswered = member.st.in_flight.len() as u64;
            member.st.shared.live.closed();
            member.st.out
        });
    }
    drop(joined_tx);
    let mut joined = Vec::with_capacity(n);
    while let Some((i, ok)) = joined_rx.recv().await {
        ctx.live.add(u64::from(ok), u64::from(!ok));
        if ok {
            joined.push(i);
        }
    }
    joined.sort_unstable();
    let mut readers = vec![0u64; layout.rooms];
    let mut senders = 0;
    {
        let mut positions = pos_tx.lock().expect("no panics while held");
        for &i in &joined {
            if !layout.is_stalled(i) {
                readers[layout.room_of(i)] += 1;
            }
            if layout.is_sender(i) {
                positions.insert(i, senders);
                senders += 1;
            }
        }
    }
    let rate = args.timing.rate.filter(|r| *r > 0.0);
    let duration = args.timing.duration();
    let start = Instant::now();
    ctx.live.set_phase(
        "sending",
        args.timing
            .requests
            .or(rate.map(|r| (r * duration.as_secs_f64()) as u64))
            .unwrap_or(0),
        Some(start + duration),
    );
    let series = || Series::new(ctx.epoch, start);
    let plan = Plan {
        start,
        deadline: start + duration,
        period: rate.map(|r| Duration::from_secs_f64(senders.max(1) as f64 / r)),
        requests: args.timing.requests,
        budget: match (rate, args.timing.requests) {
            (None, Some(n)) => Some(AtomicU64::new(n)),
            _ => None,
        },
        senders,
        readers,
        acks: series(),
        deliveries: series(),
        same_node: series(),
        cross_node: series(),
        with_stalled: series(),
        without_stalled: series(),
    };
    let _ = shared.plan.set(plan);
    let cpu = || -> Option<f64> {
        let pids = &ctx.common.server_pid;
        (!pids.is_empty())
            .then(|| pids.iter().map(|&p| crate::net::cpu_seconds(p).ok()).sum())
            .flatten()
    };
    let cpu_at_start = cpu();
    let _ = start_tx.send(true);

    // The readers end by themselves (everything delivered, or the drain is over); then the
    // stalled members look whether they were disconnected.
    let mut records: Vec<Record> = Vec::with_capacity(n);
    let stalled_joined = joined.iter().filter(|&&i| layout.is_stalled(i)).count();
    let mut others_done = 0;
    loop {
        if others_done + stalled_joined >= n {
            finished.cancel();
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let record = done.expect("member tasks do not panic");
        others_done += usize::from(!(record.joined && layout.is_stalled(record.index as usize)));
        records.push(record);
    }
    let server_cpu_s = cpu_at_start.zip(cpu()).map(|(a, b)| b - a);
    ctx.live.set_phase("checking", 0, None);
    let shared = Arc::into_inner(shared).expect("every member task has finished");
    let plan = shared.plan.into_inner().expect("set before the start");
    records.sort_by_key(|r| r.index);

    let issued_until = records
        .iter()
        .filter(|r| layout.is_sender(r.index as usize) && r.joined)
        .map(|r| r.window.until.unwrap_or(plan.deadline))
        .max()
        .unwrap_or(start);
    let last = records
        .iter()
        .filter_map(|r| r.last_event)
        .max()
        .unwrap_or(start)
        .max(issued_until);
    let since = |t: Instant| t.saturating_duration_since(ctx.epoch).as_secs_f64();
    let acks = plan.acks.snapshot_until(issued_until);
    let mut run = RunRaw {
        what: if irc { "PRIVMSGs written" } else { "acked SENDs" }.into(),
        started: since(start),
        ended: since(issued_until),
        drained: since(last),
        requested_rate: rate,
        ok: acks.ok,
        errors: acks.errors,
        ..RunRaw::default()
    };
    let (mut delivery, mut rooms) = check(&layout, &records);
    delivery.all = Some(plan.deliveries.snapshot_until(issued_until));
    delivery.same_node = Some(plan.same_node.snapshot_until(issued_until));
    delivery.cross_node = Some(plan.cross_node.snapshot_until(issued_until));
    if layout.stalled > 0 {
        rooms.with_stalled = Some(plan.with_stalled.snapshot_until(issued_until));
        rooms.without_stalled = Some(plan.without_stalled.snapshot_until(issued_until));
    }
    rooms.started = since(start);
    rooms.last_event = since(last);
    rooms.server_cpu_s = server_cpu_s;
    m.delivery = Some(delivery);
    m.rooms = Some(rooms);
    let mut answered_in_time = 0;
    for r in records.iter().filter(|r| !layout.is_stalled(r.index as usize)) {
        answered_in_time += r.window.answered;
        run.add_conn(crate::report::ConnRun {
            sent: r.sent,
            sent_in_time: r.sent_in_time,
            unanswered: r.unanswered,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            broken: r.broken.as_ref(),
            error_example: r.error_example.as_ref(),
        });
    }
    run.finish_ok_err(acks, answered_in_time);
    m.run = Some(run);
    Ok(m)
}

/// The room checks over every member's record: each acked message must reach every other
/// reading member of its room exactly once (never its sender, never another room), and each
/// member must see its room's ids in increasing order; reading members must stay connected,
/// stalled ones must be disconnected. Latencies are left to the caller.
pub fn check(layout: &Layout, records: &[Record]) -> (DeliveryRaw, RoomsRaw) {
    let mut d = DeliveryRaw::default();
    let mut rooms = RoomsRaw {
        rooms: layout.rooms as u64,
        members: layout.total() as u64,
        senders: (layout.rooms * layout.senders) as u64,
        stalled: layout.stalled as u64,
        ..RoomsRaw::default()
    };
    let mut readers = vec![0u64; layout.rooms];
    for r in records.iter().filter(|r| r.joined) {
        if !layout.is_stalled(r.index as usize) {
            readers[layout.room_of(r.index as usize)] += 1;
        }
    }
    /// An acked message: its room, sender, and the readers it reached.
    struct Acked {
        room: usize,
        sender: u32,
        reached: u64,
    }
    let mut acked: HashMap<u64, Acked> = HashMap::new();
    for r in records {
        d.sent += r.sent;
        d.unanswered += r.unanswered;
        d.misrouted += r.foreign;
        rooms.foreign += r.foreign;
        rooms.out_of_order += r.out_of_order;
        if r.joined {
            rooms.joined += 1;
        } else if let Some(e) = &r.join_error {
            rooms.join_failed += 1;
            rooms.join_error_example.get_or_insert_with(|| e.clone());
        }
        let i = r.index as usize;
        if layout.is_stalled(i) {
            if r.joined {
                if r.kicked {
                    rooms.stalled_kicked += 1;
                } else {
                    rooms.stalled_not_kicked += 1;
                }
            }
        } else if let Some(b) = &r.broken {
            rooms.disconnected += 1;
            rooms.disconnected_example.get_or_insert_with(|| b.clone());
        }
        for &(_seq, id) in &r.acks {
            d.acked += 1;
            let room = layout.room_of(i);
            rooms.expected += readers[room].saturating_sub(1);
            match acked.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(Acked {
                        room,
                        sender: r.index,
                        reached: 0,
                    });
                }
                // Two acks with one id: one of the two messages cannot be told apart.
                Entry::Occupied(_) => d.duplicates += 1,
            }
        }
    }
    for r in records.iter().filter(|r| !layout.is_stalled(r.index as usize)) {
        let mut got = r.deliveries.clone();
        got.sort_unstable();
        let mut previous = None;
        for (id, sender) in got {
            d.delivered += 1;
            if previous == Some(id) {
                d.duplicates += 1;
                continue;
            }
            previous = Some(id);
            match acked.get_mut(&id) {
                None => d.unacked_delivered += 1,
                Some(a) if a.sender == r.index => {
                    d.misrouted += 1;
                    rooms.to_sender += 1;
                }
                Some(a) if a.sender != sender || a.room != layout.room_of(r.index as usize) => {
                    d.misrouted += 1
                }
                Some(a) => a.reached += 1,
            }
        }
    }
    for a in acked.values() {
        d.lost += readers[a.room].saturating_sub(1).saturating_sub(a.reached);
    }
    (d, rooms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(rooms: usize, members: usize, senders: usize, stalled: usize) -> Layout {
        Layout {
            rooms,
            members,
            senders,
            stalled,
        }
    }

    #[test]
    fn stalled_members_are_the_rooms_last_non_senders() {
        let l = layout(3, 4, 1, 4);
        let stalled: Vec<usize> = (0..l.total()).filter(|&i| l.is_stalled(i)).collect();
        // Each room's last slot, then room 0's second to last.
        assert_eq!(stalled, [2, 3, 7, 11]);
        assert!((0..l.total()).all(|i| !(l.is_stalled(i) && l.is_sender(i))));
        assert!(l.room_has_stalled(0) && l.room_has_stalled(2));
        assert!(!layout(3, 4, 1, 1).room_has_stalled(1));
        assert!(Layout::new(3, 4, 2, 6).is_ok());
        assert!(Layout::new(3, 4, 2, 7).is_err(), "only 2 per room do not send");
        assert!(Layout::new(3, 4, 5, 0).is_err(), "more senders than members");
        assert!(Layout::new(0, 4, 1, 0).is_err());
        assert!(Layout::new(1000, 1000, 1, 0).is_err(), "beyond MAX_MEMBERS");
    }

    #[test]
    fn room_lines_are_recognised_by_prefix_and_sender() {
        let line = b"17 #lab.r0 lab_3 2026-11-24T17:05:12.481Z lab.3.42.123456.xxxxx";
        let l = parse_room_line(line, b"lab").unwrap();
        assert_eq!(
            (l.id, l.room, l.tag),
            (17, &b"#lab.r0"[..], Some((3, 42, 123456)))
        );
        let event = b"18 #lab.r0 * 2026-11-24T17:05:12.481Z lab_4 joined";
        let l = parse_room_line(event, b"lab").unwrap();
        assert_eq!((l.id, l.tag), (18, None), "an event counts for order only");
        let forged = b"19 #lab.r0 lab_4 2026-11-24T17:05:12.481Z lab.3.42.123456.xxxxx";
        assert_eq!(parse_room_line(forged, b"lab").unwrap().tag, None);
        assert!(parse_room_line(b"x #lab.r0 lab_3 t text", b"lab").is_none());
    }

    /// Two rooms of three, one sender each: member 0 sends ids 10 and 11 to room 0, member 3
    /// sends id 20 to room 1.
    fn records() -> Vec<Record> {
        let rec = |index, acks: Vec<(u32, u64)>, deliveries: Vec<(u64, u32)>| Record {
            index,
            joined: true,
            sent: acks.len() as u64,
            acks,
            deliveries,
            ..Record::default()
        };
        vec![
            rec(0, vec![(0, 10), (1, 11)], vec![]),
            rec(1, vec![], vec![(10, 0), (11, 0)]),
            rec(2, vec![], vec![(10, 0), (11, 0)]),
            rec(3, vec![(0, 20)], vec![]),
            rec(4, vec![], vec![(20, 3)]),
            rec(5, vec![], vec![(20, 3)]),
        ]
    }

    #[test]
    fn every_acked_message_to_every_other_member_passes() {
        let (d, r) = check(&layout(2, 3, 1, 0), &records());
        assert_eq!((d.acked, d.delivered, r.expected), (3, 6, 6));
        assert_eq!(
            (d.lost, d.duplicates, d.misrouted, d.unacked_delivered),
            (0, 0, 0, 0)
        );
        assert_eq!((r.joined, r.disconnected), (6, 0));
    }

    #[test]
    fn a_lost_a_duplicated_and_a_misrouted_delivery_are_counted() {
        let mut recs = records();
        recs[2].deliveries.retain(|&(id, _)| id != 11); // lost
        recs[4].deliveries.push((20, 3)); // duplicated
        recs[5].deliveries.push((10, 0)); // another room's
        let (d, _) = check(&layout(2, 3, 1, 0), &recs);
        assert_eq!((d.lost, d.duplicates, d.misrouted), (1, 1, 1));
        // And the verdict fails on them.
        let report = judge(d, RoomsRaw::default());
        assert!(!report.passed);
        assert!(
            report.problems[0].starts_with("exactly once: 1 lost, 1 duplicates, 1 misrouted"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn the_sender_hearing_itself_is_misrouted() {
        let mut recs = records();
        recs[0].deliveries.push((10, 0));
        let (d, r) = check(&layout(2, 3, 1, 0), &recs);
        assert_eq!((d.misrouted, r.to_sender, r.foreign), (1, 1, 0));
    }

    #[test]
    fn stalled_members_are_left_out_and_must_be_kicked() {
        let l = layout(2, 3, 1, 1);
        let mut recs = records();
        // Member 2 (room 0's last) never read: room 0 has one reader besides its sender.
        recs[2].deliveries.clear();
        let (d, r) = check(&l, &recs);
        assert_eq!((d.lost, r.expected), (0, 4), "{d:?}");
        assert_eq!((r.stalled_kicked, r.stalled_not_kicked), (0, 1));
        let report = judge(d.clone(), r.clone());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("stalled members disconnected")),
            "{:?}",
            report.problems
        );
        recs[2].kicked = true;
        let (d, r) = check(&l, &recs);
        assert_eq!(r.stalled_kicked, 1);
        assert!(judge(d, r).passed);
    }

    #[test]
    fn out_of_order_and_disconnected_members_fail() {
        let mut recs = records();
        recs[1].out_of_order = 1;
        recs[4].broken = Some("the server closed the connection".into());
        let (d, r) = check(&layout(2, 3, 1, 0), &recs);
        assert_eq!((r.out_of_order, r.disconnected), (1, 1));
        let report = judge(d, r);
        for rule in ["in order", "members connected"] {
            assert!(
                report.verdict.rules.iter().any(|x| x.rule == rule && !x.passed),
                "{rule}: {:?}",
                report.verdict
            );
        }
    }

    /// The report of a run that measured `d` and `r` (and acked what `d` says, quickly).
    fn judge(d: DeliveryRaw, mut r: RoomsRaw) -> crate::report::Report {
        let mut m = Measured::default();
        (m.connect.attempted, m.connect.opened, m.connect.auth) = (6, 6, true);
        let mut series = Data::default();
        series.all.0.record(1_000_000).unwrap();
        series.ok = d.acked;
        m.run = Some(RunRaw {
            what: "acked SENDs".into(),
            started: 1.0,
            ended: 2.0,
            drained: 2.0,
            sent: d.acked,
            ok: d.acked,
            series,
            ..RunRaw::default()
        });
        if r.members == 0 {
            (r.members, r.joined) = (6, 6);
        }
        m.delivery = Some(d);
        m.rooms = Some(r);
        crate::report::Report::build(
            m,
            crate::meta::Meta::now(0, 1, 1024),
            "rooms",
            vec!["127.0.0.1:1".into()],
            serde_json::json!({}),
            (Vec::new(), Vec::new()),
            &crate::verdict::Limits {
                max_errors: 0,
                max_error_rate: None,
                min_rate_ratio: 0.95,
                max_p50_ms: None,
                max_p99_ms: None,
            },
        )
    }
}
