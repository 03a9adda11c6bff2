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

    /// One row per bucket, for the JSON report, the CSV and the plot.
    pub fn intervals(&self) -> Vec<IntervalStats> {
        let width = self.interval_secs;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let h = &b.latency.0;
                IntervalStats {
                    t: self.offset_secs + i as f64 * width,
                    secs: width,
                    ok: b.ok,
                    errors: b.errors,
                    per_sec: b.ok as f64 / width,
                    errors_per_sec: b.errors as f64 / width,
                    p50_us: us(h.value_at_quantile(0.5)),
                    p99_us: us(h.value_at_quantile(0.99)),
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
        let at = (now.saturating_duration_since(self.start).as_secs_f64() / data.interval_secs) as usize;
        let data = &mut *data;
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
        assert_eq!((rows[2].t, rows[2].per_sec), (2.0, 1.0));
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
        let rows = s.snapshot().intervals();
        assert_eq!(rows.len(), 2);
        assert!((rows[1].t - 0.1).abs() < 1e-9 && rows[1].ok == 5);
        assert!((rows[1].per_sec - 50.0).abs() < 1e-9);
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
