//! Stopping a run early: SIGINT or SIGTERM (and, for a `--procs` child, its parent) asks the
//! run to stop; it stops issuing, drains for a second and reports what it measured so far.
//!
//! One request may arrive more than once: a terminal's Ctrl-C reaches every process of the
//! foreground group, and `timeout` or a supervisor may signal a process and its group. So a
//! request within [`SAME_STOP_REQUEST`] of the first is the same request, as `chatd serve`
//! takes it; only a signal after that means "quit now", and the report is then lost.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio_util::sync::CancellationToken;

/// A stop request this soon after the first is the same one delivered twice, not a person
/// insisting.
pub const SAME_STOP_REQUEST: Duration = Duration::from_secs(1);

/// What a `--procs` parent writes to a child's standard input to ask it to stop.
pub const STOP_LINE: &[u8] = b"stop\n";

/// One request to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGINT or SIGTERM, by name.
    Signal(&'static str),
    /// A `--procs` child's parent asked (a line on standard input), or is gone (standard
    /// input closed): never "quit now", the parent never insists.
    Parent,
}

/// Whether `request`, arriving while stopping since `first` (if at all), means "quit now".
pub fn insists(request: Request, first: Option<Instant>) -> bool {
    matches!(request, Request::Signal(_)) && first.is_some_and(|at| at.elapsed() >= SAME_STOP_REQUEST)
}

/// What asks this process to stop. Made before anything starts, so that a signal is never
/// missed (or left to kill the process) in between.
pub struct Requests {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    parent: Option<Lines<BufReader<Stdin>>>,
}

impl Requests {
    /// SIGINT and SIGTERM, and with `from_parent` a line on (or the end of) standard input.
    pub fn new(from_parent: bool) -> Requests {
        #[cfg(unix)]
        let signals = {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(int), Ok(term)) => Some((int, term)),
                _ => None,
            }
        };
        Requests {
            #[cfg(unix)]
            signals,
            parent: from_parent.then(|| BufReader::new(tokio::io::stdin()).lines()),
        }
    }

    /// The next request.
    pub async fn next(&mut self) -> Request {
        let lines = self.parent.as_mut();
        let parent = async move {
            match lines {
                // A line, the end of the input or an error: the parent asks, or is gone.
                Some(lines) => {
                    let _ = lines.next_line().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(unix)]
        let request = {
            let signals = self.signals.as_mut();
            let signal = async move {
                match signals {
                    Some((int, term)) => tokio::select! {
                        _ = int.recv() => Request::Signal("SIGINT"),
                        _ = term.recv() => Request::Signal("SIGTERM"),
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = signal => r,
                _ = parent => Request::Parent,
            }
        };
        #[cfg(not(unix))]
        let request = tokio::select! {
            r = tokio::signal::ctrl_c() => match r {
                Ok(()) => Request::Signal("Ctrl-C"),
                Err(_) => std::future::pending().await,
            },
            _ = parent => Request::Parent,
        };
        if request == Request::Parent {
            // Asked once; the end of the input that follows is the same request.
            self.parent = None;
        }
        request
    }
}

/// Cancels the returned token on the first request to stop; a signal at least
/// [`SAME_STOP_REQUEST`] later ends the process at once (exit status 130). A `--procs` child
/// (`part`) also listens to its parent, and leaves the message to it.
pub fn on_request(part: bool) -> CancellationToken {
    if part {
        allow_background_writes();
    }
    let mut requests = Requests::new(part);
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut first = None;
        loop {
            let request = requests.next().await;
            if insists(request, first) {
                eprintln!("chatd load: stopped again: quitting now, without a report");
                std::process::exit(i32::from(crate::EXIT_INTERRUPTED));
            }
            if first.is_none() {
                first = Some(Instant::now());
                if !part {
                    eprintln!(
                        "chatd load: stopping; the report covers the run so far \
                         (stop again after a second to quit at once)"
                    );
                }
                token.cancel();
            }
        }
    });
    stop
}

/// A `--procs` child runs in a process group of its own, so that only its parent hears the
/// terminal. Were the terminal set to stop background writers (`stty tostop`), the child's
/// first line on standard error would stop it for good: ignoring SIGTTOU lets it write.
fn allow_background_writes() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_signal_insists() {
        let now = Instant::now();
        let sig = Request::Signal("SIGINT");
        assert!(!insists(sig, None), "the first request stops, it does not quit");
        assert!(!insists(sig, Some(now)), "at once again: the same request");
        let before = now.checked_sub(SAME_STOP_REQUEST).unwrap();
        assert!(insists(sig, Some(before)), "a second later: quit now");
        assert!(
            !insists(Request::Parent, Some(before)),
            "the parent never insists"
        );
    }
}
