//! chatd: an async TCP echo and line-protocol chat server.
//!
//! [`Server::bind`] opens the listeners and the store; [`Server::run`] serves until the
//! shutdown token is cancelled. The binary and the tests both go through here, and this is
//! all they see: the modules behind it are the server's own.

mod activity;
mod admin;
mod cache;
mod chat;
mod config;
mod conns;
mod doors;
mod echo;
mod error;
mod http;
mod hub;
mod irc;
mod limits;
mod line;
mod listener;
pub mod logging;
mod memory;
mod metrics;
mod net;
mod socket;
mod store;
mod stream;
mod supervisor;
mod tls;
mod topology;
pub mod trace;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{AuthLimits, Chat, ChatOptions, HashLimits};
pub use crate::config::Config;
use crate::conns::Conns;
use crate::doors::{Accepting, Context, Door, Pool, DOORS};
pub use crate::http::MAX_BODY as MAX_HTTP_BODY;
use crate::hub::HubLimits;
use crate::limits::Budget;
pub use crate::net::raise_open_files_limit;
pub use crate::net::{interfaces, InterfaceAddr};
use crate::store::{Store, StoreOptions};
use crate::supervisor::Supervisor;

/// On shutdown, how long connections and requests in flight get to finish and say goodbye:
/// one deadline for all of them. Whatever is still open then is cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// After the connections, the writer commits what is queued: bounded by the store's own
/// operation timeouts, so this is only a last resort against a hung store.
const WRITER_GRACE: Duration = Duration::from_secs(15);

/// A bound, ready server.
pub struct Server {
    config: Config,
    node_id: String,
    ip: IpAddr,
    /// The bound doors, in the order of [`DOORS`]; the line protocol's is always there.
    doors: Vec<Door>,
    /// Doors left closed because their default port was taken, with why, for the banner.
    closed: Vec<String>,
    /// The operator's listener, unless `--no-admin` or its default port was taken.
    admin: Option<tokio::net::TcpListener>,
    /// The certificate of the TLS doors, with `--tls`.
    tls: Option<tls::Tls>,
    store: Store,
    chat: Chat,
    budget: Budget,
    /// The background tasks, running since [`Server::bind`] started them.
    tasks: Supervisor,
}

