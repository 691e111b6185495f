//! The tamper-evident audit log: a hash chain of events kept in the store (appended in the same
//! transaction as the change they describe), and checkpoints of its head signed in the HSM and
//! also appended to a file outside the database, so that a chain rebuilt or cut short inside the
//! database is caught.

mod acknowledge;
mod event;
mod verify;

pub use acknowledge::{check_reason, Acknowledgement, FileLine, LossToAcknowledge};
pub use event::{chain_hash, AuditEvent, AuditRecord, GENESIS};
pub use verify::{
    read_checkpoint_file, verify_chain, ChainBreak, ChainWalk, CheckpointFile, VerifyReport,
};

use std::collections::BTreeMap;
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
    /// The chain in the store no longer holds what this process appended or checkpointed.
    #[error("the audit chain in the database no longer holds what was appended and checkpointed (events removed or rewritten there, or lost by the database): {0}. Where it could, this process checkpointed the event as it appended it, so `signet audit verify` names it. Certificates and signatures stop until the chain matches its checkpoints again (restore the lost events, or, when they cannot be restored, record the loss with `signet audit acknowledge`); revocations go on")]
    ChainAltered(String),
    /// The chain cannot be acknowledged as it stands: it is broken inside, or a checkpoint or
    /// acknowledgement the audit key did not sign is among its records.
    #[error("cannot acknowledge a loss: {0}. An acknowledgement accepts only the loss of the newest events, on a chain that is whole and records the audit key signed; restore the database (or the checkpoint file) from a copy that holds them")]
    NotAcknowledgeable(ChainBreak),
    /// The chain or its checkpoints changed between the listing and `--confirm`.
    #[error("the loss to acknowledge is no longer the one listed (plan {listed}; now {now}): review the new listing, then confirm it")]
    PlanChanged { listed: String, now: String },
    /// The reason given for an acknowledgement is unfit to be signed.
    #[error("{0}")]
    InvalidReason(String),
}

/// Events read from the store at a time when the whole chain is walked.
pub const CHAIN_PAGE: u64 = 10_000;

