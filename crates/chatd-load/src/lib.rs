//! `chatd load`: a load generator for chatd's line protocol and HTTP facade (and for anything
//! that answers a line per request, like Redis's inline `PING`), to measure what a server, or
//! several nodes of one deployment, do under many connections and requests, with a verdict a
//! script can trust (the exit status).
//!
//! Layout: [`conn`] opens connections (the phase every scenario starts with), [`driver`] runs
//! the request loops of `ping` and `http` (closed, or open at a `--rate`), [`chat`] and
//! [`rooms`] their own send-and-receive loops; [`stats`] records, [`report`] turns what was measured into figures,
//! [`verdict`] judges them, [`plot`], [`export`] and [`progress`] show them; [`procs`] runs a
//! scenario in several processes and merges their measurements. Every run is bounded in
//! connections and time and stops by itself (or on SIGINT/SIGTERM, with the report so far);
//! it sends traffic only to `--addr`.

pub mod chat;
pub mod conn;
pub mod connections;
pub mod driver;
pub mod export;
pub mod framer;
pub mod http;
pub mod irc;
pub mod meta;
pub mod net;
pub mod ping;
pub mod plot;
pub mod procs;
pub mod progress;
pub mod report;
pub mod request;
pub mod rooms;
pub mod rss;
pub mod server_metrics;
pub mod stats;
pub mod stop;
pub mod tls;
pub mod verdict;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::conn::Setup;
use self::progress::Progress;
use self::report::{Measured, Report};
use self::rss::RssMonitor;
use self::stats::{Live, Track};

