//! chatd: an async TCP echo and line-protocol chat server.
//!
//! [`Server::bind`] opens the listeners and the store; [`Server::run`] serves until the
//! shutdown token is cancelled. The binary and the tests both go through here.

pub mod cache;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod echo;
pub mod error;
pub mod http;
pub mod hub;
pub mod line;
pub mod listener;
pub mod net;
pub mod store;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{AuthLimits, Chat, ChatOptions};
pub use crate::config::Config;
use crate::line::session::SessionSettings;
use crate::store::{Store, StoreOptions};

/// File descriptors kept back from the connection limit for the store, listeners and logs.
const RESERVED_FDS: u64 = 64;
/// How long connections get to finish and say goodbye on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A bound, ready server.
pub struct Server {
    config: Config,
    node_id: String,
    ip: IpAddr,
    line: TcpListener,
    http: Option<TcpListener>,
    echo: Option<TcpListener>,
    store: Store,
    chat: Chat,
    writer: JoinHandle<()>,
    max_connections: usize,
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
        config::set_load_test_hashing(config.load_test_hashing);
        if config.load_test_hashing {
            tracing::warn!(
                "--load-test-hashing: passwords are hashed at a cheap argon2 cost, FOR LOAD TESTS ONLY"
            );
        }
        let ip = match &config.interface {
            Some(name) => net::interface_ipv4(name)?,
            None => config.bind,
        };
        let line = net::bind(SocketAddr::new(ip, config.port), config.backlog)
            .with_context(|| format!("cannot listen on {ip} port {}", config.port))?;
        let http = if config.no_http {
            None
        } else {
            Some(
                net::bind(SocketAddr::new(ip, config.http_port), config.backlog)
                    .with_context(|| format!("cannot listen for HTTP on {ip} port {}", config.http_port))?,
            )
        };
        let echo = match config.echo_port {
            Some(port) => Some(
                net::bind(SocketAddr::new(ip, port), config.backlog)
                    .with_context(|| format!("cannot listen for echo on {ip} port {port}"))?,
            ),
            None => None,
        };
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    net::hostname(),
                    line.local_addr().map_or(0, |a| a.port())
                )
            })
            .replace(char::is_whitespace, "_");
        let store_options = StoreOptions {
            pool_size: config.db_pool,
            node_id: node_id.clone(),
        };
        let store = Store::open(&config.db, &store_options)
            .await
            .with_context(|| format!("cannot open the store {}", config.db))?;
        let (chat, writer) = Chat::start(
            store.clone(),
            ChatOptions {
                auth: AuthLimits {
                    failures_per_conn: config.auth_failures_per_conn.max(1),
                    failures_per_addr: config.auth_failures_per_addr.max(1),
                    lockout: config.auth_lockout(),
                },
                push_queue: config.push_queue,
            },
        );
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| open_files.saturating_sub(RESERVED_FDS).max(1) as usize);
        Ok(Server {
            config,
            node_id,
            ip,
            line,
            http,
            echo,
            store,
            chat,
            writer,
            max_connections,
        })
    }

    pub fn line_addr(&self) -> SocketAddr {
        self.line.local_addr().expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn echo_addr(&self) -> Option<SocketAddr> {
        self.echo
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn chat(&self) -> &Chat {
        &self.chat
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
        if let Some(echo) = self.echo_addr() {
            let _ = writeln!(out, "Echo (RFC 862) on port {}", echo.port());
        }
        if self.config.load_test_hashing {
            let _ = writeln!(
                out,
                "WARNING: --load-test-hashing: cheap password hashes, for load tests only; never use it in production"
            );
        }
        let _ = write!(
            out,
            "Store: {}; node {}; at most {} connections. Stop with Ctrl-C.",
            redact(&self.config.db),
            self.node_id,
            self.max_connections
        );
        out
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets connections finish
    /// their commands and say goodbye, and commits every queued message before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listeners = serde_json::json!({
            "line": self.line_addr().to_string(),
            "http": self.http_addr().map(|a| a.to_string()),
            "echo": self.echo_addr().map(|a| a.to_string()),
        });
        let Server {
            config,
            node_id,
            line,
            http,
            echo,
            store,
            chat,
            writer,
            max_connections,
            ..
        } = self;
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(max_connections));
        let settings = Arc::new(SessionSettings::new(config.max_line, config.idle_timeout()));
        let mut loops = Vec::new();
        {
            let (chat, shutdown_for_sessions) = (chat.clone(), shutdown.clone());
            loops.push(tokio::spawn(listener::accept_loop(
                "line",
                line,
                limit.clone(),
                Some(b"ERR SERVER_BUSY too many connections; try again later\r\n"),
                shutdown.clone(),
                tracker.clone(),
                move |stream, peer, permit| {
                    let session = line::session::serve(
                        stream,
                        peer,
                        chat.clone(),
                        settings.clone(),
                        shutdown_for_sessions.clone(),
                    );
                    async move {
                        session.await;
                        drop(permit);
                    }
                },
            )));
        }
        if let Some(echo) = echo {
            let (idle, shutdown_for_echo) = (config.idle_timeout(), shutdown.clone());
            loops.push(tokio::spawn(listener::accept_loop(
                "echo",
                echo,
                limit.clone(),
                None,
                shutdown.clone(),
                tracker.clone(),
                move |stream, _peer, permit| {
                    let serve = echo::serve(stream, idle, shutdown_for_echo.clone());
                    async move {
                        serve.await;
                        drop(permit);
                    }
                },
            )));
        }
        if let Some(http) = http {
            let state = Arc::new(http::AppState {
                chat: chat.clone(),
                node_id: node_id.clone(),
                started: std::time::Instant::now(),
                listeners,
                shutdown: shutdown.clone(),
            });
            let shutdown = shutdown.clone();
            loops.push(tokio::spawn(async move {
                if let Err(e) = http::serve(http, state, shutdown).await {
                    tracing::error!(error = %e, "the HTTP listener failed");
                }
            }));
        }
        // Several nodes on PostgreSQL: relay each other's messages and share presence.
        let cluster = match store.postgres() {
            Some(pg) => {
                tracing::info!(node = %node_id, "joining the other nodes on PostgreSQL");
                cluster::start(pg.clone(), chat.hub().clone(), shutdown.clone())
            }
            None => Vec::new(),
        };
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new connections; finishing the open ones");
        // The accept loops end at once; HTTP waits for its requests in flight.
        let stopped = futures::future::join_all(loops);
        if tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_err() {
            tracing::warn!("HTTP requests still open after the grace period");
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "connections still open after the grace period"
            );
        }
        // The writer ends once every handle is gone and the queued messages are committed.
        drop(chat);
        if tokio::time::timeout(SHUTDOWN_GRACE, writer).await.is_err() {
            tracing::warn!("the message writer did not finish in time");
        }
        // Takes this node out of the cluster's presence.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, futures::future::join_all(cluster)).await;
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds, prints the banner and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    println!("{}", server.banner());
    server.run(shutdown).await
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
