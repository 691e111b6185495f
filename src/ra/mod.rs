//! The registration authority: decides whether a request may be served and what the
//! certificate will say (profile, vetted subject, checked CSR key), then asks the CA to sign.

pub mod csr;
pub mod limiter;
mod service;
mod signing_keys;
mod subject;
mod tenants;

pub use signing_keys::{NewTellerKey, SEAL_PROFILE, TELLER_HSM_PROFILE};

pub use service::{
    Approved, StatusChange, TellerRequestDetails, MAX_TELLER_REQUESTS_LISTED,
    TELLER_REQUEST_TTL_SECS,
};
pub use subject::{build as build_subject, escape_dn_value, parse_vetted, BankIdentity};
pub use tenants::{
    checked_holder, read_token_file, AuthSettings, ClientCertificate, NewCredential, Principal,
    Role, MAX_TOKEN_LEN,
};

use std::sync::Arc;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ca::{Authority, CaError, Issued, LeafRequest};
use crate::policy::{KeyCustody, Profile, Profiles, SubjectAttr};
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
    #[error(transparent)]
    Store(crate::store::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("missing, malformed, unknown or revoked bearer token")]
    Unauthenticated,
    #[error("the client certificate was not accepted: {0}")]
    ClientCertificateInvalid(String),
    #[error("the client certificate is valid but no [[tls.client]] mapping names it; present a bearer token or ask the CA operator to map it")]
    ClientCertificateUnmapped,
    #[error("the bearer token has expired; ask the CA operator to rotate the credential")]
    TokenExpired,
    #[error("too many failed authentications; try again in {retry_after_secs} seconds")]
    RateLimited { retry_after_secs: i64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("teller certificates are issued only through POST /v1/teller-requests and a second teller-admin's approval")]
    TellerNeedsApproval,
    #[error("a teller-admin cannot approve a request it filed, nor one filed by another credential of the same holder: a second person must")]
    SelfApproval,
    #[error("of the credential that filed the request and the one approving it, one names a holder and the other does not, so Signet cannot tell that two people acted: give the other one its holder (`signet credential set-holder`, or `holder` in its [[tls.client]] entry)")]
    HolderUnknown,
    #[error("the teller request expired before a second teller-admin approved it; file it again")]
    RequestExpired,
    #[error("{0}")]
    Conflict(String),
    #[error("certificate {serial} was issued for a key Signet made in the HSM, but the key record could not be stored ({why}), nor the certificate revoked. The CA operator should revoke it (`signet revoke --serial {serial} --reason cessationOfOperation`) before the key is certified again (a new teller request, `signet seal create` again)")]
    IssuedNotRecorded { serial: String, why: String },
    #[error("profile {profile} vouches that the key was made in Signet's HSM and never leaves it: its certificates are made with such a key (the bank's e-seal, a teller's HSM key), never from a CSR")]
    HsmKeyProfile { profile: String },
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
    /// The bank asking: its tenant id owns the certificate and its registered name is the O.
    /// `None`: the CA operator, for the bank named in the config.
    pub tenant: Option<&'a TenantIdentity>,
}

/// A bank as the RA sees it.
#[derive(Debug, Clone)]
pub struct TenantIdentity {
    pub id: String,
    pub name: String,
}

