//! What a run measures: latency histograms, per-second series, and the live counters behind
//! the progress bar.
//!
//! Connection tasks record a whole batch of replies at once (one lock per socket read, not per
//! reply), so recording stays cheap next to the syscalls it measures.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in nanoseconds, up to two minutes (longer ones are clamped).
const MAX_NS: u64 = 120_000_000_000;

fn histogram(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, significant_digits).expect("constant, valid bounds")
}

/// Events of one kind (replies, acks, deliveries, connections opened) with their latencies,
/// overall and in buckets of `interval` (one second unless asked) counted from `start`.
pub struct Series {
    start: Instant,
    interval: Duration,
    inner: Mutex<SeriesInner>,
}

struct SeriesInner {
    all: Histogram<u64>,
    ok: u64,
    errors: u64,
    seconds: Vec<Bucket>,
}

struct Bucket {
    ok: u64,
    errors: u64,
    /// Two significant digits are plenty for a per-interval p50/p99 and keep a bucket ~20 KiB.
    latency: Histogram<u64>,
}

impl Series {
    /// A series in one-second buckets.
    pub fn new(start: Instant) -> Series {
        Series::with_interval(start, Duration::from_secs(1))
    }

    /// A series in buckets of `interval` (for phases that last about a second or less).
    pub fn with_interval(start: Instant, interval: Duration) -> Series {
        Series {
            start,
            interval: interval.max(Duration::from_millis(1)),
            inner: Mutex::new(SeriesInner {
                all: histogram(3),
                ok: 0,
                errors: 0,
                seconds: Vec::new(),
            }),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records, as seen at `now`, successes with these latencies (ns) and `errors` failures.
    pub fn record(&self, now: Instant, latencies_ns: &[u64], errors: u64) {
        if latencies_ns.is_empty() && errors == 0 {
            return;
        }
        let second =
            (now.saturating_duration_since(self.start).as_nanos() / self.interval.as_nanos()) as usize;
        let mut inner = self.inner.lock().expect("no panics while recording");
        let inner = &mut *inner;
        while inner.seconds.len() <= second {
            inner.seconds.push(Bucket {
                ok: 0,
                errors: 0,
                latency: histogram(2),
            });
        }
        let bucket = &mut inner.seconds[second];
        for &ns in latencies_ns {
            let ns = ns.clamp(1, MAX_NS);
            inner.all.saturating_record(ns);
            bucket.latency.saturating_record(ns);
        }
        bucket.ok += latencies_ns.len() as u64;
        bucket.errors += errors;
        inner.ok += latencies_ns.len() as u64;
        inner.errors += errors;
    }

    /// Successes and errors recorded so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.inner.lock().expect("no panics while recording");
        (inner.ok, inner.errors)
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.inner.lock().expect("no panics while recording").all)
    }

    /// One row per interval from `start`, for the JSON report and the plot.
    pub fn intervals(&self) -> Vec<IntervalStats> {
        let inner = self.inner.lock().expect("no panics while recording");
        let width = self.interval.as_secs_f64();
        inner
            .seconds
            .iter()
            .enumerate()
            .map(|(i, b)| IntervalStats {
                t: i as f64 * width,
                secs: width,
                ok: b.ok,
                errors: b.errors,
                per_sec: b.ok as f64 / width,
                p50_us: us(b.latency.value_at_quantile(0.5)),
                p99_us: us(b.latency.value_at_quantile(0.99)),
            })
            .collect()
    }

    /// The latency distribution as (quantile, µs) points from the median up to the maximum,
    /// evenly spaced in "nines" (50%, 90%, 99%, 99.9%, ...), for plotting.
    pub fn distribution(&self) -> Vec<(f64, f64)> {
        let inner = self.inner.lock().expect("no panics while recording");
        if inner.all.is_empty() {
            return Vec::new();
        }
        let max_nines = (inner.all.len() as f64).log10().clamp(1.0, 6.0);
        let steps = 200;
        (0..=steps)
            .map(|i| {
                let nines = max_nines * i as f64 / steps as f64;
                let q = 1.0 - 10f64.powf(-nines);
                (q, us(inner.all.value_at_quantile(q)))
            })
            .collect()
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One interval (usually a second) of a series.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalStats {
    /// When the interval starts, in seconds since the phase started.
    pub t: f64,
    /// How long it is.
    pub secs: f64,
    pub ok: u64,
    pub errors: u64,
    /// `ok` per second.
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Counters the progress bar reads while a run goes on.
pub struct Live {
    pub open: AtomicI64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            open: AtomicI64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            phase: Mutex::new("starting"),
        }
    }

    pub fn add(&self, ok: u64, errors: u64) {
        if ok > 0 {
            self.ok.fetch_add(ok, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Names the phase shown on the progress bar, and restarts its request counter.
    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().expect("no panics while holding") = phase;
        self.ok.store(0, Ordering::Relaxed);
    }

    pub fn phase(&self) -> &'static str {
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
        let s = Series::new(start);
        s.record(start + Duration::from_millis(10), &[1_000, 2_000], 0);
        s.record(start + Duration::from_millis(2_500), &[3_000], 1);
        let rows = s.intervals();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].ok, rows[0].errors), (2, 0));
        assert_eq!((rows[1].ok, rows[1].errors), (0, 0));
        assert_eq!((rows[2].ok, rows[2].errors), (1, 1));
        assert_eq!(s.counts(), (3, 1));
        assert_eq!((rows[2].t, rows[2].per_sec), (2.0, 1.0));
        let l = s.latency();
        assert_eq!(l.count, 3);
        assert!((l.p50_us - 2.0).abs() < 0.01, "{l:?}");
        assert!((l.max_us - 3.0).abs() < 0.01, "{l:?}");
    }

    #[test]
    fn short_intervals_count_per_second() {
        let start = Instant::now();
        let s = Series::with_interval(start, Duration::from_millis(100));
        s.record(start + Duration::from_millis(150), &[1_000; 5], 0);
        let rows = s.intervals();
        assert_eq!(rows.len(), 2);
        assert!((rows[1].t - 0.1).abs() < 1e-9 && rows[1].ok == 5);
        assert!((rows[1].per_sec - 50.0).abs() < 1e-9);
    }

    #[test]
    fn distribution_climbs_to_the_maximum() {
        let start = Instant::now();
        let s = Series::new(start);
        let values: Vec<u64> = (1..=10_000).map(|i| i * 1000).collect();
        s.record(start, &values, 0);
        let d = s.distribution();
        assert!(d.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
        assert!((d.last().unwrap().1 - 10_000.0).abs() / 10_000.0 < 0.01);
    }
}
