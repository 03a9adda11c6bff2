//! `http`: HTTP/1.1 keep-alive requests over a minimal client of our own (requests written in
//! batches, responses framed in place), like wrk or vegeta: any method, a body (with a value
//! unique to each request where a route needs one, see [`crate::request`]), extra headers; a
//! closed loop or an open loop at `--rate`. Reports responses per second, latency, the
//! status-code breakdown and bytes per second.

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use crate::conn::open_all;
use crate::driver::run_all;
use crate::framer::HttpReply;
use crate::ping::Timing;
use crate::report::Measured;
use crate::request::Request;
use crate::{Common, Ctx};

#[derive(Debug, Clone, Args, Serialize)]
pub struct HttpArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: Common,
    /// Connections (each keeps one request in flight unless --pipeline says more).
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub timing: Timing,
    /// The method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The path (and query).
    #[arg(long, default_value = "/info")]
    pub path: String,
    /// The request body (JSON unless a --header says otherwise); `{{unique}}`, `{{n}}` and
    /// `{{conn}}` are replaced per request (see docs/load.md).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the body (a template like --body) from this file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<std::path::PathBuf>,
    /// An extra header, `Name: value`; repeat for more.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    #[serde(skip)]
    pub headers: Vec<String>,
    /// Send `Authorization: Bearer TOKEN`.
    #[arg(long)]
    #[serde(skip)]
    pub bearer: Option<String>,
    /// Requests in flight per connection (HTTP/1.1 pipelining, closed loop).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
}

impl HttpArgs {
    /// The request, checked before any connection is opened.
    pub fn request(&self, host: &str, run_id: &str) -> anyhow::Result<Request> {
        let body = match (&self.body, &self.body_file) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --body-file {}", path.display()))?,
            ),
            (None, None) => None,
        };
        let mut headers = self.headers.clone();
        if let Some(token) = &self.bearer {
            headers.push(format!("Authorization: Bearer {token}"));
        }
        let method = self.method.to_ascii_uppercase();
        Request::http(&method, host, &self.path, &headers, body.as_deref(), run_id)
            .map_err(anyhow::Error::msg)
    }
}

pub async fn run(args: &HttpArgs, ctx: &Ctx) -> anyhow::Result<Measured> {
    let request = args.request(&ctx.common.addr[0], &ctx.run_id)?;
    let mine = ctx.share(args.conns);
    let mut m = Measured::default();
    ctx.check_open_files(mine.len(), &mut m.warnings);
    let mut setup = ctx.setup(mine, args.conns);
    setup.greeting = false;
    setup.buf_size = 64 * 1024;
    setup.bound = crate::conn::Bound::HTTP_HEAD;
    let (conns, connect) = open_all(setup, ctx.live.clone(), ctx.epoch).await;
    m.connect = connect;
    let load = args.timing.load(ctx, args.conns, request, args.pipeline);
    m.run = Some(run_all(conns, HttpReply::new, load, ctx.epoch, "responses").await);
    Ok(m)
}
