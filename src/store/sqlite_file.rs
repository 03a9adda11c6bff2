//! Owning a SQLite database file for the life of the process.
//!
//! Two chatd processes on one file would each cache inboxes the other changes, so a process
//! takes an exclusive OS lock on `<db>.lock` (holding its pid, so the next one can say who has
//! it) before it opens the database, and keeps it until it exits. It also remembers which file
//! it opened: a database deleted or replaced under a running server is noticed, and writes fail
//! instead of being acknowledged into a file nobody will ever open again.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{StoreError, StoreErrorKind, StoreResult};

/// How often a serving process looks at its database file, besides before and after writes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The lock on a database file and the identity of the file that was opened.
#[derive(Debug)]
pub struct DbFile {
    path: PathBuf,
    /// Held until the store is closed; the OS releases the lock if the process dies.
    lock: File,
    identity: std::sync::OnceLock<Identity>,
    /// Set once the loss has been logged, so the log says it once.
    reported: AtomicBool,
}

/// What tells two files apart: device and inode where the platform has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl DbFile {
    /// Takes the lock for `path` (absolute), or explains why not: a missing or unwritable
    /// directory, or another process holding it.
    pub fn lock(path: &Path) -> anyhow::Result<DbFile> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => anyhow::bail!(
                "cannot create the database {}: {} is not a directory",
                path.display(),
                dir.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => anyhow::bail!(
                "cannot create the database {}: the directory {} does not exist; create it with \
                 `mkdir -p {}` or choose another --db",
                path.display(),
                dir.display(),
                dir.display()
            ),
            Err(e) => anyhow::bail!(
                "cannot use the directory {} for the database {}: {}",
                dir.display(),
                path.display(),
                describe(&e)
            ),
        }
        if path.is_dir() {
            anyhow::bail!(
                "the database path {} is a directory; give a file name, e.g. --db sqlite://{}/chatd.db",
                path.display(),
                path.display()
            );
        }
        let mut lock_name = path.as_os_str().to_os_string();
        lock_name.push(".lock");
        let lock_path = PathBuf::from(lock_name);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                    format!(
                        "; this user may not write in {} (run chatd as a user who may, or choose \
                         another --db)",
                        dir.display()
                    )
                } else {
                    String::new()
                };
                anyhow::anyhow!(
                    "cannot create {} beside the database {}: {}{hint}",
                    lock_path.display(),
                    path.display(),
                    describe(&e)
                )
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_pid(&mut lock)
                    .map(|pid| format!("process {pid}"))
                    .unwrap_or_else(|| "another process".to_string());
                anyhow::bail!(
                    "the database {} is in use by {holder} (it holds {}); one chatd serves one \
                     SQLite file: stop that one first, or give this one another --db (several \
                     nodes share a database only on PostgreSQL)",
                    path.display(),
                    lock_path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!(
                "cannot lock {} for the database {}: {}",
                lock_path.display(),
                path.display(),
                describe(&e)
            ),
        }
        // Ours now: say who holds it.
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        lock.flush()?;
        Ok(DbFile {
            path: path.to_path_buf(),
            lock,
            identity: std::sync::OnceLock::new(),
            reported: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets another process (or a new store in this one) have the file, once the store's
    /// connections are closed.
    pub fn release(&self) {
        let _ = self.lock.unlock();
    }

    /// Records the identity of the database file as it is now (once it has been opened).
    pub fn remember(&self) -> io::Result<()> {
        let id = identity(&std::fs::metadata(&self.path)?);
        let _ = self.identity.set(id);
        Ok(())
    }

    /// Fails if the database file is no longer the one that was opened: deleted, renamed away
    /// or replaced. Costs one stat(2).
    pub fn check(&self) -> StoreResult<()> {
        let Some(opened) = self.identity.get() else {
            return Ok(());
        };
        let problem = match std::fs::metadata(&self.path) {
            Ok(meta) if identity(&meta) == *opened => return Ok(()),
            Ok(_) => "was replaced by another file",
            Err(e) if e.kind() == io::ErrorKind::NotFound => "was deleted",
            Err(_) => return Ok(()), // cannot tell (e.g. a transient error): do not fail writes
        };
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "the database {} {problem} while chatd was serving: writes now fail; restore the \
                 file (or accept a new, empty database) and restart chatd",
                self.path.display()
            );
        }
        Err(StoreError::new(
            StoreErrorKind::Gone,
            "storing",
            format!("{} {problem}", self.path.display()),
        ))
    }

    /// Checks the file every few seconds while `file` is alive, so a deletion is logged even
    /// when nobody writes.
    pub fn watch(file: &Arc<DbFile>) {
        let weak: Weak<DbFile> = Arc::downgrade(file);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(WATCH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(file) = weak.upgrade() else { break };
                    if file.check().is_err() {
                        break;
                    }
                }
            });
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    Identity {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Without inode numbers only a deletion can be seen (and Windows refuses to delete an open
/// database anyway).
#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> Identity {
    Identity { dev: 0, ino: 0 }
}

/// An I/O error in words, without the `(os error 13)` suffix.
pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::ReadOnlyFilesystem => "the file system is read-only".to_string(),
        io::ErrorKind::StorageFull => "no space left on the device".to_string(),
        _ => e.to_string(),
    }
}