impl Server {
    /// Binds the listeners and opens (creating and migrating) the store.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let open_files = net::raise_open_files_limit().unwrap_or(1024);
        if open_files < 4096 {
            tracing::warn!(
                open_files,
                "the open-files limit is low; it bounds how many clients can connect"
            );
        } else {
            tracing::info!(open_files, "open-files limit");
        }
        if config.load_test_hashing {
            tracing::warn!(
                "--load-test-hashing: passwords are hashed at a cheap argon2 cost, FOR LOAD TESTS ONLY"
            );
        }
        let ip = match &config.interface {
            Some(name) => net::interface_ipv4(name)?,
            None => config.bind,
        };
        let (mut doors, mut closed) = (Vec::new(), Vec::new());
        for row in DOORS {
            let Some(port) = (row.port)(&config) else {
                continue;
            };
            match net::bind(SocketAddr::new(ip, port), config.backlog) {
                Ok(listener) => doors.push(Door { row, listener }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && (row.optional)(&config) => {
                    tracing::warn!(door = row.name, port, "port taken; serving without this door");
                    closed.push(format!(
                        "No {}: port {port} is taken (perhaps another chatd); {} N gives it another port.",
                        row.what, row.flag
                    ));
                }
                Err(e) => return Err(listen_error(e, ip, port, row.what, row.flag)),
            }
        }
        let admin = bind_admin(&config, &mut closed)?;
        let line_port = doors
            .iter()
            .find(|d| d.row.name == "line")
            .map_or(0, |d| d.addr().port());
        if config.lab && config.db.starts_with("postgres") && !config.lab_on_postgres {
            anyhow::bail!(
                "--lab lets anyone send as and read any user without a password; it is refused on \
                 PostgreSQL, which several nodes may share. Add --lab-on-postgres if that is really meant"
            );
        }
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", net::hostname(), line_port))
            .replace(char::is_whitespace, "_");
        let store_options = StoreOptions {
            pool_size: config.db_pool,
            node_id: node_id.clone(),
        };
        // Its errors name the file or server and say what to do.
        let store = Store::open(&config.db, &store_options).await?;
        let tls = match config.tls {
            true => Some(load_tls(&config, &store, ip)?),
            false => None,
        };
        let mut tasks = Supervisor::new();
        let chat = Chat::start(
            store.clone(),
            ChatOptions {
                auth: AuthLimits {
                    failures_per_conn: config.auth_failures_per_conn.max(1),
                    failures_per_addr: config.auth_failures_per_addr.max(1),
                    failures_per_account: config.auth_failures_per_account.max(1),
                    concurrent_per_account: config.auth_concurrent_per_account.max(1),
                    lockout: config.auth_lockout(),
                    registrations_per_addr: config.registrations_per_addr,
                },
                hashing: HashLimits {
                    share: config.hash_share.map(|n| n.max(1)),
                    per_addr: config.auth_concurrent_per_addr.max(1),
                    queue: config.hash_queue.max(1),
                    cheap: config.load_test_hashing,
                },
                hub: HubLimits {
                    queue_messages: config.push_queue.max(1),
                    queue_bytes: config.push_queue_bytes.max(1),
                    sessions_per_user: config.max_sessions_per_user.max(1),
                    // One token (one leaked token) holds at most half of its user's sessions.
                    sessions_per_token: HubLimits::default()
                        .sessions_per_token
                        .min(config.max_sessions_per_user / 2)
                        .max(1),
                },
                node_id: node_id.clone(),
                tokens_per_user: usize::try_from(config.max_tokens_per_user).unwrap_or(usize::MAX),
                send_rate: config.max_send_rate,
                max_room_members: config.max_room_members,
                max_rooms_per_user: config.max_rooms_per_user,
            },
            &mut tasks,
        );
        // SQLite: a writer and four readers; PostgreSQL: the pool and the LISTEN connection.
        let store_connections = store.descriptors();
        let budget = Budget::derive(
            open_files,
            store_connections,
            config.max_connections,
            doors.iter().any(|d| d.row.pool == Pool::Echo),
        );
        tracing::debug!(?budget, "connection budget");
        Ok(Server {
            config,
            node_id,
            ip,
            doors,
            closed,
            admin,
            tls,
            store,
            chat,
            budget,
            tasks,
        })
    }

