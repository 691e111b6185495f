//! Accepting a loss of the chain's newest events: a database restored from a backup older than
//! its newest checkpoints, or an asynchronous standby promoted. Checkpoints signed before the
//! loss then disagree with the chain for ever, and every process on the host stops issuing.
//!
//! An acknowledgement is the operator's signed statement of that loss: it names the
//! checkpoints that disagree with the chain (seq and hash, each exactly), the head of the
//! chain it accepted, and why. It is signed by the audit key, kept in the checkpoint file, and
//! recorded in the chain itself as an `audit.loss_acknowledged` event. `audit verify` and every
//! process's witness leave the named checkpoints out and report the acknowledgement; nothing
//! else is excused: the chain must still be whole inside, and a later loss below the accepted
//! head is a break again.

use std::collections::BTreeSet;

use base64::Engine;
use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::verify::{read_checkpoint_file, signed_by, ChainWalk, CheckpointFile};
use super::{
    append_file_line, checkpoint_message, read_chain, AuditError, AuditEvent, Auditor, ChainBreak,
    CheckpointLine, Witness,
};
use crate::store::Checkpoint;

/// Domain separation for acknowledgement signatures (checkpoints have their own).
const ACKNOWLEDGEMENT_CONTEXT: &[u8] = b"signet-audit-acknowledgement-v1";

/// The longest reason an acknowledgement carries.
pub const MAX_REASON_CHARS: usize = 500;

/// A signed acknowledgement of lost events (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    /// The event the operator accepted the chain up to (the acknowledgement's own event).
    pub head: u64,
    pub head_hash: Vec<u8>,
    /// The newest checkpoint that still held when it was made (0: none); the events after
    /// it, to `head`, were taken on the database's word.
    pub agreed: u64,
    /// The checkpoints it voids: (seq, hash), each matching one checkpoint exactly.
    pub voids: Vec<(u64, Vec<u8>)>,
    /// Earlier acknowledgements whose head the chain had lost again: (head, head_hash).
    pub supersedes: Vec<(u64, Vec<u8>)>,
    pub reason: String,
    pub at: i64,
    pub signature: Vec<u8>,
}

impl Acknowledgement {
    /// The bytes the signature covers: every field but the signature, length-prefixed.
    pub fn message(&self) -> Vec<u8> {
        let mut m = ACKNOWLEDGEMENT_CONTEXT.to_vec();
        let mut bytes = |b: &[u8]| {
            m.extend_from_slice(&(b.len() as u64).to_be_bytes());
            m.extend_from_slice(b);
        };
        bytes(&self.head.to_be_bytes());
        bytes(&self.head_hash);
        bytes(&self.agreed.to_be_bytes());
        for list in [&self.voids, &self.supersedes] {
            bytes(&(list.len() as u64).to_be_bytes());
            for (seq, hash) in list {
                bytes(&seq.to_be_bytes());
                bytes(hash);
            }
        }
        bytes(self.reason.as_bytes());
        bytes(&self.at.to_be_bytes());
        m
    }

    /// Whether this acknowledgement names `cp`.
    pub fn voids(&self, cp: &Checkpoint) -> bool {
        self.voids
            .iter()
            .any(|(seq, hash)| *seq == cp.seq && *hash == cp.hash)
    }

    /// The checkpoint file line (JSON, without its newline).
    pub fn to_line(&self) -> String {
        let b64 = &base64::engine::general_purpose::STANDARD;
        serde_json::to_string(&AcknowledgementLine {
            kind: KIND.into(),
            head: self.head,
            head_hash: hex::encode(&self.head_hash),
            agreed: self.agreed,
            voids: pairs_to_lines(&self.voids),
            supersedes: pairs_to_lines(&self.supersedes),
            reason: self.reason.clone(),
            at: self.at,
            signature: b64.encode(&self.signature),
        })
        .expect("acknowledgement line serializes")
    }

