//! Bounded waits for PKCS#11 calls. A call into a module cannot be interrupted: a network HSM
//! that stops answering (a wedged server, a black-holed connection) would hold the caller for
//! as long as the module likes. Every operation of the layer therefore runs on a small pool of
//! worker threads, and the caller waits at most the configured call timeout for its answer.
//!
//! A worker whose caller gave up stays in its call (its answer is dropped when it comes), and
//! stops counting against the pool's bound, so that another thread can take its place; it
//! rejoins the pool if its call returns. Threads are bounded all the same, stuck ones
//! included, at twice the pool's bound: past that the pool grows no more, and callers meet the
//! call timeout.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// An operation and its state, which its caller and its worker change under the queue's lock.
type Job = (Box<dyn FnOnce() + Send>, Arc<AtomicU8>);

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const GIVEN_UP: u8 = 3;

/// Why a bounded call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoAnswer {
    /// The deadline passed first.
    TimedOut,
    /// The operation panicked on its worker.
    Panicked,
}

pub(super) struct Workers {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    max_threads: usize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
    /// Threads counted against the bound: idle, or running a job whose caller still waits.
    threads: usize,
    /// Threads still running a job whose caller gave up.
    stuck: usize,
    closed: bool,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// How long dropping the pool waits for its threads to end. Only a thread stuck in a call
/// that never returns is left behind after it (the process may be exiting anyway).
const JOIN_WAIT: Duration = Duration::from_secs(2);

impl Workers {
    /// A pool that starts threads on demand: at most `max_threads` that callers wait for, and
    /// `2 * max_threads` counting those stuck in calls their callers gave up on.
    pub(super) fn new(max_threads: usize) -> Self {
        Workers {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
                max_threads: max_threads.max(1),
            }),
        }
    }

    /// Runs `f` on a worker and waits at most `timeout` for its result. A job whose caller
    /// gave up before a worker picked it up is skipped.
    pub(super) fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NoAnswer> {
        let (tx, rx) = sync_channel(1);
        let state = Arc::new(AtomicU8::new(QUEUED));
        let op = Box::new(move || {
            let _ = tx.send(f());
        });
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.jobs.push_back((op, state.clone()));
            self.shared.start_thread_if_needed(&mut q);
        }
        match rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => {
                // Answered at the deadline: take it.
                if let Ok(v) = rx.try_recv() {
                    return Ok(v);
                }
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                match state.swap(GIVEN_UP, Ordering::SeqCst) {
                    DONE => rx.try_recv().map_err(|_| NoAnswer::Panicked),
                    RUNNING => {
                        q.threads -= 1;
                        q.stuck += 1;
                        self.shared.start_thread_if_needed(&mut q);
                        Err(NoAnswer::TimedOut)
                    }
                    _ => {
                        // Still queued: taken out, so that a pool with no thread to spare
                        // does not pile up jobs nobody waits for.
                        q.jobs.retain(|(_, s)| !Arc::ptr_eq(s, &state));
                        Err(NoAnswer::TimedOut)
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => Err(NoAnswer::Panicked),
        }
    }

    /// (threads counted against the bound, threads stuck in jobs given up on)
    #[cfg(test)]
    fn census(&self) -> (usize, usize) {
        let q = self.shared.queue.lock().unwrap();
        (q.threads, q.stuck)
    }
}

impl Shared {
    /// Starts a thread for a job that no idle thread will take, within the bounds.
    fn start_thread_if_needed(self: &Arc<Self>, q: &mut Queue) {
        let room = q.threads < self.max_threads && q.threads + q.stuck < 2 * self.max_threads;
        if q.idle < q.jobs.len() && room && !q.closed {
            q.threads += 1;
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name("signet-hsm".into())
                .spawn(move || worker(shared));
            match spawned {
                Ok(handle) => {
                    // Threads that ended (back from a stuck call to a full pool) are let go.
                    q.handles.retain(|h| !h.is_finished());
                    q.handles.push(handle);
                }
                Err(_) => q.threads -= 1,
            }
        } else {
            self.ready.notify_one();
        }
    }
}

