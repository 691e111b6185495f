//! Walking the chain and its checkpoints (pure: the caller reads the store, the file and the key).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};

use super::acknowledge::{Acknowledgement, FileLine};
use super::{checkpoint_message, AuditRecord, GENESIS};
use crate::store::Checkpoint;

/// The first place where the log does not match itself or its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainBreak {
    /// The event's content does not hash to its stored hash: edited (or swapped with another).
    Edited { seq: u64 },
    /// The event's previous-hash is not the hash of the event before it: reordered or inserted.
    OutOfOrder { seq: u64 },
    /// The sequence skips this number: the event was deleted.
    Missing { seq: u64 },
    /// A signed checkpoint covers events the database no longer has: the newest were removed.
    MissingAfterCheckpoint { seq: u64, checkpoint: u64 },
    /// The event at a checkpoint does not carry the signed hash: the chain was rebuilt.
    CheckpointMismatch { seq: u64 },
    /// A checkpoint's signature does not verify under the audit key.
    BadCheckpointSignature { seq: u64 },
    /// The database and the file disagree about a checkpoint.
    CheckpointConflict { seq: u64 },
    /// A checkpoint in the database is absent from the file: the file was cut short or replaced.
    CheckpointNotInFile { seq: u64 },
    /// The checkpoint file cannot be read or has a malformed line.
    CheckpointFile { reason: String },
    /// Events and not one signed checkpoint: such a log cannot be told from one rebuilt from
    /// scratch (every command and the server checkpoint, with the audit key in the token).
    NoCheckpoint { events: u64 },
    /// An acknowledgement of lost events has a signature the audit key did not make.
    BadAcknowledgementSignature { head: u64 },
    /// The event an acknowledgement accepted the chain up to is gone or changed: events were
    /// lost (or rewritten) again after the acknowledgement.
    AcknowledgedHeadLost { head: u64 },
}

impl ChainBreak {
    /// The event the break is first seen at, when there is one.
    pub fn event(&self) -> Option<u64> {
        match self {
            ChainBreak::Edited { seq }
            | ChainBreak::OutOfOrder { seq }
            | ChainBreak::Missing { seq }
            | ChainBreak::MissingAfterCheckpoint { seq, .. }
            | ChainBreak::CheckpointMismatch { seq }
            | ChainBreak::BadCheckpointSignature { seq }
            | ChainBreak::CheckpointConflict { seq }
            | ChainBreak::CheckpointNotInFile { seq } => Some(*seq),
            ChainBreak::BadAcknowledgementSignature { head }
            | ChainBreak::AcknowledgedHeadLost { head } => Some(*head),
            ChainBreak::CheckpointFile { .. } | ChainBreak::NoCheckpoint { .. } => None,
        }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::Edited { seq } => write!(f, "event {seq} does not match its hash: it was edited or swapped"),
            ChainBreak::OutOfOrder { seq } => write!(f, "event {seq} does not follow event {}: events were reordered or inserted", seq.saturating_sub(1)),
            ChainBreak::Missing { seq } => write!(f, "event {seq} is missing: it was deleted"),
            ChainBreak::MissingAfterCheckpoint { seq, checkpoint } => write!(f, "event {seq} is missing: the signed checkpoint at event {checkpoint} shows the newest events were removed"),
            ChainBreak::CheckpointMismatch { seq } => write!(f, "event {seq} differs from its signed checkpoint: the chain was rebuilt at or before it"),
            ChainBreak::BadCheckpointSignature { seq } => write!(f, "the checkpoint at event {seq} has a signature the audit key did not make"),
            ChainBreak::CheckpointConflict { seq } => write!(f, "the database and the checkpoint file disagree about the checkpoint at event {seq}"),
            ChainBreak::CheckpointNotInFile { seq } => write!(f, "the checkpoint at event {seq} is in the database but not in the checkpoint file: the file was cut short or replaced"),
            ChainBreak::CheckpointFile { reason } => write!(f, "checkpoint file: {reason}"),
            ChainBreak::NoCheckpoint { events } => write!(f, "no signed checkpoint covers the {events} events: the checkpoints were removed, or the log was rebuilt without the audit key"),
            ChainBreak::BadAcknowledgementSignature { head } => write!(f, "the acknowledgement of lost events at event {head} has a signature the audit key did not make"),
            ChainBreak::AcknowledgedHeadLost { head } => write!(f, "event {head}, up to which a loss was acknowledged, is missing or differs: events were lost or rewritten again after the acknowledgement"),
        }
    }
}

/// An intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub checkpoints: usize,
    pub last_checkpoint: Option<u64>,
    /// When the last checkpoint was made: a log cut back to an old checkpoint, with the
    /// checkpoints after it removed from the database and the file, shows an old time here.
    pub last_checkpoint_at: Option<i64>,
    /// The losses the operator acknowledged, oldest first: their checkpoints were left out.
    pub acknowledged: Vec<Acknowledgement>,
}

