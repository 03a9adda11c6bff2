//! `--hdr-out DIR` (each latency's HdrHistogram as an interval log, to compare or merge runs
//! with HdrHistogram tools) and `--timeline-csv FILE` (every series per interval).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::report::Report;
use crate::stats::Data;

/// The latencies of a report that have histograms: (file name, data).
fn latencies(report: &Report) -> Vec<(String, &Data)> {
    let m = &report.measured;
    let mut out = Vec::new();
    if let Some(d) = &m.connect.series {
        out.push(("connect".to_string(), d));
    }
    if let Some(r) = &m.run {
        out.push((r.what.replace(' ', "-"), &r.series));
    }
    if let Some(d) = &m.delivery {
        for (name, x) in [
            ("delivery", &d.all),
            ("delivery-same-node", &d.same_node),
            ("delivery-cross-node", &d.cross_node),
        ] {
            if let Some(x) = x.as_ref().filter(|x| x.ok > 0) {
                out.push((name.to_string(), x));
            }
        }
    }
    out
}

/// Writes `DIR/<scenario>-<latency>.hlog` for every latency: one interval per second (or
/// tenth) of the run, timed from its start, the last one as long as it really lasted (see
/// [`Data::rows`]), then, tagged `total`, the whole series at full precision. Values are ns.
pub fn hdr_logs(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(report.meta.started_unix_ms);
    for (name, data) in latencies(report) {
        let path = dir.join(format!("{}-{name}.hlog", report.scenario));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
        );
        let mut serializer = V2DeflateSerializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "chatd load {} {}: {name} latency in nanoseconds",
                report.scenario,
                report.targets.join(",")
            ))
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut file, &mut serializer)?;
        let rows = data.rows();
        for row in rows.iter().filter(|r| r.ok > 0) {
            let (at, secs) = (Duration::from_secs_f64(row.t), Duration::from_secs_f64(row.secs));
            log.write_histogram(&row.latency, at, secs, None)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        let (from, to) = match (rows.first(), rows.last()) {
            (Some(first), Some(last)) => (first.t, last.t + last.secs),
            _ => (0.0, 0.0),
        };
        log.write_histogram(
            &data.all.0,
            Duration::from_secs_f64(from),
            Duration::from_secs_f64(to - from),
            Tag::new("total"),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        drop(log);
        file.flush()?;
    }
    Ok(())
}

/// Writes every series per interval, and open connections and server RSS as samples, into
/// one long CSV: `t_s,series,interval_s,ok,errors,per_sec,p50_us,p99_us,value`.
pub fn timeline_csv(report: &Report, path: &Path) -> anyhow::Result<()> {
    let mut out = String::from("t_s,series,interval_s,ok,errors,per_sec,p50_us,p99_us,value\n");
    for (name, rows) in &report.timeline.series {
        for r in rows {
            out.push_str(&format!(
                "{:.3},{name},{},{},{},{:.1},{:.1},{:.1},\n",
                r.t,
                (r.secs * 1000.0).round() / 1000.0,
                r.ok,
                r.errors,
                r.per_sec,
                r.p50_us,
                r.p99_us
            ));
        }
    }
    for (t, v) in &report.timeline.open.points {
        out.push_str(&format!("{t:.3},open_connections,,,,,,,{v}\n"));
    }
    for (pid, track) in &report.timeline.rss {
        for (t, v) in &track.points {
            out.push_str(&format!("{t:.3},rss_kib_{pid},,,,,,,{v}\n"));
        }
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}
