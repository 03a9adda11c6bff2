//! `chatd load`: a load generator for chatd's line protocol and HTTP facade (and for anything
//! that answers a line per request, like Redis's inline `PING`), to measure what a server does
//! under many connections and requests.
//!
//! Layout: [`conn`] opens connections (the phase every scenario starts with), [`driver`] runs
//! the closed request loop of `ping` and `http`, [`chat`] its own send-and-receive loop, and
//! [`stats`], [`report`], [`plot`] and [`progress`] turn what was measured into figures.
//! Every run is bounded in connections and time and stops by itself; it sends traffic only to
//! `--addr`.

pub mod chat;
pub mod conn;
pub mod connections;
pub mod driver;
pub mod http;
pub mod net;
pub mod ping;
pub mod plot;
pub mod progress;
pub mod report;
pub mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use self::progress::Progress;
use self::stats::Live;

/// `chatd load <scenario>`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Open (and hold) many connections: connect rate, failures by cause, server memory.
    Connections(connections::ConnectionsArgs),
    /// Pipelined one-line requests (PING): replies per second and latency.
    Ping(ping::PingArgs),
    /// Logged-in users SENDing to each other: acked/s, ack and delivery latency, exactly-once check.
    Chat(chat::ChatArgs),
    /// HTTP/1.1 keep-alive GETs: responses per second and latency.
    Http(http::HttpArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server to load, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Print one JSON object on standard output instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput and latency over time, and the latency distribution, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Generator threads: 1 runs everything on one thread, leaving the other cores to the server.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take to connect and be greeted.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Retries (with exponential backoff and jitter) after `ERR SERVER_BUSY`.
    #[arg(long, default_value_t = 4)]
    pub busy_retries: u32,
}

impl Common {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout.max(0.001))
    }
}

impl Scenario {
    fn common(&self) -> &Common {
        match self {
            Scenario::Connections(a) => &a.common,
            Scenario::Ping(a) => &a.common,
            Scenario::Chat(a) => &a.common,
            Scenario::Http(a) => &a.common,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Connections(_) => "connections",
            Scenario::Ping(_) => "ping",
            Scenario::Chat(_) => "chat",
            Scenario::Http(_) => "http",
        }
    }
}

/// Runs one scenario and prints its report; fails (exit 1) when a check failed.
pub fn main(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let common = args.scenario.common().clone();
    let runtime = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()?
    };
    let report = runtime.block_on(run(args.scenario))?;
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &common.plot {
        plot::draw(&report, path)?;
    }
    // Closing tens of thousands of sockets is quick; the runtime need not wait for stragglers.
    runtime.shutdown_background();
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `scenario` with a progress line, and returns its report.
pub async fn run(scenario: Scenario) -> anyhow::Result<report::Report> {
    let addr = &scenario.common().addr;
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} has no address"))?;
    let live = Arc::new(Live::new());
    let progress = Progress::start(live.clone(), format!("{} {target}", scenario.name()));
    let report = match scenario {
        Scenario::Connections(a) => connections::run(a, target, live).await,
        Scenario::Ping(a) => ping::run(a, target, live).await,
        Scenario::Chat(a) => chat::run(a, target, live).await,
        Scenario::Http(a) => http::run(a, target, live).await,
    };
    progress.finish();
    report
}
