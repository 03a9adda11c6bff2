//! What a run measures: latency histograms, series in time buckets, and the live counters
//! behind the progress line.
//!
//! Every figure a report shows is computed from [`Data`], which serializes its HdrHistograms
//! whole: the results of several generator processes are merged by adding histograms, never by
//! averaging percentiles. Connection tasks record a whole batch of replies at once (one lock per
//! socket read, not per reply), so recording stays cheap next to the syscalls it measures.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in nanoseconds, up to two minutes (longer ones are clamped).
pub const MAX_NS: u64 = 120_000_000_000;

fn histogram(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, significant_digits).expect("constant, valid bounds")
}

/// An HdrHistogram of nanoseconds that travels in JSON as base64 of its compressed V2 encoding.
#[derive(Debug, Clone)]
pub struct Hdr(pub Histogram<u64>);

impl Hdr {
    pub fn new(significant_digits: u8) -> Hdr {
        Hdr(histogram(significant_digits))
    }

    /// Adds `other` (same bounds, so this cannot fail short of a bug).
    pub fn add(&mut self, other: &Hdr) {
        self.0.add(&other.0).expect("histograms of the same bounds add");
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.0, &mut bytes)
            .expect("serializing into memory");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Hdr, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| e.to_string())?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("{e:?}"))?;
        // Re-home the values into our bounds, so every histogram of a run adds to every other.
        let mut ours = histogram(h.sigfig());
        ours.add(&h).map_err(|e| format!("{e:?}"))?;
        Ok(Hdr(ours))
    }
}

impl Serialize for Hdr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Hdr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hdr, D::Error> {
        let text = String::deserialize(d)?;
        Hdr::decode(&text).map_err(serde::de::Error::custom)
    }
}

/// One bucket of a series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub ok: u64,
    pub errors: u64,
    /// Two significant digits are plenty for a per-interval p50/p99 and keep a bucket small.
    pub latency: Hdr,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            ok: 0,
            errors: 0,
            latency: Hdr::new(2),
        }
    }
}

/// Events of one kind (replies, acks, deliveries, connections opened) with their latencies,
/// overall and in buckets of `interval_secs` from the series' start: bucket `i` covers
/// `[offset + i * interval, offset + (i + 1) * interval)` seconds into the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Data {
    pub interval_secs: f64,
    /// When bucket 0 starts, in seconds since the run's epoch.
    #[serde(default)]
    pub offset_secs: f64,
    pub ok: u64,
    pub errors: u64,
    pub all: Hdr,
    pub buckets: Vec<Bucket>,
    /// When the series ended, in seconds since the run's epoch: the end of its phase, or its
    /// last event if that came later. The last bucket usually ends after it: it covers only
    /// part of an interval. 0 if unknown (the end of the last bucket is taken then).
    #[serde(default)]
    pub end_secs: f64,
}

impl Default for Data {
    fn default() -> Data {
        Data::new(Duration::from_secs(1))
    }
}

impl Data {
    pub fn new(interval: Duration) -> Data {
        Data {
            interval_secs: interval.as_secs_f64().max(0.001),
            offset_secs: 0.0,
            ok: 0,
            errors: 0,
            all: Hdr::new(3),
            buckets: Vec::new(),
            end_secs: 0.0,
        }
    }

    fn bucket(&mut self, index: usize) -> &mut Bucket {
        while self.buckets.len() <= index {
            self.buckets.push(Bucket::new());
        }
        &mut self.buckets[index]
    }

