//! `--procs N`: the scenario in N generator processes (this same binary, re-executed), each
//! with its own open-files budget, its own share of the connections and rate, and its own
//! range of source addresses. Each child writes its progress and, at the end, its raw
//! measurements as JSON lines on standard output; the parent adds their histograms and counts
//! ([`Measured::merge`]) and reports the whole as one run.
//!
//! The children run in process groups of their own, so a terminal's Ctrl-C reaches the parent
//! only; the parent asks each child to stop exactly once, with a line on its standard input,
//! and merges what they report. A child whose parent is gone sees its input end, and stops.

use std::ffi::OsString;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio_util::sync::CancellationToken;

use crate::progress::{Progress, Rate, Snapshot};
use crate::report::{Measured, Report};
use crate::rss::RssMonitor;
use crate::stats::Track;
use crate::stop::{self, Requests};
use crate::{meta, net, output, unix_ns, Scenario};

/// Options only the parent acts on: (flag, whether it takes a value; `None`: an optional one).
const PARENT_ONLY: [(&str, Option<bool>); 7] = [
    ("--procs", Some(true)),
    ("--json", None),
    ("--plot", Some(true)),
    ("--hdr-out", Some(true)),
    ("--timeline-csv", Some(true)),
    ("--server-pid", Some(true)),
    ("--server-metrics", Some(true)),
];

