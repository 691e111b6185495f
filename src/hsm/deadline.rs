//! Bounded waits for PKCS#11 calls. A call into a module cannot be interrupted: a network HSM
//! that stops answering (a wedged server, a black-holed connection) would hold the caller for
//! as long as the module likes. Every operation of the layer therefore runs on a small pool of
//! worker threads, and the caller waits at most the configured call timeout for its answer.
//! A worker stuck in a call stays stuck (its answer is dropped when it comes); the pool starts
//! another one in its place, up to a bound.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

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
    threads: usize,
    closed: bool,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// How long dropping the pool waits for its threads to end. Only a thread stuck in a call
/// that never returns is left behind after it (the process may be exiting anyway).
const JOIN_WAIT: Duration = Duration::from_secs(2);

impl Workers {
    /// A pool that starts threads on demand, never more than `max_threads` at once.
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
        let abandoned = Arc::new(AtomicBool::new(false));
        let skip = abandoned.clone();
        let job: Job = Box::new(move || {
            if skip.load(Ordering::SeqCst) {
                return;
            }
            let _ = tx.send(f());
        });
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.jobs.push_back(job);
            if q.idle < q.jobs.len() && q.threads < self.shared.max_threads {
                q.threads += 1;
                let shared = self.shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("signet-hsm".into())
                    .spawn(move || worker(shared));
                match spawned {
                    Ok(handle) => q.handles.push(handle),
                    Err(_) => q.threads -= 1,
                }
            } else {
                self.shared.ready.notify_one();
            }
        }
        match rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::SeqCst);
                Err(NoAnswer::TimedOut)
            }
            Err(RecvTimeoutError::Disconnected) => Err(NoAnswer::Panicked),
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
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
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
            }
        };
        // A panicking operation loses its answer (the caller sees Panicked), not the worker.
        let _ = catch_unwind(AssertUnwindSafe(job));
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
    fn a_panicking_call_is_reported_and_the_worker_survives() {
        let w = Workers::new(1);
        let r: Result<u8, _> = w.run(Duration::from_secs(5), || panic!("boom"));
        assert_eq!(r, Err(NoAnswer::Panicked));
        assert_eq!(w.run(Duration::from_secs(5), || 3), Ok(3));
    }
}
