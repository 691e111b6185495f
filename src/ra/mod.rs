//! The registration authority: decides whether a request may be served and what the
//! certificate will say (profile, vetted subject, checked CSR key), then asks the CA to sign.

pub mod csr;
mod subject;

pub use subject::{build as build_subject, escape_dn_value, parse_vetted, BankIdentity};

use std::sync::Arc;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ca::{Authority, CaError, Issued, LeafRequest};
use crate::policy::{Profile, Profiles, SubjectAttr};
use csr::CsrKey;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaError {
    #[error("not a certificate request: {0}")]
    NotACsr(String),
    #[error("the CSR's proof of possession failed: {0}")]
    CsrSignatureInvalid(String),
    #[error("profile {profile} does not allow a {found} key (it allows {allowed})")]
    KeyNotAllowed {
        profile: String,
        found: String,
        allowed: String,
    },
    #[error("unknown profile {name:?} (known: {known})")]
    UnknownProfile { name: String, known: String },
    #[error("subject: {0}")]
    Subject(String),
    #[error("profile {profile} requires the subject attribute {attr}")]
    MissingSubjectAttribute { profile: String, attr: &'static str },
    #[error("subject attribute {attr} {reason}")]
    SubjectValue { attr: &'static str, reason: String },
    #[error("profile {0} needs the ID-hash key: set [issuance].id_hash_key_file")]
    NoIdHashKey(String),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// A request for a certificate, as the front end received it.
pub struct CertificateRequest<'a> {
    pub profile: &'a str,
    /// PKCS#10, PEM or DER.
    pub csr: &'a [u8],
    /// The bank's vetted subject data, RFC 4514.
    pub subject: &'a str,
    pub actor: &'a str,
    /// The CA operator's break-glass path (the CLI on the CA host): audited as such.
    pub break_glass: bool,
}

/// The registration authority.
pub struct Registrar {
    authority: Arc<Authority>,
    profiles: Profiles,
    bank: BankIdentity,
    id_hash_key: Option<Zeroizing<Vec<u8>>>,
}

impl Registrar {
    pub fn new(
        authority: Arc<Authority>,
        profiles: Profiles,
        bank: BankIdentity,
        id_hash_key: Option<Zeroizing<Vec<u8>>>,
    ) -> Self {
        Registrar {
            authority,
            profiles,
            bank,
            id_hash_key,
        }
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    pub fn profile(&self, name: &str) -> Result<&Profile, RaError> {
        self.profiles
            .get(name)
            .ok_or_else(|| RaError::UnknownProfile {
                name: name.into(),
                known: self.profiles.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// Checks a request and has the CA issue it.
    pub fn issue(&self, req: &CertificateRequest<'_>) -> Result<Issued, RaError> {
        let profile = self.profile(req.profile)?;
        let parsed = csr::parse(req.csr)?;
        match &parsed.key {
            CsrKey::Supported(k) if profile.key_types.contains(k) => {}
            other => {
                return Err(RaError::KeyNotAllowed {
                    profile: profile.name.clone(),
                    found: other.to_string(),
                    allowed: profile
                        .key_types
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
        csr::verify_proof_of_possession(&parsed)?;
        let vetted = parse_vetted(req.subject)?;
        let id_hash = |v: &str| self.keyed_id_hash(&profile.name, v);
        let subject = build_subject(profile, &vetted, &self.bank, &id_hash)?;
        let subject_serial_digest = vetted
            .get(&SubjectAttr::SerialNumber)
            .map(|id| self.lookup_digest(id));
        let audit_details = if req.break_glass {
            serde_json::json!({"path": "operator-cli", "break_glass": true})
        } else {
            serde_json::json!({})
        };
        Ok(self.authority.issue(LeafRequest {
            profile,
            subject,
            subject_serial_digest,
            spki: parsed.spki().clone(),
            actor: req.actor,
            audit_details,
        })?)
    }

    fn keyed_id_hash(&self, profile: &str, id: &str) -> Result<String, RaError> {
        let key = self
            .id_hash_key
            .as_ref()
            .ok_or_else(|| RaError::NoIdHashKey(profile.into()))?;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| RaError::NoIdHashKey(profile.into()))?;
        mac.update(id.as_bytes());
        Ok(hex::encode_upper(mac.finalize().into_bytes()))
    }

    /// The digest the store indexes an ID number by: keyed when a key is configured, so that
    /// the index cannot be reversed by enumerating ID numbers.
    pub fn lookup_digest(&self, id: &str) -> String {
        match &self.id_hash_key {
            Some(key) => {
                let mut mac =
                    hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(b"lookup:");
                mac.update(id.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            None => hex::encode(Sha256::digest(id.as_bytes())),
        }
    }
}