/// The command line for a child: ours without the options only the parent acts on.
pub fn child_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let text = args[i].to_string_lossy();
        let flag = text.split('=').next().unwrap_or_default();
        match PARENT_ONLY.iter().find(|(f, _)| *f == flag) {
            Some((_, takes)) if !text.contains('=') => {
                let next_is_value = args
                    .get(i + 1)
                    .is_some_and(|a| !a.to_string_lossy().starts_with('-'));
                i += match takes {
                    Some(true) => 2,
                    None if next_is_value => 2,
                    _ => 1,
                };
            }
            Some(_) => i += 1,
            None => {
                out.push(args[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// What one process reported of itself, to check the merge against.
#[derive(Debug, Clone, Serialize)]
pub struct PartSummary {
    pub attempted: u64,
    pub opened: u64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub latency_count: u64,
    pub latency_max_us: f64,
}

impl PartSummary {
    fn of(m: &Measured) -> PartSummary {
        let r = m.run.as_ref();
        let l = r.map(|r| r.series.latency()).unwrap_or_default();
        PartSummary {
            attempted: m.connect.attempted,
            opened: m.connect.opened,
            sent: r.map_or(0, |r| r.sent),
            ok: r.map_or(0, |r| r.ok),
            errors: r.map_or(0, |r| r.errors),
            latency_count: l.count,
            latency_max_us: l.max_us,
        }
    }
}

pub fn parent(scenario: &Scenario) -> anyhow::Result<ExitCode> {
    let common = scenario.common().clone();
    if let Scenario::Rooms(_) = scenario {
        anyhow::bail!("rooms runs in one generator process: leave out --procs (--threads uses more cores)");
    }
    if let Scenario::Connections(a) = scenario {
        if a.baseline_after > 0 {
            anyhow::bail!("--baseline-after needs one generator process: leave out --procs");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        // Listening from the start: a stop request from now on is passed on, never lost.
        let requests = Requests::new(false);
        let open_files = net::raise_open_files_limit();
        let targets = net::resolve(&common.addr).await?;
        let epoch = Instant::now();
        let epoch_unix_ns = unix_ns();
        let rss = RssMonitor::for_servers(&common.server_pid, targets.len(), epoch)?;
        let metrics_before = crate::server_metrics::before(&common.server_metrics).await?;
        let run_id = common
            .run_id
            .clone()
            .unwrap_or_else(crate::conn::Users::fresh_prefix);
        let exe = std::env::current_exe().context("cannot find this program to run it again")?;
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let base = child_args(&args);
        let n = common.procs;
        let snapshots = Arc::new(Mutex::new(vec![Snapshot::default(); n]));
        let mut children = Vec::new();
        let mut inputs = Vec::new();
        let mut readers = tokio::task::JoinSet::new();
        for i in 0..n {
            let mut command = Command::new(&exe);
            command
                .args(&base)
                .args(["--part", &format!("{i}/{n}"), "--run-id", &run_id])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            #[cfg(unix)]
            command.process_group(0);
            let mut child = command
                .spawn()
                .with_context(|| format!("cannot start generator process {i}"))?;
            inputs.push(child.stdin.take().expect("piped"));
            let stdout = child.stdout.take().expect("piped");
            let snapshots = snapshots.clone();
            readers.spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut part = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if let Some(p) = value.get("progress") {
                        if let Ok(s) = serde_json::from_value::<Snapshot>(p.clone()) {
                            snapshots.lock().expect("no panics")[i] = s;
                        }
                    } else if let Some(p) = value.get("part") {
                        part = Some(serde_json::from_value::<Measured>(p.clone()).map_err(|e| e.to_string()));
                    }
                }
                (i, part)
            });
            children.push(child);
        }
        let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
        let stopped = CancellationToken::new();
        let forward = tokio::spawn(forward(requests, inputs, pids, stopped.clone()));
        let progress = show_progress(
            snapshots.clone(),
            format!("{} {} x{n}", scenario.name(), common.addr.join(",")),
        );
        let mut parts: Vec<Option<Measured>> = vec![None; n];
        let mut problems = Vec::new();
        while let Some(done) = readers.join_next().await {
            let (i, part) = done.expect("readers do not panic");
            match part {
                Some(Ok(m)) => parts[i] = Some(m),
                Some(Err(e)) => {
                    problems.push(format!("generator process {i} sent an unreadable report: {e}"))
                }
                None => problems.push(format!("generator process {i} ended without a report")),
            }
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(status) = child.wait().await {
                if !status.success() && parts[i].is_none() {
                    problems.push(format!("generator process {i} exited with {status}"));
                }
            }
        }
        forward.abort();
        progress.finish();
        let (merged, summaries) = merge_parts(
            epoch_unix_ns,
            parts.into_iter().flatten().collect(),
            problems,
            stopped.is_cancelled(),
            crate::Ctx::total_of(scenario),
        )?;
        let (memory, rss_tracks) = match &rss {
            Some(m) => m.finish(&merged.connect.per_node),
            None => (Vec::new(), Vec::new()),
        };
        let mut report = Report::build(
            merged,
            meta::Meta::now(epoch_unix_ns, n, open_files),
            scenario.name(),
            common.addr.clone(),
            scenario.params(),
            (memory, rss_tracks),
            &common.limits(),
        );
        report.parts = summaries;
        crate::server_metrics::after(&mut report, &common.server_metrics, metrics_before).await;
        output(&report, &common)
    });
    runtime.shutdown_background();
    code
}

/// What the children reported, merged, and each one's own summary; `problems` say what went
/// wrong with the others. A part missing from a run that ran to the end leaves its connections
/// missing, and the run fails. From a run a signal stopped (`stopped`), it is a warning only: a
/// stopped run is judged "interrupted", never failed for what the stop cut short.
fn merge_parts(
    epoch_unix_ns: u64,
    parts: Vec<Measured>,
    problems: Vec<String>,
    stopped: bool,
    total: Option<u64>,
) -> anyhow::Result<(Measured, Vec<PartSummary>)> {
    if parts.is_empty() && !stopped {
        anyhow::bail!("no generator process reported: {}", problems.join("; "));
    }
    let mut merged = Measured {
        epoch_unix_ns,
        ..Measured::default()
    };
    let mut tracks = Vec::new();
    for p in &parts {
        merged.merge(p);
        tracks.push(((p.epoch_unix_ns as f64 - epoch_unix_ns as f64) / 1e9, &p.open));
    }
    merged.open = Track::sum(&tracks, 0.1);
    merged.interrupted |= stopped;
    if !problems.is_empty() && !merged.interrupted {
        merged.connect.attempted = merged
            .connect
            .attempted
            .max(total.unwrap_or(merged.connect.attempted));
    }
    merged.warnings.extend(problems);
    let summaries = parts.iter().map(PartSummary::of).collect();
    Ok((merged, summaries))
}

/// Passes the first stop request on to every child, once: a line on its standard input (a
/// child that ended already no longer reads it). A signal a second or more later ends the
/// children and the parent at once, without a report.
async fn forward(
    mut requests: Requests,
    mut inputs: Vec<ChildStdin>,
    pids: Vec<u32>,
    stopped: CancellationToken,
) {
    let mut first = None;
    loop {
        let request = requests.next().await;
        if stop::insists(request, first) {
            eprintln!("chatd load: stopped again: quitting now, without a report");
            for pid in &pids {
                kill(*pid);
            }
            std::process::exit(i32::from(crate::EXIT_INTERRUPTED));
        }
        if first.is_none() {
            first = Some(Instant::now());
            eprintln!(
                "chatd load: stopping {} generator processes; the report covers the run so far \
                 (stop again after a second to quit at once)",
                inputs.len()
            );
            stopped.cancel();
            for input in &mut inputs {
                let _ = input.write_all(stop::STOP_LINE).await;
            }
        }
    }
}

/// Ends a child at once (SIGKILL).
#[cfg(unix)]
fn kill(pid: u32) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill(_pid: u32) {}

/// The parent's progress line: the children's counters added up.
fn show_progress(snapshots: Arc<Mutex<Vec<Snapshot>>>, title: String) -> Progress {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return Progress::none();
    }
    let bar = Progress::bar(title);
    let shown = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut rate = Rate::default();
        let mut every = tokio::time::interval(Duration::from_millis(250));
        loop {
            every.tick().await;
            let all = snapshots.lock().expect("no panics").clone();
            let mut sum = Snapshot {
                // The phase of the process furthest behind.
                phase: all.iter().map(|s| s.phase.clone()).min().unwrap_or_default(),
                ..Snapshot::default()
            };
            for s in &all {
                sum.done += s.done;
                sum.target += s.target;
                sum.open += s.open;
                sum.errors += s.errors;
                sum.left = match (sum.left, s.left) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            let r = rate.update(&sum);
            shown.set_message(sum.line(r));
            shown.tick();
        }
    });
    Progress::with(bar, ticker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part missing from a stopped run is a warning; from a run that ran to the end, its
    /// connections count as not opened.
    #[test]
    fn a_stopped_run_is_not_failed_for_a_missing_part() {
        let part = Measured {
            connect: crate::report::ConnectRaw {
                attempted: 2500,
                opened: 2500,
                ..Default::default()
            },
            ..Measured::default()
        };
        let problems = || vec!["generator process 1 ended without a report".to_string()];
        let (m, summaries) = merge_parts(0, vec![part.clone()], problems(), true, Some(5000)).unwrap();
        assert!(m.interrupted);
        assert_eq!((m.connect.attempted, m.connect.opened), (2500, 2500));
        assert_eq!(m.warnings, problems());
        assert_eq!(summaries.len(), 1);
        let (m, _) = merge_parts(0, vec![part], problems(), false, Some(5000)).unwrap();
        assert!(!m.interrupted);
        assert_eq!((m.connect.attempted, m.connect.opened), (5000, 2500));
        assert!(merge_parts(0, vec![], problems(), false, Some(5000)).is_err());
        let (m, _) = merge_parts(0, vec![], problems(), true, Some(5000)).unwrap();
        assert!(m.interrupted && m.connect.attempted == 0);
    }

    #[test]
    fn children_leave_out_what_the_parent_does() {
        let args: Vec<OsString> = [
            "load",
            "ping",
            "--addr",
            "127.0.0.1:1",
            "--procs",
            "2",
            "--json",
            "--conns",
            "4",
            "--plot",
            "p.svg",
            "--server-pid=5",
            "--json",
            "out.json",
            "--hdr-out",
            "d",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<String> = child_args(&args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["load", "ping", "--addr", "127.0.0.1:1", "--conns", "4"]);
    }
}