    /// The address of the door named `name`, if it is open.
    fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.doors.iter().find(|d| d.row.name == name).map(Door::addr)
    }

    pub fn line_addr(&self) -> SocketAddr {
        self.addr_of("line")
            .expect("the line protocol's door is always open")
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addr_of("http")
    }

    pub fn echo_addr(&self) -> Option<SocketAddr> {
        self.addr_of("echo")
    }

    pub fn irc_addr(&self) -> Option<SocketAddr> {
        self.addr_of("irc")
    }

    /// The TLS doors (`--tls`): the line protocol's, HTTPS, IRC's, where open.
    pub fn tls_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.addr_of("line-tls"),
            self.addr_of("https"),
            self.addr_of("irc-tls"),
        )
    }

    /// The operator's listener (the teacher's view, `/metrics`), if it is open.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What a person can type to reach this server, one address per line.
    pub fn banner(&self) -> String {
        let mut out = format!("chatd {} is up. Connect with:\n", env!("CARGO_PKG_VERSION"));
        let port = self.line_addr().port();
        for ip in net::reachable_addrs(self.ip) {
            let _ = writeln!(out, "  telnet {ip} {port}");
        }
        if let Some(http) = self.http_addr() {
            let _ = writeln!(out, "In a browser, or with curl or Python requests:");
            for ip in net::reachable_addrs(self.ip) {
                let _ = writeln!(out, "  http://{}/", SocketAddr::new(ip, http.port()));
            }
        }
        if let Some(irc) = self.irc_addr() {
            let _ = writeln!(out, "With an IRC client (irssi, WeeChat, HexChat), type:");
            for ip in net::reachable_addrs(self.ip) {
                let _ = writeln!(out, "  /connect {ip} {}", irc.port());
            }
            if self.config.irc_guests {
                let _ = writeln!(
                    out,
                    "IRC guests are welcome (--irc-guests): any free nick may join public channels or make its own, and talk live; nothing a guest says is kept."
                );
            }
        }
        if let Some(tls) = &self.tls {
            banner_tls(&mut out, tls, self);
        }
        if let Some(admin) = self.admin_addr() {
            let token = if self.config.admin_token.is_some() {
                " (with the admin token)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "The teacher's view{token}: http://{admin}/admin (metrics: http://{admin}/metrics)"
            );
        }
        for closed in &self.closed {
            let _ = writeln!(out, "{closed}");
        }
        if self.config.trace {
            let mut which = String::new();
            if let Some(user) = &self.config.trace_user {
                let _ = write!(which, " of {user}");
            }
            if let Some(addr) = &self.config.trace_addr {
                let _ = write!(which, " from {addr}");
            }
            let _ = writeln!(
                out,
                "Tracing every line{which} of every door below (--trace); passwords are shown as ****."
            );
        }
        if let Some(echo) = self.echo_addr() {
            let _ = writeln!(out, "Echo (RFC 862) on port {}", echo.port());
        }
        if let Some(name) = &self.config.interface {
            let _ = writeln!(
                out,
                "Listening only on {} (--interface {name}); this machine's other addresses do not answer.",
                self.ip
            );
        }
        if self.ip.is_loopback() {
            let _ = writeln!(
                out,
                "{} is loopback: only programs on this machine can connect, not other machines.",
                self.ip
            );
        }
        let store = match self.store.sqlite_path() {
            Some(path) => format!("SQLite file {}", path.display()),
            None => redact(&self.config.db),
        };
        if self.config.lab && self.http_addr().is_some() {
            let _ = writeln!(
                out,
                "!!! LAB MODE: POST / and GET /get_messages need no password: anyone who can reach \
                 this server can send as, and read the messages of, any user !!!"
            );
        }
        if self.config.telnet_negotiate {
            let _ = writeln!(
                out,
                "--telnet-negotiate: telnet clients are put in character mode as they connect; \
                 nc and programs receive telnet bytes too, so leave it off for them"
            );
        }
        if self.config.load_test_hashing {
            let _ = writeln!(
                out,
                "WARNING: --load-test-hashing: cheap password hashes, for load tests only; never use it in production"
            );
        }
        let _ = write!(
            out,
            "Store: {store}; node {}; at most {} connections. Stop with Ctrl-C.",
            self.node_id,
            self.budget.chat + self.budget.echo
        );
        out
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets connections finish
    /// their commands and say goodbye (until one deadline, [`SHUTDOWN_GRACE`] away), and
    /// commits every queued message before returning. Every background task is supervised
    /// (see [`supervisor`]): if one of them ends before shutdown (returns, fails or panics),
    /// the server shuts down the same way and returns an error naming it.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listeners: serde_json::Map<String, serde_json::Value> = DOORS
            .iter()
            .map(|row| {
                (
                    row.name.to_string(),
                    self.addr_of(row.name).map(|a| a.to_string()).into(),
                )
            })
            .collect();
        let listeners = serde_json::Value::Object(listeners);
        let Server {
            config,
            node_id,
            doors,
            admin,
            tls,
            store,
            chat,
            budget,
            mut tasks,
            ..
        } = self;
        // Cancelled by the caller, or by a task that failed.
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        // The chat doors (line, HTTP) share one pool of places; echo has a small one of its own.
        let per_addr = limits::per_ip(config.max_connections_per_ip);
        let chat_pool = limits::Door::new(budget.chat, per_addr.clone());
        let echo_pool = limits::Door::new(budget.echo, per_addr);
        tasks.spawn("the memory give-back", memory::give_back(stop.clone()));
        let conns = Conns::new();
        let tracer = config.trace.then(|| {
            trace::Tracer::start(trace::TraceConfig {
                user: config.trace_user.clone(),
                addr: config.trace_addr,
                sink: config.trace_sink.clone(),
            })
        });
        let context = Context {
            config: &config,
            chat: &chat,
            store: &store,
            node_id: &node_id,
            listeners: &listeners,
            stop: &stop,
            tracer: tracer.as_ref(),
            conns: &conns,
        };
        let with = Accepting {
            stop: stop.clone(),
            tracker: tracker.clone(),
            conns: conns.clone(),
            tls,
        };
        let mut accepting = Vec::new();
        for door in doors {
            let pool = match door.row.pool {
                Pool::Chat => chat_pool.clone(),
                Pool::Echo => echo_pool.clone(),
            };
            let (task, serve) = (door.row.task, (door.row.serve)(&context));
            let accept = door.accept(pool, serve, with.clone());
            accepting.push(tasks.spawn(task, accept));
        }
        if let Some(listener) = admin {
            // Places of its own, and a table of its own: the operator is not a client.
            let pool = limits::Door::new(admin::MAX_CONNECTIONS, None);
            let door = Door {
                row: &doors::ADMIN,
                listener,
            };
            let serve = (doors::ADMIN.serve)(&context);
            let accept = door.accept(
                pool,
                serve,
                Accepting {
                    conns: Conns::new(),
                    ..with.clone()
                },
            );
            accepting.push(tasks.spawn(doors::ADMIN.task, accept));
        }
        // Until shutdown, a task that ends is a task that failed.
        let mut failure = None;
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            Some(ended) = tasks.next_end() => {
                // An accept loop also ends when it sees the shutdown first.
                failure = ended.failure(stop.is_cancelled());
                if let Some(error) = &failure {
                    tracing::error!(error = %format!("{error:#}"), "shutting down");
                }
            }
        }
        stop.cancel();
        tracing::info!("shutting down: no new connections; finishing the open ones");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        // The accept loops end at once; connections (HTTP ones too) finish in the tracker,
        // until the deadline.
        let stopped_accepting = futures::future::join_all(accepting.iter().map(|a| a.wait()));
        if tokio::time::timeout_at(deadline, stopped_accepting)
            .await
            .is_err()
        {
            tracing::warn!("an accept loop did not stop in time");
            accepting.iter().for_each(|a| a.abort());
        }
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
            tracing::warn!(
                left = tracker.len(),
                "connections still open at the shutdown deadline"
            );
        }
        // Every SEND that was accepted is committed (and delivered) before the store closes.
        let deadline = tokio::time::Instant::now() + WRITER_GRACE;
        if !chat.close(deadline).await {
            tracing::error!("queued messages were not all committed before the store closed");
        }
        // Every task has been told to stop by now; one that failed or panicked while stopping
        // is a failure too.
        if let Some(error) = tasks.wait_all(deadline).await {
            failure.get_or_insert(error);
        }
        store.close().await;
        tracing::info!("stopped");
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The limits and timeouts protocol.md documents, for clients and tests that depend on them.
pub mod bounds {
    pub use crate::chat::{
        MAX_MESSAGE_BYTES, MAX_TOKENS_PER_USER, MESSAGE_OVERHEAD as SEND_MESSAGE_OVERHEAD,
        RECHECK as TOKEN_RECHECK, REGISTRATIONS_PER_ADDR, SEND_BURST_SECS, WHO_PAGE,
    };
    pub use crate::http::{
        BODIES_AT_ONCE, BODIES_PER_ADDR, BODY_GRACE, BODY_STALL, BODY_TIME, BODY_WAIT, HEADER_TIMEOUT,
        MAX_BODY as MAX_HTTP_BODY, MAX_HEAD, MAX_REPLY_BYTES, MIN_BODY_RATE, SMALL_BODIES_AT_ONCE,
        SMALL_BODIES_PER_ADDR, SMALL_BODY, WRITE_STALL,
    };
}