impl Drop for Workers {
    /// Ends the threads and waits for them (bounded by [`JOIN_WAIT`]). A worker that ran a
    /// call holds the module's per-thread state (SoftHSM's OpenSSL keeps some): were the
    /// thread still ending while the process exits, its clean-up would race the library's
    /// exit handlers - seen as a rare SIGSEGV after `signet ca init` had finished.
    fn drop(&mut self) {
        let mut handles = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.closed = true;
            self.shared.ready.notify_all();
            std::mem::take(&mut q.handles)
        };
        let deadline = std::time::Instant::now() + JOIN_WAIT;
        while !handles.is_empty() {
            let (done, running): (Vec<_>, Vec<_>) =
                handles.into_iter().partition(|h| h.is_finished());
            for h in done {
                let _ = h.join();
            }
            handles = running;
            if handles.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn worker(shared: Arc<Shared>) {
    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (op, state) = loop {
            if let Some(job) = q.jobs.pop_front() {
                break job;
            }
            if q.closed {
                q.threads -= 1;
                return;
            }
            q.idle += 1;
            q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            q.idle -= 1;
        };
        if state
            .compare_exchange(QUEUED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue; // its caller left before it started
        }
        drop(q);
        // A panicking operation loses its answer (the caller sees Panicked), not the worker.
        let _ = catch_unwind(AssertUnwindSafe(op));
        q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if state
            .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Back from a call its caller gave up on: rejoin the pool if there is room.
            q.stuck -= 1;
            if q.closed || q.threads >= shared.max_threads {
                return;
            }
            q.threads += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn answers_come_back() {
        let w = Workers::new(2);
        assert_eq!(w.run(Duration::from_secs(5), || 40 + 2), Ok(42));
    }

    #[test]
    fn a_call_that_hangs_is_abandoned_at_the_deadline_and_the_pool_goes_on() {
        let w = Workers::new(4);
        let started = Instant::now();
        let r = w.run(Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(3));
            1
        });
        assert_eq!(r, Err(NoAnswer::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(w.run(Duration::from_secs(5), || 2), Ok(2));
    }

    #[test]
    fn dropping_the_pool_waits_for_its_idle_threads_to_end() {
        let w = Workers::new(3);
        assert_eq!(w.run(Duration::from_secs(5), || 1), Ok(1));
        let shared = w.shared.clone();
        drop(w);
        let q = shared.queue.lock().unwrap();
        assert_eq!(q.threads, 0, "every worker has returned");
        assert!(q.handles.is_empty());
    }

    #[test]
    fn dropping_the_pool_does_not_wait_forever_for_a_stuck_call() {
        let w = Workers::new(2);
        let r = w.run(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(30));
        });
        assert_eq!(r, Err(NoAnswer::TimedOut));
        let started = Instant::now();
        drop(w);
        assert!(started.elapsed() < JOIN_WAIT + Duration::from_secs(1));
    }

    #[test]
    fn a_stuck_call_does_not_take_the_place_of_the_next() {
        let w = Workers::new(1);
        let r = w.run(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2));
        });
        assert_eq!(r, Err(NoAnswer::TimedOut));
        assert_eq!(w.census(), (0, 1), "the stuck thread is written off");
        let started = Instant::now();
        assert_eq!(w.run(Duration::from_secs(1), || 7), Ok(7));
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(w.census(), (1, 1), "a new thread took its place");
    }

    #[test]
    fn a_stuck_call_that_returns_rejoins_the_pool_within_its_bound() {
        let w = Workers::new(1);
        let r = w.run(Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(200));
        });
        assert_eq!(r, Err(NoAnswer::TimedOut));
        assert_eq!(w.run(Duration::from_secs(1), || 1), Ok(1));
        std::thread::sleep(Duration::from_millis(400));
        // The late thread found the pool full (the replacement is idle there) and ended.
        assert_eq!(w.census(), (1, 0));
        assert_eq!(w.run(Duration::from_secs(1), || 2), Ok(2));
    }

    #[test]
    fn a_job_given_up_before_it_started_leaves_the_queue() {
        let w = Workers::new(1);
        let r = w.run(Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_secs(1));
        });
        assert_eq!(r, Err(NoAnswer::TimedOut));
        // The replacement thread is stuck too; the pool is full (1 + 1): these only queue.
        let _ = w.run(Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_secs(1));
        });
        for _ in 0..5 {
            assert_eq!(
                w.run(Duration::from_millis(10), || ()),
                Err(NoAnswer::TimedOut)
            );
        }
        assert_eq!(w.shared.queue.lock().unwrap().jobs.len(), 0);
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(
            w.run(Duration::from_secs(1), || 5),
            Ok(5),
            "the pool works again"
        );
    }

    #[test]
    fn stuck_threads_are_bounded_too() {
        let w = Workers::new(2);
        for _ in 0..5 {
            let _ = w.run(Duration::from_millis(20), || {
                std::thread::sleep(Duration::from_secs(1));
            });
        }
        let (threads, stuck) = w.census();
        assert!(threads + stuck <= 4, "{threads} threads, {stuck} stuck");
    }

    #[test]
    fn a_panicking_call_is_reported_and_the_worker_survives() {
        let w = Workers::new(1);
        let r: Result<u8, _> = w.run(Duration::from_secs(5), || panic!("boom"));
        assert_eq!(r, Err(NoAnswer::Panicked));
        assert_eq!(w.run(Duration::from_secs(5), || 3), Ok(3));
    }
}
