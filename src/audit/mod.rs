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
use std::sync::{Arc, Mutex};

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

/// Writes signed checkpoints of the chain head: every `every` events and on demand (shutdown,
/// end of a CLI command).
pub struct Auditor {
    store: Arc<dyn Store>,
    hsm: Arc<Hsm>,
    key_label: String,
    every: u64,
    file: PathBuf,
    clock: Clock,
    /// Serializes checkpoint writes of this process (the file is appended in order).
    writing: Mutex<()>,
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
            every: every.max(1),
            file,
            clock,
            writing: Mutex::new(()),
        }
    }

    pub fn checkpoint_file(&self) -> &std::path::Path {
        &self.file
    }

    /// Called after each append: checkpoints when the event's sequence number is due.
    pub fn after_append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        if rec.seq.is_multiple_of(self.every) {
            self.checkpoint(rec.seq, &rec.hash)?;
        }
        Ok(())
    }

    /// Checkpoints the current head unless it already is checkpointed. Returns the checkpoint.
    pub fn checkpoint_head(&self) -> Result<Option<Checkpoint>, AuditError> {
        let Some(head) = self.store.audit_head()? else {
            return Ok(None);
        };
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
        // Before the ceremony made the audit key, signing fails with KeyNotFound. No search of
        // the token first: C_FindObjects costs SoftHSM more than the signature, and this runs
        // every `every` events on the issuing path.
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
        let line = serde_json::to_string(&CheckpointLine::from_checkpoint(&cp))
            .expect("checkpoint line serializes");
        let file_err = |e: std::io::Error| AuditError::CheckpointFile {
            path: self.file.display().to_string(),
            reason: e.to_string(),
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(file_err)?;
        writeln!(f, "{line}").map_err(file_err)?;
        f.sync_data().map_err(file_err)?;
        self.store.add_checkpoint(&cp)?;
        Ok(cp)
    }
}
