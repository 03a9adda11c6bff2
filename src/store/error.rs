//! What a store operation can fail with. The store says only what happened to the data; the
//! chat domain decides what a client is told (see `impl From<StoreError> for ChatError`).

use std::fmt;

use crate::error::{ChatError, Outcome};

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// What the store was doing, in words a client may see ("storing the message").
    pub context: &'static str,
    /// The database's own message, for the log only.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store could not be reached or did not answer in time; retrying may work. The
    /// outcome says whether a write may have taken effect anyway.
    Unavailable(Outcome),
    /// A unique key is taken (e.g. the user name).
    Duplicate,
    /// The store refused this data (a constraint, a character it cannot hold): the content's
    /// fault, so the same data fails again and other data is not affected.
    Refused,
    /// The database is no longer where it was opened (an SQLite file deleted or replaced):
    /// nothing can be stored until the operator restarts the server.
    Gone,
    /// Anything else.
    Failed,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, context: &'static str, detail: impl fmt::Display) -> StoreError {
        // A name taken is an answer, not a failure of the store.
        if kind != StoreErrorKind::Duplicate {
            let outage = matches!(kind, StoreErrorKind::Unavailable(_) | StoreErrorKind::Gone);
            crate::metrics::METRICS.store_failed(outage);
        }
        StoreError {
            kind,
            context,
            detail: detail.to_string(),
        }
    }

    /// The store cannot take anything now: every write would fail the same way.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Unavailable(_) | StoreErrorKind::Gone)
    }

    /// Classifies a database error. `write` says whether the operation changes data: a
    /// connection lost in the middle of a write leaves its outcome unknown.
    pub fn from_sqlx(context: &'static str, write: bool, err: sqlx::Error) -> StoreError {
        let lost = if write {
            Outcome::Unknown
        } else {
            Outcome::Unchanged
        };
        let kind = match &err {
            // Never got a connection: nothing was sent.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                StoreErrorKind::Unavailable(Outcome::Unchanged)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreErrorKind::Unavailable(lost),
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreErrorKind::Duplicate,
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => classify_code(&code, lost),
                None => StoreErrorKind::Failed,
            },
            _ => StoreErrorKind::Failed,
        };
        StoreError::new(kind, context, err)
    }

    /// No answer within `limit`.
    pub fn timed_out(context: &'static str, write: bool, limit: std::time::Duration) -> StoreError {
        let outcome = if write {
            Outcome::Unknown
        } else {
            Outcome::Unchanged
        };
        StoreError::new(
            StoreErrorKind::Unavailable(outcome),
            context,
            format!("no answer within {limit:?}"),
        )
    }
}

/// PostgreSQL SQLSTATE classes: connection exceptions (08), a login refused (28), insufficient
/// resources (53), operator intervention such as an administrator's shutdown, terminate or a
/// statement timeout (57), a database not accepting connections (55000) make the store
/// unavailable; integrity (23) and data exceptions (22) are the data's fault. SQLite's codes
/// are numbers: busy (5) and locked (6) mean another writer holds the database.
fn classify_code(code: &str, lost: Outcome) -> StoreErrorKind {
    if ["08", "28", "53", "57"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55000"
    {
        StoreErrorKind::Unavailable(lost)
    } else if code.starts_with("22") || code.starts_with("23") {
        StoreErrorKind::Refused
    } else if matches!(code, "5" | "6" | "261" | "517") {
        StoreErrorKind::Unavailable(Outcome::Unchanged)
    } else {
        StoreErrorKind::Failed
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.detail)
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> ChatError {
        match e.kind {
            StoreErrorKind::Unavailable(outcome) => ChatError::unavailable(e.context, outcome, &e.detail),
            StoreErrorKind::Refused => {
                let mut error = ChatError::bad_args(format!("the store refused this ({})", e.context));
                error.detail = Some(e.detail.into());
                error
            }
            StoreErrorKind::Gone => {
                let mut error = ChatError::new(
                    crate::error::Code::Internal,
                    "the server's database file is gone; nothing was stored (the operator must restart the server)",
                );
                error.unavailable = true;
                error.detail = Some(e.detail.into());
                error
            }
            StoreErrorKind::Duplicate | StoreErrorKind::Failed => ChatError::internal(e.context, &e.detail),
        }
    }
}
