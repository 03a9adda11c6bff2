//! `ping`: one-line requests (chatd's `PING`, or Redis's inline `PING`), a closed loop with
//! `--pipeline` in flight per connection or an open loop at `--rate`: replies per second and
//! their latency.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::conn::open_all;
use crate::driver::{run_all, Load};
use crate::framer::{IrcPong, LineReply};
use crate::report::Measured;
use crate::request::Request;
use crate::{Common, Ctx, Proto};

#[derive(Debug, Clone, Args, Serialize)]
pub struct PingArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Requests in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub timing: Timing,
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

/// How long a request scenario runs, and how fast.
#[derive(Debug, Clone, Args, Serialize)]
pub struct Timing {
    /// Seconds to issue requests (default 10; with --requests, a limit).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Requests per second over all connections (open loop: latency counts from when each
    /// request was due); without it, a closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Issue this many requests in all, instead of running for --duration.
    #[arg(long)]
    pub requests: Option<u64>,
}

impl Timing {
    /// How long the timed phase may issue requests.
    pub fn duration(&self) -> Duration {
        let secs = match (self.duration, self.requests, self.rate) {
            (Some(d), _, _) => d,
            // At a rate, N requests take N / rate seconds.
            (None, Some(n), Some(r)) if r > 0.0 => n as f64 / r,
            (None, Some(_), _) => 3600.0,
            (None, None, _) => 10.0,
        };
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The load of this process, sending `request`.
    pub fn load(&self, ctx: &Ctx, total_conns: usize, request: Request, pipeline: usize) -> Load {
        let start = Instant::now();
        let duration = self.duration();
        let share = ctx.share(total_conns).len() as f64 / total_conns.max(1) as f64;
        ctx.live.set_phase(
            "running",
            self.requests
                .map(|n| (n as f64 * share) as u64)
                .or(self.rate.map(|r| (r * share * duration.as_secs_f64()) as u64))
                .unwrap_or(0),
            Some(start + duration),
        );
        Load {
            request,
            pipeline,
            rate: self.rate.map(|r| r * share),
            requests: self.requests.map(|n| {
                let (i, parts) = ctx.common.part();
                n * (i as u64 + 1) / parts as u64 - n * i as u64 / parts as u64
            }),
            start,
            deadline: start + duration,
            drain: ctx.drain(),
            stop: ctx.stop.clone(),
            live: ctx.live.clone(),
        }
    }
}

pub async fn run(args: &PingArgs, ctx: &Ctx) -> anyhow::Result<Measured> {
    let mine = ctx.share(args.conns);
    let mut m = Measured::default();
    ctx.check_open_files(mine.len(), &mut m.warnings);
    let mut setup = ctx.setup(mine, args.conns);
    let irc = ctx.common.proto == Proto::Irc;
    setup.greeting = !args.no_greeting && !irc;
    setup.buf_size = (args.pipeline * 64).clamp(4096, 64 * 1024);
    let (conns, connect) = open_all(setup, ctx.live.clone(), ctx.epoch).await;
    m.connect = connect;
    let run = if irc {
        // An IRC PING with a token; the reply is `:server PONG server :p`.
        let request = Request::Fixed(b"PING :p\r\n".to_vec());
        let load = args.timing.load(ctx, args.conns, request, args.pipeline);
        run_all(conns, || IrcPong, load, ctx.epoch, "replies").await
    } else {
        let expect = args.expect.clone().into_bytes();
        let request = Request::Fixed(format!("{}\r\n", args.line).into_bytes());
        let load = args.timing.load(ctx, args.conns, request, args.pipeline);
        let framer = || LineReply {
            expect: expect.clone(),
        };
        run_all(conns, framer, load, ctx.epoch, "replies").await
    };
    m.run = Some(run);
    Ok(m)
}
