//! The signing authority: builds to-be-signed certificates and CRLs, records them, has the HSM
//! sign them, and stores the result. Knows nothing of HTTP or tenants; trusts its caller (the
//! registration authority) for what a certificate says, and checks only that it is well formed.

mod ceremony;
mod crl;
mod crl_der;
mod crl_refresh;
mod issue;
pub mod ocsp;
pub mod service_keys;
pub mod tls_server;
pub mod x509;

pub use ceremony::InitReport;
pub use crl::SignedCrl;
pub use crl_refresh::{CrlRefresh, CrlScope};
pub use issue::{Issued, LeafRequest};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use der::Decode;
use x509_cert::Certificate;

use crate::audit::{AuditError, Auditor};
use crate::clock::Clock;
use crate::hsm::{Hsm, HsmError};
use crate::store::{GroupCommit, Store, StoreError};

/// The CRLReason code of certificateHold.
pub const HOLD_REASON_CODE: u8 = 6;

/// The CAs of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerId {
    Root,
    Customer,
    Teller,
}

impl IssuerId {
    pub const ALL: [IssuerId; 3] = [IssuerId::Root, IssuerId::Customer, IssuerId::Teller];

    pub fn as_str(self) -> &'static str {
        match self {
            IssuerId::Root => "root",
            IssuerId::Customer => "customer",
            IssuerId::Teller => "teller",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// Suffix of the key label in the token and of the exported PEM file.
    pub fn key_suffix(self) -> &'static str {
        match self {
            IssuerId::Root => "root",
            IssuerId::Customer => "customer-ca",
            IssuerId::Teller => "teller-ca",
        }
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 5280 5.3.1 revocation reasons an operator may give (removeFromCRL belongs to delta CRLs only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::CertificateHold,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];

    /// The RFC 5280 name (`keyCompromise`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "cACompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::CertificateHold => "certificateHold",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aACompromise",
        }
    }

    /// The reasons a revocation of one of Signet's certificates may give: every RFC 5280 reason
    /// but certificateHold (a hold is not a revocation) and aACompromise (the reason of
    /// attribute certificates' authorities, 5.3.1).
    pub fn for_revocation() -> impl Iterator<Item = Reason> {
        Self::ALL
            .into_iter()
            .filter(|r| !matches!(r, Reason::CertificateHold | Reason::AaCompromise))
    }

    /// Parses a reason a revocation may give ([`Reason::for_revocation`]), ignoring case.
    pub fn parse_for_revocation(s: &str) -> Option<Self> {
        Self::for_revocation().find(|r| r.name().eq_ignore_ascii_case(s))
    }

    /// Parses an RFC 5280 reason name, ignoring case.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }

    pub fn code(self) -> u8 {
        match self {
            Reason::Unspecified => 0,
            Reason::KeyCompromise => 1,
            Reason::CaCompromise => 2,
            Reason::AffiliationChanged => 3,
            Reason::Superseded => 4,
            Reason::CessationOfOperation => 5,
            Reason::CertificateHold => 6,
            Reason::PrivilegeWithdrawn => 9,
            Reason::AaCompromise => 10,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// The CRLReason of a stored reason code (CRL entries and OCSP answers say the same).
pub(crate) fn crl_reason(code: u8) -> Result<x509_cert::ext::pkix::CrlReason, CaError> {
    use x509_cert::ext::pkix::CrlReason;
    let reason = Reason::from_code(code)
        .ok_or_else(|| CaError::Encoding(format!("stored reason code {code} is unknown")))?;
    Ok(match reason {
        Reason::Unspecified => CrlReason::Unspecified,
        Reason::KeyCompromise => CrlReason::KeyCompromise,
        Reason::CaCompromise => CrlReason::CaCompromise,
        Reason::AffiliationChanged => CrlReason::AffiliationChanged,
        Reason::Superseded => CrlReason::Superseded,
        Reason::CessationOfOperation => CrlReason::CessationOfOperation,
        Reason::CertificateHold => CrlReason::CertificateHold,
        Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        Reason::AaCompromise => CrlReason::AaCompromise,
    })
}

/// Fault injection points, for tests of crash consistency. Off unless a test turns one on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Stop after the to-be-signed certificate is recorded, before the HSM signs it.
    AfterRecord,
    /// The HSM's answer to every call signing end-entity certificates (`issue_batch`) is an
    /// error: the whole call fails, as a token that goes away mid-batch makes it.
    SignFails,
    /// The HSM's answer to every signature with a bank's key (e-seal, teller key) is an error.
    KeySignFails,
}

/// Settings of the hierarchy (from the config's `[ca]` and `[issuance]`).
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub organization: String,
    pub country: String,
    pub root_common_name: String,
    pub customer_ca_common_name: String,
    pub teller_ca_common_name: String,
    pub root_validity_days: u32,
    pub issuing_validity_days: u32,
    pub base_url: String,
    pub crl_shards: u32,
    pub crl_next_update_hours: u32,
    pub key_prefix: String,
    pub issuance_timeout_secs: u64,
}