/// The registration authority.
pub struct Registrar {
    authority: Arc<Authority>,
    profiles: Profiles,
    bank: BankIdentity,
    id_hash_key: Option<Zeroizing<Vec<u8>>>,
    auth: tenants::AuthGuard,
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
            auth: tenants::AuthGuard::new(AuthSettings::default()),
        }
    }

    /// Credential lifetime and failed-authentication limits (defaults otherwise).
    pub fn with_auth_settings(mut self, settings: AuthSettings) -> Self {
        self.auth = tenants::AuthGuard::new(settings);
        self
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
        let leaf = self.leaf_request(req)?;
        Ok(self.authority.issue(leaf)?)
    }

    /// Checks and issues several requests: each is checked and issued as [`Registrar::issue`]
    /// would (a refused one leaves the others), the CA signing the accepted ones as one batch.
    pub fn issue_batch(&self, reqs: &[CertificateRequest<'_>]) -> Vec<Result<Issued, RaError>> {
        let mut checked: Vec<Result<(), RaError>> = Vec::with_capacity(reqs.len());
        let mut leaves = Vec::new();
        for req in reqs {
            match self.leaf_request(req) {
                Ok(leaf) => {
                    leaves.push(leaf);
                    checked.push(Ok(()));
                }
                Err(e) => checked.push(Err(e)),
            }
        }
        let mut issued = self.authority.issue_batch(leaves).into_iter();
        checked
            .into_iter()
            .map(|c| {
                c?;
                let unanswered =
                    || crate::ca::CaError::InvalidRequest("the request was not issued".into());
                Ok(issued.next().unwrap_or_else(|| Err(unanswered()))?)
            })
            .collect()
    }

    /// A request checked (profile, CSR, key, subject) and turned into what the CA signs.
    fn leaf_request<'a>(
        &'a self,
        req: &CertificateRequest<'a>,
    ) -> Result<LeafRequest<'a>, RaError> {
        let profile = self.profile(req.profile)?;
        let (subject, spki, subject_serial_digest) =
            self.check_request(profile, req.csr, req.subject, req.tenant)?;
        let audit_details = if req.break_glass {
            serde_json::json!({"path": "operator-cli", "break_glass": true})
        } else {
            serde_json::json!({})
        };
        Ok(LeafRequest {
            profile,
            subject,
            subject_serial_digest,
            spki,
            actor: req.actor,
            audit_details,
            owner: req.tenant.map(|t| t.id.clone()),
        })
    }

    /// Issues a certificate for a key Signet made in its token (e-seal, teller keys): no CSR,
    /// the subject from the bank's data under the profile's rules.
    fn issue_for_key(
        &self,
        profile: &Profile,
        spki: spki::SubjectPublicKeyInfoOwned,
        subject: &str,
        tenant: &TenantIdentity,
        actor: &str,
    ) -> Result<Issued, RaError> {
        let vetted = parse_vetted(subject)?;
        let bank = BankIdentity {
            organization: tenant.name.clone(),
            country: self.bank.country.clone(),
        };
        let id_hash = |v: &str| self.keyed_id_hash(&profile.name, v);
        let name = build_subject(profile, &vetted, &bank, &id_hash)?;
        Ok(self.authority.issue(LeafRequest {
            profile,
            subject: name,
            subject_serial_digest: None,
            spki,
            actor,
            audit_details: serde_json::json!({"key_custody": "hsm"}),
            owner: Some(tenant.id.clone()),
        })?)
    }

    /// Everything the RA decides before the CA signs: the CSR's key is allowed and its proof of
    /// possession holds; the subject is the vetted data under the profile's rules.
    fn check_request(
        &self,
        profile: &Profile,
        csr_bytes: &[u8],
        subject: &str,
        tenant: Option<&TenantIdentity>,
    ) -> Result<
        (
            x509_cert::name::Name,
            spki::SubjectPublicKeyInfoOwned,
            Option<String>,
        ),
        RaError,
    > {
        // A CSR's key was made wherever its sender made it: a certificate from it must not
        // carry a profile that tells verifiers (article 13) the key lives in Signet's HSM.
        if profile.key_custody == KeyCustody::Hsm {
            return Err(RaError::HsmKeyProfile {
                profile: profile.name.clone(),
            });
        }
        let parsed = csr::parse(csr_bytes)?;
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
        let vetted = parse_vetted(subject)?;
        let id_hash = |v: &str| self.keyed_id_hash(&profile.name, v);
        let bank = match tenant {
            Some(t) => BankIdentity {
                organization: t.name.clone(),
                country: self.bank.country.clone(),
            },
            None => self.bank.clone(),
        };
        let name = build_subject(profile, &vetted, &bank, &id_hash)?;
        let digest = vetted
            .get(&SubjectAttr::SerialNumber)
            .map(|id| self.lookup_digest(id));
        Ok((name, parsed.certified_spki()?, digest))
    }

    pub fn store(&self) -> &std::sync::Arc<dyn crate::store::Store> {
        self.authority.store()
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