/// Reads the whole chain from `store` into `walk`, [`CHAIN_PAGE`] events at a time, up to the
/// head as it is when the reading starts (read the checkpoints first: each is then of an event
/// the walk reaches). `progress` hears (events read, head) after each page. The inner error is
/// where the chain breaks; the outer, that the store could not be read.
pub fn read_chain(
    store: &dyn Store,
    mut walk: ChainWalk,
    mut progress: impl FnMut(u64, u64),
) -> Result<Result<ChainWalk, ChainBreak>, StoreError> {
    let Some(head) = store.audit_head()? else {
        return Ok(Ok(walk));
    };
    while walk.events() < head.seq {
        let after = walk.events();
        let page =
            store.audit_events_upto(after, after.saturating_add(CHAIN_PAGE).min(head.seq))?;
        if page.is_empty() {
            return Ok(Err(ChainBreak::Missing { seq: after + 1 }));
        }
        if let Err(b) = walk.read(&page) {
            return Ok(Err(b));
        }
        progress(walk.events(), head.seq);
    }
    Ok(Ok(walk))
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

    /// A line of the checkpoint file as a checkpoint (`None`: not one).
    pub fn parse(line: &str) -> Option<Checkpoint> {
        serde_json::from_str::<CheckpointLine>(line)
            .ok()
            .and_then(|l| l.to_checkpoint())
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

/// The most events a process remembers, and the furthest back (in events) a checkpoint
/// reads the chain to hold it to them.
const WITNESS_WINDOW: u64 = 10_000;

/// How much of the checkpoint file's end a checkpoint reads, at most (about 75 lines).
const FILE_TAIL_BYTES: u64 = 16 * 1024;

/// What this process saw of the chain, to hold the chain to it before signing a checkpoint.
/// Checkpoints protect what they cover; the events since the last one live only in the
/// database, where someone with write access could delete or rewrite them, and the next
/// checkpoint would then sign the altered chain. The process remembers them instead.
#[derive(Default)]
struct Witness {
    /// The newest checkpoint this process made or found at the head: (seq, hash).
    base: Option<(u64, Vec<u8>)>,
    /// Events this process appended that no checkpoint of its covers yet: seq -> hash (the
    /// first seen: a seq given out twice keeps the hash it had first).
    mine: BTreeMap<u64, Vec<u8>>,
    /// Why the chain was found altered: from then on nothing more is signed.
    altered: Option<String>,
    /// How much of the checkpoint file the chain was held to (see `hold_to_file`).
    file_checked_to: Option<u64>,
    /// The checkpoints (seq, hash) that acknowledgements read from the file void: such a
    /// line read later (written again by a process that ran through the loss) is left out.
    voided: std::collections::BTreeSet<(u64, Vec<u8>)>,
    /// An acknowledgement of lost events appeared in the file while this process ran: what
    /// it remembers may be of the lost chain, so it signs no evidence and nothing more.
    acknowledged_meanwhile: bool,
    /// The acknowledgements seen in the file: (head, head_hash).
    known_acknowledgements: std::collections::BTreeSet<(u64, Vec<u8>)>,
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
    /// When this process started: an acknowledgement made since, found in the file, was
    /// made while it ran.
    started: i64,
    /// Serializes checkpoint writes of this process (the file is appended in order).
    writing: Mutex<()>,
    /// The token was seen to hold the audit key: no need to look again. (Signing with a
    /// missing key is a session failure to the HSM layer, which then drops its cached key
    /// handles and logs in again; one search first is cheaper.)
    key_present: AtomicBool,
    /// The audit key's public point (SEC1), once read: checkpoint file lines are held to it
    /// at every checkpoint, and reading it from the token costs more than a signature.
    public_point: std::sync::OnceLock<Vec<u8>>,
    witness: Mutex<Witness>,
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
            started: clock.now(),
            clock,
            writing: Mutex::new(()),
            key_present: AtomicBool::new(false),
            public_point: std::sync::OnceLock::new(),
            witness: Mutex::new(Witness::default()),
        }
    }

    pub fn checkpoint_file(&self) -> &std::path::Path {
        &self.file
    }

    /// Called after each append: checkpoints when the event's sequence number is due. Fails
    /// once the chain was found altered (see [`Witness`]), so that nothing more is issued or
    /// signed on it.
    pub fn after_append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        if let Some(why) = self.remember(rec) {
            return Err(AuditError::ChainAltered(why));
        }
        if self.due.is_due(rec.seq) {
            self.checkpoint(rec.seq, &rec.hash)?;
        }
        Ok(())
    }

    /// [`Auditor::after_append`] for several events appended together: each is noted, and
    /// the newest that falls due is checkpointed (one checkpoint covers the ones before it).
    pub fn after_append_all(&self, recs: &[AuditRecord]) -> Result<(), AuditError> {
        let mut due = None;
        for rec in recs {
            if let Some(why) = self.remember(rec) {
                return Err(AuditError::ChainAltered(why));
            }
            if self.due.is_due(rec.seq) {
                due = Some(rec);
            }
        }
        match due {
            Some(rec) => self.checkpoint(rec.seq, &rec.hash).map(|_| ()),
            None => Ok(()),
        }
    }

    /// [`Auditor::after_append`] for an event whose change is committed and stays: a failed
    /// checkpoint is logged, not returned, lest the caller take the change for not made (an
    /// issued certificate for a failed issuance, a request reopened and approved twice). The
    /// event is in the chain all the same; the next checkpoint covers it.
    pub fn after_commit(&self, rec: &AuditRecord) {
        if let Err(e) = self.after_append(rec) {
            if let AuditError::ChainAltered(_) = e {
                tracing::error!(seq = rec.seq, error = %e, "a change was committed on an altered audit chain (the change stands)");
                return;
            }
            tracing::error!(
                seq = rec.seq,
                error = %e,
                "audit checkpoint failed after a committed change (the change stands; the next checkpoint covers it)"
            );
        }
    }

    /// Checkpoints the current head unless it already is checkpointed. Returns the checkpoint.
    pub fn checkpoint_head(&self) -> Result<Option<Checkpoint>, AuditError> {
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock: no checkpoint this process made is newer than the head read.
        let Some(head) = self.store.audit_head()? else {
            return Ok(None);
        };
        // From here on, a multiple of `every` passed by events of other writers is noticed.
        self.due.seen(head.seq);
        self.hold_to_witness(head.seq, &head.hash, true)?;
        match self.store.newest_checkpoint_seq()? {
            Some(newest) if newest == head.seq => {
                self.witnessed(head.seq, &head.hash);
                return Ok(None);
            }
            // A checkpoint past the head: the newest events were removed, which the next
            // `audit verify` names; this process's memory is kept for its next checkpoint.
            Some(newest) if newest > head.seq => return Ok(None),
            _ => {}
        }
        let cp = self.sign_checkpoint(head.seq, &head.hash)?;
        self.witnessed(head.seq, &head.hash);
        Ok(Some(cp))
    }

    /// Why the chain no longer holds what was appended and checkpointed, once found (see
    /// [`Witness`]).
    pub fn altered(&self) -> Option<String> {
        self.witness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .altered
            .clone()
    }

    /// Notes an event this process appended; returns why the chain is altered, once it is.
    fn remember(&self, rec: &AuditRecord) -> Option<String> {
        let mut w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
        if w.base.as_ref().is_none_or(|(seq, _)| rec.seq > *seq) {
            w.mine.entry(rec.seq).or_insert_with(|| rec.hash.clone());
            // Bounded however long checkpoints fail: the oldest are let go.
            while w.mine.len() as u64 > WITNESS_WINDOW {
                w.mine.pop_first();
            }
        }
        w.altered.clone()
    }

    fn checkpoint(&self, seq: u64, hash: &[u8]) -> Result<Checkpoint, AuditError> {
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.hold_to_witness(seq, hash, false)?;
        let cp = self.sign_checkpoint(seq, hash)?;
        self.witnessed(seq, hash);
        Ok(cp)
    }

    /// Once a signed checkpoint covers `seq`: the chain up to it needs no more holding.
    fn witnessed(&self, seq: u64, hash: &[u8]) {
        let mut w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
        if w.base.as_ref().is_none_or(|(b, _)| seq > *b) {
            w.base = Some((seq, hash.to_vec()));
        }
        w.mine.retain(|s, _| *s > seq);
    }

    /// How far back from a checkpoint the chain is read to hold it to this process's memory:
    /// a few checkpoint intervals, so that an idle process does not read (on one request)
    /// all that others appended since its last checkpoint.
    fn window(&self) -> u64 {
        self.due.every.saturating_mul(4).clamp(100, WITNESS_WINDOW)
    }

    /// Before a checkpoint of (`seq`, `hash`) is signed: the chain up to it still holds the
    /// events this process appended, as it appended them, and runs whole from this process's
    /// last checkpoint, which it still holds (all within [`Auditor::window`]). When `head` is
    /// set, `seq` is the chain's head: nothing this process appended or checkpointed may lie
    /// past it, and at the process's first checkpoint the newest checkpoints of the file must
    /// match the chain (a restart must not sign over a change an earlier process saw). When
    /// the chain fails this, an event of this process that it no longer holds is checkpointed
    /// as appended (the evidence `audit verify` then finds), and the process signs nothing
    /// more. Called with the writing lock held; changes nothing when the chain holds.
    fn hold_to_witness(&self, seq: u64, hash: &[u8], head: bool) -> Result<(), AuditError> {
        let (base, mut mine, newest) = {
            let w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = &w.altered {
                return Err(AuditError::ChainAltered(why.clone()));
            }
            let mine: BTreeMap<u64, Vec<u8>> =
                w.mine.range(..=seq).map(|(s, h)| (*s, h.clone())).collect();
            let newest = w.mine.last_key_value().map(|(s, h)| (*s, h.clone()));
            (w.base.clone(), mine, newest)
        };
        let mut broken = self.hold_to_file()?;
        if let Some((s, h)) = newest.filter(|(s, _)| head && *s > seq) {
            // Remembered only once committed: past the head read now, it was removed.
            if self.store.audit_head()?.is_none_or(|now| now.seq < s) {
                mine.insert(s, h);
            }
        }
        if let Some((b, _)) = base.as_ref().filter(|(b, _)| head && *b > seq) {
            broken.get_or_insert_with(|| format!("the chain's head (event {seq}) is below this process's last checkpoint (event {b}): the newest events were removed"));
        }
        let floor = seq.saturating_sub(self.window());
        let last_checkpoint = base.as_ref().filter(|(b, _)| *b <= seq && *b > floor);
        let from = match last_checkpoint {
            Some((b, _)) => b - 1,
            None => mine
                .keys()
                .next()
                .map_or(seq.saturating_sub(1), |first| first.saturating_sub(1))
                .clamp(floor, seq.saturating_sub(1)),
        };
        let events = self.store.audit_events_upto(from, seq)?;
        if broken.is_none() {
            broken = verify::check_links(&events, from + 1, None)
                .err()
                .map(|e| e.to_string());
        }
        let whole = events.len() as u64 == seq - from
            && events.last().is_some_and(|e| e.hash.as_slice() == hash);
        if !whole {
            broken.get_or_insert_with(|| format!("event {seq} is not the one to be checkpointed"));
        }
        if let Some((b, hb)) = last_checkpoint {
            if events.first().is_none_or(|e| e.hash != *hb) {
                broken.get_or_insert_with(|| {
                    format!("event {b} is no longer the one this process checkpointed")
                });
            }
        }
        // Where the chain holds another event at a seq this process appended (or none), the
        // one it appended is the evidence.
        let stored: BTreeMap<u64, &[u8]> =
            events.iter().map(|e| (e.seq, e.hash.as_slice())).collect();
        let lost = mine
            .iter()
            .find(|(s, h)| **s > from && stored.get(*s).is_none_or(|x| *x != h.as_slice()));
        if let Some((s, _)) = lost {
            broken.get_or_insert_with(|| {
                if *s > seq {
                    format!("event {s}, which this process appended, is past the chain's head (event {seq}): the newest events were removed")
                } else {
                    format!("event {s} is no longer the one this process appended")
                }
            });
        }
        let Some(why) = broken else {
            return Ok(());
        };
        tracing::error!(reason = %why, "the audit chain no longer holds what this process appended or checkpointed; it issues and signs nothing more");
        // Not where an acknowledgement already accepted the event's loss: signed again, it
        // would stand against the chain as a new disagreement.
        let acknowledged = |s: u64, h: &[u8]| {
            let w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
            w.acknowledged_meanwhile || w.voided.contains(&(s, h.to_vec()))
        };
        if let Some((s, h)) = lost.filter(|(s, h)| !acknowledged(**s, h)) {
            if let Err(e) = self.sign_checkpoint(*s, h) {
                tracing::error!(error = %e, seq = s, "cannot checkpoint the event as this process appended it");
            }
        }
        self.witness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .altered = Some(why.clone());
        Err(AuditError::ChainAltered(why))
    }

    /// The checkpoint file's lines this process has not held the chain to yet (at its first
    /// checkpoint, the file's tail) against the chain: why they no longer match it, if they do
    /// not. Held at every checkpoint, so that the evidence one process writes stops the
    /// others on the host at their next checkpoint, and stays in the file's tail. Lines the
    /// audit key did not sign (another CA's file, a hand-made line) are named in the log and
    /// left out.
    fn hold_to_file(&self) -> Result<Option<String>, AuditError> {
        let (from, own) = {
            let w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
            (w.file_checked_to, w.base.clone())
        };
        // Unreadable: the check is skipped, not the command (a revocation must go on); a
        // checkpoint to be written there fails and says why.
        let (lines, end) = match read_checkpoint_lines(&self.file, from) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(file = %self.file.display(), error = %e, "cannot read the checkpoint file to hold the chain to it");
                return Ok(None);
            }
        };
        // This process's own last checkpoint, the one line a lone process finds new, was
        // held to the chain before it was signed.
        let lines: Vec<&FileLine> = lines
            .iter()
            .filter(|line| match line {
                FileLine::Checkpoint(cp) => own
                    .as_ref()
                    .is_none_or(|(s, h)| (cp.seq, &cp.hash) != (*s, h)),
                FileLine::Acknowledgement(_) => true,
            })
            .collect();
        if !lines.is_empty() {
            let point = match self.public_point.get() {
                Some(point) => point.clone(),
                None => match self.hsm.public_key(&self.key_label) {
                    Ok(key) => self
                        .public_point
                        .get_or_init(|| key.to_sec1_bytes().to_vec())
                        .clone(),
                    // No audit key yet (before the ceremony made it): nothing to hold lines to.
                    Err(HsmError::KeyNotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                },
            };
            let foreign = |seq: u64| tracing::warn!(file = %self.file.display(), seq, "a line of the checkpoint file is not signed by this CA's audit key (another CA's or database's file?); left out");
            // An acknowledged loss voids the checkpoints it names, wherever they lie among the
            // lines read (they come before it in the file), and in lines read later.
            let mut checkpoints = Vec::new();
            let mut acknowledged = Vec::new();
            for line in lines {
                match line {
                    FileLine::Acknowledgement(a) => {
                        if crate::ecdsa::verify_p256_sha256(&point, &a.message(), &a.signature)
                            .is_ok()
                        {
                            acknowledged.push(a);
                        } else {
                            foreign(a.head);
                        }
                    }
                    FileLine::Checkpoint(cp) => checkpoints.push(cp),
                }
            }
            let (voided, meanwhile) = {
                let mut w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
                let mut meanwhile = false;
                for a in acknowledged {
                    w.voided.extend(a.voids.iter().cloned());
                    // New to this process, and found past its first read or made after the
                    // second it started (a file read again after it was replaced shows old
                    // ones again; one made in that very second is taken for older).
                    let new = w
                        .known_acknowledgements
                        .insert((a.head, a.head_hash.clone()));
                    meanwhile |= new && (from.is_some() || a.at > self.started);
                }
                w.acknowledged_meanwhile |= meanwhile;
                (w.voided.clone(), meanwhile)
            };
            if meanwhile {
                return Ok(Some("a loss of the audit chain was acknowledged (`signet audit acknowledge`) while this process ran, and what it remembers may be of the lost chain: it signs nothing more until it is restarted".into()));
            }
            // Read after the file: a checkpoint another process wrote meanwhile is of an
            // event committed before it, so not past this head.
            let head = self.store.audit_head()?.map_or(0, |h| h.seq);
            for cp in checkpoints {
                if voided.contains(&(cp.seq, cp.hash.clone())) {
                    continue;
                }
                let message = checkpoint_message(cp.seq, &cp.hash, cp.at);
                if cp.seq == 0
                    || crate::ecdsa::verify_p256_sha256(&point, &message, &cp.signature).is_err()
                {
                    foreign(cp.seq);
                    continue;
                }
                if cp.seq > head {
                    return Ok(Some(format!(
                        "the checkpoint file holds a checkpoint of event {}, past the chain's head (event {head}): the newest events were removed",
                        cp.seq
                    )));
                }
                let at = self.store.audit_events_upto(cp.seq - 1, cp.seq)?;
                if at.first().is_none_or(|e| e.hash != cp.hash) {
                    return Ok(Some(format!(
                        "event {} differs from its checkpoint in the checkpoint file",
                        cp.seq
                    )));
                }
            }
        }
        self.witness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .file_checked_to = Some(end);
        Ok(None)
    }

    /// Signs a checkpoint of (`seq`, `hash`) and writes it to the file and the store. Called
    /// with the writing lock held.
    fn sign_checkpoint(&self, seq: u64, hash: &[u8]) -> Result<Checkpoint, AuditError> {
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

/// Appends `cp` to the checkpoint file as one line.
fn append_checkpoint_line(file: &std::path::Path, cp: &Checkpoint) -> std::io::Result<()> {
    append_file_line(
        file,
        serde_json::to_string(&CheckpointLine::from_checkpoint(cp))
            .expect("checkpoint line serializes"),
    )
}

/// Appends `line` to the checkpoint file in one `write` on a file opened for appending:
/// several processes append to the same file, and a line written in pieces (the JSON, then
/// its newline) could be cut by another process's line.
fn append_file_line(file: &std::path::Path, mut line: String) -> std::io::Result<()> {
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// The longest line of the checkpoint file read back to (see `read_checkpoint_lines`).
const LONGEST_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// Where the line holding byte `pos` of `f` starts, looking back at most
/// [`LONGEST_LINE_BYTES`].
fn line_start(f: &mut std::fs::File, pos: u64) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = pos;
    while end > 0 && pos - end < LONGEST_LINE_BYTES {
        let from = end.saturating_sub(buf.len() as u64);
        let n = (end - from) as usize;
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(Some(from + i as u64 + 1));
        }
        end = from;
    }
    Ok((end == 0).then_some(0))
}