    fn parse(line: &str) -> Option<Acknowledgement> {
        let l: AcknowledgementLine = serde_json::from_str(line).ok()?;
        if l.kind != KIND {
            return None;
        }
        Some(Acknowledgement {
            head: l.head,
            head_hash: hex::decode(&l.head_hash).ok()?,
            agreed: l.agreed,
            voids: lines_to_pairs(&l.voids)?,
            supersedes: lines_to_pairs(&l.supersedes)?,
            reason: l.reason,
            at: l.at,
            signature: base64::engine::general_purpose::STANDARD
                .decode(&l.signature)
                .ok()?,
        })
    }
}

const KIND: &str = "acknowledgement";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcknowledgementLine {
    kind: String,
    head: u64,
    head_hash: String,
    agreed: u64,
    voids: Vec<PairLine>,
    supersedes: Vec<PairLine>,
    reason: String,
    at: i64,
    signature: String,
}

/// A checkpoint, or an acknowledgement's head: seq and hex hash.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    seq: u64,
    hash: String,
}

fn pairs_to_lines(pairs: &[(u64, Vec<u8>)]) -> Vec<PairLine> {
    pairs
        .iter()
        .map(|(seq, hash)| PairLine {
            seq: *seq,
            hash: hex::encode(hash),
        })
        .collect()
}

fn lines_to_pairs(lines: &[PairLine]) -> Option<Vec<(u64, Vec<u8>)>> {
    lines
        .iter()
        .map(|l| Some((l.seq, hex::decode(&l.hash).ok()?)))
        .collect()
}

/// One line of the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileLine {
    Checkpoint(Checkpoint),
    Acknowledgement(Acknowledgement),
}

impl FileLine {
    /// `None`: the line is neither.
    pub fn parse(line: &str) -> Option<FileLine> {
        match CheckpointLine::parse(line) {
            Some(cp) => Some(FileLine::Checkpoint(cp)),
            None => Acknowledgement::parse(line).map(FileLine::Acknowledgement),
        }
    }
}

/// What an acknowledgement of the chain as it stands would record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossToAcknowledge {
    /// Events in the chain.
    pub events: u64,
    /// The newest checkpoint that still holds (0: none): the events after it are taken on
    /// the database's word. A lost tail and a tail rewritten with its hashes recomputed look
    /// the same from here; only the database's own records tell them apart.
    pub agreed: u64,
    /// The checkpoints that disagree with the chain, oldest first.
    pub voids: Vec<Checkpoint>,
    /// Earlier acknowledgements whose head the chain no longer holds: (head, head_hash).
    pub supersedes: Vec<(u64, Vec<u8>)>,
    /// The checkpoints earlier acknowledgements void: (seq, hash).
    pub voided_before: Vec<(u64, Vec<u8>)>,
    /// How many of those are still in the database (a run stopped before it removed them).
    pub voided_rows_left: usize,
    /// The hash of the chain's newest event: what the operator reviewed.
    pub head_hash: Vec<u8>,
}

impl LossToAcknowledge {
    /// Nothing to acknowledge.
    pub fn is_empty(&self) -> bool {
        self.voids.is_empty() && self.supersedes.is_empty()
    }

    /// The pairs an acknowledgement of this plan voids.
    fn void_pairs(&self) -> Vec<(u64, Vec<u8>)> {
        self.voids
            .iter()
            .map(|cp| (cp.seq, cp.hash.clone()))
            .collect()
    }

    /// A name of this plan (hex, from SHA-256 over the chain's newest event and what an
    /// acknowledgement of it signs but its head, reason and time): `--confirm` takes it, so
    /// that what is signed is what was listed, events taken on the database's word included.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.events.to_be_bytes());
        h.update((self.head_hash.len() as u64).to_be_bytes());
        h.update(&self.head_hash);
        h.update(self.agreed.to_be_bytes());
        h.update(pairs_digest(&self.void_pairs()));
        h.update(pairs_digest(&self.supersedes));
        hex::encode(&h.finalize()[..16])
    }
}

/// SHA-256 over (seq, hash) pairs, each length-prefixed.
fn pairs_digest(pairs: &[(u64, Vec<u8>)]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((pairs.len() as u64).to_be_bytes());
    for (seq, hash) in pairs {
        h.update(seq.to_be_bytes());
        h.update((hash.len() as u64).to_be_bytes());
        h.update(hash);
    }
    h.finalize().into()
}