impl CaSettings {
    pub fn key_label(&self, issuer: IssuerId) -> String {
        format!("{}-{}", self.key_prefix, issuer.key_suffix())
    }

    pub fn audit_key_label(&self) -> String {
        format!("{}-audit", self.key_prefix)
    }

    /// Where the issuer's certificate is served (the caIssuers target), DER.
    pub fn ca_issuers_url(&self, issuer: IssuerId) -> String {
        format!("{}/ca/{}.der", self.base_url, issuer.as_str())
    }

    pub fn ocsp_url(&self) -> String {
        format!("{}/ocsp", self.base_url)
    }

    /// The CRL a certificate of `issuer` in `shard` is listed on.
    pub fn crl_url(&self, issuer: IssuerId, shard: Option<u32>) -> String {
        match shard {
            Some(s) if self.crl_shards > 1 && issuer != IssuerId::Root => {
                format!("{}/crl/{}-{s}.crl", self.base_url, issuer.as_str())
            }
            _ => format!("{}/crl/{}.crl", self.base_url, issuer.as_str()),
        }
    }
}

/// What the signing authority can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("the CA is not initialized; run `signet ca init` first")]
    NotInitialized,
    #[error("the CA is already initialized (created {created}); `signet ca init` runs once. Use `signet ca upgrade` to add what a newer Signet needs")]
    AlreadyInitialized { created: String },
    #[error("no certificate with serial {0}")]
    UnknownSerial(String),
    #[error("certificate {serial} (profile {profile}) cannot be put on hold: its profile does not allow hold")]
    HoldNotAllowed { serial: String, profile: String },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("encoding failed: {0}")]
    Encoding(String),
    #[error("fault injected after recording serial {serial}")]
    FaultInjected { serial: String },
    #[error("this CA has no PIN key yet (`signet ca init` makes it; a CA made before it gets it from `signet ca upgrade`): the CA operator must run `signet ca upgrade` before PINs can be set")]
    PinKeyNotMade,
    #[error("the token does not hold the PIN key {label} that the store recorded (it is missing, or another key has its label): the PIN hashes bound to it cannot be checked until the token that holds it is restored from its backup; a new key would make every teller's PIN wrong")]
    PinKeyLost { label: String },
}

impl From<x509_cert::builder::Error> for CaError {
    fn from(e: x509_cert::builder::Error) -> Self {
        CaError::Encoding(e.to_string())
    }
}

impl From<der::Error> for CaError {
    fn from(e: der::Error) -> Self {
        CaError::Encoding(e.to_string())
    }
}

/// A loaded CA: its key label and certificate.
#[derive(Debug, Clone)]
pub struct CaCert {
    pub id: IssuerId,
    pub key_label: String,
    pub certificate: Certificate,
    pub der: Vec<u8>,
    pub key_id: Vec<u8>,
}

impl CaCert {
    pub fn pem(&self) -> String {
        pem_certificate(&self.der)
    }
}

/// PEM text of a DER certificate.
pub fn pem_certificate(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
        .expect("PEM encoding of bytes cannot fail")
}

