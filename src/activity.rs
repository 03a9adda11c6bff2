//! Who comes and goes on the line protocol, in the log at info: one line when a client
//! connects, logs in and leaves, so the person running the server sees a classmate arrive.
//! When more than a handful happen in a second (a load test), the rest of that second is
//! counted and summarised in one line instead.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written one by one per second before the rest are only counted.
const LINES_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

/// Line clients connected now.
static OPEN: AtomicI64 = AtomicI64::new(0);
static STATE: Mutex<Option<Window>> = Mutex::new(None);

/// One second of activity.
struct Window {
    started: Instant,
    /// Lines written one by one in this window.
    written: u32,
    /// What happened beyond those.
    counted: Counts,
    /// A task will write the summary when the window ends.
    flush_pending: bool,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    connected: u64,
    logged_in: u64,
    left: u64,
}

impl Counts {
    fn any(&self) -> bool {
        self.connected + self.logged_in + self.left > 0
    }
}

enum Event<'a> {
    Connected(SocketAddr),
    LoggedIn(&'a str, IpAddr),
    Left(SocketAddr, Option<&'a str>, Duration),
}

/// A line connection from its start to its end; logs the leave when ended or dropped.
pub struct Visit {
    peer: SocketAddr,
    since: Instant,
    ended: bool,
}

impl Visit {
    /// A line client connected from `peer`.
    pub fn start(peer: SocketAddr) -> Visit {
        OPEN.fetch_add(1, Ordering::Relaxed);
        record(Event::Connected(peer));
        Visit {
            peer,
            since: Instant::now(),
            ended: false,
        }
    }

    /// The client left, logged in as `user` if it was.
    pub fn end(mut self, user: Option<&str>) {
        self.ended = true;
        OPEN.fetch_sub(1, Ordering::Relaxed);
        record(Event::Left(self.peer, user, self.since.elapsed()));
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        if !self.ended {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            record(Event::Left(self.peer, None, self.since.elapsed()));
        }
    }
}

/// A line client logged in as `user` from `ip`.
pub fn logged_in(user: &str, ip: IpAddr) {
    record(Event::LoggedIn(user, ip));
}

fn record(event: Event<'_>) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let now = Instant::now();
    let (write, summary, schedule) = {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let summary = roll(&mut state, now);
        let window = state.get_or_insert_with(|| Window {
            started: now,
            written: 0,
            counted: Counts::default(),
            flush_pending: false,
        });
        if window.written < LINES_PER_WINDOW {
            window.written += 1;
            (true, summary, None)
        } else {
            match event {
                Event::Connected(_) => window.counted.connected += 1,
                Event::LoggedIn(..) => window.counted.logged_in += 1,
                Event::Left(..) => window.counted.left += 1,
            }
            let schedule = (!window.flush_pending).then(|| {
                window.flush_pending = true;
                window.started + WINDOW
            });
            (false, summary, schedule)
        }
    };
    if let Some(counts) = summary {
        write_summary(counts);
    }
    if write {
        write_event(&event);
    }
    if let Some(at) = schedule {
        // The summary is written when the window ends even if nothing else happens.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let summary = roll(
                    &mut STATE.lock().unwrap_or_else(|e| e.into_inner()),
                    Instant::now(),
                );
                if let Some(counts) = summary {
                    write_summary(counts);
                }
            });
        }
    }
}

/// Ends the window if its second is over, returning what it counted (if anything).
fn roll(state: &mut Option<Window>, now: Instant) -> Option<Counts> {
    let window = state.as_ref()?;
    if now.duration_since(window.started) < WINDOW {
        return None;
    }
    let counted = window.counted;
    *state = None;
    counted.any().then_some(counted)
}

fn write_event(event: &Event<'_>) {
    match *event {
        Event::Connected(peer) => tracing::info!("{peer} connected ({} connected now)", open()),
        Event::LoggedIn(user, ip) => tracing::info!("{user} logged in from {ip}"),
        Event::Left(peer, Some(user), after) => {
            tracing::info!("{user} ({peer}) left after {}", duration(after))
        }
        Event::Left(peer, None, after) => tracing::info!("{peer} left after {}", duration(after)),
    }
}

fn write_summary(c: Counts) {
    tracing::info!(
        "and in the same second {} more connected, {} logged in, {} left (too many to list); {} connected now",
        c.connected,
        c.logged_in,
        c.left,
        open()
    );
}

fn open() -> i64 {
    OPEN.load(Ordering::Relaxed).max(0)
}

/// "850 ms", "12 s", "3 min 20 s", "2 h 5 min".
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_secs(12)), "12 s");
        assert_eq!(duration(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(duration(Duration::from_secs(7500)), "2 h 5 min");
    }

    #[test]
    fn a_window_reports_only_what_it_counted_once_over() {
        let start = Instant::now();
        let mut state = Some(Window {
            started: start,
            written: LINES_PER_WINDOW,
            counted: Counts {
                connected: 3,
                logged_in: 0,
                left: 1,
            },
            flush_pending: true,
        });
        assert!(roll(&mut state, start + Duration::from_millis(500)).is_none());
        let counted = roll(&mut state, start + WINDOW).unwrap();
        assert_eq!((counted.connected, counted.left), (3, 1));
        assert!(state.is_none());
        assert!(roll(&mut state, start + WINDOW * 2).is_none());
    }
}
