//! What the server counts, for `/metrics` (the admin listener) and the live page. Every handle
//! is built once, in [`METRICS`]; the hot paths hold it and add to it (one relaxed atomic add),
//! and never look a metric up by name or label. Counts that the server keeps anyway (open
//! connections and their bytes, the hash queue) are read when scraped instead of counted
//! twice; so is what many threads would otherwise update together (the bytes queued for
//! sessions, which the writer adds to and every session takes from).
//!
//! The names are `chatd_*`, with the unit in the name; a user's or a room's name is never a
//! label. The figures are the process's: one server per process, as `chatd serve` runs.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DoorLabel {
    pub door: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub door: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// How a login ended, as `chatd_logins_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Ok,
    BadCredentials,
    RateLimited,
    Busy,
}

/// Every metric of the server, built once.
pub struct Metrics {
    pub registry: Registry,
    // Read from the table of connections when scraped.
    pub connections: Family<DoorLabel, Gauge>,
    pub accepted: Family<DoorLabel, Counter>,
    pub bytes_received: Family<DoorLabel, Counter>,
    pub bytes_sent: Family<DoorLabel, Counter>,
    refused: Family<RefusedLabel, Counter>,
    tls_failed: Family<DoorLabel, Counter>,
    // Messages.
    pub committed_direct: Counter,
    pub committed_room: Counter,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub delivery_seconds: Histogram,
    pub pushes: Counter,
    pub kicks: Counter,
    pub push_queue_bytes: Gauge,
    // Logins.
    logins: [Counter; 4],
    pub hash_queue: Gauge,
    // Store and cluster.
    pub store_errors: Counter,
    pub store_up: Gauge,
    pub relay_lag_seconds: Histogram,
    pub relay_catchups: Counter,
    // HTTP.
    pub http_requests: Family<RouteLabel, Counter>,
    // The process.
    pub resident_memory: Gauge,
    pub uptime: Gauge,
    started: std::time::Instant,
}

