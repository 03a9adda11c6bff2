//! Server configuration: every `chatd serve` flag, each also read from `CHATD_<FLAG>`.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

/// The TLS doors' ports unless `--tls-port`, `--https-port`, `--irc-tls-port` say otherwise.
pub const DEFAULT_TLS_PORT: u16 = 8443;
pub const DEFAULT_HTTPS_PORT: u16 = 5443;
pub const DEFAULT_IRC_TLS_PORT: u16 = 6697;

/// Where the operator's listener is unless `--admin-addr` says otherwise.
pub const DEFAULT_ADMIN_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 9187);

/// The IRC door's port unless `--irc-port` says otherwise: IRC's registered port.
pub const DEFAULT_IRC_PORT: u16 = 6667;

/// How `chatd serve` is configured. Tests build one with [`Config::for_tests`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to bind (`0.0.0.0` for every IPv4 interface, `::` for IPv6 as well).
    #[arg(long, env = "CHATD_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Bind the IPv4 address of this network interface, by name (`lo`, `eth0`; see `chatd
    /// interfaces`) or by one of its addresses; only that address then answers.
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

    /// IRC port, for IRC clients (irssi, WeeChat, HexChat); 0 picks a free one. Default 6667;
    /// if the default is taken (another chatd on this machine), chatd serves without IRC and
    /// says so, whereas a port given here that cannot be bound stops the start.
    #[arg(long, env = "CHATD_IRC_PORT")]
    pub irc_port: Option<u16>,

    /// Do not serve IRC.
    #[arg(long, env = "CHATD_NO_IRC", conflicts_with = "irc_port")]
    pub no_irc: bool,

    /// The server's name as IRC clients see it (default: this machine's host name).
    #[arg(long, env = "CHATD_IRC_SERVER_NAME")]
    pub irc_server_name: Option<String>,

    /// A connection password every IRC client must send (`PASS`, the "server password" of
    /// a client's settings); accounts then log in by SASL or NickServ.
    #[arg(long, env = "CHATD_IRC_PASSWORD")]
    pub irc_password: Option<String>,

    /// Seconds an IRC client may be silent before it is sent a PING; silent as long again,
    /// it is disconnected.
    #[arg(long, env = "CHATD_IRC_PING_INTERVAL", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub irc_ping_interval: u64,

    /// Let IRC clients without an account in as guests: any free nick that is not an
    /// account's may connect, join public channels or make its own, and talk live. Nothing
    /// a guest says is kept, and a guest never acts as an account.
    #[arg(long, env = "CHATD_IRC_GUESTS")]
    pub irc_guests: bool,

    /// An account that may become an IRC operator with `OPER <account> <password>`
    /// (KILL, WALLOPS); repeat for several, or separate them with commas. The password is
    /// the account's own, checked with the same limits as every login.
    #[arg(long = "irc-oper", env = "CHATD_IRC_OPERS", value_delimiter = ',')]
    pub irc_opers: Vec<String>,

    /// Seconds an IRC client on an account's nick has to log in before it is renamed.
    #[arg(long, env = "CHATD_IRC_IDENTIFY_WITHIN", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub irc_identify_within: u64,

    /// Write the log to this file (appended to) instead of standard error; SIGHUP then reopens
    /// it (logrotate's postrotate) instead of stopping the server.
    #[arg(long, env = "CHATD_LOG_FILE")]
    pub log_file: Option<std::path::PathBuf>,

    /// Show every protocol line, in and out, on the console: the line protocol's (telnet
    /// commands decoded), HTTP's, IRC's and echo's. Passwords and tokens are always masked.
    #[arg(long, env = "CHATD_TRACE")]
    pub trace: bool,

    /// With `--trace`: only this user's connections, once logged in.
    #[arg(long, env = "CHATD_TRACE_USER", requires = "trace")]
    pub trace_user: Option<String>,

    /// With `--trace`: only connections from this address.
    #[arg(long, env = "CHATD_TRACE_ADDR", requires = "trace")]
    pub trace_addr: Option<std::net::IpAddr>,

    /// Where trace lines go (tests capture them).
    #[arg(skip)]
    pub trace_sink: crate::trace::Sink,

    /// The operator's listener (the teacher's live view `/admin`, `/metrics`). Default
    /// 127.0.0.1:9187, reachable from this machine only; if that port is taken (another
    /// chatd), chatd serves without it and says so. An address given here that cannot be
    /// bound stops the start; one that is not loopback needs `--admin-token`.
    #[arg(long, env = "CHATD_ADMIN_ADDR")]
    pub admin_addr: Option<std::net::SocketAddr>,

    /// Do not serve the operator's listener.
    #[arg(long, env = "CHATD_NO_ADMIN", conflicts_with = "admin_addr")]
    pub no_admin: bool,

    /// A secret every request to the operator's listener must carry, as
    /// `Authorization: Bearer <token>` (the page asks for it once). Required when
    /// `--admin-addr` is not a loopback address.
    #[arg(long, env = "CHATD_ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// Also serve the doors over TLS: the line protocol on `--tls-port`, HTTPS on
    /// `--https-port`, IRC on `--irc-tls-port`, beside the plain ones. Without `--tls-cert`,
    /// a self-signed certificate is made once, next to the database, and reused.
    #[arg(long, env = "CHATD_TLS")]
    pub tls: bool,

    /// With `--tls`: the line protocol's TLS port (default 8443; if the default is taken,
    /// chatd serves without it and says so).
    #[arg(long, env = "CHATD_TLS_PORT", requires = "tls")]
    pub tls_port: Option<u16>,

    /// With `--tls`: the HTTPS port (default 5443; if the default is taken, chatd serves
    /// without it and says so).
    #[arg(long, env = "CHATD_HTTPS_PORT", requires = "tls")]
    pub https_port: Option<u16>,

    /// With `--tls`: IRC's TLS port (default 6697, IRC's registered one; if the default is
    /// taken, chatd serves without it and says so).
    #[arg(long, env = "CHATD_IRC_TLS_PORT", requires = "tls")]
    pub irc_tls_port: Option<u16>,

    /// With `--tls`: the certificate (PEM, the chain in order) instead of a generated one.
    #[arg(long, env = "CHATD_TLS_CERT", requires_all = ["tls", "tls_key"])]
    pub tls_cert: Option<std::path::PathBuf>,

    /// With `--tls-cert`: its private key (PEM).
    #[arg(long, env = "CHATD_TLS_KEY", requires_all = ["tls", "tls_cert"])]
    pub tls_key: Option<std::path::PathBuf>,

    /// How long a TLS handshake may take (tests shorten it).
    #[arg(skip = crate::tls::HANDSHAKE_TIMEOUT)]
    pub tls_handshake_timeout: Duration,

    /// Also serve RFC 862 echo on this TCP port (off unless given; 0 picks one).
    #[arg(long, env = "CHATD_ECHO_PORT")]
    pub echo_port: Option<u16>,

    /// With `--echo-port`: a line sent to each echo client when it connects.
    #[arg(long, env = "CHATD_ECHO_GREETING", requires = "echo_port")]
    pub echo_greeting: Option<String>,

    /// With `--echo-port`: echo the first line (up to its line end), then close.
    #[arg(long, env = "CHATD_ECHO_ONCE", requires = "echo_port")]
    pub echo_once: bool,

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

    /// Most connections served at once (line, HTTP and echo together); further ones get
    /// `ERR SERVER_BUSY` (HTTP: 503). Default, and most: what the open-files limit allows.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most connections from one client address (an IPv6 /64) across every door. Default: 256
    /// for every address but loopback, which is not limited (a load test from the server's
    /// own machine); given, that many for every address, loopback too; 0: no limit.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// Classroom mode: `POST /` takes the `sender` and `GET /get_messages` the `username` of
    /// the request without any credentials, as the lab's client sends them. Anyone can then
    /// send as, and read the messages of, any user. Only for a class on a trusted network.
    #[arg(long, env = "CHATD_LAB")]
    pub lab: bool,

    /// A name this server is reached by, besides its addresses, `localhost` and its host name:
    /// HTTP requests for any other name (the `Host` header) get `421`, which stops web pages
    /// of other sites from reaching chatd through DNS rebinding. Repeat it, or separate names
    /// with commas.
    #[arg(long, env = "CHATD_ALLOWED_HOST", value_delimiter = ',', value_name = "NAME")]
    pub allowed_host: Vec<String>,

    /// Allow `--lab` on a PostgreSQL store (shared by several nodes), which it refuses otherwise.
    #[arg(long, env = "CHATD_LAB_ON_POSTGRES", requires = "lab")]
    pub lab_on_postgres: bool,

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

    /// Put telnet clients in character mode as they connect (`IAC WILL ECHO`, `IAC WILL SGA`):
    /// keys are sent as they are typed and chatd echoes them, so a message arriving never mixes
    /// with a half-typed line. For a class at telnet; every client receives these bytes, so
    /// leave it off where programs or `nc` connect.
    #[arg(long, env = "CHATD_TELNET_NEGOTIATE")]
    pub telnet_negotiate: bool,

    /// Disconnect a line client that accepts none of the server's bytes for this many seconds
    /// while a reply or a push is being written (one that reads slowly is never cut off).
    #[arg(long, env = "CHATD_WRITE_STALL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_stall: u64,

    /// Live messages queued for one session before it counts as too slow and is disconnected.
    #[arg(long, env = "CHATD_PUSH_QUEUE", default_value_t = 1024)]
    pub push_queue: usize,

    /// Bytes of live messages queued for one session before it counts as too slow.
    #[arg(long, env = "CHATD_PUSH_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub push_queue_bytes: usize,

    /// Live sessions (line connections logged in and `/events` streams) one user may have on
    /// this node; further ones get `SERVER_BUSY`.
    #[arg(long, env = "CHATD_MAX_SESSIONS_PER_USER", default_value_t = 64)]
    pub max_sessions_per_user: usize,

    /// Live HTTP bearer tokens one user may have; `/auth` beyond that ends the user's oldest
    /// token (and its event streams).
    #[arg(long, env = "CHATD_MAX_TOKENS_PER_USER", default_value_t = crate::chat::MAX_TOKENS_PER_USER as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens_per_user: u64,

    /// Members one room may have; JOIN beyond it gets `FORBIDDEN`.
    #[arg(long, env = "CHATD_MAX_ROOM_MEMBERS", default_value_t = crate::chat::rooms::DEFAULT_MAX_ROOM_MEMBERS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_room_members: u32,

    /// Rooms one user may be in; JOIN beyond it gets `FORBIDDEN`.
    #[arg(long, env = "CHATD_MAX_ROOMS_PER_USER", default_value_t = crate::chat::rooms::DEFAULT_MAX_ROOMS_PER_USER, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rooms_per_user: u32,

    /// Bytes of messages one user may send per second on this node, over both doors (each
    /// message counts its text plus 64); bursts of 4 s worth pass at once. Beyond it SEND gets
    /// `ERR RATE_LIMITED` (HTTP 429) with how long to wait. 0: no limit (for load tests).
    #[arg(long, env = "CHATD_MAX_SEND_RATE", default_value_t = crate::chat::DEFAULT_SEND_RATE)]
    pub max_send_rate: u64,

    /// Failed AUTHs on one connection before it gets `ERR RATE_LIMITED`.
    #[arg(long, env = "CHATD_AUTH_FAILURES_PER_CONN", default_value_t = 5)]
    pub auth_failures_per_conn: u32,

    /// Failed AUTHs from one IP address within the lockout window before it gets `ERR RATE_LIMITED`.
    #[arg(long, env = "CHATD_AUTH_FAILURES_PER_ADDR", default_value_t = 20)]
    pub auth_failures_per_addr: u32,

    /// How long (seconds) a rate-limited connection or address waits before AUTH is tried again.
    #[arg(long, env = "CHATD_AUTH_LOCKOUT", default_value_t = 60)]
    pub auth_lockout: u64,

    /// Failed AUTHs for one account, from anywhere, within the lockout window before the
    /// account backs off: each address then gets one AUTH at a time and none for the lockout
    /// after a failure, and addresses and connections that logged in to it before are not
    /// held back.
    #[arg(long, env = "CHATD_AUTH_FAILURES_PER_ACCOUNT", default_value_t = 10)]
    pub auth_failures_per_account: u32,

    /// AUTHs for one account being checked at once; further ones get `ERR RATE_LIMITED` (in
    /// back-off, one per address instead).
    #[arg(long, env = "CHATD_AUTH_CONCURRENT_PER_ACCOUNT", default_value_t = 8)]
    pub auth_concurrent_per_account: u32,

    /// AUTHs and REGISTERs from one address (an IPv6 /64) waiting or being hashed at once;
    /// further ones get `ERR RATE_LIMITED`.
    #[arg(long, env = "CHATD_AUTH_CONCURRENT_PER_ADDR", default_value_t = 256)]
    pub auth_concurrent_per_addr: usize,

    /// Password hashes one address may have queued or running at once; its further requests
    /// wait their turn (up to 120 s). Default: one per core. Never more than
    /// `--auth-failures-per-addr`.
    #[arg(long, env = "CHATD_HASH_SHARE")]
    pub hash_share: Option<usize>,

    /// Password hashes queued or running at once, all addresses together. A quarter of them
    /// is kept for addresses that hold none; when all are taken, a newcomer takes the place of
    /// a waiting hash of the address holding the most, which gets `ERR SERVER_BUSY` (HTTP
    /// 503), or, if no address holds more than one, is refused so at once.
    #[arg(long, env = "CHATD_HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: usize,

    /// REGISTERs one address (an IPv6 /64) may make per hour: a bucket of N that refills
    /// steadily over the hour. Default: 60 for every address but loopback, which is not
    /// limited (load tests); given, that many for every address, loopback too; 0: no limit.
    #[arg(long, env = "CHATD_REGISTRATIONS_PER_ADDR")]
    pub registrations_per_addr: Option<u32>,

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
            irc_port: Some(0),
            no_irc: false,
            irc_server_name: Some("chatd.test".into()),
            irc_password: None,
            irc_guests: false,
            irc_opers: Vec::new(),
            log_file: None,
            trace: false,
            trace_user: None,
            trace_addr: None,
            trace_sink: crate::trace::Sink::default(),
            irc_ping_interval: 120,
            irc_identify_within: 30,
            admin_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: false,
            tls_port: Some(0),
            https_port: Some(0),
            irc_tls_port: Some(0),
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
            no_admin: false,
            admin_token: None,
            echo_port: None,
            echo_greeting: None,
            echo_once: false,
            backlog: 1024,
            db: db.into(),
            db_pool: 8,
            node_id: None,
            max_connections: None,
            max_connections_per_ip: None,
            lab: false,
            lab_on_postgres: false,
            allowed_host: Vec::new(),
            idle_timeout: 0,
            threads: None,
            max_line: 4096,
            telnet_negotiate: false,
            write_stall: 30,
            push_queue: 1024,
            push_queue_bytes: 1024 * 1024,
            max_sessions_per_user: 64,
            max_tokens_per_user: crate::chat::MAX_TOKENS_PER_USER as u64,
            max_room_members: crate::chat::rooms::DEFAULT_MAX_ROOM_MEMBERS,
            max_rooms_per_user: crate::chat::rooms::DEFAULT_MAX_ROOMS_PER_USER,
            max_send_rate: crate::chat::DEFAULT_SEND_RATE,
            auth_failures_per_conn: 5,
            auth_failures_per_addr: 20,
            auth_lockout: 60,
            auth_failures_per_account: 10,
            auth_concurrent_per_account: 8,
            auth_concurrent_per_addr: 256,
            hash_share: None,
            hash_queue: 64,
            registrations_per_addr: None,
            load_test_hashing: false,
        }
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }

    pub fn write_stall(&self) -> Duration {
        Duration::from_secs(self.write_stall.max(1))
    }

    pub fn irc_ping_every(&self) -> Duration {
        Duration::from_secs(self.irc_ping_interval.max(1))
    }

    /// The IRC door's port, or `None` with `--no-irc`.
    pub fn irc_port(&self) -> Option<u16> {
        (!self.no_irc).then_some(self.irc_port.unwrap_or(DEFAULT_IRC_PORT))
    }

    pub fn auth_lockout(&self) -> Duration {
        Duration::from_secs(self.auth_lockout)
    }
}