/// Plans an acknowledgement of the chain `events` (all of it, in seq order): the checkpoints
/// of the database and the file that disagree with it (past its head, or another hash than
/// its event), less those an earlier acknowledgement voids, and the earlier acknowledgements
/// whose head it lost again. Fails when the chain itself is broken (an acknowledgement accepts
/// lost newest events, never a gap or an edit), and when a checkpoint or an acknowledgement
/// is not signed by `audit_key` (a forged row is not a loss to accept).
pub fn plan(
    walk: &ChainWalk,
    db_checkpoints: &[Checkpoint],
    file: &CheckpointFile,
    audit_key: &VerifyingKey,
) -> Result<LossToAcknowledge, ChainBreak> {
    let holds = |seq: u64, hash: &[u8]| walk.hash_at(seq) == Some(hash);
    for ack in &file.acknowledgements {
        if !signed_by(audit_key, &ack.message(), &ack.signature) {
            return Err(ChainBreak::BadAcknowledgementSignature { head: ack.head });
        }
    }
    let superseded: BTreeSet<&(u64, Vec<u8>)> = file
        .acknowledgements
        .iter()
        .flat_map(|a| &a.supersedes)
        .collect();
    let supersedes: BTreeSet<(u64, Vec<u8>)> = file
        .acknowledgements
        .iter()
        .map(|a| (a.head, a.head_hash.clone()))
        .filter(|pair| !holds(pair.0, &pair.1) && !superseded.contains(pair))
        .collect();
    let voided = file.voided();
    let mut seen = BTreeSet::new();
    let mut agreed = 0;
    let mut voids = Vec::new();
    for cp in file.checkpoints.iter().chain(db_checkpoints) {
        if !seen.insert((cp.seq, cp.hash.as_slice()))
            || voided.contains(&(cp.seq, cp.hash.as_slice()))
        {
            continue;
        }
        if !signed_by(
            audit_key,
            &checkpoint_message(cp.seq, &cp.hash, cp.at),
            &cp.signature,
        ) {
            return Err(ChainBreak::BadCheckpointSignature { seq: cp.seq });
        }
        if holds(cp.seq, &cp.hash) {
            agreed = agreed.max(cp.seq);
        } else {
            voids.push(cp.clone());
        }
    }
    voids.sort_by_key(|cp| cp.seq);
    Ok(LossToAcknowledge {
        events: walk.events(),
        agreed,
        voids,
        supersedes: supersedes.into_iter().collect(),
        voided_before: file
            .acknowledgements
            .iter()
            .flat_map(|a| a.voids.iter().cloned())
            .collect(),
        voided_rows_left: db_checkpoints
            .iter()
            .filter(|cp| voided.contains(&(cp.seq, cp.hash.as_slice())))
            .count(),
        head_hash: walk.last_hash().to_vec(),
    })
}

impl Auditor {
    /// What an acknowledgement of the chain as it stands would record (nothing is written).
    pub fn loss_to_acknowledge(&self) -> Result<LossToAcknowledge, AuditError> {
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.plan_loss()
    }

    fn plan_loss(&self) -> Result<LossToAcknowledge, AuditError> {
        let key = VerifyingKey::from(&self.hsm.public_key(&self.key_label)?);
        // The checkpoints first, the chain after (see `read_chain`).
        let file = read_checkpoint_file(&self.file).map_err(|e| AuditError::CheckpointFile {
            path: self.file.display().to_string(),
            reason: e.to_string(),
        })?;
        let db = self.store.checkpoints()?;
        let walk = read_chain(
            &*self.store,
            ChainWalk::for_checkpoints(&db, &file),
            |_, _| {},
        )?
        .map_err(AuditError::NotAcknowledgeable)?;
        plan(&walk, &db, &file, &key).map_err(AuditError::NotAcknowledgeable)
    }

