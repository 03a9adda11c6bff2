//! `ping`: a closed loop of one-line requests (chatd's `PING`, or Redis's inline `PING`) with
//! `--pipeline` in flight per connection: replies per second and their latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::conn::{open_all, Setup};
use crate::driver::{run_all, LineReply};
use crate::net;
use crate::report::Report;
use crate::stats::Live;
use crate::Common;

#[derive(Debug, Clone, Args, Serialize)]
pub struct PingArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The request line (sent with CR LF).
    #[arg(long, default_value = "PING")]
    pub line: String,
    /// What a successful reply line starts with (`+PONG` for Redis).
    #[arg(long, default_value = "OK PONG")]
    pub expect: String,
    /// The server sends no greeting (Redis).
    #[arg(long)]
    pub no_greeting: bool,
}

pub async fn run(args: PingArgs, target: SocketAddr, live: Arc<Live>) -> anyhow::Result<Report> {
    net::raise_open_files_limit();
    let setup = Setup {
        target,
        conns: args.conns,
        concurrency: args.common.connect_concurrency,
        timeout: args.common.connect_timeout(),
        busy_retries: args.common.busy_retries,
        greeting: !args.no_greeting,
        probe: None,
        auth: None,
        buf_size: (args.pipeline * 64).clamp(4096, 64 * 1024),
        sources: net::source_addrs(target, args.conns),
    };
    live.set_phase("connecting");
    let (conns, connect, _) = open_all(Arc::new(setup), live.clone()).await;
    live.set_phase("running");
    let expect = args.expect.clone().into_bytes();
    let (run, series) = run_all(
        conns,
        || LineReply {
            expect: expect.clone(),
        },
        format!("{}\r\n", args.line).into_bytes(),
        args.pipeline,
        Duration::from_secs_f64(args.duration),
        "replies",
        live,
    )
    .await;
    Ok(Report::requests(
        "ping",
        target.to_string(),
        serde_json::to_value(&args)?,
        connect,
        (run, &series),
        ("reply", "replies / s"),
    ))
}
