//! Group commit of issuance writes: callers hand their write (a pending record, a completed
//! certificate, each with its audit event) to one committer thread and wait; the committer
//! gathers what arrives within a short window (or up to a maximum count), applies it in one
//! transaction through [`Store::issuance_writes`] - one fsync for the whole group, audit
//! appends in the same transaction, so the hash chain grows in commit order - and answers
//! each caller with its own result once the transaction is durable. A caller therefore never
//! goes on (to the HSM, or to answer its client) before its own record is on disk.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{IssuanceWrite, Result, Store, StoreError};
use crate::audit::AuditRecord;

/// How the committer groups writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitSettings {
    /// After the first write of a group arrives, how long to wait for more, at most: the
    /// committer waits only while fewer writes are in hand than issuances are in flight
    /// (a lone issuance never waits).
    pub max_wait: Duration,
    /// Largest group.
    pub max_writes: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        GroupCommitSettings {
            max_wait: Duration::from_micros(1000),
            max_writes: 256,
        }
    }
}

struct Job {
    write: IssuanceWrite,
    reply: mpsc::SyncSender<Result<AuditRecord>>,
}

/// The committer: a thread that owns the grouping; cheap to share. The thread ends when the
/// `GroupCommit` is dropped (after answering what it was given).
pub struct GroupCommit {
    sender: mpsc::Sender<Job>,
    in_flight: Arc<AtomicUsize>,
}

/// Counts one issuance in flight while it lives (see [`GroupCommit::in_flight`]).
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GroupCommit {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<dyn Store>, settings: GroupCommitSettings) -> GroupCommit {
        let (sender, jobs) = mpsc::channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counted = in_flight.clone();
        let spawned = std::thread::Builder::new()
            .name("signet-group-commit".into())
            .spawn(move || run(&*store, &jobs, &counted, settings));
        if let Err(e) = spawned {
            // Without the thread every write answers Unavailable (the receiver is gone).
            tracing::error!(error = %e, "cannot start the group-commit thread");
        }
        GroupCommit { sender, in_flight }
    }

    /// Marks an issuance as in flight until the guard is dropped: the committer then waits
    /// (up to `max_wait`) for its writes to join a group.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// Applies one write with the next group; returns once it is durable (or failed).
    pub fn write(&self, write: IssuanceWrite) -> Result<AuditRecord> {
        let (reply, answer) = mpsc::sync_channel(1);
        let stopped = || StoreError::Unavailable("the group-commit thread has stopped".into());
        self.sender
            .send(Job { write, reply })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

fn run(
    store: &dyn Store,
    jobs: &mpsc::Receiver<Job>,
    in_flight: &AtomicUsize,
    settings: GroupCommitSettings,
) {
    let max = settings.max_writes.max(1);
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        let deadline = Instant::now() + settings.max_wait;
        while group.len() < max {
            match jobs.try_recv() {
                Ok(j) => {
                    group.push(j);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline || group.len() >= in_flight.load(Ordering::Relaxed) {
                break;
            }
            match jobs.recv_timeout(deadline - now) {
                Ok(j) => group.push(j),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let (writes, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|j| (j.write, j.reply)).unzip();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| store.issuance_writes(&writes)))
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the store failed while committing a group of writes".into(),
                ))
            });
        match outcome {
            Ok(results) if results.len() == replies.len() => {
                for (result, reply) in results.into_iter().zip(replies) {
                    // A caller that has gone away (it cannot, it waits) needs no answer.
                    let _ = reply.send(result);
                }
            }
            Ok(results) => {
                let why = format!(
                    "the store answered {} of {} grouped writes",
                    results.len(),
                    replies.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Corrupt(why.clone())));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

/// The same failure for each caller of a group that failed as a whole.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::SerialTaken(m) => StoreError::SerialTaken(m.clone()),
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
    }
}