/// The server's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let connections = Family::<DoorLabel, Gauge>::default();
        r.register(
            "chatd_connections",
            "Open connections, per door",
            connections.clone(),
        );
        let accepted = Family::<DoorLabel, Counter>::default();
        r.register(
            "chatd_connections_accepted",
            "Connections accepted, per door",
            accepted.clone(),
        );
        let refused = Family::<RefusedLabel, Counter>::default();
        r.register(
            "chatd_connections_refused",
            "Connections refused, per door and reason (server_full, address_full)",
            refused.clone(),
        );
        let tls_failed = Family::<DoorLabel, Counter>::default();
        r.register(
            "chatd_tls_handshakes_failed",
            "TLS handshakes that failed or timed out, per door",
            tls_failed.clone(),
        );
        let bytes_received = Family::<DoorLabel, Counter>::default();
        r.register(
            "chatd_received_bytes",
            "Bytes received from clients, per door",
            bytes_received.clone(),
        );
        let bytes_sent = Family::<DoorLabel, Counter>::default();
        r.register(
            "chatd_sent_bytes",
            "Bytes sent to clients, per door",
            bytes_sent.clone(),
        );

        let committed = Family::<KindLabel, Counter>::default();
        r.register(
            "chatd_messages_committed",
            "Messages committed to the store (direct, room)",
            committed.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        r.register(
            "chatd_commit_batch_size",
            "Writes per group commit of the message writer",
            batch_size.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_125, 2.0, 14));
        r.register(
            "chatd_commit_seconds",
            "Time one group commit takes",
            commit_seconds.clone(),
        );
        let delivery_seconds = Histogram::new(exponential_buckets(0.000_125, 2.0, 16));
        r.register(
            "chatd_delivery_seconds",
            "From a message's acceptance (SEND) to its hand-over to the recipients' sessions",
            delivery_seconds.clone(),
        );
        let pushes = Counter::default();
        r.register("chatd_pushes", "Live messages handed to sessions", pushes.clone());
        let kicks = Counter::default();
        r.register(
            "chatd_slow_reader_kicks",
            "Sessions ended because their client stopped reading its live messages",
            kicks.clone(),
        );
        let push_queue_bytes = Gauge::default();
        r.register(
            "chatd_push_queue_bytes",
            "Bytes of live messages queued for sessions, not yet written",
            push_queue_bytes.clone(),
        );

        let logins = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "chatd_logins",
            "Logins by outcome (ok, bad_credentials, rate_limited, busy)",
            logins.clone(),
        );
        let hash_queue = Gauge::default();
        r.register(
            "chatd_hash_queue_depth",
            "Password hashes waiting or running",
            hash_queue.clone(),
        );

        let store_errors = Counter::default();
        r.register(
            "chatd_store_errors",
            "Store operations that failed",
            store_errors.clone(),
        );
        let store_up = Gauge::default();
        r.register(
            "chatd_store_up",
            "0 from a store operation that failed as unavailable until the next commit succeeds, 1 otherwise",
            store_up.clone(),
        );
        store_up.set(1);
        let relay_lag_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 14));
        r.register(
            "chatd_relay_lag_seconds",
            "Cluster: from another node's commit to this node's delivery",
            relay_lag_seconds.clone(),
        );
        let relay_catchups = Counter::default();
        r.register(
            "chatd_relay_catchups",
            "Cluster: catch-ups after the LISTEN connection was lost",
            relay_catchups.clone(),
        );

        let http_requests = Family::<RouteLabel, Counter>::default();
        r.register(
            "chatd_http_requests",
            "HTTP requests, per method, route and status",
            http_requests.clone(),
        );

        let resident_memory = Gauge::default();
        r.register(
            "chatd_process_resident_memory_bytes",
            "Resident memory of the process",
            resident_memory.clone(),
        );
        let uptime = Gauge::default();
        r.register(
            "chatd_uptime_seconds",
            "Seconds since the process started",
            uptime.clone(),
        );

        let kind = |kind| committed.get_or_create(&KindLabel { kind }).clone();
        let outcome = |outcome| logins.get_or_create(&OutcomeLabel { outcome }).clone();
        Metrics {
            registry: r,
            connections,
            accepted,
            bytes_received,
            bytes_sent,
            refused,
            tls_failed,
            committed_direct: kind("direct"),
            committed_room: kind("room"),
            batch_size,
            commit_seconds,
            delivery_seconds,
            pushes,
            kicks,
            push_queue_bytes,
            logins: [
                outcome("ok"),
                outcome("bad_credentials"),
                outcome("rate_limited"),
                outcome("busy"),
            ],
            hash_queue,
            store_errors,
            store_up,
            relay_lag_seconds,
            relay_catchups,
            http_requests,
            resident_memory,
            uptime,
            started: std::time::Instant::now(),
        }
    }

    pub fn login(&self, outcome: Login) {
        self.logins[outcome as usize].inc();
    }

    /// Logins so far: ok, bad credentials, rate-limited, busy.
    pub fn logins(&self) -> [u64; 4] {
        self.logins.each_ref().map(Counter::get)
    }

    /// A connection was refused (rare: looked up by its labels).
    pub fn refused(&self, door: &'static str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabel { door, reason }).inc();
    }

    /// A TLS handshake failed or timed out (rare: looked up by its label).
    pub fn tls_handshake_failed(&self, door: &'static str) {
        self.tls_failed.get_or_create(&DoorLabel { door }).inc();
    }

    /// A store operation failed; with `outage`, because the store is unavailable.
    pub fn store_failed(&self, outage: bool) {
        self.store_errors.inc();
        if outage {
            self.store_up.set(0);
        }
    }

    /// A commit succeeded: the store is up (written only when it was down).
    pub fn store_ok(&self) {
        if self.store_up.get() != 1 {
            self.store_up.set(1);
        }
    }

    /// How long ago `created_at_us` (microseconds since the epoch) was, if it was.
    pub fn since_micros(created_at_us: i64) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_micros() as i64;
        u64::try_from(now - created_at_us).ok().map(Duration::from_micros)
    }

    /// Samples what is read rather than counted: memory and uptime.
    pub fn sample_process(&self) {
        self.uptime.set(self.started.elapsed().as_secs() as i64);
        if let Some(rss) = crate::memory::resident_bytes() {
            self.resident_memory.set(rss as i64);
        }
    }
}

/// Sets a counter that mirrors a total kept elsewhere (it only grows).
pub fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
