//! Where the log goes and how it looks: stderr, coloured only on a terminal (and never with
//! `NO_COLOR`), or a file (`--log-file`, never coloured, reopened on SIGHUP for logrotate);
//! `info` by default with the chatter of libraries kept down.
//!
//! A log write that fails (stderr closed, a pipe whose reader died) is dropped silently: it
//! must never panic or stop the server, above all not while it is shutting down.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info";
/// Libraries whose debug output drowns chatd's own; each stays at this level unless
/// `RUST_LOG` names it.
const QUIET: &[(&str, &str)] = &[
    ("sqlx", "warn"),
    ("hyper", "info"),
    ("hyper_util", "info"),
    ("h2", "info"),
    ("tower", "info"),
    ("mio", "info"),
];

/// The log file (`--log-file`) and where it is, to reopen it.
static LOG_FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

/// Installs the global subscriber for the `chatd` binary: on stderr.
pub fn init() {
    init_to(None).expect("stderr needs nothing opened");
}

/// Installs the global subscriber, writing to `log_file` (appended to; an error if it cannot
/// be opened) or to stderr.
pub fn init_to(log_file: Option<&Path>) -> io::Result<()> {
    let requested = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let (filter, problem) = filter(requested.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    match log_file {
        Some(path) => {
            let file = open_log(path)?;
            *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_path_buf(), file));
            builder.with_ansi(false).with_writer(LogFile).init();
        }
        None => builder
            .with_ansi(use_colour(
                io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_writer(Stderr)
            .init(),
    }
    if let Some(problem) = problem {
        tracing::warn!("RUST_LOG is not understood ({problem}); logging at {DEFAULT_FILTER}");
    }
    Ok(())
}

fn open_log(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Opens the log file again at its path (after logrotate moved it): `None` without
/// `--log-file`; the path, or why it could not be opened (the old file is kept then).
pub fn reopen_log_file() -> Option<io::Result<PathBuf>> {
    let mut log = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner());
    let (path, file) = log.as_mut()?;
    Some(open_log(path).map(|reopened| {
        *file = reopened;
        path.clone()
    }))
}

/// Colour only for a person at a terminal who has not asked for none (<https://no-color.org>:
/// any non-empty `NO_COLOR` turns it off).
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The filter for `RUST_LOG` (or the default), plus the quiet levels for libraries it does not
/// mention, and what was wrong with it if it did not parse.
fn filter(requested: Option<&str>) -> (EnvFilter, Option<String>) {
    let (mut directives, problem) = match requested {
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(_) => (spec.to_string(), None),
            Err(e) => (DEFAULT_FILTER.to_string(), Some(e.to_string())),
        },
        None => (DEFAULT_FILTER.to_string(), None),
    };
    for (target, level) in QUIET {
        let named = directives
            .split(',')
            .any(|d| d.trim().split(['=', '[']).next() == Some(target));
        if !named {
            directives.push_str(&format!(",{target}={level}"));
        }
    }
    (EnvFilter::new(directives), problem)
}

/// Standard error that never fails: a write it cannot make is dropped.
#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// The log file that never fails: a write it cannot make is dropped.
#[derive(Clone, Copy)]
struct LogFile;

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFile;

    fn make_writer(&'a self) -> LogFile {
        LogFile
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some((_, file)) = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Prints `text` and a newline on stdout, ignoring a closed stdout (`println!` would panic).
pub fn print_line(text: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Prints `text` and a newline on stderr, ignoring a closed stderr (`eprintln!` would panic).
pub fn eprint_line(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some("1".as_ref())));
        assert!(use_colour(true, Some("".as_ref())));
    }

    #[test]
    fn libraries_stay_quiet_unless_named() {
        let (f, problem) = filter(Some("debug"));
        assert!(problem.is_none());
        let text = f.to_string();
        assert!(text.contains("sqlx=warn"), "{text}");
        let (f, _) = filter(Some("debug,sqlx=debug"));
        let text = f.to_string();
        assert!(!text.contains("sqlx=warn"), "{text}");
        let (_, problem) = filter(Some("chatd=loud"));
        assert!(problem.is_some());
    }
}