/// The signing authority.
pub struct Authority {
    hsm: Arc<Hsm>,
    store: Arc<dyn Store>,
    clock: Clock,
    settings: CaSettings,
    auditor: Arc<Auditor>,
    /// Issuance and verification records of concurrent requests go to the store in groups
    /// (one fsync each).
    commits: GroupCommit,
    /// Shared, not cloned, per issuance: a certificate's deep clone showed in its profile.
    cas: RwLock<HashMap<IssuerId, Arc<CaCert>>>,
    /// CRLs this process recorded and then failed to sign or store (scope, number): it need
    /// not wait, as other processes do, to take them for abandoned.
    crls_left_unsigned: Mutex<HashSet<(CrlScope, u64)>>,
    /// CRLs this process has recorded and is signing (scope, number).
    crls_in_flight: Mutex<HashSet<(CrlScope, u64)>>,
    /// Certificates this process has given the HSM to sign (end-entity, CA, service).
    certificates_to_sign: AtomicU64,
    fault: Fault,
}

impl Authority {
    pub fn new(
        hsm: Arc<Hsm>,
        store: Arc<dyn Store>,
        clock: Clock,
        settings: CaSettings,
        auditor: Arc<Auditor>,
    ) -> Result<Self, CaError> {
        let a = Authority {
            hsm,
            commits: GroupCommit::start(store.clone()),
            store,
            clock,
            settings,
            auditor,
            cas: RwLock::new(HashMap::new()),
            crls_left_unsigned: Mutex::new(HashSet::new()),
            crls_in_flight: Mutex::new(HashSet::new()),
            certificates_to_sign: AtomicU64::new(0),
            fault: Fault::None,
        };
        a.reload_cas()?;
        match a.crl_shards_warning() {
            Ok(Some(warning)) => tracing::warn!("{warning}"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot compare [ca].crl_shards with the store's CRLs")
            }
        }
        Ok(a)
    }