/// The exit status of a run a signal stopped (as a shell reports SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// `chatd load <scenario>`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// What the connections of a run speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Line,
    Irc,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Open (and hold) many connections: connect rate, failures by cause, server memory.
    Connections(connections::ConnectionsArgs),
    /// One-line requests (PING), pipelined or at a --rate: replies per second and latency.
    Ping(ping::PingArgs),
    /// Logged-in users SENDing to each other: acked/s, ack and delivery latency, exactly-once check.
    Chat(chat::ChatArgs),
    /// Rooms x members x senders: deliveries/s, SEND->delivery latency, exactly once and in order.
    Rooms(rooms::RoomsArgs),
    /// HTTP/1.1 keep-alive requests (any method, body, headers): responses per second, latency, statuses.
    Http(http::HttpArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct Common {
    /// The server to load, HOST:PORT. Repeat it for several nodes: connections and users are
    /// dealt out over them in turn.
    #[arg(long, required = true)]
    pub addr: Vec<String>,
    /// The protocol the connections speak: `line` (chatd's line protocol, or Redis with
    /// --no-greeting), or `irc` (any IRC server: each connection registers with NICK and USER
    /// and counts as open at the end of its MOTD; `ping` sends IRC PINGs; `chat` PRIVMSGs
    /// nicks and `rooms` channels, at a --rate). `irc` is for every scenario but http.
    #[arg(long, value_enum, default_value_t = Proto::Line)]
    pub proto: Proto,
    /// Print the report as one JSON object on standard output; with FILE, write it there (and
    /// print the table).
    #[arg(long, num_args = 0..=1, default_missing_value = "-", value_name = "FILE")]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// Draw the run over time and the latency distributions into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    #[serde(skip)]
    pub plot: Option<PathBuf>,
    /// Write each latency's HdrHistogram as an interval log (values in ns) into this directory.
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub hdr_out: Option<PathBuf>,
    /// Write every series per interval (and open connections, server RSS) into this CSV file.
    #[arg(long, value_name = "FILE.csv")]
    #[serde(skip)]
    pub timeline_csv: Option<PathBuf>,
    /// Generator threads per process: 1 runs everything on one thread, leaving the other cores
    /// to the server.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Generator processes, each with its own open-files budget and source addresses; their
    /// results are merged exactly (histograms added).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Connections started per second at most (a ramp); without it, as fast as they open.
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Seconds one connection may take to connect and be greeted.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Retries (with exponential backoff and jitter) after `ERR SERVER_BUSY`.
    #[arg(long, default_value_t = 4)]
    pub busy_retries: u32,
    /// Seconds to wait after the timed phase for replies still in flight.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// The server's pid, to follow its RSS over the run (Linux); repeat it, in --addr order,
    /// for several nodes.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Speak TLS to every --addr (chatd's --tls doors: 8443 line, 5443 HTTPS, 6697 IRC). The
    /// handshake counts in the connect time. The certificate is taken as it is unless
    /// --tls-ca names the one to trust.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: check the server's certificate against this one (PEM), e.g. chatd's
    /// generated chatd-tls-cert.pem.
    #[arg(long, requires = "tls", value_name = "FILE.pem")]
    pub tls_ca: Option<PathBuf>,
    /// chatd's `/metrics` (its admin listener, `http://127.0.0.1:9187/metrics`), read before
    /// and after the run: the server's own view (commits, batch sizes, pushes, refusals) is
    /// printed beside the generator's. Repeat for several nodes. A token, if the listener
    /// wants one, from CHATD_ADMIN_TOKEN.
    #[arg(long, value_name = "URL")]
    pub server_metrics: Vec<String>,
    /// Failed requests (errors, non-2xx, unanswered, broken connections) a passing run may have.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,
    /// Or the share of requests that may fail (0.01 = 1%).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// With --rate: the share of the asked rate that must be answered (replies per second in
    /// the timed phase) for the run to pass.
    #[arg(long, default_value_t = 0.95)]
    pub min_rate_ratio: f64,
    /// The run fails when the median latency is above this, in milliseconds (`250`, `2.5`,
    /// `250ms`, `1s`): replies for ping and http, acks and deliveries for chat (each a rule),
    /// the connect time for connections.
    #[arg(long, value_name = "MS", value_parser = verdict::parse_millis)]
    pub max_p50: Option<f64>,
    /// The run fails when the 99th percentile latency is above this, in milliseconds (as
    /// --max-p50); requests never answered count as slower than any answered.
    #[arg(long, value_name = "MS", value_parser = verdict::parse_millis)]
    pub max_p99: Option<f64>,
    /// Internal: this process is part I of N of a --procs run.
    #[arg(long, hide = true, value_name = "I/N")]
    #[serde(skip)]
    pub part: Option<String>,
    /// Internal: the run's id, shared by its processes.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub run_id: Option<String>,
}

impl Common {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout.max(0.001))
    }

    /// (index, count) of this process among the run's generator processes.
    pub fn part(&self) -> (usize, usize) {
        self.part
            .as_deref()
            .and_then(|p| p.split_once('/'))
            .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
            .unwrap_or((0, 1))
    }

    pub fn limits(&self) -> verdict::Limits {
        verdict::Limits {
            max_errors: self.max_errors,
            max_error_rate: self.max_error_rate,
            min_rate_ratio: self.min_rate_ratio,
            max_p50_ms: self.max_p50,
            max_p99_ms: self.max_p99,
        }
    }
}

impl Scenario {
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Connections(a) => &a.common,
            Scenario::Ping(a) => &a.common,
            Scenario::Chat(a) => &a.common,
            Scenario::Rooms(a) => &a.common,
            Scenario::Http(a) => &a.common,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connections(_) => "connections",
            Scenario::Ping(_) => "ping",
            Scenario::Chat(_) => "chat",
            Scenario::Rooms(_) => "rooms",
            Scenario::Http(_) => "http",
        }
    }

    /// The scenario's options and the common ones, for the report (secrets are left out).
    pub fn params(&self) -> serde_json::Value {
        let mut own = match self {
            Scenario::Connections(a) => serde_json::to_value(a),
            Scenario::Ping(a) => serde_json::to_value(a),
            Scenario::Chat(a) => serde_json::to_value(a),
            Scenario::Rooms(a) => serde_json::to_value(a),
            Scenario::Http(a) => serde_json::to_value(a),
        }
        .unwrap_or_default();
        if let (Some(own), Ok(serde_json::Value::Object(common))) =
            (own.as_object_mut(), serde_json::to_value(self.common()))
        {
            own.extend(common);
        }
        own
    }
}

