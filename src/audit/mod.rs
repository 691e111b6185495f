//! The tamper-evident audit log: a hash chain of events kept in the store (appended in the same
//! transaction as the change they describe), and checkpoints of its head signed in the HSM and
//! also appended to a file outside the database, so that a chain rebuilt or cut short inside the
//! database is caught.

mod event;
mod verify;

pub use event::{chain_hash, AuditEvent, AuditRecord, GENESIS};
pub use verify::{read_checkpoint_file, verify_chain, ChainBreak, VerifyReport};

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::hsm::{Hsm, HsmError};
use crate::store::{Checkpoint, Store, StoreError};

/// Audit failures. A failed audit write stops the state change it belongs to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("cannot write the audit checkpoint file {path}: {reason}")]
    CheckpointFile { path: String, reason: String },
}

/// Domain separation for checkpoint signatures.
const CHECKPOINT_CONTEXT: &[u8] = b"signet-audit-checkpoint-v1";

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: u64, hash: &[u8], at: i64) -> Vec<u8> {
    let mut m = CHECKPOINT_CONTEXT.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&(hash.len() as u64).to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at.to_be_bytes());
    m
}

/// One line of the checkpoint file (JSON Lines).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointLine {
    pub seq: u64,
    pub hash: String,
    pub at: i64,
    pub signature: String,
}

impl CheckpointLine {
    pub fn from_checkpoint(cp: &Checkpoint) -> Self {
        CheckpointLine {
            seq: cp.seq,
            hash: hex::encode(&cp.hash),
            at: cp.at,
            signature: base64::engine::general_purpose::STANDARD.encode(&cp.signature),
        }
    }

    pub fn to_checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            seq: self.seq,
            hash: hex::decode(&self.hash).ok()?,
            at: self.at,
            signature: base64::engine::general_purpose::STANDARD
                .decode(&self.signature)
                .ok()?,
        })
    }
}

/// When an appended event is due for a checkpoint: when its sequence number is a multiple of
/// `every`, or, in a process that has seen earlier events, when a multiple lies between the
/// latest it has seen and this one. (The event that took the multiple may have come from a
/// writer that checkpoints nothing, or from another process.)
#[derive(Debug)]
struct Due {
    every: u64,
    latest: std::sync::atomic::AtomicU64,
}