/// Binds, prints the banner and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    logging::print_line(&server.banner());
    server.run(shutdown).await
}

/// Why a door's listener could not be bound: the door, the address and what to do.
fn listen_error(e: std::io::Error, ip: IpAddr, port: u16, door: &str, flag: &str) -> anyhow::Error {
    {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "; another program (perhaps another chatd) is using port {port}: stop it, or \
                 choose another port with {flag} N ({flag} 0 picks a free one)"
            ),
            std::io::ErrorKind::PermissionDenied if port < 1024 => {
                format!("; ports below 1024 need root or CAP_NET_BIND_SERVICE: choose one above with {flag}")
            }
            std::io::ErrorKind::AddrNotAvailable => {
                format!("; {ip} is not an address of this machine (see `chatd interfaces`)")
            }
            _ => String::new(),
        };
        anyhow::anyhow!("cannot listen for {door} on {ip} port {port}: {e}{hint}")
    }
}

/// The TLS doors' certificate: `--tls-cert`/`--tls-key`, or the one made (once) next to the
/// database, naming this machine and the addresses chatd is bound to.
fn load_tls(config: &Config, store: &Store, ip: IpAddr) -> anyhow::Result<tls::Tls> {
    let given = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
    let dir = match store.sqlite_path().and_then(|p| p.parent()) {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_dir()?,
    };
    let mut tls = tls::Tls::load(given, &dir, &tls::names(&net::reachable_addrs(ip)))?;
    tls.handshake_timeout = config.tls_handshake_timeout;
    Ok(tls)
}