/// The lines of the checkpoint file from byte `from` (the end of what was read last time) to
/// its last complete line, oldest first, and where that line ends. Only the last
/// [`FILE_TAIL_BYTES`] are read: the whole tail when `from` is `None`, lies before that, or
/// past the end (a file replaced). A line the tail starts inside is read from its start
/// (looking back at most [`LONGEST_LINE_BYTES`]); a line that is neither a checkpoint nor an
/// acknowledgement is left out (`audit verify` reads the whole file and names those). No
/// file: none.
fn read_checkpoint_lines(
    file: &std::path::Path,
    from: Option<u64>,
) -> std::io::Result<(Vec<FileLine>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let tail = len.saturating_sub(FILE_TAIL_BYTES);
    let (mut start, mut at_line_start) = match from {
        Some(from) if from >= tail && from <= len => (from, true),
        _ => (tail, tail == 0),
    };
    // A long line the tail starts inside (an acknowledgement naming thousands of
    // checkpoints) is read whole.
    if !at_line_start {
        if let Some(line) = line_start(&mut f, start)? {
            (start, at_line_start) = (line, true);
        }
    }
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(len - start).read_to_end(&mut bytes)?;
    // A line another process is writing right now is left for next time.
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let mut lines = text.lines();
    if !at_line_start {
        lines.next();
    }
    let read = lines.filter_map(FileLine::parse).collect();
    Ok((read, start + complete as u64))
}