    /// Adds `other`, whose epoch was `shift_secs` after ours (negative: before).
    pub fn merge(&mut self, other: &Data, shift_secs: f64) {
        if other.end_secs > 0.0 {
            self.end_secs = self.end_secs.max(other.end_secs + shift_secs);
        }
        self.ok += other.ok;
        self.errors += other.errors;
        self.all.add(&other.all);
        for (i, b) in other.buckets.iter().enumerate() {
            if b.ok == 0 && b.errors == 0 {
                continue;
            }
            let t = other.offset_secs + i as f64 * other.interval_secs + shift_secs;
            let at = ((t - self.offset_secs) / self.interval_secs).round().max(0.0) as usize;
            let mine = self.bucket(at);
            mine.ok += b.ok;
            mine.errors += b.errors;
            mine.latency.add(&b.latency);
        }
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.all.0)
    }

    /// The series interval by interval, up to its end: intervals without events are there
    /// (with nothing in them), and the last one, usually cut short by the end of the phase,
    /// is as long as it really lasted, or added to the one before when it lasted less than a
    /// quarter of an interval. So a rate per interval never shows a cliff that is only the
    /// end of the run.
    pub fn rows(&self) -> Vec<Row> {
        let width = self.interval_secs;
        let recorded = self.buckets.len() as f64 * width;
        let span = if self.end_secs > self.offset_secs {
            self.end_secs - self.offset_secs
        } else {
            recorded
        };
        let count = ((span / width - 1e-9).ceil().max(0.0) as usize).max(self.buckets.len());
        let mut rows: Vec<Row> = Vec::with_capacity(count);
        for i in 0..count {
            let start = i as f64 * width;
            let secs = (span - start).clamp(0.0, width);
            let (ok, errors, latency) = match self.buckets.get(i) {
                Some(b) => (b.ok, b.errors, b.latency.0.clone()),
                None => (0, 0, Hdr::new(2).0),
            };
            match rows.last_mut() {
                Some(last) if secs < width / 4.0 => {
                    last.secs += secs;
                    last.ok += ok;
                    last.errors += errors;
                    last.latency
                        .add(&latency)
                        .expect("histograms of the same bounds add");
                }
                _ => rows.push(Row {
                    t: self.offset_secs + start,
                    secs,
                    ok,
                    errors,
                    latency,
                }),
            }
        }
        rows
    }

    /// One row per interval ([`Data::rows`]), for the JSON report, the CSV and the plot.
    pub fn intervals(&self) -> Vec<IntervalStats> {
        self.rows()
            .iter()
            .map(|r| {
                let secs = r.secs.max(1e-9);
                IntervalStats {
                    t: r.t,
                    // To the µs: no float dust in the JSON.
                    secs: (r.secs * 1e6).round() / 1e6,
                    ok: r.ok,
                    errors: r.errors,
                    per_sec: r.ok as f64 / secs,
                    errors_per_sec: r.errors as f64 / secs,
                    p50_us: us(r.latency.value_at_quantile(0.5)),
                    p99_us: us(r.latency.value_at_quantile(0.99)),
                }
            })
            .collect()
    }

    /// The latency distribution as (quantile, µs) points from the median up to the maximum,
    /// evenly spaced in "nines" (50%, 90%, 99%, 99.9%, ...), for plotting.
    pub fn distribution(&self) -> Vec<(f64, f64)> {
        let all = &self.all.0;
        if all.is_empty() {
            return Vec::new();
        }
        let max_nines = (all.len() as f64).log10().clamp(1.0, 6.0);
        let steps = 200;
        (0..=steps)
            .map(|i| {
                let nines = max_nines * i as f64 / steps as f64;
                let q = 1.0 - 10f64.powf(-nines);
                (q, us(all.value_at_quantile(q)))
            })
            .collect()
    }
}

/// One interval of a series, as [`Data::rows`] gives it.
pub struct Row {
    /// When it starts, in seconds since the run started.
    pub t: f64,
    /// How long it lasted.
    pub secs: f64,
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// A [`Data`] that connection tasks record into.
pub struct Series {
    /// Where bucket 0 starts.
    start: Instant,
    data: Mutex<Data>,
}

impl Series {
    /// A series in one-second buckets from `start`, on the time axis of a run that began at
    /// `epoch`.
    pub fn new(epoch: Instant, start: Instant) -> Series {
        Series::with_interval(epoch, start, Duration::from_secs(1))
    }

    /// A series in buckets of `interval` (for phases that last about a second or less).
    pub fn with_interval(epoch: Instant, start: Instant, interval: Duration) -> Series {
        let mut data = Data::new(interval);
        data.offset_secs = start.saturating_duration_since(epoch).as_secs_f64();
        Series {
            start,
            data: Mutex::new(data),
        }
    }

    /// Records, as seen at `now`, successes with these latencies (ns) and `errors` failures.
    pub fn record(&self, now: Instant, latencies_ns: &[u64], errors: u64) {
        if latencies_ns.is_empty() && errors == 0 {
            return;
        }
        let mut data = self.data.lock().expect("no panics while recording");
        let since = now.saturating_duration_since(self.start).as_secs_f64();
        let at = (since / data.interval_secs) as usize;
        let data = &mut *data;
        data.end_secs = data.end_secs.max(data.offset_secs + since);
        let bucket = data.bucket(at);
        for &ns in latencies_ns {
            bucket.latency.0.saturating_record(ns.clamp(1, MAX_NS));
        }
        bucket.ok += latencies_ns.len() as u64;
        bucket.errors += errors;
        for &ns in latencies_ns {
            data.all.0.saturating_record(ns.clamp(1, MAX_NS));
        }
        data.ok += latencies_ns.len() as u64;
        data.errors += errors;
    }

