//! Files read again when they change while the service runs: CRLs an operator replaces (the
//! client CAs' for mTLS, the trust anchors' for verification) and the TLS server's
//! certificate and key.
//!
//! A change is seen by the next use (one `stat` per file): a file's inode (a new file renamed
//! into place), modification time or length. A changed file that cannot be used keeps the
//! value made before, and the log says why: a half-written or wrong CRL must not take
//! revocation checking away. Such a file is tried again once a minute even if it does not
//! change, since what refused it may pass (a CRL dated a little ahead of this host's clock);
//! the others go on with the value in use meanwhile, and the log repeats a refusal only when
//! its reason changes.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often files that could not be used are tried again while they stay as they are.
const RETRY_REFUSED_EVERY: Duration = Duration::from_secs(60);

/// What says a file changed (`None`: unreadable).
type FileStamp = Option<(u64, SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

type Make<T, E> = Box<dyn Fn(&[PathBuf], Option<&T>) -> Result<T, E> + Send + Sync>;

/// A value made from some files, made again when one of them changes.
pub struct Watched<T, E = String> {
    paths: Vec<PathBuf>,
    /// What the value is, for the log ("client CRLs").
    what: String,
    make: Make<T, E>,
    state: RwLock<State<T>>,
    /// Held while the value is made again: one thread makes it, outside `state`'s lock.
    making: Mutex<()>,
    retry_refused_every: Duration,
}

struct State<T> {
    read: Vec<FileStamp>,
    value: Arc<T>,
    /// How many times the value was made again.
    generation: u64,
    /// When the files as they are now could not be used (none: they were).
    refused_at: Option<Instant>,
    /// Why they could not, as logged.
    refused_why: Option<String>,
}

impl<T> State<T> {
    fn current(&self, now: &[FileStamp], retry_every: Duration) -> bool {
        self.read == now && self.refused_at.is_none_or(|t| t.elapsed() < retry_every)
    }
}

impl<T, E: std::fmt::Display> Watched<T, E> {
    /// Makes the value from `paths` now: its error when the files cannot be used. `make` is
    /// given the value in use, if any (a newer file may have to be newer than it).
    pub fn new(
        paths: Vec<PathBuf>,
        what: impl Into<String>,
        make: impl Fn(&[PathBuf], Option<&T>) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        // Stamped before reading: a change made while they are read is seen next time.
        let read = paths.iter().map(|p| stamp(p)).collect();
        let value = Arc::new(make(&paths, None)?);
        Ok(Watched {
            paths,
            what: what.into(),
            make: Box::new(make),
            state: RwLock::new(State {
                read,
                value,
                generation: 0,
                refused_at: None,
                refused_why: None,
            }),
            making: Mutex::new(()),
            retry_refused_every: RETRY_REFUSED_EVERY,
        })
    }

    /// The value, made again first when a file changed since it was read, and its generation.
    /// While a refused file that has not changed is tried again, other callers get the value
    /// in use (it is the one in force) instead of waiting for the attempt.
    pub fn current(&self) -> (Arc<T>, u64) {
        let now: Vec<FileStamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let changed = {
            let state = self.read_state();
            if state.current(&now, self.retry_refused_every) {
                return (state.value.clone(), state.generation);
            }
            state.read != now
        };
        let _making = if changed {
            // A change is seen by the next use: wait for whoever makes the value now.
            self.making.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            match self.making.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    let state = self.read_state();
                    return (state.value.clone(), state.generation);
                }
            }
        };
        // Stamped again now that no one else makes the value: what the thread this one waited
        // for recorded is never put back to an older stamp (and made once more for it).
        let now: Vec<FileStamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let in_use = {
            let state = self.read_state();
            // Made meanwhile by the thread this one waited for.
            if state.current(&now, self.retry_refused_every) {
                return (state.value.clone(), state.generation);
            }
            state.value.clone()
        };
        // A reader that panics refuses the files like any other failure: it is not run again
        // by every caller until they change or the retry is due.
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| {
            (self.make)(&self.paths, Some(&in_use)).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("reading it failed unexpectedly (a panic)".to_string()));
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Logged after the lock is let go (a slow log must not stall the readers).
        let news = match made {
            Ok(value) => {
                state.value = Arc::new(value);
                state.generation += 1;
                state.refused_at = None;
                state.refused_why = None;
                Some(Ok(()))
            }
            Err(why) => {
                // Once per file, and again for a retry only when the reason changes.
                let new = state.read != now || state.refused_why.as_deref() != Some(why.as_str());
                state.refused_at = Some(Instant::now());
                state.refused_why = Some(why.clone());
                new.then_some(Err(why))
            }
        };
        state.read = now;
        let answer = (state.value.clone(), state.generation);
        drop(state);
        match news {
            Some(Ok(())) => tracing::info!(what = %self.what, "read again after a change"),
            Some(Err(why)) => {
                tracing::warn!(what = %self.what, error = %why, "cannot be used; what was read before still applies (tried again every minute; logged again if the reason changes)")
            }
            None => {}
        }
        answer
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State<T>> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T, E> std::fmt::Debug for Watched<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number_in(paths: &[PathBuf], _: Option<&u64>) -> Result<u64, String> {
        let text = std::fs::read_to_string(&paths[0]).map_err(|e| e.to_string())?;
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))
    }

    fn file_with(dir: &std::path::Path, text: &str) -> PathBuf {
        let p = dir.join("value");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("signet-watched-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_file_that_cannot_be_used_at_first_is_an_error() {
        let d = temp_dir("first");
        let p = file_with(&d, "not a number");
        assert!(Watched::new(vec![p], "test", number_in).is_err());
    }

    #[test]
    fn a_changed_file_is_read_again_and_counts_a_generation() {
        let d = temp_dir("changed");
        let p = file_with(&d, "1");
        let w = Watched::new(vec![p.clone()], "test", number_in).unwrap();
        assert_eq!(*w.current().0, 1);
        assert_eq!(w.current().1, 0);
        // A new file renamed into place: a new inode, whatever the time and length.
        let tmp = d.join("value.new");
        std::fs::write(&tmp, "2").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!((*w.current().0, w.current().1), (2, 1));
    }

    #[test]
    fn a_file_refused_is_tried_again_later_even_if_it_does_not_change() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let d = temp_dir("retry");
        let p = file_with(&d, "1");
        // What refuses the file may pass later without it changing (the clock moves on).
        let accepted = Arc::new(AtomicBool::new(true));
        let gate = accepted.clone();
        let mut w = Watched::new(vec![p.clone()], "test", move |paths, _| {
            if gate.load(Ordering::SeqCst) {
                number_in(paths, None)
            } else {
                Err("not yet".to_string())
            }
        })
        .unwrap();
        w.retry_refused_every = Duration::from_secs(1);
        accepted.store(false, Ordering::SeqCst);
        let tmp = d.join("value.new");
        std::fs::write(&tmp, "2").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(*w.current().0, 1, "refused: the value before stays");
        accepted.store(true, Ordering::SeqCst);
        assert_eq!(*w.current().0, 1, "not tried again at once");
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!((*w.current().0, w.current().1), (2, 1));
    }

    #[test]
    fn while_a_refused_file_is_tried_again_other_callers_get_the_value_in_use_at_once() {
        use std::sync::mpsc::{channel, Receiver, Sender};
        let d = temp_dir("busy-retry");
        let p = file_with(&d, "1");
        // After the first value, every attempt says it started and waits to be let go.
        let (started_tx, started) = channel::<()>();
        let (release, release_rx) = channel::<()>();
        let started_tx = Mutex::new(started_tx);
        let release_rx: Mutex<Receiver<()>> = Mutex::new(release_rx);
        let first = std::sync::atomic::AtomicBool::new(true);
        let mut w = Watched::new(vec![p.clone()], "test", move |paths, _| {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return number_in(paths, None);
            }
            let _ = started_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
            Err("not yet".to_string())
        })
        .unwrap();
        w.retry_refused_every = Duration::ZERO;
        let tmp = d.join("value.new");
        std::fs::write(&tmp, "2").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let w = Arc::new(w);
        // The change is refused once, then the unchanged file is tried again (every call).
        let refusing = {
            let w = w.clone();
            std::thread::spawn(move || w.current())
        };
        started.recv().unwrap();
        release.send(()).unwrap();
        assert_eq!(*refusing.join().unwrap().0, 1);
        let retrying = {
            let w = w.clone();
            std::thread::spawn(move || w.current())
        };
        started.recv().unwrap();
        let (answer, answered): (Sender<u64>, _) = channel();
        {
            let w = w.clone();
            std::thread::spawn(move || answer.send(*w.current().0));
        }
        let other = answered.recv_timeout(Duration::from_secs(5));
        release.send(()).unwrap();
        assert_eq!(
            other,
            Ok(1),
            "another caller waited for the attempt instead of getting the value in use"
        );
        assert_eq!(*retrying.join().unwrap().0, 1);
    }

    #[test]
    fn a_reader_that_panics_keeps_the_value_in_force_and_is_not_run_again_by_every_caller() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let d = temp_dir("panics");
        let p = file_with(&d, "1");
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let w = Watched::new(vec![p.clone()], "test", move |paths, _| {
            if counted.fetch_add(1, Ordering::SeqCst) > 0 {
                panic!("a reader's bug");
            }
            number_in(paths, None)
        })
        .unwrap();
        std::fs::write(&p, "22").unwrap();
        assert_eq!((*w.current().0, w.current().1), (1, 0));
        assert_eq!(*w.current().0, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the reader ran again");
    }

    /// What `f` logs, as text.
    fn logged_by(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buffer.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_refusal_is_logged_for_each_new_file_but_not_for_each_retry_of_the_same_one() {
        let d = temp_dir("logged");
        let p = file_with(&d, "1");
        let mut w = Watched::new(vec![p.clone()], "test", |paths, _| {
            number_in(paths, None).map_err(|_| "not a number".to_string())
        })
        .unwrap();
        w.retry_refused_every = Duration::ZERO; // every call retries
        let replace = |text: &str| {
            let tmp = d.join("value.new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &p).unwrap();
        };
        let refusals = |log: &str| log.matches("cannot be used").count();
        let log = logged_by(|| {
            replace("seven");
            w.current();
            w.current();
            w.current();
        });
        assert_eq!(
            refusals(&log),
            1,
            "retries of one file repeat nothing: {log}"
        );
        let log = logged_by(|| {
            replace("eight");
            w.current();
        });
        assert_eq!(
            refusals(&log),
            1,
            "a new file refused alike is logged: {log}"
        );
    }

    #[test]
    fn a_change_that_cannot_be_used_keeps_what_was_read_before() {
        let d = temp_dir("unusable");
        let p = file_with(&d, "7");
        let w = Watched::new(vec![p.clone()], "test", number_in).unwrap();
        std::fs::write(&p, "seven").unwrap();
        assert_eq!((*w.current().0, w.current().1), (7, 0));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            *w.current().0,
            7,
            "a file that went away keeps the value too"
        );
    }
}