    /// Records the loss of the chain's newest events as acknowledged by `actor` (see the
    /// module documentation), when the plan is still the one named `plan_id` (see
    /// [`LossToAcknowledge::id`]): an `audit.loss_acknowledged` event, the acknowledgement of
    /// the chain up to that event signed into the checkpoint file, the voided checkpoints
    /// removed from the database (the file keeps them), then a checkpoint of the event.
    /// `None` when nothing disagrees (voided checkpoints an earlier run left in the database
    /// are removed all the same). This process then holds the chain afresh; processes that ran
    /// through the loss must be stopped first (at their last checkpoint they would sign the
    /// lost events again).
    pub fn acknowledge_loss(
        &self,
        actor: &str,
        reason: &str,
        plan_id: &str,
    ) -> Result<Option<Acknowledgement>, AuditError> {
        let reason = check_reason(reason).map_err(AuditError::InvalidReason)?;
        let _guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let plan = self.plan_loss()?;
        if plan.is_empty() {
            self.store.remove_checkpoints(&plan.voided_before)?;
            return Ok(None);
        }
        if !plan.id().eq_ignore_ascii_case(plan_id.trim()) {
            return Err(AuditError::PlanChanged {
                listed: plan_id.trim().to_string(),
                now: plan.id(),
            });
        }
        let voids = plan.void_pairs();
        let supersedes: Vec<serde_json::Value> = plan
            .supersedes
            .iter()
            .map(|(seq, hash)| serde_json::json!({"head": seq, "hash": hex::encode(hash)}))
            .collect();
        // The voided checkpoints by count and digest: the file's line lists them (there may
        // be thousands).
        let ev = AuditEvent::new(
            actor,
            "audit.loss_acknowledged",
            "audit-chain",
            serde_json::json!({
                "reason": reason,
                "events": plan.events,
                "agreed": plan.agreed,
                "voided": voids.len(),
                "voided_sha256": hex::encode(pairs_digest(&voids)),
                "first_voided": voids.first().map(|v| v.0),
                "supersedes": supersedes,
            }),
        );
        let at = self.clock.now();
        let rec = self.store.append_audit(at, &ev)?;
        let mut ack = Acknowledgement {
            head: rec.seq,
            head_hash: rec.hash.clone(),
            agreed: plan.agreed,
            voids,
            supersedes: plan.supersedes,
            reason: reason.to_string(),
            at,
            signature: Vec::new(),
        };
        ack.signature = self.hsm.sign_p256_sha256(&self.key_label, &ack.message())?;
        append_file_line(&self.file, ack.to_line()).map_err(|e| AuditError::CheckpointFile {
            path: self.file.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut remove = plan.voided_before.clone();
        remove.extend(ack.voids.iter().cloned());
        self.store.remove_checkpoints(&remove)?;
        // What this process saw before is of the chain the acknowledgement leaves behind; its
        // own acknowledgement is not one made behind its back.
        {
            let mut w = self.witness.lock().unwrap_or_else(|e| e.into_inner());
            *w = Witness::default();
            w.known_acknowledgements
                .insert((ack.head, ack.head_hash.clone()));
        }
        self.hold_to_witness(rec.seq, &rec.hash, false)?;
        self.sign_checkpoint(rec.seq, &rec.hash)?;
        self.witnessed(rec.seq, &rec.hash);
        Ok(Some(ack))
    }
}

/// A reason fit to be signed and shown: one line of text, not empty, not too long, without
/// control or invisible characters (see [`crate::text::is_control_or_invisible`]).
pub fn check_reason(reason: &str) -> Result<&str, String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(
            "give the reason for the loss (--reason), as the audit record will show it".into(),
        );
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    if reason.chars().any(crate::text::is_control_or_invisible) {
        return Err(
            "the reason must be one line of plain text (no control or invisible characters)".into(),
        );
    }
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditRecord;

    /// [`super::plan`] over the chain `events`, read whole.
    fn plan(
        events: &[AuditRecord],
        db: &[Checkpoint],
        file: &CheckpointFile,
        key: &VerifyingKey,
    ) -> Result<LossToAcknowledge, ChainBreak> {
        let mut walk = ChainWalk::for_checkpoints(db, file);
        walk.read(events)?;
        super::plan(&walk, db, file, key)
    }
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{DerSignature, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).expect("scalar")
    }