/// What the checkpoint file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointFile {
    pub checkpoints: Vec<Checkpoint>,
    pub acknowledgements: Vec<Acknowledgement>,
}

impl CheckpointFile {
    /// The checkpoints (seq, hash) its acknowledgements void.
    pub fn voided(&self) -> BTreeSet<(u64, &[u8])> {
        self.acknowledgements
            .iter()
            .flat_map(|a| a.voids.iter().map(|(s, h)| (*s, h.as_slice())))
            .collect()
    }
}

/// The chain read page by page: each page checked and linked to the one before, and the
/// hashes kept only at the events a verification needs (checkpoints, acknowledged heads), so
/// that what `audit verify` holds grows with the checkpoints, not with the chain.
#[derive(Debug, Clone)]
pub struct ChainWalk {
    wanted: BTreeSet<u64>,
    hashes: BTreeMap<u64, Vec<u8>>,
    events: u64,
    last_hash: Vec<u8>,
}

impl ChainWalk {
    /// A walk keeping the hashes at the events these checkpoints and acknowledgements name.
    pub fn for_checkpoints(db_checkpoints: &[Checkpoint], file: &CheckpointFile) -> Self {
        let acknowledged = file.acknowledgements.iter().flat_map(|a| {
            std::iter::once(a.head).chain(a.supersedes.iter().map(|(head, _)| *head))
        });
        ChainWalk {
            wanted: db_checkpoints
                .iter()
                .chain(&file.checkpoints)
                .map(|cp| cp.seq)
                .chain(acknowledged)
                .collect(),
            hashes: BTreeMap::new(),
            events: 0,
            last_hash: GENESIS.to_vec(),
        }
    }

    /// The chain's next events, in seq order, after those read so far.
    pub fn read(&mut self, page: &[AuditRecord]) -> Result<(), ChainBreak> {
        check_links(page, self.events + 1, Some(&self.last_hash))?;
        for e in page.iter().filter(|e| self.wanted.contains(&e.seq)) {
            self.hashes.insert(e.seq, e.hash.clone());
        }
        if let Some(last) = page.last() {
            self.events = last.seq;
            self.last_hash = last.hash.clone();
        }
        Ok(())
    }

    /// Events read: the chain's length once it is read whole.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The hash of the newest event read (GENESIS before any).
    pub fn last_hash(&self) -> &[u8] {
        &self.last_hash
    }

    /// The hash of event `seq`, if it was read and asked for.
    pub fn hash_at(&self, seq: u64) -> Option<&[u8]> {
        self.hashes.get(&seq).map(Vec::as_slice)
    }
}

/// Verifies the file's acknowledgements of lost events, then every checkpoint from the
/// database and the file (less those acknowledged as lost) against the audit key and the
/// chain `walk` read whole (see [`ChainWalk::for_checkpoints`]: it checked the chain's own
/// links).
pub fn verify_chain(
    walk: &ChainWalk,
    db_checkpoints: &[Checkpoint],
    file: &CheckpointFile,
    audit_key: &VerifyingKey,
) -> Result<VerifyReport, ChainBreak> {
    let last = walk.events();

    for ack in &file.acknowledgements {
        if !signed_by(audit_key, &ack.message(), &ack.signature) {
            return Err(ChainBreak::BadAcknowledgementSignature { head: ack.head });
        }
    }
    // An acknowledgement whose head was lost again stands only where a later one says so.
    let superseded: Vec<&(u64, Vec<u8>)> = file
        .acknowledgements
        .iter()
        .flat_map(|a| &a.supersedes)
        .collect();
    for ack in &file.acknowledgements {
        let head = (ack.head, ack.head_hash.clone());
        if walk.hash_at(ack.head) != Some(ack.head_hash.as_slice()) && !superseded.contains(&&head)
        {
            return Err(ChainBreak::AcknowledgedHeadLost { head: ack.head });
        }
    }
    let voided = file.voided();
    let standing = |cp: &&Checkpoint| !voided.contains(&(cp.seq, cp.hash.as_slice()));
    let db_checkpoints: Vec<&Checkpoint> = db_checkpoints.iter().filter(standing).collect();
    let file_checkpoints: Vec<&Checkpoint> = file.checkpoints.iter().filter(standing).collect();

    let mut all: BTreeMap<u64, &Checkpoint> = BTreeMap::new();
    for cp in file_checkpoints.iter().chain(&db_checkpoints) {
        if let Some(other) = all.insert(cp.seq, *cp) {
            if other.hash != cp.hash {
                return Err(ChainBreak::CheckpointConflict { seq: cp.seq });
            }
        }
    }
    let in_file: BTreeSet<u64> = file_checkpoints.iter().map(|cp| cp.seq).collect();
    for cp in &db_checkpoints {
        if !in_file.contains(&cp.seq) {
            return Err(ChainBreak::CheckpointNotInFile { seq: cp.seq });
        }
    }
    for (seq, cp) in &all {
        if !signed_by(
            audit_key,
            &checkpoint_message(cp.seq, &cp.hash, cp.at),
            &cp.signature,
        ) {
            return Err(ChainBreak::BadCheckpointSignature { seq: *seq });
        }
        match walk.hash_at(*seq) {
            None => {
                return Err(ChainBreak::MissingAfterCheckpoint {
                    seq: last + 1,
                    checkpoint: *seq,
                })
            }
            Some(h) if *h != cp.hash => return Err(ChainBreak::CheckpointMismatch { seq: *seq }),
            Some(_) => {}
        }
    }
    if last > 0 && all.is_empty() {
        return Err(ChainBreak::NoCheckpoint { events: last });
    }
    let newest = all.values().next_back();
    Ok(VerifyReport {
        events: last,
        checkpoints: all.len(),
        last_checkpoint: newest.map(|cp| cp.seq),
        last_checkpoint_at: newest.map(|cp| cp.at),
        acknowledged: file.acknowledgements.clone(),
    })
}