/// What a scenario's run needs from its surroundings.
pub struct Ctx {
    /// The start of the run: every time in the report counts from here.
    pub epoch: Instant,
    pub epoch_unix_ns: u64,
    pub live: Arc<Live>,
    pub stop: CancellationToken,
    pub targets: Vec<SocketAddr>,
    pub common: Common,
    pub run_id: String,
    pub rss: Option<Arc<RssMonitor>>,
    pub open_files: u64,
    /// `--tls`: how each connection makes its handshake.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl Ctx {
    /// This process's share of `total` connections or users: a range of the run's indices.
    pub fn share(&self, total: usize) -> Range<usize> {
        let (i, n) = self.common.part();
        total * i / n.max(1)..total * (i + 1) / n.max(1)
    }

    /// This process's share of a rate over all processes' `total` connections.
    pub fn share_of_rate(&self, rate: f64, total: usize) -> f64 {
        rate * self.share(total).len() as f64 / total.max(1) as f64
    }

    /// How to open connections `indices` (of `total`): the one place a [`Setup`] is made;
    /// scenarios adjust what differs (greeting, probe, login, buffer size).
    pub fn setup(&self, indices: Range<usize>, total: usize) -> Setup {
        let c = &self.common;
        Setup {
            targets: self.targets.clone(),
            indices: indices.clone(),
            concurrency: c.connect_concurrency,
            connect_rate: c.connect_rate.map(|r| self.share_of_rate(r, total)),
            timeout: c.connect_timeout(),
            busy_retries: c.busy_retries,
            greeting: c.proto == Proto::Line,
            irc: (c.proto == Proto::Irc).then(conn::irc_nick_prefix),
            probe: None,
            auth: None,
            buf_size: 4096,
            bound: conn::Bound::LINE,
            sources: net::source_addrs(self.targets[0], indices.len(), c.part()),
            tls: self.tls.clone(),
            stop: self.stop.clone(),
        }
    }