    fn sign(message: &[u8]) -> Vec<u8> {
        let sig: DerSignature = key().sign(message);
        sig.as_bytes().to_vec()
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        crate::audit::event::test_chain(n)
    }

    fn checkpoint(seq: u64, hash: &[u8]) -> Checkpoint {
        Checkpoint {
            seq,
            hash: hash.to_vec(),
            at: 1,
            signature: sign(&checkpoint_message(seq, hash, 1)),
        }
    }

    fn acknowledgement(head: &AuditRecord, voids: &[&Checkpoint]) -> Acknowledgement {
        let mut ack = Acknowledgement {
            head: head.seq,
            head_hash: head.hash.clone(),
            agreed: 0,
            voids: voids.iter().map(|cp| (cp.seq, cp.hash.clone())).collect(),
            supersedes: vec![],
            reason: "restore".into(),
            at: 1,
            signature: vec![],
        };
        ack.signature = sign(&ack.message());
        ack
    }

    fn file(checkpoints: &[&Checkpoint], acks: &[Acknowledgement]) -> CheckpointFile {
        CheckpointFile {
            checkpoints: checkpoints.iter().map(|cp| (*cp).clone()).collect(),
            acknowledgements: acks.to_vec(),
        }
    }

    #[test]
    fn checkpoints_past_the_head_or_of_another_event_are_the_ones_to_void() {
        let events = chain(5);
        let good = checkpoint(3, &events[2].hash);
        let past = checkpoint(7, &[7; 32]);
        let other = checkpoint(4, &[4; 32]);
        let plan = plan(
            &events,
            &[good.clone(), other.clone()],
            &file(&[&good, &past, &other], &[]),
            key().verifying_key(),
        )
        .unwrap();
        assert_eq!(plan.voids, vec![other, past]);
        assert_eq!(
            plan.agreed, 3,
            "events 4 and 5 are taken on the database's word"
        );
    }

    #[test]
    fn a_checkpoint_an_earlier_acknowledgement_voids_is_not_voided_again() {
        let events = chain(2);
        let past = checkpoint(9, &[9; 32]);
        let earlier = acknowledgement(&events[1], &[&past]);
        let plan = plan(
            &events,
            &[],
            &file(&[&past], &[earlier]),
            key().verifying_key(),
        )
        .unwrap();
        assert_eq!((plan.voids, plan.supersedes), (vec![], vec![]));
    }

    #[test]
    fn an_earlier_acknowledgement_whose_head_was_lost_again_is_superseded() {
        let lost = chain(6);
        let earlier = acknowledgement(&lost[5], &[]);
        let events = chain(4);
        let plan = plan(&events, &[], &file(&[], &[earlier]), key().verifying_key()).unwrap();
        assert_eq!(plan.supersedes, vec![(6, lost[5].hash.clone())]);
    }

