//! The group-commit writer: one task takes every SEND waiting, commits them in one
//! transaction, hands them to the topology for delivery, then acknowledges each.
//!
//! - **A bad message fails alone.** Text is checked before it is queued, but if a batch is
//!   still refused for its content, it is split in halves and each is tried again, until the
//!   one message at fault gets the error and every other one is stored.
//! - **One deadline per SEND.** A SEND is answered by its deadline, whatever the queue ahead of
//!   it does. One that is still queued then is withdrawn (never stored, "nothing was changed");
//!   one already in a transaction may have been stored, and is told so.
//! - **A store known to be down fails the queue at once**: when a batch fails because the store
//!   is unavailable, every SEND waiting behind it gets the same answer straight away instead of
//!   waiting for its own timeout.
//! - **Closed explicitly.** [`Writer::close`] stops new SENDs, commits what is queued and waits
//!   for the task, so no acknowledged message depends on when the last handle is dropped.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{ChatError, ChatResult, Code, Outcome};
use crate::metrics::METRICS;
use crate::store::{Message, RoomRefusal, Store, StoreError, StoreErrorKind, Write};
use crate::supervisor::{Finished, Supervisor};
use crate::topology::Topology;

/// Most SENDs committed in one transaction.
const MAX_BATCH: usize = 4096;
/// SENDs waiting for the writer before senders wait for room.
const QUEUE: usize = 16 * 1024;

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// What a committed write did: the row it added to its stream, if any, and for a room its
/// name as shown and its members after the change.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub message: Option<Arc<Message>>,
    pub room: Option<(Arc<str>, i64)>,
}

/// A write's answer: committed, refused by a room's checks (nothing written), or failed.
pub(crate) type Answer = ChatResult<Result<Written, RoomRefusal>>;

struct Pending {
    write: Write,
    reply: oneshot::Sender<Answer>,
    /// QUEUED until the writer takes it into a batch or the sender withdraws it.
    state: Arc<AtomicU8>,
    /// When it was handed to the writer: `chatd_delivery_seconds` starts here.
    accepted: std::time::Instant,
}

pub(crate) struct Writer {
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    task: Finished,
}

impl Writer {
    pub fn start(store: Store, topology: Arc<Topology>, supervisor: &mut Supervisor) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        Writer {
            queue: Mutex::new(Some(queue)),
            task: supervisor.spawn("the message writer", run(store, topology, rx)),
        }
    }

    /// Commits `write` and says what it did, or an error by `deadline`.
    pub async fn submit(&self, write: Write, deadline: Instant) -> Answer {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(shutting_down)?;
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, ack) = oneshot::channel();
        let pending = Pending {
            write,
            reply,
            state: state.clone(),
            accepted: std::time::Instant::now(),
        };
        match tokio::time::timeout_at(deadline, queue.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(shutting_down()),
            Err(_) => return Err(no_answer(Outcome::Unchanged)),
        }
        drop(queue);
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(shutting_down()),
            Err(_) => {
                let withdrawn = state
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                Err(no_answer(if withdrawn {
                    Outcome::Unchanged
                } else {
                    Outcome::Unknown
                }))
            }
        }
    }

    /// Refuses new SENDs, commits the queued ones and waits (at most until `deadline`) for the
    /// writer to finish. Returns false if it did not finish in time.
    pub async fn close(&self, deadline: Instant) -> bool {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        tokio::time::timeout_at(deadline, self.task.wait()).await.is_ok()
    }
}

fn shutting_down() -> ChatError {
    ChatError::new(
        Code::Internal,
        "the server is shutting down; the message was not stored",
    )
}

fn no_answer(outcome: Outcome) -> ChatError {
    ChatError::unavailable(
        "storing the message",
        outcome,
        format!("no commit within {:?}", crate::chat::COMMAND_DEADLINE),
    )
}

async fn run(store: Store, topology: Arc<Topology>, mut queue: mpsc::Receiver<Pending>) {
    let mut pending = Vec::with_capacity(64);
    while queue.recv_many(&mut pending, MAX_BATCH).await > 0 {
        // A SEND whose sender gave up waiting is not stored: it was told nothing changed.
        pending.retain(|p| {
            p.state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if pending.is_empty() {
            continue;
        }
        let batch = std::mem::take(&mut pending);
        if let Err(down) = commit(&store, &topology, batch).await {
            // The store is unavailable: everything queued behind this batch would wait for the
            // same outage. Answer it now; nothing of it was sent to the store.
            let kind = match down.kind {
                StoreErrorKind::Unavailable(_) => StoreErrorKind::Unavailable(Outcome::Unchanged),
                other => other,
            };
            let error = ChatError::from(StoreError { kind, ..down });
            while let Ok(p) = queue.try_recv() {
                let _ = p.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Commits `batch`, splitting it when the store refuses its content so that only the message
/// at fault fails. Returns the error if the store was unavailable (the batch has its answer).
async fn commit(store: &Store, topology: &Topology, batch: Vec<Pending>) -> Result<(), StoreError> {
    let mut work = vec![batch];
    while let Some(batch) = work.pop() {
        let writes: Vec<&Write> = batch.iter().map(|p| &p.write).collect();
        let started = std::time::Instant::now();
        let stored = store.commit(&writes, topology.notify().as_ref()).await;
        tracing::debug!(messages = batch.len(), took = ?started.elapsed(), "committed a batch");
        let took = started.elapsed();
        match stored {
            Ok(done) => {
                METRICS.store_ok();
                METRICS.batch_size.observe(batch.len() as f64);
                METRICS.commit_seconds.observe(took.as_secs_f64());
                let answers: Vec<Result<Written, RoomRefusal>> = done
                    .into_iter()
                    .map(|applied| {
                        applied.map(|c| Written {
                            message: c.message.map(Arc::new),
                            room: c.room,
                        })
                    })
                    .collect();
                let mut rows: Vec<Arc<Message>> = answers
                    .iter()
                    .filter_map(|a| a.as_ref().ok()?.message.clone())
                    .collect();
                // A batch's direct messages take their ids before its rooms' rows.
                rows.sort_unstable_by_key(|m| m.id);
                topology.committed(&rows).await;
                let rooms = rows.iter().filter(|m| m.room().is_some()).count() as u64;
                METRICS.committed_room.inc_by(rooms);
                METRICS.committed_direct.inc_by(rows.len() as u64 - rooms);
                for (answer, pending) in answers.into_iter().zip(batch) {
                    if matches!(&answer, Ok(Written { message: Some(_), .. })) {
                        METRICS
                            .delivery_seconds
                            .observe(pending.accepted.elapsed().as_secs_f64());
                    }
                    let _ = pending.reply.send(Ok(answer));
                }
            }
            Err(e) if e.is_unavailable() => {
                let error = ChatError::from(e.clone());
                for pending in batch.into_iter().chain(work.into_iter().flatten()) {
                    let _ = pending.reply.send(Err(error.clone()));
                }
                return Err(e);
            }
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, messages = batch.len(), "a batch was refused; retrying it in halves");
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                // A stack: the first half is committed first, so ids keep submission order.
                work.push(second);
                work.push(first);
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(ChatError::from(e.clone())));
                }
            }
        }
    }
    Ok(())
}