impl Due {
    fn new(every: u64) -> Self {
        Due {
            every: every.max(1),
            latest: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Notes `seq` as seen without asking whether it is due (the head at a checkpoint).
    fn seen(&self, seq: u64) {
        self.latest.fetch_max(seq, Ordering::Relaxed);
    }

    fn is_due(&self, seq: u64) -> bool {
        let before = self.latest.fetch_max(seq, Ordering::Relaxed);
        seq.is_multiple_of(self.every)
            || (before != 0 && seq > before && seq / self.every > before / self.every)
    }
}

/// Writes signed checkpoints of the chain head: every `every` events and on demand (shutdown,
/// end of a CLI command).
pub struct Auditor {
    store: Arc<dyn Store>,
    hsm: Arc<Hsm>,
    key_label: String,
    due: Due,
    file: PathBuf,
    clock: Clock,
    /// Serializes checkpoint writes of this process (the file is appended in order).
    writing: Mutex<()>,
    /// The token was seen to hold the audit key: no need to look again. (Signing with a
    /// missing key is a session failure to the HSM layer, which then drops its cached key
    /// handles and logs in again; one search first is cheaper.)
    key_present: AtomicBool,
}

impl Auditor {
    pub fn new(
        store: Arc<dyn Store>,
        hsm: Arc<Hsm>,
        key_label: String,
        every: u64,
        file: PathBuf,
        clock: Clock,
    ) -> Self {
        Auditor {
            store,
            hsm,
            key_label,
            due: Due::new(every),
            file,
            clock,
            writing: Mutex::new(()),
            key_present: AtomicBool::new(false),
        }
    }

    pub fn checkpoint_file(&self) -> &std::path::Path {
        &self.file
    }

    /// Called after each append: checkpoints when the event's sequence number is due.
    pub fn after_append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        if self.due.is_due(rec.seq) {
            self.checkpoint(rec.seq, &rec.hash)?;
        }
        Ok(())
    }

    /// [`Auditor::after_append`] for an event whose change is committed and stays: a failed
    /// checkpoint is logged, not returned, lest the caller take the change for not made (an
    /// issued certificate for a failed issuance, a request reopened and approved twice). The
    /// event is in the chain all the same; the next checkpoint covers it.
    pub fn after_commit(&self, rec: &AuditRecord) {
        if let Err(e) = self.after_append(rec) {
            tracing::error!(
                seq = rec.seq,
                error = %e,
                "audit checkpoint failed after a committed change (the change stands; the next checkpoint covers it)"
            );
        }
    }

    /// Checkpoints the current head unless it already is checkpointed. Returns the checkpoint.
    pub fn checkpoint_head(&self) -> Result<Option<Checkpoint>, AuditError> {
        let Some(head) = self.store.audit_head()? else {
            return Ok(None);
        };
        // From here on, a multiple of `every` passed by events of other writers is noticed.
        self.due.seen(head.seq);
        if self
            .store
            .checkpoints()?
            .last()
            .is_some_and(|c| c.seq >= head.seq)
        {
            return Ok(None);
        }
        self.checkpoint(head.seq, &head.hash).map(Some)
    }

    fn checkpoint(&self, seq: u64, hash: &[u8]) -> Result<Checkpoint, AuditError> {
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Searched for until found once: C_FindObjects costs SoftHSM more than the signature,
        // and this runs every `every` events on the issuing path.
        if !self.key_present.load(Ordering::Relaxed) {
            if !self.hsm.has_key(&self.key_label)? {
                // Before the ceremony made the audit key there is nothing to sign with.
                return Err(AuditError::Hsm(HsmError::KeyNotFound {
                    token: self.hsm.token_name(),
                    key: self.key_label.clone(),
                }));
            }
            self.key_present.store(true, Ordering::Relaxed);
        }
        let at = self.clock.now();
        let signature = self
            .hsm
            .sign_p256_sha256(&self.key_label, &checkpoint_message(seq, hash, at))?;
        let cp = Checkpoint {
            seq,
            hash: hash.to_vec(),
            at,
            signature,
        };
        // The file first: it is the copy that lives outside the database.
        append_checkpoint_line(&self.file, &cp).map_err(|e| AuditError::CheckpointFile {
            path: self.file.display().to_string(),
            reason: e.to_string(),
        })?;
        self.store.add_checkpoint(&cp)?;
        Ok(cp)
    }
}

/// Appends `cp` to the checkpoint file as one line, in one `write` on a file opened for
/// appending: several processes append to the same file, and a line written in pieces (the
/// JSON, then its newline) could be cut by another process's line.
fn append_checkpoint_line(file: &std::path::Path, cp: &Checkpoint) -> std::io::Result<()> {
    let mut line = serde_json::to_string(&CheckpointLine::from_checkpoint(cp))
        .expect("checkpoint line serializes");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Checkpoints signed on a thread of their own, for writers of the chain that must not wait for
/// the HSM (verifications need no HSM otherwise). The latest due event waits in a slot and the
/// thread checkpoints it: a hung HSM holds that one thread, never a request, and the events
/// that fall due meanwhile are covered by the checkpoint of the latest.
pub struct BackgroundCheckpoints {
    is_due: Box<dyn Fn(u64) -> bool + Send + Sync>,
    shared: Arc<(Mutex<Slot>, Condvar)>,
    /// Joined on drop: a checkpoint in flight finishes before its owner (and the HSM context
    /// it signs through) goes; a process that exits while a PKCS#11 call runs on another thread
    /// can hang in the module's teardown.
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Slot {
    /// (seq, hash) of the latest due event not yet handed to the thread.
    due: Option<(u64, Vec<u8>)>,
    closed: bool,
}

impl BackgroundCheckpoints {
    pub fn start(auditor: Arc<Auditor>) -> std::io::Result<Self> {
        let theirs = auditor.clone();
        Self::start_with(
            move |seq| auditor.due.is_due(seq),
            move |seq, hash| theirs.checkpoint(seq, hash).map(|_| ()),
        )
    }

    /// With what signs a checkpoint (the auditor, or a test's stand-in).
    fn start_with(
        is_due: impl Fn(u64) -> bool + Send + Sync + 'static,
        checkpoint: impl Fn(u64, &[u8]) -> Result<(), AuditError> + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("signet-audit-checkpoints".into())
            .spawn(move || {
                let (slot, wake) = &*theirs;
                loop {
                    let (seq, hash) = {
                        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if s.closed {
                                return;
                            }
                            if let Some(due) = s.due.take() {
                                break due;
                            }
                            s = wake.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    if let Err(e) = checkpoint(seq, &hash) {
                        tracing::warn!(error = %e, seq, "audit checkpoint failed; the next due event tries again");
                    }
                }
            })?;
        Ok(BackgroundCheckpoints {
            is_due: Box::new(is_due),
            shared,
            thread: Some(thread),
        })
    }

    /// Hands `rec` to the thread when it is due for a checkpoint; never waits for one.
    pub fn after_append(&self, rec: &AuditRecord) {
        if !(self.is_due)(rec.seq) {
            return;
        }
        let (slot, wake) = &*self.shared;
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        if s.due.as_ref().is_none_or(|(seq, _)| *seq < rec.seq) {
            s.due = Some((rec.seq, rec.hash.clone()));
        }
        wake.notify_one();
    }
}

impl Drop for BackgroundCheckpoints {
    fn drop(&mut self) {
        let (slot, wake) = &*self.shared;
        slot.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        wake.notify_one();
        // A due event not yet taken is left: the owner's shutdown checkpoints the head.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod background_tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn checkpoint_lines_appended_at_once_by_several_writers_each_stay_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("audit-checkpoints.jsonl");
        // Threads stand in for processes: each opens the file for each line, as a process does.
        std::thread::scope(|s| {
            for w in 0..4u64 {
                let file = &file;
                s.spawn(move || {
                    for i in 0..100u64 {
                        let cp = Checkpoint {
                            seq: w * 1_000 + i,
                            hash: vec![0xab; 32],
                            at: 1_700_000_000,
                            signature: vec![0xcd; 64],
                        };
                        append_checkpoint_line(file, &cp).expect("append");
                    }
                });
            }
        });
        let read = read_checkpoint_file(&file).expect("every line is a checkpoint");
        assert_eq!(read.len(), 400);
    }

    fn every(n: u64) -> impl Fn(u64) -> bool + Send + Sync {
        let due = Due::new(n);
        move |seq| due.is_due(seq)
    }

    #[test]
    fn an_event_is_due_on_a_multiple_or_past_one_another_writer_took() {
        let due = Due::new(100);
        assert!(!due.is_due(98), "the process's first event, no multiple");
        assert!(!due.is_due(99));
        assert!(due.is_due(100));
        assert!(!due.is_due(101));
        // 200 went to a writer that does not checkpoint: 203 is the first this one sees past it.
        assert!(!due.is_due(199));
        assert!(due.is_due(203));
        assert!(!due.is_due(204));
        // Out of order across threads: 202 arrives after 204 and is not due again.
        assert!(!due.is_due(202));
        // A process whose first event is past a multiple it never saw waits for the next one.
        let fresh = Due::new(100);
        assert!(!fresh.is_due(250));
        assert!(fresh.is_due(300));
    }

    fn record(seq: u64) -> AuditRecord {
        AuditRecord {
            seq,
            at: 0,
            actor: "test".into(),
            action: "signature.verify".into(),
            object: "x".into(),
            details: "{}".into(),
            tenant: None,
            prev_hash: vec![],
            hash: vec![seq as u8],
        }
    }

    #[test]
    fn a_due_event_is_checkpointed_on_the_thread_and_others_are_not() {
        let (signed, checkpoints) = mpsc::channel();
        let bg = BackgroundCheckpoints::start_with(every(10), move |seq, hash| {
            signed.send((seq, hash.to_vec())).unwrap();
            Ok(())
        })
        .unwrap();
        for seq in 1..=10 {
            bg.after_append(&record(seq));
        }
        let got = checkpoints.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, (10, vec![10]));
        assert!(checkpoints
            .recv_timeout(Duration::from_millis(200))
            .is_err());
    }

    #[test]
    fn a_hung_checkpoint_keeps_no_caller_waiting_and_the_latest_due_event_is_signed_next() {
        let (signed, checkpoints) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let bg = BackgroundCheckpoints::start_with(every(1), move |seq, _| {
            signed.send(seq).unwrap();
            if seq == 1 {
                // A hung HSM: this call returns only when the test says so.
                released.lock().unwrap().recv().unwrap();
            }
            Ok(())
        })
        .unwrap();
        bg.after_append(&record(1));
        assert_eq!(checkpoints.recv_timeout(Duration::from_secs(5)), Ok(1));
        let started = Instant::now();
        for seq in 2..=50 {
            bg.after_append(&record(seq));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "callers waited for the hung checkpoint"
        );
        assert!(checkpoints
            .recv_timeout(Duration::from_millis(200))
            .is_err());
        release.send(()).unwrap();
        assert_eq!(
            checkpoints.recv_timeout(Duration::from_secs(5)),
            Ok(50),
            "the latest due event, once; the ones between are covered by it"
        );
        assert!(checkpoints
            .recv_timeout(Duration::from_millis(200))
            .is_err());
    }
}
