//! `http`: HTTP/1.1 keep-alive GETs in a closed loop, over a minimal client of our own (one
//! request written per reply read, responses framed in place): responses per second and
//! their latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::conn::{open_all, Setup};
use crate::driver::{run_all, HttpReply};
use crate::net;
use crate::report::Report;
use crate::stats::Live;
use crate::Common;

#[derive(Debug, Clone, Args, Serialize)]
pub struct HttpArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Connections (each keeps one request in flight unless --pipeline says more).
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The path (and query) to GET.
    #[arg(long, default_value = "/info")]
    pub path: String,
    /// Send `Authorization: Bearer TOKEN`.
    #[arg(long)]
    #[serde(skip)]
    pub bearer: Option<String>,
    /// Requests in flight per connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
}

/// The request, written once and sent as is for every GET.
pub fn request(host: &str, path: &str, bearer: Option<&str>) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chatd-load\r\nAccept: */*\r\n");
    if let Some(token) = bearer {
        r.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

pub async fn run(args: HttpArgs, target: SocketAddr, live: Arc<Live>) -> anyhow::Result<Report> {
    net::raise_open_files_limit();
    let setup = Setup {
        target,
        conns: args.conns,
        concurrency: args.common.connect_concurrency,
        timeout: args.common.connect_timeout(),
        busy_retries: args.common.busy_retries,
        greeting: false,
        probe: None,
        auth: None,
        buf_size: 64 * 1024,
        sources: net::source_addrs(target, args.conns),
    };
    live.set_phase("connecting");
    let (conns, connect, _) = open_all(Arc::new(setup), live.clone()).await;
    live.set_phase("running");
    let (run, series) = run_all(
        conns,
        HttpReply::new,
        request(&args.common.addr, &args.path, args.bearer.as_deref()),
        args.pipeline,
        Duration::from_secs_f64(args.duration),
        "responses",
        live,
    )
    .await;
    Ok(Report::requests(
        "http",
        target.to_string(),
        serde_json::to_value(&args)?,
        connect,
        (run, &series),
        ("response", "responses / s"),
    ))
}
