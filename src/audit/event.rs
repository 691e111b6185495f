//! Audit events and the hash that chains them (pure).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A state change to record: who did what to which object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who: `cli:<user>` for the operator's command line, a credential id for the API.
    pub actor: String,
    /// What, as a dotted verb: `ca.init`, `certificate.issue`, `certificate.revoke`, ...
    pub action: String,
    /// The object: a serial, an issuer, a CRL.
    pub object: String,
    /// Further facts, as a JSON object. Never secrets, never ID numbers in clear.
    pub details: String,
    /// The bank (tenant id) the event concerns; `None` for CA-wide events.
    pub tenant: Option<String>,
}

impl AuditEvent {
    pub fn new(actor: &str, action: &str, object: &str, details: impl Serialize) -> Self {
        AuditEvent {
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            details: serde_json::to_string(&details).unwrap_or_else(|_| "{}".into()),
            tenant: None,
        }
    }

    /// The same event, attributed to a bank.
    pub fn for_tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = tenant.map(Into::into);
        self
    }
}

/// An event as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub details: String,
    pub tenant: Option<String>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

/// The previous-hash of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// SHA-256 over the previous hash and every field, each length-prefixed so that no two
/// different events share an encoding.
pub fn chain_hash(prev: &[u8], seq: u64, at: i64, ev: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"signet-audit-v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [&ev.actor, &ev.action, &ev.object, &ev.details] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    match &ev.tenant {
        None => h.update([0u8]),
        Some(t) => {
            h.update([1u8]);
            h.update((t.len() as u64).to_be_bytes());
            h.update(t.as_bytes());
        }
    }
    h.finalize().into()
}

impl AuditRecord {
    pub fn event(&self) -> AuditEvent {
        AuditEvent {
            actor: self.actor.clone(),
            action: self.action.clone(),
            object: self.object.clone(),
            details: self.details.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The hash this record should carry, recomputed from its content.
    pub fn recompute(&self) -> [u8; 32] {
        chain_hash(&self.prev_hash, self.seq, self.at, &self.event())
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}

/// A whole chain of `n` events, for tests.
#[cfg(test)]
pub(crate) fn test_chain(n: u64) -> Vec<AuditRecord> {
    let mut prev = GENESIS.to_vec();
    (1..=n)
        .map(|seq| {
            let ev = AuditEvent::new("t", "a", &seq.to_string(), serde_json::json!({}));
            let hash = chain_hash(&prev, seq, 1, &ev).to_vec();
            AuditRecord {
                seq,
                at: 1,
                actor: ev.actor,
                action: ev.action,
                object: ev.object,
                details: ev.details,
                tenant: None,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}
