//! chatd: an async TCP echo and line-protocol chat server.
//!
//! [`Server::bind`] opens the listeners and the store; [`Server::run`] serves until the
//! shutdown token is cancelled. The binary and the tests both go through here, and this is
//! all they see: the modules behind it are the server's own.

mod cache;
mod chat;
mod config;
mod echo;
mod error;
mod http;
mod hub;
mod line;
mod listener;
pub mod load;
mod net;
mod store;
mod topology;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{AuthLimits, Chat, ChatOptions, HashLimits};
pub use crate::config::Config;
pub use crate::http::MAX_BODY as MAX_HTTP_BODY;
use crate::hub::HubLimits;
use crate::line::session::SessionSettings;
pub use crate::net::{interfaces, InterfaceAddr};
use crate::store::{Store, StoreOptions};

/// File descriptors kept back from the connection limit for the store, listeners and logs.
const RESERVED_FDS: u64 = 64;
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
    line: TcpListener,
    http: Option<TcpListener>,
    echo: Option<TcpListener>,
    store: Store,
    chat: Chat,
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
        let chat = Chat::start(
            store.clone(),
            ChatOptions {
                auth: AuthLimits {
                    failures_per_conn: config.auth_failures_per_conn.max(1),
                    failures_per_addr: config.auth_failures_per_addr.max(1),
                    failures_per_account: config.auth_failures_per_account.max(1),
                    concurrent_per_account: config.auth_concurrent_per_account.max(1),
                    lockout: config.auth_lockout(),
                    registrations_per_addr: config.registrations_per_addr.max(1),
                },
                hashing: HashLimits {
                    share: config.hash_share.map(|n| n.max(1)),
                    per_addr: config.auth_concurrent_per_addr.max(1),
                    queue: config.hash_queue.max(1),
                },
                hub: HubLimits {
                    queue_messages: config.push_queue.max(1),
                    queue_bytes: config.push_queue_bytes.max(1),
                    sessions_per_user: config.max_sessions_per_user.max(1),
                },
                node_id: node_id.clone(),
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
    /// their commands and say goodbye (until one deadline, [`SHUTDOWN_GRACE`] away), and
    /// commits every queued message before returning. The server's tasks are supervised: if
    /// one of them fails, the server shuts down the same way and returns its error.
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
            max_connections,
            ..
        } = self;
        // Cancelled by the caller, or by a task that failed.
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(max_connections));
        let settings = Arc::new(SessionSettings::new(config.max_line, config.idle_timeout()));
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        {
            let (chat, stop_sessions) = (chat.clone(), stop.clone());
            let accept = listener::accept_loop(
                "line",
                line,
                limit.clone(),
                Some(b"ERR SERVER_BUSY too many connections; try again later\r\n"),
                stop.clone(),
                tracker.clone(),
                move |stream, peer, permit| {
                    let session = line::session::serve(
                        stream,
                        peer,
                        chat.clone(),
                        settings.clone(),
                        stop_sessions.clone(),
                    );
                    async move {
                        session.await;
                        drop(permit);
                    }
                },
            );
            tasks.spawn(async move {
                accept.await;
                ("the line listener", Ok(()))
            });
        }
        if let Some(echo) = echo {
            let (idle, stop_echo) = (config.idle_timeout(), stop.clone());
            let accept = listener::accept_loop(
                "echo",
                echo,
                limit.clone(),
                None,
                stop.clone(),
                tracker.clone(),
                move |stream, _peer, permit| {
                    let serve = echo::serve(stream, idle, stop_echo.clone());
                    async move {
                        serve.await;
                        drop(permit);
                    }
                },
            );
            tasks.spawn(async move {
                accept.await;
                ("the echo listener", Ok(()))
            });
        }
        if let Some(http) = http {
            let state = Arc::new(http::AppState {
                chat: chat.clone(),
                node_id: node_id.clone(),
                started: std::time::Instant::now(),
                listeners,
                shutdown: stop.clone(),
            });
            let stop = stop.clone();
            tasks.spawn(async move {
                let served = http::serve(http, state, stop).await;
                ("the HTTP listener", served.map_err(anyhow::Error::from))
            });
        }
        // Until shutdown, a task that ends is a task that failed.
        let mut failure = None;
        tokio::select! {
            _ = stop.cancelled() => {}
            Some(ended) = tasks.join_next() => {
                let error = match ended {
                    Ok((task, Ok(()))) => anyhow::anyhow!("{task} stopped unexpectedly"),
                    Ok((task, Err(e))) => e.context(format!("{task} failed")),
                    Err(e) => anyhow::anyhow!("a server task panicked: {e}"),
                };
                tracing::error!(error = %format!("{error:#}"), "shutting down");
                failure = Some(error);
            }
        }
        stop.cancel();
        tracing::info!("shutting down: no new connections; finishing the open ones");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        // The accept loops end at once; HTTP waits for its requests in flight, until the
        // deadline.
        let listeners_done = tokio::time::timeout_at(deadline, async {
            while let Some(ended) = tasks.join_next().await {
                if let Ok((task, Err(e))) = ended {
                    tracing::warn!(error = %format!("{e:#}"), "{task} failed while stopping");
                }
            }
        });
        if listeners_done.await.is_err() {
            tracing::warn!("HTTP requests still open at the shutdown deadline; cutting them");
            tasks.abort_all();
        }
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
            tracing::warn!(
                left = tracker.len(),
                "connections still open at the shutdown deadline"
            );
        }
        // Every SEND that was accepted is committed (and delivered) before the store closes.
        if !chat.close(tokio::time::Instant::now() + WRITER_GRACE).await {
            tracing::error!("queued messages were not all committed before the store closed");
        }
        store.close().await;
        tracing::info!("stopped");
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
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
