//! A server's memory over the run (`--server-pid`, Linux): RSS sampled on the run's time axis,
//! a baseline, and KiB per connection, with a warning when the baseline was not taken on a
//! fresh, idle server (its allocator then reuses memory it freed earlier, and KiB per
//! connection reads low).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::net::{proc_status_kib, rss_kib};
use crate::stats::Track;

/// A server up longer than this at the baseline is not "freshly started".
const WARM_AFTER_SECS: f64 = 30.0;

/// How long process `pid` has been running (Linux: /proc/PID/stat and /proc/uptime).
#[cfg(not(target_os = "linux"))]
fn uptime_secs(_pid: u32) -> Option<f64> {
    None
}

#[cfg(target_os = "linux")]
fn uptime_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name in parentheses (which may hold spaces).
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let boot: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(boot - start_ticks / hz.max(1.0))
}

/// How often RSS is sampled.
const EVERY: Duration = Duration::from_millis(250);

/// One server's memory figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeMemory {
    pub server_pid: u32,
    /// RSS at the baseline: before connecting, or once `--baseline-after` connections were open.
    pub before_kib: u64,
    /// Connections open on this server when `before_kib` was read.
    pub before_conns: u64,
    /// The largest RSS seen after the baseline.
    pub holding_kib: u64,
    /// Connections opened to this server.
    pub conns: u64,
    /// (holding - before) / (conns - before_conns).
    pub per_conn_kib: f64,
    /// The server's peak RSS (VmHWM) before the baseline.
    pub peak_before_kib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

struct Baseline {
    at: f64,
    kib: Vec<u64>,
    conns: Vec<u64>,
    warnings: Vec<Option<String>>,
    hwm: Vec<u64>,
}

pub struct RssMonitor {
    pids: Vec<u32>,
    epoch: Instant,
    tracks: Mutex<Vec<Track>>,
    baseline: Mutex<Option<Baseline>>,
}

impl RssMonitor {
    /// The `--server-pid`s of a run against `nodes` addresses, sampled from now on, with a
    /// baseline of zero connections on each node; `None` without any.
    pub fn for_servers(
        pids: &[u32],
        nodes: usize,
        epoch: Instant,
    ) -> anyhow::Result<Option<Arc<RssMonitor>>> {
        if pids.is_empty() {
            return Ok(None);
        }
        if pids.len() != 1 && pids.len() != nodes {
            anyhow::bail!("give one --server-pid, or one per --addr in the same order");
        }
        let monitor = RssMonitor::start(pids.to_vec(), epoch)?;
        monitor.baseline(vec![0; nodes]);
        Ok(Some(monitor))
    }

    /// Starts sampling `pids` (each must be readable now).
    pub fn start(pids: Vec<u32>, epoch: Instant) -> anyhow::Result<Arc<RssMonitor>> {
        for &pid in &pids {
            rss_kib(pid).map_err(|e| anyhow::anyhow!("cannot read the RSS of --server-pid {pid}: {e}"))?;
        }
        let monitor = Arc::new(RssMonitor {
            tracks: Mutex::new(vec![Track::default(); pids.len()]),
            pids,
            epoch,
            baseline: Mutex::new(None),
        });
        let weak = Arc::downgrade(&monitor);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(m) => drop(m.sample()),
                    None => return,
                }
            }
        });
        Ok(monitor)
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    fn sample(&self) -> Vec<u64> {
        let t = self.epoch.elapsed().as_secs_f64();
        let mut tracks = self.tracks.lock().expect("no panics while sampling");
        self.pids
            .iter()
            .zip(tracks.iter_mut())
            .map(|(&pid, track)| {
                let kib = rss_kib(pid).unwrap_or(0);
                if kib > 0 {
                    track.points.push((t, kib as f64));
                }
                kib
            })
            .collect()
    }

    /// Takes the baseline now, with `conns` open on each server.
    pub fn baseline(&self, conns: Vec<u64>) {
        let kib = self.sample();
        let at = self.epoch.elapsed().as_secs_f64();
        let mut warnings = Vec::new();
        let mut hwm = Vec::new();
        for (&pid, &now) in self.pids.iter().zip(&kib) {
            let peak = proc_status_kib(pid, "VmHWM:").unwrap_or(now);
            hwm.push(peak);
            let files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            // A server that has been up a while and once held much more than now keeps
            // memory its earlier clients freed, and new connections reuse it. (A fresh chatd
            // peaks briefly at start-up, hashing once; hence the age.)
            let up = uptime_secs(pid).unwrap_or(0.0);
            warnings.push(if up > WARM_AFTER_SECS && peak > now + (now / 5).max(1024) {
                Some(format!(
                    "server {pid} has been up {up:.0} s and peaked at {:.1} MiB before the baseline \
                     ({:.1} MiB): it reuses memory freed since, so KiB per connection reads low; \
                     measure on a freshly started server",
                    peak as f64 / 1024.0,
                    now as f64 / 1024.0
                ))
            } else if files > 64 + conns.iter().sum::<u64>() as usize {
                Some(format!(
                    "server {pid} had {files} open files at the baseline: it was not idle, so its \
                     other clients' memory is mixed into KiB per connection"
                ))
            } else {
                None
            });
        }
        *self.baseline.lock().expect("no panics") = Some(Baseline {
            at,
            kib,
            conns,
            warnings,
            hwm,
        });
    }

    /// The figures, for `opened` connections to each server (one server: all of them).
    pub fn finish(&self, opened_per_node: &[u64]) -> (Vec<NodeMemory>, Vec<(u32, Track)>) {
        self.sample();
        let tracks = self.tracks.lock().expect("no panics").clone();
        let baseline = self.baseline.lock().expect("no panics");
        let mut out = Vec::new();
        for (k, &pid) in self.pids.iter().enumerate() {
            let conns = if self.pids.len() == 1 {
                opened_per_node.iter().sum()
            } else {
                opened_per_node.get(k).copied().unwrap_or(0)
            };
            let (at, before, before_conns, warning, hwm) = match &*baseline {
                Some(b) => (
                    b.at,
                    b.kib[k],
                    if self.pids.len() == 1 {
                        b.conns.iter().sum()
                    } else {
                        b.conns.get(k).copied().unwrap_or(0)
                    },
                    b.warnings[k].clone(),
                    b.hwm[k],
                ),
                None => {
                    let first = tracks[k].points.first().map_or(0, |p| p.1 as u64);
                    (0.0, first, 0, None, first)
                }
            };
            let holding = tracks[k]
                .points
                .iter()
                .filter(|p| p.0 >= at)
                .map(|p| p.1 as u64)
                .max()
                .unwrap_or(before);
            out.push(NodeMemory {
                server_pid: pid,
                before_kib: before,
                before_conns,
                holding_kib: holding,
                conns,
                per_conn_kib: holding.saturating_sub(before) as f64
                    / conns.saturating_sub(before_conns).max(1) as f64,
                peak_before_kib: hwm,
                warning,
            });
        }
        let tracks = self.pids.iter().copied().zip(tracks).collect();
        (out, tracks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_uptime_is_short() {
        let up = uptime_secs(std::process::id()).unwrap();
        assert!((0.0..600.0).contains(&up), "{up}");
    }
}