/// The banner's TLS lines: the certificate, its fingerprint, and a command per door.
fn banner_tls(out: &mut String, tls: &tls::Tls, server: &Server) {
    let how = match tls.generated {
        Some(tls::Generated::Now) => "made now, self-signed",
        Some(tls::Generated::Earlier) => "self-signed, made by an earlier start",
        None => "--tls-cert",
    };
    let cert = tls.cert_path.display();
    let _ = writeln!(out, "Encrypted (TLS), certificate {cert} ({how}):");
    let _ = writeln!(out, "  SHA-256 fingerprint {}", tls.fingerprint);
    let ip = net::reachable_addrs(server.ip)
        .into_iter()
        .find(|ip| !ip.is_loopback())
        .unwrap_or(server.ip);
    if let Some(line) = server.addr_of("line-tls") {
        let at = SocketAddr::new(ip, line.port());
        let _ = writeln!(out, "  openssl s_client -connect {at}");
        let _ = writeln!(out, "  ncat --ssl {ip} {}", line.port());
    }
    if let Some(https) = server.addr_of("https") {
        let at = SocketAddr::new(ip, https.port());
        let _ = writeln!(out, "  curl --cacert {cert} https://{at}/info");
    }
    if let Some(irc) = server.addr_of("irc-tls") {
        let _ = writeln!(out, "  In an IRC client: /connect -tls {ip} {}", irc.port());
    }
}

