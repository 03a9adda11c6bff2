//! Who comes and goes, in the log at info: one line when a client connects, logs in, fails to
//! log in (with its address, never its password) or leaves, so the person running the server
//! sees a classmate arrive, or type the wrong password.
//!
//! Lines are written one by one within a burst allowance ([`BURST`] lines, refilled at
//! [`REFILL_PER_SECOND`]): a class of 40 arriving within a minute is listed whole. Under real
//! load (a load test, a flood of guesses) what the allowance does not cover is counted, and
//! each second's count is summarised in one line; a count of one is written as the event it
//! is.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written one by one in a burst before the rest are only counted.
pub const BURST: f64 = 200.0;
/// Lines the allowance gains back per second.
pub const REFILL_PER_SECOND: f64 = 10.0;
/// Counted events are summarised once a second.
const WINDOW: Duration = Duration::from_secs(1);

/// Line clients connected now.
static OPEN: AtomicI64 = AtomicI64::new(0);
static STATE: Mutex<State> = Mutex::new(State {
    allowance: BURST,
    refilled: None,
    window: None,
});

struct State {
    /// Lines that may still be written one by one.
    allowance: f64,
    refilled: Option<Instant>,
    /// Events counted since the allowance ran out, summarised once a second.
    window: Option<Window>,
}

impl State {
    /// Takes one line of the allowance if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let gained = self
            .refilled
            .map_or(0.0, |at| now.duration_since(at).as_secs_f64() * REFILL_PER_SECOND);
        self.allowance = (self.allowance + gained).min(BURST);
        self.refilled = Some(now);
        if self.allowance >= 1.0 {
            self.allowance -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One second of counted activity.
struct Window {
    started: Instant,
    /// What happened that was not written.
    counted: Counts,
    /// The line the first counted event would have been: written as it is if it stays the
    /// only one.
    first: Option<String>,
    /// A task will write the summary when the window ends.
    flush_pending: bool,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    connected: u64,
    logged_in: u64,
    failed: u64,
    left: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.connected + self.logged_in + self.failed + self.left
    }
}

enum Event<'a> {
    Connected(SocketAddr),
    LoggedIn(&'a str, IpAddr),
    /// A login refused: the name tried, from where, and why (never the password).
    Failed(&'a str, IpAddr, &'a str),
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

/// A client logged in as `user` from `ip`.
pub fn logged_in(user: &str, ip: IpAddr) {
    record(Event::LoggedIn(user, ip));
}

/// A login as `user` from `ip` was refused, for `why` (a wrong password, rate limiting).
pub fn login_failed(user: &str, ip: IpAddr, why: &str) {
    record(Event::Failed(user, ip, why));
}

fn record(event: Event<'_>) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let now = Instant::now();
    let (write, summary, schedule) = {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let summary = roll(&mut state.window, now);
        if state.take(now) {
            (true, summary, None)
        } else {
            let window = state.window.get_or_insert_with(|| Window {
                started: now,
                counted: Counts::default(),
                first: None,
                flush_pending: false,
            });
            match event {
                Event::Connected(_) => window.counted.connected += 1,
                Event::LoggedIn(..) => window.counted.logged_in += 1,
                Event::Failed(..) => window.counted.failed += 1,
                Event::Left(..) => window.counted.left += 1,
            }
            if window.first.is_none() {
                window.first = Some(line_of(&event));
            }
            let schedule = (!window.flush_pending).then(|| {
                window.flush_pending = true;
                window.started + WINDOW
            });
            (false, summary, schedule)
        }
    };
    if let Some(summary) = summary {
        write_summary(summary);
    }
    if write {
        tracing::info!("{}", line_of(&event));
    }
    if let Some(at) = schedule {
        // The summary is written when the window ends even if nothing else happens.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let summary = roll(
                    &mut STATE.lock().unwrap_or_else(|e| e.into_inner()).window,
                    Instant::now(),
                );
                if let Some(summary) = summary {
                    write_summary(summary);
                }
            });
        }
    }
}

/// What a window that ended counted: its counts, and its only event's line if it had one.
struct Summary {
    counted: Counts,
    only: Option<String>,
}

/// Ends the window if its second is over, returning what it counted (if anything).
fn roll(window: &mut Option<Window>, now: Instant) -> Option<Summary> {
    let current = window.as_ref()?;
    if now.duration_since(current.started) < WINDOW {
        return None;
    }
    let current = window.take()?;
    let total = current.counted.total();
    (total > 0).then(|| Summary {
        counted: current.counted,
        only: current.first.filter(|_| total == 1),
    })
}

fn line_of(event: &Event<'_>) -> String {
    match *event {
        Event::Connected(peer) => format!("{peer} connected ({} connected now)", open()),
        Event::LoggedIn(user, ip) => format!("{user} logged in from {ip}"),
        Event::Failed(user, ip, why) => format!("a login as {user} from {ip} was refused: {why}"),
        Event::Left(peer, Some(user), after) => format!("{user} ({peer}) left after {}", duration(after)),
        Event::Left(peer, None, after) => format!("{peer} left after {}", duration(after)),
    }
}

fn write_summary(summary: Summary) {
    if let Some(line) = summary.only {
        tracing::info!("{line}");
        return;
    }
    let c = summary.counted;
    tracing::info!(
        "and in the same second {} more connected, {} logged in, {} failed to log in, {} left (too many to list one by one); {} connected now",
        c.connected,
        c.logged_in,
        c.failed,
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
    fn a_window_reports_only_what_it_counted_once_over_and_one_event_as_itself() {
        let start = Instant::now();
        let mut window = Some(Window {
            started: start,
            counted: Counts {
                connected: 3,
                logged_in: 0,
                failed: 0,
                left: 1,
            },
            first: Some("first".into()),
            flush_pending: true,
        });
        assert!(roll(&mut window, start + Duration::from_millis(500)).is_none());
        let summary = roll(&mut window, start + WINDOW).unwrap();
        assert_eq!((summary.counted.connected, summary.counted.left), (3, 1));
        assert!(summary.only.is_none(), "four events are summarised");
        assert!(window.is_none());
        assert!(roll(&mut window, start + WINDOW * 2).is_none());
        let mut one = Some(Window {
            started: start,
            counted: Counts {
                failed: 1,
                ..Counts::default()
            },
            first: Some("a login as bob from 10.0.0.9 was refused: wrong password".into()),
            flush_pending: true,
        });
        let summary = roll(&mut one, start + WINDOW).unwrap();
        assert_eq!(
            summary.only.as_deref(),
            Some("a login as bob from 10.0.0.9 was refused: wrong password")
        );
    }

    #[test]
    fn a_class_of_forty_arriving_within_a_minute_is_listed_and_a_flood_is_not() {
        let start = Instant::now();
        let mut state = State {
            allowance: BURST,
            refilled: None,
            window: None,
        };
        // 40 students: each connects and logs in, within a minute.
        let listed = (0..80)
            .filter(|i| state.take(start + Duration::from_millis(i * 700)))
            .count();
        assert_eq!(listed, 80);
        // A load test: thousands in a second; the allowance runs out, then refills slowly.
        let later = start + Duration::from_secs(120);
        let listed = (0..5000).filter(|_| state.take(later)).count();
        assert_eq!(listed, BURST as usize);
        assert!(!state.take(later + Duration::from_millis(50)));
        assert!(
            state.take(later + Duration::from_millis(150)),
            "10 a second come back"
        );
    }
}