    #[test]
    fn an_acknowledgement_a_later_one_superseded_is_not_superseded_again() {
        let lost = chain(6);
        let first = acknowledgement(&lost[5], &[]);
        let events = chain(4);
        let mut second = acknowledgement(&events[3], &[]);
        second.supersedes = vec![(6, lost[5].hash.clone())];
        second.signature = sign(&second.message());
        let plan = plan(
            &events,
            &[],
            &file(&[], &[first, second]),
            key().verifying_key(),
        )
        .unwrap();
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn an_acknowledgement_the_audit_key_did_not_sign_stops_the_plan() {
        let events = chain(2);
        let mut forged = acknowledgement(&events[1], &[]);
        forged.reason = "routine maintenance".into();
        assert_eq!(
            plan(&events, &[], &file(&[], &[forged]), key().verifying_key()),
            Err(ChainBreak::BadAcknowledgementSignature { head: 2 })
        );
    }

    #[test]
    fn the_plans_name_changes_with_what_it_would_sign() {
        let events = chain(3);
        let past = checkpoint(9, &[9; 32]);
        let one = plan(&events, &[], &file(&[&past], &[]), key().verifying_key()).unwrap();
        let more = plan(&chain(4), &[], &file(&[&past], &[]), key().verifying_key()).unwrap();
        let other = checkpoint(8, &[8; 32]);
        let two = plan(
            &events,
            &[],
            &file(&[&past, &other], &[]),
            key().verifying_key(),
        )
        .unwrap();
        assert_ne!(one.id(), more.id());
        assert_ne!(one.id(), two.id());
        assert_eq!(one.id(), one.clone().id());
    }

    #[test]
    fn a_checkpoint_the_audit_key_did_not_sign_is_not_voided_as_a_loss() {
        let events = chain(2);
        let mut forged = checkpoint(9, &[9; 32]);
        forged.signature = checkpoint(8, &[9; 32]).signature;
        assert_eq!(
            plan(&events, &[forged], &file(&[], &[]), key().verifying_key()),
            Err(ChainBreak::BadCheckpointSignature { seq: 9 })
        );
    }

    #[test]
    fn a_chain_broken_inside_is_not_acknowledged() {
        let mut events = chain(4);
        events[1].actor = "someone else".into();
        assert_eq!(
            plan(&events, &[], &file(&[], &[]), key().verifying_key()),
            Err(ChainBreak::Edited { seq: 2 })
        );
    }

    #[test]
    fn an_acknowledgement_line_reads_back_as_written_and_a_checkpoint_line_stays_one() {
        let ack = Acknowledgement {
            head: 12,
            head_hash: vec![1; 32],
            agreed: 9,
            voids: vec![(10, vec![2; 32]), (20, vec![3; 32])],
            supersedes: vec![(8, vec![5; 32])],
            reason: "备库接管 (standby promoted)".into(),
            at: 1_795_000_000,
            signature: vec![4; 70],
        };
        assert_eq!(
            FileLine::parse(&ack.to_line()),
            Some(FileLine::Acknowledgement(ack.clone()))
        );
        let cp = checkpoint(10, &[2; 32]);
        let line = serde_json::to_string(&CheckpointLine::from_checkpoint(&cp)).unwrap();
        assert_eq!(FileLine::parse(&line), Some(FileLine::Checkpoint(cp)));
        assert_eq!(FileLine::parse(r#"{"kind":"other"}"#), None);
    }

    #[test]
    fn the_signed_message_covers_every_field() {
        let ack = Acknowledgement {
            head: 12,
            head_hash: vec![1; 32],
            agreed: 9,
            voids: vec![(10, vec![2; 32])],
            supersedes: vec![],
            reason: "restore".into(),
            at: 5,
            signature: vec![],
        };
        let base = ack.message();
        let changed = [
            Acknowledgement {
                head: 13,
                ..ack.clone()
            },
            Acknowledgement {
                head_hash: vec![9; 32],
                ..ack.clone()
            },
            Acknowledgement {
                agreed: 8,
                ..ack.clone()
            },
            Acknowledgement {
                voids: vec![(11, vec![2; 32])],
                ..ack.clone()
            },
            Acknowledgement {
                voids: vec![],
                ..ack.clone()
            },
            // The same pair as a superseded head instead of a voided checkpoint.
            Acknowledgement {
                voids: vec![],
                supersedes: vec![(10, vec![2; 32])],
                ..ack.clone()
            },
            Acknowledgement {
                reason: "restored".into(),
                ..ack.clone()
            },
            Acknowledgement {
                at: 6,
                ..ack.clone()
            },
        ];
        for c in changed {
            assert_ne!(c.message(), base, "{c:?}");
        }
    }

    #[test]
    fn a_reason_is_one_line_of_plain_text() {
        assert_eq!(check_reason("  备库接管  "), Ok("备库接管"));
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\u{2028}b",
            "a\u{202e}b",
            &"x".repeat(501),
        ] {
            assert!(check_reason(bad).is_err(), "{bad:?}");
        }
    }
}