/// Binds the operator's listener: none with `--no-admin`; without `--admin-addr`, on
/// loopback's default port, or none (said in the banner) if that is taken. A listener that
/// the class network could reach needs a token.
fn bind_admin(config: &Config, closed: &mut Vec<String>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if config.no_admin {
        return Ok(None);
    }
    let (ip, port) = config::DEFAULT_ADMIN_ADDR;
    let addr = config.admin_addr.unwrap_or(SocketAddr::from((ip, port)));
    if !addr.ip().is_loopback() && config.admin_token.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "the admin listener on {addr} could be reached from the network, and it can disconnect              users and reset their passwords: give --admin-token <secret> as well (or leave              --admin-addr on 127.0.0.1)"
        );
    }
    match net::bind(addr, config.backlog) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && config.admin_addr.is_none() => {
            tracing::warn!(%addr, "the admin listener's port is taken; serving without it");
            closed.push(format!(
                "No teacher's view: {addr} is taken (perhaps another chatd); --admin-addr gives it another address."
            ));
            Ok(None)
        }
        Err(e) => Err(listen_error(
            e,
            addr.ip(),
            addr.port(),
            "the admin listener",
            "--admin-addr",
        )),
    }
}

/// A store URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Every supervised task, made to end before shutdown, stops the server with an error
    //! naming it; a clean shutdown still returns Ok with every accepted SEND committed.

    use std::net::Ipv4Addr;

    use super::*;
    use crate::supervisor::faults::Fault;

    fn sqlite() -> Config {
        let mut config = Config::for_tests("sqlite::memory:");
        config.echo_port = Some(0);
        config.load_test_hashing = true;
        config
    }

    /// A fresh PostgreSQL database, when the tests were given a server; dropped by [`drop_pg`].
    async fn postgres(test: &str) -> Option<(Config, String)> {
        use sqlx::Connection;
        let Ok(admin) = std::env::var("CHATD_TEST_DATABASE_URL") else {
            eprintln!("SKIPPED {test} on PostgreSQL: set CHATD_TEST_DATABASE_URL to run it");
            return None;
        };
        let name = format!("chatd_unit_{}_{test}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').expect("a database URL");
        let mut config = Config::for_tests(format!("{base}/{name}"));
        config.load_test_hashing = true;
        Some((config, name))
    }

    async fn drop_pg(name: &str) {
        use sqlx::Connection;
        let admin = std::env::var("CHATD_TEST_DATABASE_URL").unwrap();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Makes `task` end by `fault` while the server runs, and returns what `run` said. The
    /// server must have stopped: its line door no longer answers.
    async fn fail(config: Config, task: &'static str, fault: Fault) -> String {
        let server = Server::bind(config).await.expect("the server starts");
        let line = server.line_addr();
        let faults = server.tasks.faults();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(server.run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::net::TcpStream::connect(line).await.is_ok(),
            "serving before the fault"
        );
        faults.inject(task, fault);
        let ended = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the server stops by itself")
            .expect("run does not panic");
        assert!(
            tokio::net::TcpStream::connect(line).await.is_err(),
            "the line door still answers after {task} ended"
        );
        format!("{:#}", ended.expect_err("a task that ended is an error"))
    }

    #[tokio::test]
    async fn every_task_alone_is_supervised() {
        let server = Server::bind(sqlite()).await.unwrap();
        assert_eq!(
            server.tasks.names(),
            ["the delivery", "the message writer", "the session watcher"]
        );
    }

    #[tokio::test]
    async fn every_task_in_a_cluster_is_supervised() {
        let Some((config, db)) = postgres("names").await else {
            return;
        };
        let server = Server::bind(config).await.unwrap();
        assert_eq!(
            server.tasks.names(),
            [
                "the message writer",
                "the presence heartbeat",
                "the relay",
                "the session watcher"
            ]
        );
        drop(server);
        drop_pg(&db).await;
    }

    #[tokio::test]
    async fn a_line_listener_that_returns_stops_the_server() {
        let error = fail(sqlite(), "the line listener", Fault::Return).await;
        assert_eq!(error, "the line listener stopped unexpectedly");
    }

    #[tokio::test]
    async fn an_http_listener_that_fails_stops_the_server() {
        let error = fail(sqlite(), "the HTTP listener", Fault::Fail).await;
        assert_eq!(error, "the HTTP listener failed: injected failure");
    }

    #[tokio::test]
    async fn an_echo_listener_that_panics_stops_the_server() {
        let error = fail(sqlite(), "the echo listener", Fault::Panic).await;
        assert_eq!(error, "the echo listener panicked: injected fault");
    }

    #[tokio::test]
    async fn a_writer_that_panics_stops_the_server() {
        let error = fail(sqlite(), "the message writer", Fault::Panic).await;
        assert_eq!(error, "the message writer panicked: injected fault");
    }

    #[tokio::test]
    async fn a_delivery_that_returns_stops_the_server() {
        let error = fail(sqlite(), "the delivery", Fault::Return).await;
        assert_eq!(error, "the delivery stopped unexpectedly");
    }

    #[tokio::test]
    async fn a_session_watcher_that_fails_stops_the_server() {
        let error = fail(sqlite(), "the session watcher", Fault::Fail).await;
        assert_eq!(error, "the session watcher failed: injected failure");
    }

    #[tokio::test]
    async fn a_memory_give_back_that_panics_stops_the_server() {
        let error = fail(sqlite(), "the memory give-back", Fault::Panic).await;
        assert_eq!(error, "the memory give-back panicked: injected fault");
    }

    #[tokio::test]
    async fn a_relay_that_panics_stops_the_server() {
        let Some((config, db)) = postgres("relay").await else {
            return;
        };
        let error = fail(config, "the relay", Fault::Panic).await;
        assert_eq!(error, "the relay panicked: injected fault");
        drop_pg(&db).await;
    }

    #[tokio::test]
    async fn a_relay_that_returns_stops_the_server() {
        let Some((config, db)) = postgres("relay_returns").await else {
            return;
        };
        let error = fail(config, "the relay", Fault::Return).await;
        assert_eq!(error, "the relay stopped unexpectedly");
        drop_pg(&db).await;
    }

    #[tokio::test]
    async fn a_presence_heartbeat_that_returns_stops_the_server() {
        let Some((config, db)) = postgres("presence").await else {
            return;
        };
        let error = fail(config, "the presence heartbeat", Fault::Return).await;
        assert_eq!(error, "the presence heartbeat stopped unexpectedly");
        drop_pg(&db).await;
    }

    #[tokio::test]
    async fn a_writer_in_a_cluster_that_fails_stops_the_server() {
        let Some((config, db)) = postgres("writer").await else {
            return;
        };
        let error = fail(config, "the message writer", Fault::Fail).await;
        assert_eq!(error, "the message writer failed: injected failure");
        drop_pg(&db).await;
    }

    #[tokio::test]
    async fn a_clean_shutdown_returns_ok_and_commits_every_accepted_send() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = sqlite();
        config.db = format!("sqlite://{}", dir.path().join("chatd.db").display());
        let server = Server::bind(config.clone()).await.unwrap();
        let chat = server.chat.clone();
        let alice = chat
            .register("alice", "pw", Ipv4Addr::LOCALHOST.into())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(server.run(shutdown.clone()));
        let sends: Vec<_> = (0..300)
            .map(|i| {
                let (chat, alice) = (chat.clone(), alice.clone());
                tokio::spawn(async move { chat.send(&alice, "alice", &format!("queued {i}"), None).await })
            })
            .collect();
        tokio::task::yield_now().await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the server stops in time")
            .unwrap()
            .expect("a clean shutdown is Ok");
        let mut acked = Vec::new();
        for send in sends {
            if let Ok(message) = send.await.unwrap() {
                acked.push(message.id);
            }
        }
        assert!(!acked.is_empty());
        drop(chat);

        let server = Server::bind(config).await.unwrap();
        let stored: Vec<i64> = server
            .chat
            .inbox(&alice, 0, 1000)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        for id in &acked {
            assert!(stored.contains(id), "acknowledged {id} was not stored");
        }
    }
}