    /// Successes and errors recorded so far.
    pub fn counts(&self) -> (u64, u64) {
        let data = self.data.lock().expect("no panics while recording");
        (data.ok, data.errors)
    }

    /// What was recorded so far.
    pub fn snapshot(&self) -> Data {
        self.data.lock().expect("no panics while recording").clone()
    }

    /// What was recorded, in a phase that ended at `end` (or at the last event, if later).
    pub fn snapshot_until(&self, end: Instant) -> Data {
        let mut data = self.snapshot();
        let end = data.offset_secs + end.saturating_duration_since(self.start).as_secs_f64();
        data.end_secs = data.end_secs.max(end);
        data
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub stddev_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
            stddev_us: h.stdev() / 1000.0,
        }
    }
}

/// One interval (usually a second) of a series.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalStats {
    /// When the interval starts, in seconds since the run started.
    pub t: f64,
    /// How long it is.
    pub secs: f64,
    pub ok: u64,
    pub errors: u64,
    /// `ok` per second.
    pub per_sec: f64,
    pub errors_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A value sampled over time (open connections, a server's RSS): `(seconds into the run, value)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Track {
    pub points: Vec<(f64, f64)>,
}

impl Track {
    /// The value in force at `t` (the last sample at or before it), if any.
    pub fn at(&self, t: f64) -> Option<f64> {
        let i = self.points.partition_point(|p| p.0 <= t);
        (i > 0).then(|| self.points[i - 1].1)
    }

    /// The sum of tracks, each shifted by its offset, sampled every `step` seconds.
    pub fn sum(tracks: &[(f64, &Track)], step: f64) -> Track {
        let end = tracks
            .iter()
            .filter_map(|(shift, t)| t.points.last().map(|p| p.0 + shift))
            .fold(0.0, f64::max);
        let mut points = Vec::new();
        let mut t = 0.0;
        while t <= end + step / 2.0 {
            let v: f64 = tracks.iter().filter_map(|(shift, tr)| tr.at(t - shift)).sum();
            points.push((t, v));
            t += step;
        }
        Track { points }
    }
}