    /// The connections or users a scenario asks for over all processes.
    pub fn total_of(scenario: &Scenario) -> Option<u64> {
        Some(match scenario {
            Scenario::Connections(a) => a.conns,
            Scenario::Ping(a) => a.conns,
            Scenario::Chat(a) => a.users,
            Scenario::Rooms(a) => a.rooms.saturating_mul(a.members),
            Scenario::Http(a) => a.conns,
        } as u64)
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.common.drain.max(0.0))
    }

    /// Warns when this process's open-files limit is below what it is about to open.
    pub fn check_open_files(&self, conns: usize, warnings: &mut Vec<String>) {
        if conns as u64 + 32 > self.open_files {
            let w = format!(
                "this generator process may open {} files but is to hold {conns} connections: \
                 expect 'Too many open files'; raise `ulimit -n` or use --procs",
                self.open_files
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
    }
}

/// Nanoseconds since 1970.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Runs one scenario (in `--procs` processes if asked) and prints its report; the exit status
/// says whether it passed.
pub fn main(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let common = args.scenario.common().clone();
    if common.procs > 1 && common.part.is_none() {
        return procs::parent(&args.scenario);
    }
    let runtime = runtime(common.threads)?;
    let code = runtime.block_on(async {
        let part_mode = common.part.is_some();
        let stop = stop::on_request(part_mode);
        let open_files = net::raise_open_files_limit();
        let targets = net::resolve(&common.addr).await?;
        let epoch = Instant::now();
        let epoch_unix_ns = unix_ns();
        let rss = if part_mode {
            None
        } else {
            RssMonitor::for_servers(&common.server_pid, targets.len(), epoch)?
        };
        let ctx = Ctx {
            epoch,
            epoch_unix_ns,
            live: Arc::new(Live::new()),
            stop,
            targets: targets.clone(),
            run_id: common.run_id.clone().unwrap_or_else(conn::Users::fresh_prefix),
            common: common.clone(),
            rss,
            open_files,
            tls: match common.tls {
                true => Some(tls::connector(common.tls_ca.as_deref())?),
                false => None,
            },
        };
        let progress = if part_mode {
            Progress::lines(ctx.live.clone())
        } else {
            Progress::start(
                ctx.live.clone(),
                format!("{} {}", args.scenario.name(), common.addr.join(",")),
            )
        };
        let metrics_before = if part_mode {
            Vec::new()
        } else {
            server_metrics::before(&common.server_metrics).await?
        };
        let measured = run_here(&args.scenario, &ctx).await;
        progress.finish();
        let measured = measured?;
        if part_mode {
            println!("{}", serde_json::json!({ "part": measured }));
            return Ok(ExitCode::SUCCESS);
        }
        let (memory, rss) = match &ctx.rss {
            Some(m) => m.finish(&measured.connect.per_node),
            None => (Vec::new(), Vec::new()),
        };
        let mut report = Report::build(
            measured,
            meta::Meta::now(epoch_unix_ns, 1, open_files),
            args.scenario.name(),
            common.addr.clone(),
            args.scenario.params(),
            (memory, rss),
            &common.limits(),
        );
        server_metrics::after(&mut report, &common.server_metrics, metrics_before).await;
        output(&report, &common)
    });
    // Closing tens of thousands of sockets is quick; the runtime need not wait for stragglers.
    runtime.shutdown_background();
    code
}

/// Runs the scenario in this process.
async fn run_here(scenario: &Scenario, ctx: &Ctx) -> anyhow::Result<Measured> {
    let sampler = {
        let (live, epoch) = (ctx.live.clone(), ctx.epoch);
        tokio::spawn(async move {
            let mut track = Track::default();
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let open = live.open.load(std::sync::atomic::Ordering::Relaxed);
                track
                    .points
                    .push((epoch.elapsed().as_secs_f64(), open.max(0) as f64));
                if track.points.len() > 200_000 {
                    return track;
                }
                if live.phase().0 == "done" {
                    return track;
                }
            }
        })
    };
    let result = match scenario {
        Scenario::Http(_) if ctx.common.proto == Proto::Irc => Err(anyhow::anyhow!(
            "--proto irc is for the connections, ping, chat and rooms scenarios; http speaks HTTP"
        )),
        Scenario::Connections(a) => connections::run(a, ctx).await,
        Scenario::Ping(a) => ping::run(a, ctx).await,
        Scenario::Chat(a) => chat::run(a, ctx).await,
        Scenario::Rooms(a) => rooms::run(a, ctx).await,
        Scenario::Http(a) => http::run(a, ctx).await,
    };
    ctx.live.set_phase("done", 0, None);
    let mut m = result?;
    m.open = sampler.await.unwrap_or_default();
    m.open.points.push((
        ctx.now(),
        ctx.live.open.load(std::sync::atomic::Ordering::Relaxed).max(0) as f64,
    ));
    m.epoch_unix_ns = ctx.epoch_unix_ns;
    m.interrupted |= ctx.stop.is_cancelled();
    Ok(m)
}

/// Prints (and writes) the report and what was asked for with it; the exit status.
pub fn output(report: &Report, common: &Common) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    match common.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => println!("{}", serde_json::to_string(report)?),
        Some(path) => {
            std::fs::write(path, serde_json::to_string_pretty(report)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            print!("{}", report.table());
        }
        None => print!("{}", report.table()),
    }
    if let Some(path) = &common.plot {
        plot::draw(report, path)?;
    }
    if let Some(dir) = &common.hdr_out {
        export::hdr_logs(report, dir)?;
    }
    if let Some(path) = &common.timeline_csv {
        export::timeline_csv(report, path)?;
    }
    Ok(if report.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
