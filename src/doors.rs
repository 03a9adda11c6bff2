//! The server's doors: the listeners clients come in by. Each is one row of [`DOORS`]: its
//! name, the port it listens on, the pool of places its connections take, what it tells a
//! connection it has no place for, and how it serves one. The server binds and runs whatever is
//! in the table, so a new door (IRC, an admin listener, TLS) is a row and a serve function.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::Chat;
use crate::config::Config;
use crate::config::{DEFAULT_HTTPS_PORT, DEFAULT_IRC_TLS_PORT, DEFAULT_TLS_PORT};
use crate::conns::{ConnInfo, Conns};
use crate::limits::{self, Refusal};
use crate::line::session::SessionSettings;
use crate::listener::{self, BusyAnswer};
use crate::store::Store;
use crate::stream::Stream;
use crate::tls::Tls;
use crate::trace::Door as TraceDoor;
use crate::{admin, echo, http, irc, line};

/// Serves one admitted connection until it ends. Its entry in the operator's table carries
/// its address and its own stop token (shutdown, or the operator's disconnect).
pub(crate) type Serve = Arc<dyn Fn(Stream, Arc<ConnInfo>) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a door's [`Serve`] is built from, when the server starts running.
pub(crate) struct Context<'a> {
    pub config: &'a Config,
    pub chat: &'a Chat,
    pub store: &'a Store,
    pub node_id: &'a str,
    /// Every door's address by name (`null` if it is closed), as the HTTP status page shows.
    pub listeners: &'a serde_json::Value,
    /// Cancelled on shutdown: a connection says goodbye and ends.
    pub stop: &'a CancellationToken,
    /// `--trace`: the doors that speak lines show them.
    pub tracer: Option<&'a Arc<crate::trace::Tracer>>,
    /// The open connections, as the operator sees them.
    pub conns: &'a Arc<Conns>,
}

/// What every accept loop shares.
#[derive(Clone)]
pub(crate) struct Accepting {
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
    /// The open connections, as the operator sees them.
    pub conns: Arc<Conns>,
    /// The certificate, with `--tls`.
    pub tls: Option<Tls>,
}

/// Which pool of places a door's connections take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// The chat doors share one: a client may come in by any of them.
    Chat,
    /// Echo has a small one of its own, so it cannot crowd out chat.
    Echo,
}

/// One door, as the table describes it.
pub(crate) struct Row {
    /// Its key in logs and on the status page: "line".
    pub name: &'static str,
    /// What it serves, in errors: "cannot listen for the line protocol on ...".
    pub what: &'static str,
    /// Its kind, in the operator's view and the trace.
    pub door: TraceDoor,
    /// Whether it speaks TLS: each connection's handshake comes first.
    pub tls: bool,
    /// The option that sets its port, for errors that say what to change.
    pub flag: &'static str,
    /// Its port, or `None` when the configuration keeps it closed.
    pub port: fn(&Config) -> Option<u16>,
    /// Whether the server starts without this door when its port is taken: true where the
    /// port is a default nobody asked for (a second chatd on one machine), false where the
    /// operator chose it.
    pub optional: fn(&Config) -> bool,
    pub pool: Pool,
    pub busy: BusyAnswer,
    pub serve: fn(&Context) -> Serve,
    /// Its accept loop, as the supervisor names it: "the line listener stopped unexpectedly".
    pub task: &'static str,
}

/// Every door, in the order they are bound.
pub(crate) const DOORS: &[Row] = &[
    Row {
        name: "line",
        tls: false,
        door: TraceDoor::Line,
        what: "the line protocol",
        flag: "--port",
        port: |config| Some(config.port),
        optional: |_| false,
        pool: Pool::Chat,
        busy: line_busy,
        serve: serve_line,
        task: "the line listener",
    },
    Row {
        name: "http",
        tls: false,
        door: TraceDoor::Http,
        what: "HTTP",
        flag: "--http-port",
        port: |config| (!config.no_http).then_some(config.http_port),
        optional: |_| false,
        pool: Pool::Chat,
        busy: http::busy_answer,
        serve: serve_http,
        task: "the HTTP listener",
    },
    Row {
        name: "echo",
        tls: false,
        door: TraceDoor::Echo,
        what: "echo",
        flag: "--echo-port",
        port: |config| config.echo_port,
        optional: |_| false,
        pool: Pool::Echo,
        busy: |_| None,
        serve: serve_echo,
        task: "the echo listener",
    },
    Row {
        name: "irc",
        tls: false,
        door: TraceDoor::Irc,
        what: "IRC",
        flag: "--irc-port",
        port: Config::irc_port,
        optional: |config| config.irc_port.is_none(),
        pool: Pool::Chat,
        busy: irc_busy,
        serve: serve_irc,
        task: "the IRC listener",
    },
    // TLS: a refused client gets no words (they would not be TLS), only the close.
    Row {
        name: "line-tls",
        tls: true,
        door: TraceDoor::Line,
        what: "the line protocol over TLS",
        flag: "--tls-port",
        port: |config| config.tls.then(|| config.tls_port.unwrap_or(DEFAULT_TLS_PORT)),
        optional: |config| config.tls_port.is_none(),
        pool: Pool::Chat,
        busy: |_| None,
        serve: serve_line,
        task: "the line TLS listener",
    },
    Row {
        name: "https",
        tls: true,
        door: TraceDoor::Http,
        what: "HTTPS",
        flag: "--https-port",
        port: |config| {
            (config.tls && !config.no_http).then(|| config.https_port.unwrap_or(DEFAULT_HTTPS_PORT))
        },
        optional: |config| config.https_port.is_none(),
        pool: Pool::Chat,
        busy: |_| None,
        serve: serve_http,
        task: "the HTTPS listener",
    },
    Row {
        name: "irc-tls",
        tls: true,
        door: TraceDoor::Irc,
        what: "IRC over TLS",
        flag: "--irc-tls-port",
        port: |config| {
            (config.tls && !config.no_irc).then(|| config.irc_tls_port.unwrap_or(DEFAULT_IRC_TLS_PORT))
        },
        optional: |config| config.irc_tls_port.is_none(),
        pool: Pool::Chat,
        busy: |_| None,
        serve: serve_irc,
        task: "the IRC TLS listener",
    },
];

