//! `connections`: open many connections (optionally each logged in as its own user), hold them,
//! and measure how fast they opened, what failed, and (with `--server-pid`) what they cost the
//! server in memory.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use crate::conn::{Auth, Conn, Opener, Probe, Users};
use crate::report::{Held, Measured};
use crate::{Common, Ctx};

#[derive(Debug, Clone, Args, Serialize)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Log each connection in as its own user (REGISTER if missing, then AUTH: argon2 hashes).
    #[arg(long)]
    pub auth: bool,
    /// With --auth: name the users PREFIX_0, PREFIX_1, ... and reuse them in later runs
    /// (register if missing); without it every run registers users of its own.
    #[arg(long, value_name = "PREFIX")]
    pub user_prefix: Option<String>,
    /// Seconds to hold the connections open once they are all opened.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
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

pub async fn run(args: &ConnectionsArgs, ctx: &Ctx) -> anyhow::Result<Measured> {
    let mine = ctx.share(args.conns);
    let mut m = Measured::default();
    ctx.check_open_files(mine.len(), &mut m.warnings);
    let mut setup = ctx.setup(mine.clone(), args.conns);
    setup.greeting = !args.no_greeting && ctx.common.proto == crate::Proto::Line;
    setup.probe = args.probe.as_ref().map(|p| Probe {
        line: format!("{p}\r\n").into_bytes(),
        expect: args.expect.clone().into_bytes(),
    });
    if args.auth {
        setup.auth = Some(Auth {
            users: Arc::new(Users::of_run(args.user_prefix.as_deref(), &ctx.run_id)?),
            concurrency: args.auth_concurrency,
            timeout: Duration::from_secs(120),
        });
    }
    // Idle connections read a line or two: keep the generator's own memory small.
    setup.buf_size = 256;
    let first = mine.start + args.baseline_after.min(mine.len());
    let mut opener = Opener::new(Arc::new(setup), ctx.live.clone(), ctx.epoch);
    if args.baseline_after > 0 {
        opener.open(mine.start..first).await;
        if let Some(rss) = &ctx.rss {
            rss.baseline(opener.opened());
        }
    }
    opener.open(first..mine.end).await;
    let (mut conns, connect) = opener.finish();
    m.connect = connect;

    let hold = Duration::from_secs_f64(args.hold.max(0.0));
    ctx.live
        .set_phase("holding", 0, Some(std::time::Instant::now() + hold));
    tokio::select! {
        _ = tokio::time::sleep_until(Instant::now() + hold) => {}
        _ = ctx.stop.cancelled() => {}
    }
    let held_for = ctx.now() - m.connect.ended;
    // An IRC server may speak after the welcome (notices, PINGs): only a close counts there.
    let chatter = ctx.common.proto == crate::Proto::Irc;
    let dropped = conns
        .iter_mut()
        .map(|c| !still_open(c, chatter))
        .filter(|gone| *gone)
        .count() as u64;
    m.held = Some(Held {
        secs: held_for.max(0.0),
        dropped,
    });
    ctx.live.set_phase("closing", conns.len() as u64, None);
    for conn in conns.drain(..) {
        drop(conn);
        ctx.live.closed();
        ctx.live.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(m)
}

/// Whether the server still keeps `conn` open: it has not closed it, nor (unless `chatter`
/// is allowed) said anything.
fn still_open(conn: &mut Conn, chatter: bool) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match conn.stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Ok(n) if n > 0 && chatter => continue,
            _ => return false,
        }
    }
}