    /// Turns on a fault injection point (tests only).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    pub fn settings(&self) -> &CaSettings {
        &self.settings
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The group committer of this authority's store (the verifier records through it too).
    pub fn commits(&self) -> &GroupCommit {
        &self.commits
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn auditor(&self) -> &Arc<Auditor> {
        &self.auditor
    }

    /// How many certificates this process has given the HSM to sign, signed or not: the
    /// HSM's own count also has CRLs, OCSP answers, audit checkpoints and receipts.
    pub fn certificates_given_to_sign(&self) -> u64 {
        self.certificates_to_sign.load(Ordering::Relaxed)
    }

    fn count_certificates_to_sign(&self, n: usize) {
        self.certificates_to_sign
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn reload_cas(&self) -> Result<(), CaError> {
        let mut map = HashMap::new();
        for row in self.store.cas()? {
            let (Some(id), Some(der)) = (IssuerId::parse(&row.name), row.cert_der) else {
                continue;
            };
            let certificate = Certificate::from_der(&der)?;
            let key_id = x509::key_identifier(
                &certificate
                    .tbs_certificate()
                    .subject_public_key_info()
                    .clone(),
            );
            map.insert(
                id,
                Arc::new(CaCert {
                    id,
                    key_label: row.key_label,
                    certificate,
                    der,
                    key_id,
                }),
            );
        }
        *self.cas.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    pub fn is_initialized(&self) -> bool {
        !self
            .cas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The certificate of one CA.
    pub fn ca(&self, id: IssuerId) -> Result<Arc<CaCert>, CaError> {
        self.cas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
            .ok_or(CaError::NotInitialized)
    }

    /// Signs `tbs` with the CA key `key_label`, returning the DER signature.
    fn sign(&self, key_label: &str, tbs: &[u8]) -> Result<Vec<u8>, CaError> {
        Ok(self.hsm.sign_p256_sha256(key_label, tbs)?)
    }

    /// Signs a recorded certificate in the HSM and returns its DER.
    pub(super) fn sign_certificate(
        &self,
        prepared: x509::PreparedCertificate,
        key_label: &str,
    ) -> Result<Vec<u8>, CaError> {
        self.count_certificates_to_sign(1);
        let sig = self.sign(key_label, &prepared.tbs_der)?;
        Ok(prepared.assemble(&sig)?)
    }

    /// The P-256 key labelled `label` in the token: generated there (sensitive,
    /// non-extractable, sign-only), or reused when an interrupted run left it.
    pub fn key_in_token(
        &self,
        label: &str,
        progress: &dyn Fn(&str),
    ) -> Result<spki::SubjectPublicKeyInfoOwned, CaError> {
        use spki::EncodePublicKey;
        progress(&format!("generating P-256 key {label} in the token"));
        let pk = match self.hsm.generate_p256(label) {
            Ok(pk) => pk,
            Err(HsmError::KeyExists { .. }) => {
                progress(&format!("reusing key {label} left by an interrupted run"));
                self.hsm.public_key(label)?
            }
            Err(e) => return Err(e.into()),
        };
        let der = pk
            .to_public_key_der()
            .map_err(|e| CaError::Encoding(e.to_string()))?;
        Ok(spki::SubjectPublicKeyInfoOwned::from_der(der.as_bytes())?)
    }

    /// Signs `data` with a non-CA key of the token (e-seal, teller keys): SHA-256, ECDSA, DER.
    pub fn sign_with_key(&self, label: &str, data: &[u8]) -> Result<Vec<u8>, CaError> {
        if self.fault == Fault::KeySignFails {
            return Err(CaError::Hsm(crate::hsm::HsmError::Unavailable {
                token: self.hsm.token_name(),
                reason: "fault injected: the signing call failed".into(),
            }));
        }
        self.sign(label, data)
    }

    /// Random bytes from the token's generator (identifiers, tokens).
    pub fn hsm_random(&self, len: u32) -> Result<Vec<u8>, CaError> {
        Ok(self.hsm.random(len)?)
    }

    /// Draws a fresh 16-byte serial from the token's generator.
    fn new_serial(&self) -> Result<Vec<u8>, CaError> {
        self.new_serials(1)?
            .pop()
            .ok_or_else(|| CaError::Encoding("no serial number was drawn".into()))
    }

    /// `n` serial numbers from the token's generator, drawn in as few calls as may be (one,
    /// unless a draw makes no valid serial: 1 in 128).
    fn new_serials(&self, n: usize) -> Result<Vec<Vec<u8>>, HsmError> {
        let mut serials = Vec::with_capacity(n);
        while serials.len() < n {
            let missing = n - serials.len();
            let random = self.hsm.random(16 * missing as u32)?;
            serials.extend(
                random
                    .chunks(16)
                    .filter_map(|c| x509::serial_from_random(c.to_vec())),
            );
        }
        Ok(serials)
    }

    /// Voids issuances recorded but never signed, once older than the issuance timeout (so that
    /// a live process's in-flight record is never touched). Their serials go on the next CRL.
    pub fn resolve_interrupted(&self, actor: &str) -> Result<Vec<String>, CaError> {
        let now = self.clock.now();
        let cutoff = now - self.settings.issuance_timeout_secs as i64;
        let mut voided = Vec::new();
        for rec in self.store.pending_before(cutoff)? {
            let ev = crate::audit::AuditEvent::new(
                actor,
                "certificate.void",
                &rec.serial,
                serde_json::json!({
                    "issuer": rec.issuer.as_str(),
                    "profile": rec.profile,
                    "recorded_at": rec.created_at,
                    "why": "recorded but not signed within the issuance timeout",
                }),
            );
            match self.store.void_pending(&rec.serial, now, &ev) {
                Ok(audit) => {
                    self.auditor.after_commit(&audit);
                    tracing::warn!(serial = %rec.serial, "voided an interrupted issuance");
                    voided.push(rec.serial);
                }
                // Another process completed or voided it meanwhile.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(voided)
    }

    /// Revokes an issued certificate (not for hold: see [`Authority::hold`]).
    pub fn revoke(
        &self,
        serial: &str,
        reason: Reason,
        invalidity_date: Option<i64>,
        actor: &str,
    ) -> Result<(), CaError> {
        if reason == Reason::CertificateHold {
            return Err(CaError::InvalidRequest(
                "certificateHold is not a revocation reason here; use `hold`".into(),
            ));
        }
        if reason == Reason::AaCompromise {
            // RFC 5280 5.3.1: the reason of attribute certificates' authorities.
            return Err(CaError::InvalidRequest(
                "aACompromise is for attribute certificates (RFC 5280 5.3.1); Signet's are public-key certificates: use keyCompromise or cACompromise".into(),
            ));
        }
        let rec = self.known_serial(serial)?;
        let now = self.clock.now();
        if let Some(d) = invalidity_date {
            if d > now {
                return Err(CaError::InvalidRequest(
                    "the invalidity date lies in the future".into(),
                ));
            }
        }
        // A held certificate's revocation carries its hold time as invalidityDate: the store
        // sets it inside the write's transaction (`store::check_revocable`).
        let ev = crate::audit::AuditEvent::new(
            actor,
            "certificate.revoke",
            serial,
            serde_json::json!({"issuer": rec.issuer.as_str(), "reason": reason.name(), "invalidity_date": invalidity_date}),
        )
        // The bank that owns the certificate sees its status changes in its audit events.
        .for_tenant(rec.owner.as_deref());
        let audit = self.store.revoke(
            serial,
            crate::store::RevocationRecord {
                revoked_at: now,
                // RFC 5280 5.3.1: the reason code SHOULD be absent for unspecified.
                reason_code: (reason != Reason::Unspecified).then_some(reason.code()),
                invalidity_date,
            },
            &ev,
        )?;
        self.auditor.after_commit(&audit);
        Ok(())
    }

    /// Puts a certificate on hold (certificateHold), where its profile allows it.
    pub fn hold(
        &self,
        serial: &str,
        profiles: &crate::policy::Profiles,
        actor: &str,
    ) -> Result<(), CaError> {
        let rec = self.known_serial(serial)?;
        let allowed = profiles.get(&rec.profile).is_some_and(|p| p.allow_hold);
        if !allowed {
            return Err(CaError::HoldNotAllowed {
                serial: serial.into(),
                profile: rec.profile,
            });
        }
        let now = self.clock.now();
        let ev = crate::audit::AuditEvent::new(
            actor,
            "certificate.hold",
            serial,
            serde_json::json!({"issuer": rec.issuer.as_str()}),
        )
        .for_tenant(rec.owner.as_deref());
        let audit = self.store.revoke(
            serial,
            crate::store::RevocationRecord {
                revoked_at: now,
                reason_code: Some(HOLD_REASON_CODE),
                invalidity_date: None,
            },
            &ev,
        )?;
        self.auditor.after_commit(&audit);
        Ok(())
    }

    /// Releases a certificate from hold: it simply leaves the next full CRL.
    pub fn release(&self, serial: &str, actor: &str) -> Result<(), CaError> {
        let rec = self.known_serial(serial)?;
        let ev = crate::audit::AuditEvent::new(
            actor,
            "certificate.release",
            serial,
            serde_json::json!({"issuer": rec.issuer.as_str()}),
        )
        .for_tenant(rec.owner.as_deref());
        let audit = self.store.release(serial, self.clock.now(), &ev)?;
        self.auditor.after_commit(&audit);
        Ok(())
    }

    fn known_serial(&self, serial: &str) -> Result<crate::store::CertRecord, CaError> {
        let norm = normalize_serial(serial)?;
        match self.store.certificate(&norm)? {
            Some(r) if r.status == crate::store::CertStatus::Issued => Ok(r),
            _ => Err(CaError::UnknownSerial(norm)),
        }
    }

    /// The DER certificate of a serial, with its issuer's certificate.
    pub fn certificate(&self, serial: &str) -> Result<(Vec<u8>, Arc<CaCert>), CaError> {
        let rec = self.known_serial(serial)?;
        let der = rec
            .cert_der
            .ok_or_else(|| CaError::UnknownSerial(rec.serial.clone()))?;
        Ok((der, self.ca(rec.issuer)?))
    }

    /// Checks that the token still holds every CA key the store names.
    pub fn check_keys(&self) -> Result<(), CaError> {
        for row in self.store.cas()? {
            if row.name == service_keys::PIN_KEY_ROW {
                self.check_pin_key(&row)?;
                continue;
            }
            if !self.hsm.has_key(&row.key_label)? {
                return Err(HsmError::KeyNotFound {
                    token: self.hsm.token_name(),
                    key: row.key_label,
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Accepts a serial in hex (any case, optional `0x` and `:` separators) and returns it in the
/// store's form: lowercase hex, no leading zero byte.
pub fn normalize_serial(s: &str) -> Result<String, CaError> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if t.is_empty() || t.len() > 42 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CaError::InvalidRequest(format!(
            "{s:?} is not a certificate serial number (hex)"
        )));
    }
    // The store keeps whole bytes without a leading zero byte (as `hex` of the DER INTEGER's value).
    let mut t = if t.len() % 2 == 1 { format!("0{t}") } else { t };
    while t.len() > 2 && t.starts_with("00") {
        t.drain(..2);
    }
    Ok(t)
}