/// Counters the progress line reads while a run goes on.
pub struct Live {
    pub open: AtomicI64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Work done in the current phase (connections tried, requests answered) and the target.
    pub done: AtomicU64,
    pub target: AtomicU64,
    phase: Mutex<(&'static str, Instant, Option<Instant>)>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            open: AtomicI64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            done: AtomicU64::new(0),
            target: AtomicU64::new(0),
            phase: Mutex::new(("starting", Instant::now(), None)),
        }
    }

    pub fn add(&self, ok: u64, errors: u64) {
        if ok > 0 {
            self.ok.fetch_add(ok, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
        if ok + errors > 0 {
            self.done.fetch_add(ok + errors, Ordering::Relaxed);
        }
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Names the phase shown on the progress line, with its target (connections, requests; 0
    /// if unknown) and its end if it is timed; restarts the phase's counters.
    pub fn set_phase(&self, phase: &'static str, target: u64, ends: Option<Instant>) {
        *self.phase.lock().expect("no panics while holding") = (phase, Instant::now(), ends);
        self.ok.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.target.store(target, Ordering::Relaxed);
    }

    /// The phase, when it began and when it is due to end.
    pub fn phase(&self) -> (&'static str, Instant, Option<Instant>) {
        *self.phase.lock().expect("no panics while holding")
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

/// Seconds as a float, for reports.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_the_right_second() {
        let start = Instant::now();
        let s = Series::new(start, start);
        s.record(start + Duration::from_millis(10), &[1_000, 2_000], 0);
        s.record(start + Duration::from_millis(2_500), &[3_000], 1);
        let d = s.snapshot();
        let rows = d.intervals();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].ok, rows[0].errors), (2, 0));
        assert_eq!((rows[1].ok, rows[1].errors), (0, 0));
        assert_eq!((rows[2].ok, rows[2].errors), (1, 1));
        assert_eq!(s.counts(), (3, 1));
        // The series ended with its last event, half way into the third second.
        assert_eq!((rows[2].t, rows[2].secs, rows[2].per_sec), (2.0, 0.5, 2.0));
        let l = d.latency();
        assert_eq!(l.count, 3);
        assert!((l.p50_us - 2.0).abs() < 0.01, "{l:?}");
        assert!((l.min_us - 1.0).abs() < 0.01, "{l:?}");
        assert!((l.max_us - 3.0).abs() < 0.01, "{l:?}");
        assert!((l.stddev_us - 0.816).abs() < 0.01, "{l:?}");
    }

    #[test]
    fn short_intervals_count_per_second() {
        let start = Instant::now();
        let s = Series::with_interval(start, start, Duration::from_millis(100));
        s.record(start + Duration::from_millis(150), &[1_000; 5], 0);
        let rows = s.snapshot_until(start + Duration::from_millis(200)).intervals();
        assert_eq!(rows.len(), 2);
        assert!((rows[1].t - 0.1).abs() < 1e-9 && rows[1].ok == 5);
        assert!((rows[1].per_sec - 50.0).abs() < 1e-9);
    }

    /// The end of a run is not a drop in throughput: the last interval is as long as it
    /// lasted (or, when short, part of the one before), and a stall before the end is one.
    #[test]
    fn the_last_interval_is_no_cliff() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // 100 a second for 2.3 s, the phase ending at 2.3 s.
        let s = Series::new(start, start);
        for ms in (0..2300).step_by(10) {
            s.record(at(ms), &[1_000], 0);
        }
        let rows = s.snapshot_until(at(2300)).intervals();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!((rows[2].secs - 0.3).abs() < 1e-9, "{rows:?}");
        for r in &rows {
            assert!((r.per_sec - 100.0).abs() < 1.0, "{rows:?}");
        }
        // Ending 20 ms into an interval: those 20 ms join the interval before.
        let s = Series::new(start, start);
        for ms in (0..2020).step_by(10) {
            s.record(at(ms), &[1_000], 0);
        }
        let rows = s.snapshot_until(at(2020)).intervals();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            (rows[1].secs - 1.02).abs() < 1e-9 && rows[1].ok == 102,
            "{rows:?}"
        );
        assert!((rows[1].per_sec - 100.0).abs() < 1.0, "{rows:?}");
        // Nothing in the last two seconds of a phase: a real drop, shown as one.
        let s = Series::new(start, start);
        s.record(at(500), &[1_000; 50], 0);
        let rows = s.snapshot_until(at(3000)).intervals();
        assert_eq!(
            rows.iter().map(|r| r.ok).collect::<Vec<_>>(),
            [50, 0, 0],
            "{rows:?}"
        );
    }

    #[test]
    fn merges_histograms_through_json_exactly() {
        let start = Instant::now();
        let (a, b) = (Series::new(start, start), Series::new(start, start));
        let values: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        a.record(start, &values[..500], 2);
        b.record(start + Duration::from_millis(1500), &values[500..], 0);
        let whole = Series::new(start, start);
        whole.record(start, &values, 2);
        let mut merged = a.snapshot();
        let b: Data = serde_json::from_str(&serde_json::to_string(&b.snapshot()).unwrap()).unwrap();
        merged.merge(&b, 1.0);
        let (m, w) = (merged.latency(), whole.snapshot().latency());
        assert_eq!((m.count, merged.errors), (1000, 2));
        assert_eq!((m.p50_us, m.p99_us, m.max_us), (w.p50_us, w.p99_us, w.max_us));
        // b's bucket 1 lands 1 s later: in bucket 2.
        assert_eq!(merged.buckets[2].ok, 500);
    }

    #[test]
    fn tracks_sum_at_their_offsets() {
        let a = Track {
            points: vec![(0.0, 1.0), (1.0, 2.0)],
        };
        let b = Track {
            points: vec![(0.0, 10.0)],
        };
        let s = Track::sum(&[(0.0, &a), (0.5, &b)], 0.5);
        assert_eq!(s.points, vec![(0.0, 1.0), (0.5, 11.0), (1.0, 12.0)]);
    }

    #[test]
    fn distribution_climbs_to_the_maximum() {
        let start = Instant::now();
        let s = Series::new(start, start);
        let values: Vec<u64> = (1..=10_000).map(|i| i * 1000).collect();
        s.record(start, &values, 0);
        let d = s.snapshot().distribution();
        assert!(d.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
        assert!((d.last().unwrap().1 - 10_000.0).abs() / 10_000.0 < 0.01);
    }
}