/// The operator's listener: HTTP, with places of its own, never listed among the clients.
pub(crate) const ADMIN: Row = Row {
    name: "admin",
    tls: false,
    door: TraceDoor::Http,
    what: "the admin listener",
    flag: "--admin-addr",
    port: |_| None,
    optional: |config| config.admin_addr.is_none(),
    pool: Pool::Chat,
    busy: http::busy_answer,
    serve: serve_admin,
    task: "the admin listener",
};

fn serve_admin(cx: &Context) -> Serve {
    let state = Arc::new(admin::AdminState {
        chat: cx.chat.clone(),
        conns: cx.conns.clone(),
        metrics: Arc::default(),
        node_id: cx.node_id.to_string(),
        token: cx
            .config
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(admin::AdminState::token_digest),
        stop: cx.stop.clone(),
        started: std::time::Instant::now(),
    });
    let app = admin::router(state);
    Arc::new(move |stream, conn| http::serve_connection(stream, conn, app.clone(), None).boxed())
}

/// A bound door.
pub(crate) struct Door {
    pub row: &'static Row,
    pub listener: TcpListener,
}

impl Door {
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts connections until `stop`, admitting them into `pool` and serving each one in
    /// `tracker`; the place in the pool is held until the connection ends.
    pub async fn accept(self, pool: limits::Door, serve: Serve, with: Accepting) {
        let row = self.row;
        let Accepting {
            stop,
            tracker,
            conns,
            tls,
        } = with;
        let shutdown = stop.clone();
        let tls = if row.tls {
            Some(tls.expect("a TLS door is bound only with a certificate"))
        } else {
            None
        };
        listener::accept_loop(
            row.name,
            self.listener,
            pool,
            row.busy,
            stop,
            tracker,
            move |tcp, peer, place| {
                let conn = conns.open(row.door, row.tls, peer, &shutdown);
                let (serve, tls) = (serve.clone(), tls.clone());
                async move {
                    let stream = match tls {
                        None => Stream::Plain(tcp),
                        // Boxed: a plain connection's task does not carry a handshake's state.
                        Some(tls) => match Box::pin(tls.accept(tcp)).await {
                            Ok(tls) => Stream::Tls(Box::new(tls)),
                            Err(e) => {
                                tracing::debug!(%peer, door = row.name, error = %e, "TLS handshake failed");
                                crate::metrics::METRICS.tls_handshake_failed(row.name);
                                return;
                            }
                        },
                    };
                    serve(stream, conn.0.clone()).await;
                    drop(conn);
                    drop(place);
                }
            },
        )
        .await;
    }
}

fn line_busy(refusal: Refusal) -> Option<Vec<u8>> {
    Some(format!("ERR SERVER_BUSY {}\r\n", refusal.reason()).into_bytes())
}

fn irc_busy(refusal: Refusal) -> Option<Vec<u8>> {
    Some(format!("ERROR :Server busy: {}\r\n", refusal.reason()).into_bytes())
}

fn serve_irc(cx: &Context) -> Serve {
    let chat = cx.chat.clone();
    let mut settings = irc::IrcSettings::from_config(cx.config);
    settings.tracer = cx.tracer.cloned();
    let settings = Arc::new(settings);
    Arc::new(move |stream, conn| irc::client::serve(stream, conn, chat.clone(), settings.clone()).boxed())
}

fn serve_line(cx: &Context) -> Serve {
    let chat = cx.chat.clone();
    let settings = Arc::new(SessionSettings {
        tracer: cx.tracer.cloned(),
        ..SessionSettings::from_config(cx.config)
    });
    Arc::new(move |stream, conn| line::session::serve(stream, conn, chat.clone(), settings.clone()).boxed())
}

fn serve_http(cx: &Context) -> Serve {
    let state = Arc::new(http::AppState::new(
        cx.chat.clone(),
        cx.store.clone(),
        cx.node_id.to_string(),
        cx.listeners.clone(),
        cx.stop.clone(),
        cx.config.lab,
        &cx.config.allowed_host,
    ));
    let (app, tracer) = (http::router(state), cx.tracer.cloned());
    Arc::new(move |stream, conn| http::serve_connection(stream, conn, app.clone(), tracer.clone()).boxed())
}

fn serve_echo(cx: &Context) -> Serve {
    let settings = Arc::new(echo::EchoSettings::from_config(cx.config));
    let tracer = cx.tracer.cloned();
    Arc::new(move |stream, conn| match stream {
        Stream::Plain(tcp) => echo::serve(tcp, settings.clone(), conn, tracer.clone()).boxed(),
        // No TLS echo door is in the table: echo is the exercise about the raw bytes.
        Stream::Tls(_) => async {}.boxed(),
    })
}
