//! Where and when a run happened, for the JSON report: tool version, start time, host.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub tool: &'static str,
    pub tool_version: &'static str,
    /// When the run started, RFC 3339 in UTC.
    pub started_at: String,
    pub started_unix_ms: u64,
    pub host: Host,
    /// Generator processes (`--procs`).
    pub procs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub cores: usize,
    pub os: &'static str,
    pub kernel: String,
    /// The generator's open-files limit (per process), after raising it to the hard limit.
    pub open_files_limit: u64,
    /// The 1-minute load average when the run started (Linux), to tell noisy runs apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_average: Option<f64>,
}

impl Meta {
    pub fn now(epoch_unix_ns: u64, procs: usize, open_files_limit: u64) -> Meta {
        let secs = (epoch_unix_ns / 1_000_000_000) as i64;
        Meta {
            tool: "chatd load",
            tool_version: env!("CARGO_PKG_VERSION"),
            started_at: rfc3339(secs, (epoch_unix_ns / 1_000_000 % 1000) as u32),
            started_unix_ms: epoch_unix_ns / 1_000_000,
            host: Host {
                name: read("/proc/sys/kernel/hostname").unwrap_or_default(),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                os: std::env::consts::OS,
                kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
                open_files_limit,
                load_average: read("/proc/loadavg")
                    .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok())),
            },
            procs,
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// `secs` since 1970 as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000, 5), "2026-11-18T11:06:40.005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }
}