/// Whether `signature` (DER) is the audit key's over `message`.
pub(super) fn signed_by(audit_key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    DerSignature::try_from(signature).is_ok_and(|sig| audit_key.verify(message, &sig).is_ok())
}

/// Checks that `events` (in seq order) are a piece of a whole chain: numbered `first`, then
/// each the next, each hashing to its stored hash, and each linked to the one before it (the
/// first to `prev`, when that is known).
pub(super) fn check_links(
    events: &[AuditRecord],
    first: u64,
    prev: Option<&[u8]>,
) -> Result<(), ChainBreak> {
    let mut prev = prev;
    for (expected, e) in (first..).zip(events) {
        if e.seq != expected {
            return Err(ChainBreak::Missing { seq: expected });
        }
        if e.recompute().as_slice() != e.hash.as_slice() {
            return Err(ChainBreak::Edited { seq: e.seq });
        }
        if prev.is_some_and(|p| e.prev_hash != p) {
            return Err(ChainBreak::OutOfOrder { seq: e.seq });
        }
        prev = Some(&e.hash);
    }
    Ok(())
}

/// Parses the checkpoint file (JSON Lines). A missing file is an empty one.
pub fn read_checkpoint_file(path: &std::path::Path) -> Result<CheckpointFile, ChainBreak> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CheckpointFile::default()),
        Err(e) => {
            return Err(ChainBreak::CheckpointFile {
                reason: format!("cannot read {}: {e}", path.display()),
            })
        }
    };
    let mut out = CheckpointFile::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match FileLine::parse(line) {
            Some(FileLine::Checkpoint(cp)) => out.checkpoints.push(cp),
            Some(FileLine::Acknowledgement(a)) => out.acknowledgements.push(a),
            None => {
                return Err(ChainBreak::CheckpointFile {
                    reason: format!(
                        "{} line {} is neither a checkpoint nor an acknowledgement",
                        path.display(),
                        i + 1
                    ),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::test_chain;

    fn walk_wanting(wanted: &[u64]) -> ChainWalk {
        let cps: Vec<Checkpoint> = wanted
            .iter()
            .map(|seq| Checkpoint {
                seq: *seq,
                hash: vec![],
                at: 0,
                signature: vec![],
            })
            .collect();
        ChainWalk::for_checkpoints(&cps, &CheckpointFile::default())
    }

    #[test]
    fn a_chain_read_in_pages_keeps_only_the_hashes_asked_for() {
        let events = test_chain(10);
        let mut walk = walk_wanting(&[3, 7, 10]);
        for page in events.chunks(3) {
            walk.read(page).unwrap();
        }
        assert_eq!(walk.events(), 10);
        assert_eq!(walk.last_hash(), events[9].hash.as_slice());
        assert_eq!(walk.hash_at(7), Some(events[6].hash.as_slice()));
        assert_eq!(walk.hash_at(5), None, "not asked for");
    }

    #[test]
    fn an_event_deleted_at_a_page_boundary_is_found() {
        let mut events = test_chain(10);
        events.remove(3);
        let mut walk = walk_wanting(&[]);
        let broken = events.chunks(3).try_for_each(|page| walk.read(page));
        assert_eq!(broken, Err(ChainBreak::Missing { seq: 4 }));
    }

    #[test]
    fn a_page_that_does_not_follow_the_one_before_is_found() {
        let events = test_chain(6);
        // Events 4 to 6 rebuilt on another event 3: whole among themselves, hashes right.
        let mut prev = vec![9u8; 32];
        let rebuilt: Vec<AuditRecord> = events[3..]
            .iter()
            .map(|e| {
                let hash = crate::audit::chain_hash(&prev, e.seq, e.at, &e.event()).to_vec();
                let mut e = e.clone();
                e.prev_hash = std::mem::replace(&mut prev, hash.clone());
                e.hash = hash;
                e
            })
            .collect();
        let mut walk = walk_wanting(&[]);
        walk.read(&events[..3]).unwrap();
        assert_eq!(walk.read(&rebuilt), Err(ChainBreak::OutOfOrder { seq: 4 }));
    }
}
