//! `connections`: open many connections (optionally each logged in as its own user), hold them,
//! and measure how fast they opened, what failed, and what they cost the server in memory.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use crate::conn::{Auth, Conn, Opener, Probe, Setup, Users};
use crate::net::{self, rss_kib};
use crate::report::{Plot, Report};
use crate::stats::Live;
use crate::Common;

#[derive(Debug, Clone, Args, Serialize)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// REGISTER and AUTH each connection as its own user (costs the server two argon2 hashes).
    #[arg(long)]
    pub auth: bool,
    /// Seconds to hold the connections open once they are all opened.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// The server's process id, to read its RSS before and while holding (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server sends no greeting (e.g. Redis): a connection is open once connected.
    #[arg(long)]
    pub no_greeting: bool,
    /// A line each connection sends once open, e.g. PING; its reply must start with --expect.
    #[arg(long)]
    pub probe: Option<String>,
    /// What the reply to --probe starts with.
    #[arg(long, default_value = "OK PONG", requires = "probe")]
    pub expect: String,
    /// REGISTER/AUTH pairs in flight at once with --auth.
    #[arg(long, default_value_t = 8)]
    pub auth_concurrency: usize,
    /// Read the server's "before" RSS once this many connections are open, and count KiB per
    /// connection over the rest only: leaves out what the first ones warm up once (e.g. the
    /// memory argon2 hashing keeps with --auth).
    #[arg(long, default_value_t = 0)]
    pub baseline_after: usize,
}

/// The server's memory before and while holding the connections.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub server_pid: u32,
    /// RSS before connecting, or once `baseline_after` connections were open.
    pub before_kib: u64,
    /// Open connections when `before_kib` was read.
    pub before_conns: u64,
    /// The largest RSS seen while holding.
    pub holding_kib: u64,
    /// (holding - before) / (open connections - before_conns).
    pub per_conn_kib: f64,
}

/// How often the server's RSS is read while holding.
const RSS_EVERY: Duration = Duration::from_millis(250);

pub async fn run(
    args: ConnectionsArgs,
    target: std::net::SocketAddr,
    live: Arc<Live>,
) -> anyhow::Result<Report> {
    let limit = net::raise_open_files_limit();
    if args.conns as u64 + 32 > limit {
        tracing::warn!(
            limit,
            conns = args.conns,
            "the open-files limit is below the connections asked for; expect 'other' failures"
        );
    }
    let setup = Setup {
        target,
        conns: args.conns,
        concurrency: args.common.connect_concurrency,
        timeout: args.common.connect_timeout(),
        busy_retries: args.common.busy_retries,
        greeting: !args.no_greeting,
        probe: args.probe.as_ref().map(|p| Probe {
            line: format!("{p}\r\n").into_bytes(),
            expect: args.expect.clone().into_bytes(),
        }),
        auth: args.auth.then(|| Auth {
            users: Arc::new(Users::for_this_run()),
            concurrency: args.auth_concurrency,
            timeout: Duration::from_secs(120),
        }),
        // Idle connections read a line or two: keep the generator's own memory small.
        buf_size: 256,
        sources: net::source_addrs(target, args.conns),
    };
    live.set_phase(if args.auth { "registering" } else { "connecting" });
    let first = args.baseline_after.min(args.conns);
    let mut opener = Opener::new(Arc::new(setup), live.clone());
    opener.open(0..first).await;
    let before_conns = opener.opened() as u64;
    let before = args.server_pid.map(rss_kib).transpose()?;
    opener.open(first..args.conns).await;
    let (mut conns, connect, series) = opener.finish();

    live.set_phase("holding");
    let hold_end = Instant::now() + Duration::from_secs_f64(args.hold);
    let mut holding = 0;
    loop {
        if let Some(pid) = args.server_pid {
            holding = holding.max(rss_kib(pid)?);
        }
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        tokio::time::sleep(RSS_EVERY.min(hold_end - now)).await;
    }
    let dropped = conns.iter().filter(|c| !still_open(c)).count() as u64;
    let memory = match (args.server_pid, before) {
        (Some(pid), Some(before)) => Some(Memory {
            server_pid: pid,
            before_kib: before,
            before_conns,
            holding_kib: holding,
            per_conn_kib: holding.saturating_sub(before) as f64
                / connect.opened.saturating_sub(before_conns).max(1) as f64,
        }),
        _ => None,
    };
    live.set_phase("closing");
    for _ in conns.drain(..) {
        live.closed();
    }

    let mut problems = Vec::new();
    if connect.opened == 0 && args.conns > 0 {
        problems.push("no connection could be opened".to_string());
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} connections were closed by the server while held"
        ));
    }
    let params = serde_json::to_value(&args)?;
    Ok(Report {
        scenario: "connections",
        target: target.to_string(),
        params,
        passed: problems.is_empty(),
        problems,
        plot: Plot {
            throughput_label: "connections opened / s",
            throughput: series.intervals(),
            latencies: vec![("connect", series.intervals())],
            distributions: vec![("connect", series.distribution())],
        },
        connect,
        run: None,
        delivery: None,
        memory,
        held: Some(crate::report::Held {
            secs: args.hold,
            dropped,
        }),
    })
}

/// Whether the server still keeps `conn` open (it has not closed it, nor said anything).
fn still_open(conn: &Conn) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
