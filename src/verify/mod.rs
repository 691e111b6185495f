//! Verification of signed payment instructions: the signature formats (CMS, JWS) give each
//! signer's evidence; this module validates the signer's certificate path, its status at the
//! claimed signing time and at validation time, applies the signature policy and the replay
//! guard, and writes the report (with its article 13 section). It reads the store and writes
//! only the replay guard and the audit log.

pub mod anchor_crl;
pub mod certs;
pub mod cms;
pub mod evidence;
pub mod input;
pub mod jws;
pub mod path;
pub mod receipt;
pub mod report;

mod assess;

pub use assess::{Presented, Verifier};
pub use report::{Indication, Report, SubIndication};

/// Failures that keep Signet from deciding (the CLI exits 3, the API answers 503).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Setup(String),
}
