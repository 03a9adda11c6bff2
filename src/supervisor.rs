//! The server's long-lived background tasks, watched as one set: the accept loops, the message
//! writer, delivery, a cluster's relay and presence heartbeat, the session watcher, the memory
//! give-back. None of them is meant to end before shutdown, so one that does (returns, fails or
//! panics) is a failure of the server: [`crate::Server::run`] shuts down and returns an error
//! naming it, rather than a node going on without, say, its relay, and so silently without
//! live messages from the other nodes.
//!
//! A task keeps its own way of being stopped (its cancellation token, its closed queue); the
//! set only learns how each one ended. Whoever stops a task waits for it through the
//! [`Finished`] it was given at spawn, so the shutdown keeps its order: the writer still drains
//! its queue, and nothing is aborted that has work to finish.
//!
//! Per-connection tasks are not here: they end all the time, and live in the server's
//! `TaskTracker`.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a supervised task may return: nothing, or whether it failed.
pub(crate) trait Outcome: Send + 'static {
    fn into_result(self) -> anyhow::Result<()>;
}

impl Outcome for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Outcome for anyhow::Result<()> {
    fn into_result(self) -> anyhow::Result<()> {
        self
    }
}

/// The set of supervised tasks, each with a name that says what it is ("the relay").
pub(crate) struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    #[cfg(test)]
    faults: faults::Faults,
}

/// A handle on one supervised task, for whoever stops it: to wait until it has ended (however
/// it ended, panics included), or to abort it when it did not stop in time.
pub(crate) struct Finished {
    done: CancellationToken,
    abort: AbortHandle,
}

impl Finished {
    /// Returns once the task has ended.
    pub async fn wait(&self) {
        self.done.cancelled().await;
    }

    pub fn abort(&self) {
        self.abort.abort();
    }
}

/// How one supervised task ended.
pub(crate) struct Ended {
    pub task: &'static str,
    how: How,
}

enum How {
    Returned,
    Failed(anyhow::Error),
    Panicked(String),
    Aborted,
}

impl Ended {
    /// The error this end is, if it is one. Before shutdown every end is; while stopping, only
    /// a failure or a panic.
    pub fn failure(self, stopping: bool) -> Option<anyhow::Error> {
        let task = self.task;
        match self.how {
            How::Returned | How::Aborted if stopping => None,
            How::Returned => Some(anyhow::anyhow!("{task} stopped unexpectedly")),
            How::Aborted => Some(anyhow::anyhow!("{task} was cancelled unexpectedly")),
            How::Failed(e) => Some(e.context(format!("{task} failed"))),
            How::Panicked(message) => Some(anyhow::anyhow!("{task} panicked: {message}")),
        }
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            #[cfg(test)]
            faults: faults::Faults::default(),
        }
    }

    /// Runs `task` under the name `name` (said in errors: "the relay stopped unexpectedly").
    pub fn spawn<F>(&mut self, name: &'static str, task: F) -> Finished
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let done = CancellationToken::new();
        // Dropped when the task ends: when it returns, and also when it panics or is aborted.
        let ended = done.clone().drop_guard();
        #[cfg(test)]
        let task = self.faults.inject_into(name, task);
        let abort = self.tasks.spawn(async move {
            let _ended = ended;
            task.await.into_result()
        });
        self.names.insert(abort.id(), name);
        Finished { done, abort }
    }

    /// The next task to end; `None` when none is left. Cancel-safe.
    pub async fn next_end(&mut self) -> Option<Ended> {
        let (id, how) = match self.tasks.join_next_with_id().await? {
            Ok((id, Ok(()))) => (id, How::Returned),
            Ok((id, Err(e))) => (id, How::Failed(e)),
            Err(e) if e.is_panic() => {
                let id = e.id();
                (id, How::Panicked(panic_message(e.into_panic())))
            }
            Err(e) => (e.id(), How::Aborted),
        };
        let task = self.names.remove(&id).unwrap_or("a server task");
        Some(Ended { task, how })
    }

    /// Waits (until `deadline`) for the tasks still running, once they have all been told to
    /// stop; aborts whatever is left then. Returns the first failure among them.
    pub async fn wait_all(&mut self, deadline: Instant) -> Option<anyhow::Error> {
        let mut first = None;
        loop {
            let ended = match tokio::time::timeout_at(deadline, self.next_end()).await {
                Ok(Some(ended)) => ended,
                Ok(None) => break,
                Err(_) => {
                    let left: Vec<&str> = self.names.values().copied().collect();
                    tracing::warn!(?left, "tasks did not stop in time; aborting them");
                    self.tasks.abort_all();
                    break;
                }
            };
            let task = ended.task;
            if let Some(error) = ended.failure(true) {
                tracing::error!(error = %format!("{error:#}"), "{task} failed while stopping");
                first.get_or_insert(error);
            }
        }
        first
    }

    /// The names of the tasks running, for tests that check every one of them is here.
    #[cfg(test)]
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.names.values().copied().collect();
        names.sort_unstable();
        names
    }

    #[cfg(test)]
    pub fn faults(&self) -> faults::Faults {
        self.faults.clone()
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_string(),
            Err(_) => "(no message)".to_string(),
        },
    }
}

/// Tests only: making a supervised task end as if it had failed, to see the server stop with
/// its name. Safe to have: `#[cfg(test)]` compiles it only into the library's own unit-test
/// binary; the chatd binary and the integration tests link a library without it, so nothing
/// from the wire or the command line can reach it.
#[cfg(test)]
pub(crate) mod faults {
    use std::future::Future;
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::Outcome;

    /// How to make a task end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fault {
        /// It returns, as if its loop had ended.
        Return,
        /// It returns an error.
        Fail,
        /// It panics.
        Panic,
    }

    /// Faults to inject, by task name; shared with the tasks they are injected into.
    #[derive(Clone)]
    pub struct Faults(Arc<watch::Sender<Option<(&'static str, Fault)>>>);

    impl Default for Faults {
        fn default() -> Faults {
            Faults(Arc::new(watch::channel(None).0))
        }
    }

    impl Faults {
        /// Makes the task named `task` end as `fault` says.
        pub fn inject(&self, task: &'static str, fault: Fault) {
            self.0.send_replace(Some((task, fault)));
        }

        /// `task`, which ends the way a fault injected for `name` says, if one is.
        pub(super) fn inject_into<F>(
            &self,
            name: &'static str,
            task: F,
        ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static
        where
            F: Future + Send + 'static,
            F::Output: Outcome,
        {
            let mut faults = self.0.subscribe();
            async move {
                let fault = async {
                    let fault = faults
                        .wait_for(|f| matches!(f, Some((n, _)) if *n == name))
                        .await
                        .map(|f| f.map(|(_, fault)| fault));
                    match fault {
                        Ok(Some(fault)) => fault,
                        // The server is gone: nothing will be injected.
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ended = task => ended.into_result(),
                    fault = fault => match fault {
                        Fault::Return => Ok(()),
                        Fault::Fail => Err(anyhow::anyhow!("injected failure")),
                        Fault::Panic => panic!("injected fault"),
                    },
                }
            }
        }
    }
}
