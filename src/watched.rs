//! Files read again when they change while the service runs: CRLs an operator replaces (the
//! client CAs' for mTLS, the trust anchors' for verification) and the TLS server's
//! certificate and key.
//!
//! A change is seen by the next use (one `stat` per file): a file's inode (a new file renamed
//! into place), modification time or length. A changed file that cannot be used keeps the
//! value made before, and the log says why: a half-written or wrong CRL must not take
//! revocation checking away. Such a file is tried again once a minute even if it does not
//! change, since what refused it may pass (a CRL dated a little ahead of this host's clock).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
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
    retry_refused_every: Duration,
}

struct State<T> {
    read: Vec<FileStamp>,
    value: Arc<T>,
    /// How many times the value was made again.
    generation: u64,
    /// When the files as they are now could not be used (none: they were).
    refused_at: Option<Instant>,
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
            }),
            retry_refused_every: RETRY_REFUSED_EVERY,
        })
    }

    /// The value, made again first when a file changed since it was read, and its generation.
    pub fn current(&self) -> (Arc<T>, u64) {
        let now: Vec<FileStamp> = self.paths.iter().map(|p| stamp(p)).collect();
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.current(&now, self.retry_refused_every) {
                return (state.value.clone(), state.generation);
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !state.current(&now, self.retry_refused_every) {
            match (self.make)(&self.paths, Some(&state.value)) {
                Ok(value) => {
                    tracing::info!(what = %self.what, "read again after a change");
                    state.value = Arc::new(value);
                    state.generation += 1;
                    state.refused_at = None;
                }
                Err(e) => {
                    tracing::warn!(what = %self.what, error = %e, "cannot be used; what was read before still applies (tried again in a minute)");
                    state.refused_at = Some(Instant::now());
                }
            }
            state.read = now;
        }
        (state.value.clone(), state.generation)
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