/// Checkpoints signed on a thread of their own, for writers of the chain that must not wait for
/// the HSM (verifications need no HSM otherwise). The latest due event waits in a slot and the
/// thread checkpoints it: a hung HSM holds that one thread, never a request, and the events
/// that fall due meanwhile are covered by the checkpoint of the latest.
pub struct BackgroundCheckpoints {
    /// Notes an appended event and tells whether it is due.
    is_due: Box<dyn Fn(&AuditRecord) -> bool + Send + Sync>,
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
            move |rec| {
                // The evidence of what was appended is kept whether or not the chain is
                // still whole: verifications go on either way.
                let _ = auditor.remember(rec);
                auditor.due.is_due(rec.seq)
            },
            move |seq, hash| theirs.checkpoint(seq, hash).map(|_| ()),
        )
    }

    /// With what signs a checkpoint (the auditor, or a test's stand-in).
    fn start_with(
        is_due: impl Fn(&AuditRecord) -> bool + Send + Sync + 'static,
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
        if !(self.is_due)(rec) {
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
        assert_eq!(read.checkpoints.len(), 400);
    }

    #[test]
    fn a_long_line_the_files_tail_starts_inside_is_read_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("audit-checkpoints.jsonl");
        let cp = |seq: u64| Checkpoint {
            seq,
            hash: vec![0xab; 32],
            at: 1_700_000_000,
            signature: vec![0xcd; 72],
        };
        for seq in 1..=50 {
            append_checkpoint_line(&file, &cp(seq)).expect("append");
        }
        // About 90 KiB: longer than the tail read, and than one step of reading back.
        let ack = Acknowledgement {
            head: 1100,
            head_hash: vec![1; 32],
            agreed: 50,
            voids: (51..=1050).map(|s| (s, vec![2; 32])).collect(),
            supersedes: vec![],
            reason: "restore".into(),
            at: 1_700_000_100,
            signature: vec![3; 72],
        };
        assert!(ack.to_line().len() > 80 * 1024);
        append_file_line(&file, ack.to_line()).expect("append");
        append_checkpoint_line(&file, &cp(1100)).expect("append");
        let (lines, end) = read_checkpoint_lines(&file, None).expect("read");
        assert_eq!(end, std::fs::metadata(&file).unwrap().len());
        assert_eq!(
            lines,
            vec![
                FileLine::Acknowledgement(ack),
                FileLine::Checkpoint(cp(1100))
            ]
        );
    }

    #[test]
    fn a_line_start_is_found_back_from_any_byte_of_the_line_up_to_the_longest_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lines");
        std::fs::write(&path, "aaa\nbbb\nccc\n").unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        for (pos, start) in [(0, 0), (2, 0), (3, 0), (4, 4), (5, 4), (8, 8), (11, 8)] {
            assert_eq!(line_start(&mut f, pos).unwrap(), Some(start), "byte {pos}");
        }
        // A line longer than the longest read back to is not found.
        let mut long = vec![b'x'; LONGEST_LINE_BYTES as usize + 10];
        long[0] = b'\n';
        std::fs::write(&path, &long).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        assert_eq!(line_start(&mut f, long.len() as u64).unwrap(), None);
        assert_eq!(line_start(&mut f, 1000).unwrap(), Some(1));
    }

    fn every(n: u64) -> impl Fn(&AuditRecord) -> bool + Send + Sync {
        let due = Due::new(n);
        move |rec| due.is_due(rec.seq)
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
