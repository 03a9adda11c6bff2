//! Store URLs as operators type them: `sqlite://PATH`, `sqlite::memory:`, `postgres://...`.
//!
//! Parsing happens before anything is opened, so a typo is refused with the right spelling
//! instead of silently creating a file named after it (`sqlite::memory` used to create a
//! file called `:memory`).

use std::path::{Path, PathBuf};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite database file, by absolute path.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database, gone when the process ends.
    SqliteMemory,
    /// A PostgreSQL URL, passed on as given.
    Postgres(String),
}

const MEMORY: &str = "sqlite::memory:";

impl StoreUrl {
    /// Parses `url`, resolving a relative SQLite path against the current directory.
    pub fn parse(url: &str) -> anyhow::Result<StoreUrl> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        StoreUrl::parse_in(url, &cwd)
    }

    /// Parses `url`, resolving a relative SQLite path against `cwd`.
    pub fn parse_in(url: &str, cwd: &Path) -> anyhow::Result<StoreUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url
            .strip_prefix("postgres:")
            .or_else(|| url.strip_prefix("postgresql:"))
        {
            anyhow::bail!(
                "the store URL {url:?} is not a PostgreSQL URL: write postgres://{}",
                rest.trim_start_matches('/')
            );
        }
        let Some(rest) = url.strip_prefix("sqlite:") else {
            anyhow::bail!(
                "unsupported store URL {url:?}: expected sqlite://PATH (e.g. sqlite://chatd.db), \
                 {MEMORY} or postgres://USER@HOST/DB"
            );
        };
        if url == MEMORY {
            return Ok(StoreUrl::SqliteMemory);
        }
        // `sqlite://PATH`, and sqlx's shorter `sqlite:PATH`.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.contains('?') {
            anyhow::bail!(
                "the store URL {url:?} has query options, which chatd does not take: it sets \
                 SQLite's options itself; write sqlite://PATH"
            );
        }
        // `sqlite::memory`, `sqlite:memory:`, `sqlite://:memory:`, `sqlite://memory`, ...
        let bare = path.trim_matches(|c| c == ':' || c == '/');
        if bare.eq_ignore_ascii_case("memory") {
            anyhow::bail!(
                "the store URL {url:?} is not the in-memory database: write {MEMORY} \
                 (two colons before, one after); for a file named {bare:?}, write sqlite://./{bare}"
            );
        }
        if path.is_empty() {
            anyhow::bail!("the store URL {url:?} names no file: write sqlite://PATH, e.g. sqlite://chatd.db");
        }
        if path == "~" || path.starts_with("~/") {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/home/you".to_string());
            let suggestion = format!("sqlite://{home}{}", &path[1..]);
            anyhow::bail!(
                "the store path {path:?} starts with `~`, which is not expanded here (a shell only \
                 expands `~` at the start of a word): write {suggestion}"
            );
        }
        let path = Path::new(path);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        };
        Ok(StoreUrl::SqliteFile(normalize(&absolute)))
    }
}

/// Removes `.` components and folds `dir/..` so the path printed is the one a person would
/// type (symbolic links are left alone).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(part);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> anyhow::Result<StoreUrl> {
        StoreUrl::parse_in(url, Path::new("/srv/chat"))
    }

    #[test]
    fn relative_paths_become_absolute() {
        assert_eq!(
            parse("sqlite://chatd.db").unwrap(),
            StoreUrl::SqliteFile("/srv/chat/chatd.db".into())
        );
        assert_eq!(
            parse("sqlite:./data/../chatd.db").unwrap(),
            StoreUrl::SqliteFile("/srv/chat/chatd.db".into())
        );
        assert_eq!(
            parse("sqlite:///var/lib/chatd/chatd.db").unwrap(),
            StoreUrl::SqliteFile("/var/lib/chatd/chatd.db".into())
        );
        assert_eq!(parse("sqlite::memory:").unwrap(), StoreUrl::SqliteMemory);
    }

    #[test]
    fn near_misses_of_memory_are_refused_with_the_spelling() {
        for url in [
            "sqlite::memory",
            "sqlite:memory:",
            "sqlite:memory",
            "sqlite://:memory:",
            "sqlite:///:memory:",
            "sqlite://memory",
            "sqlite:::memory:",
            "sqlite::MEMORY:",
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains("write sqlite::memory:"), "{url}: {err}");
        }
        assert_eq!(
            parse("sqlite://./memory").unwrap(),
            StoreUrl::SqliteFile("/srv/chat/memory".into())
        );
    }

    #[test]
    fn a_tilde_is_explained() {
        let err = parse("sqlite://~/chatd.db").unwrap_err().to_string();
        assert!(err.contains("not expanded"), "{err}");
        assert!(err.contains("/chatd.db"), "{err}");
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(parse("mysql://x").is_err());
        assert!(parse("postgres:x")
            .unwrap_err()
            .to_string()
            .contains("postgres://x"));
        assert!(parse("sqlite://").is_err());
        assert!(parse("sqlite://chatd.db?mode=ro").is_err());
        assert_eq!(
            parse("postgresql://u@h/db").unwrap(),
            StoreUrl::Postgres("postgresql://u@h/db".into())
        );
    }
}
