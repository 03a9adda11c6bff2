//! Server configuration: every `chatd serve` flag, each also read from `CHATD_<FLAG>`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;

/// How `chatd serve` is configured. Tests build one with [`Config::for_tests`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to bind (`0.0.0.0` for every IPv4 interface, `::` for IPv6 as well).
    #[arg(
        long,
        env = "CHATD_BIND",
        default_value = "0.0.0.0",
        conflicts_with = "interface"
    )]
    pub bind: IpAddr,

    /// Bind the IPv4 address of this network interface (see `chatd interfaces`).
    #[arg(long, env = "CHATD_INTERFACE")]
    pub interface: Option<String>,

    /// Line-protocol TCP port (0 picks a free one).
    #[arg(long, env = "CHATD_PORT", default_value_t = 8000)]
    pub port: u16,

    /// HTTP facade port (JSON routes, live events, the chat page); 0 picks a free one.
    #[arg(long, env = "CHATD_HTTP_PORT", default_value_t = 5000)]
    pub http_port: u16,

    /// Do not serve HTTP.
    #[arg(long, env = "CHATD_NO_HTTP")]
    pub no_http: bool,

    /// Also serve RFC 862 echo on this TCP port (off unless given; 0 picks one).
    #[arg(long, env = "CHATD_ECHO_PORT")]
    pub echo_port: Option<u16>,

    /// Length of the kernel's pending-connection queue, passed to listen(2).
    #[arg(long, env = "CHATD_BACKLOG", default_value_t = 1024)]
    pub backlog: u32,

    /// Store URL: `sqlite://PATH`, `sqlite::memory:` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "CHATD_DB", default_value = "sqlite://chatd.db")]
    pub db: String,

    /// Most PostgreSQL connections this node opens (one more is kept for LISTEN).
    #[arg(long, env = "CHATD_DB_POOL", default_value_t = 8)]
    pub db_pool: u32,

    /// This node's name in logs, `/info` and presence (default: hostname:port).
    #[arg(long, env = "CHATD_NODE_ID")]
    pub node_id: Option<String>,

    /// Most connections served at once (line and echo together); further ones get
    /// `ERR SERVER_BUSY`. Default: what the open-files limit allows.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Close a connection that sent nothing for this many seconds (0 = never).
    #[arg(long, env = "CHATD_IDLE_TIMEOUT", default_value_t = 0)]
    pub idle_timeout: u64,

    /// Worker threads serving connections (default: one per core). On a machine shared with
    /// a load generator, fewer threads than cores avoids threads waking each other.
    #[arg(long, env = "CHATD_THREADS")]
    pub threads: Option<usize>,

    /// Longest accepted line in bytes; longer ones get `ERR LINE_TOO_LONG`.
    #[arg(long, env = "CHATD_MAX_LINE", default_value_t = 4096)]
    pub max_line: usize,

    /// Live messages queued for one session before it counts as too slow and is disconnected.
    #[arg(long, env = "CHATD_PUSH_QUEUE", default_value_t = 1024)]
    pub push_queue: usize,

    /// Failed AUTHs on one connection before it gets `ERR RATE_LIMITED`.
    #[arg(long, env = "CHATD_AUTH_FAILURES_PER_CONN", default_value_t = 5)]
    pub auth_failures_per_conn: u32,

    /// Failed AUTHs from one IP address within the lockout window before it gets `ERR RATE_LIMITED`.
    #[arg(long, env = "CHATD_AUTH_FAILURES_PER_ADDR", default_value_t = 20)]
    pub auth_failures_per_addr: u32,

    /// How long (seconds) a rate-limited connection or address waits before AUTH is tried again.
    #[arg(long, env = "CHATD_AUTH_LOCKOUT", default_value_t = 60)]
    pub auth_lockout: u64,
    /// FOR LOAD TESTS ONLY, never in production: hash passwords with a cheap argon2 cost
    /// (64 KiB, one pass) so that tens of thousands of test users log in quickly. Stored
    /// hashes are much easier to crack; the server says so loudly at start-up.
    #[arg(long, env = "CHATD_LOAD_TEST_HASHING")]
    pub load_test_hashing: bool,
}

impl Config {
    /// A configuration for tests: loopback, ephemeral ports, the given database.
    pub fn for_tests(db: impl Into<String>) -> Config {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            interface: None,
            port: 0,
            http_port: 0,
            no_http: false,
            echo_port: None,
            backlog: 1024,
            db: db.into(),
            db_pool: 8,
            node_id: None,
            max_connections: None,
            idle_timeout: 0,
            threads: None,
            max_line: 4096,
            push_queue: 1024,
            auth_failures_per_conn: 5,
            auth_failures_per_addr: 20,
            auth_lockout: 60,
            load_test_hashing: false,
        }
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }

    pub fn auth_lockout(&self) -> Duration {
        Duration::from_secs(self.auth_lockout)
    }
}

/// Whether `--load-test-hashing` is in force (set once at start-up).
static LOAD_TEST_HASHING: AtomicBool = AtomicBool::new(false);

/// Turns the cheap load-test password hashing on for this process.
pub fn set_load_test_hashing(on: bool) {
    LOAD_TEST_HASHING.store(on, Ordering::Relaxed);
}

/// The argon2 hasher for new password hashes: argon2's defaults (19 MiB, 2 passes), or with
/// `--load-test-hashing` 64 KiB and one pass. Verifying reads the cost from the stored hash.
pub fn password_hasher() -> argon2::Argon2<'static> {
    if LOAD_TEST_HASHING.load(Ordering::Relaxed) {
        let cheap = argon2::Params::new(64, 1, 1, None).expect("valid argon2 parameters");
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, cheap)
    } else {
        argon2::Argon2::default()
    }
}
