//! The signing service: the bank's e-seal and tellers' HSM-held keys sign CMS and JWS for
//! their owners only (Electronic Signature Law art. 13 (1)-(2)). Each request is authorized:
//! the e-seal for `sealer` credentials of its bank; a teller key for that teller's credential
//! together with the key's PIN, which Signet checks (SoftHSM has one user PIN per token).
//! Five wrong PINs in a row lock the key until a teller-admin of the bank unlocks it.

pub mod format;
mod pin;

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::audit::{AuditError, AuditEvent, AuditRecord};
use crate::ca::{Authority, CaError, IssuerId};
use crate::ra::{Principal, Role};
use crate::store::{PinAttempt, PinReservation, SigningKeyRecord, Store, StoreError};
use format::{CmsContent, SignerCert};

/// Wrong PINs in a row that lock a key.
pub const MAX_PIN_ATTEMPTS: u32 = 5;
/// Most hashes signed in one call.
pub const MAX_BATCH: usize = 1000;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignFormat {
    CmsDetached,
    CmsAttached,
    Jws,
}

impl SignFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cms-detached" => Some(SignFormat::CmsDetached),
            "cms-attached" => Some(SignFormat::CmsAttached),
            "jws" => Some(SignFormat::Jws),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignFormat::CmsDetached => "cms-detached",
            SignFormat::CmsAttached => "cms-attached",
            SignFormat::Jws => "jws",
        }
    }
}

/// What to sign.
pub enum SignInput {
    Data(Vec<u8>),
    /// SHA-256 digests, each signed as a detached CMS whose message-digest it becomes.
    Hashes(Vec<Vec<u8>>),
}

/// Why a signing request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("no signing key {0} for this credential")]
    UnknownKey(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("this key needs its PIN for every signature")]
    PinRequired,
    #[error("wrong PIN; {remaining} attempt(s) left before the key locks")]
    WrongPin { remaining: u32 },
    #[error("the key is locked after {MAX_PIN_ATTEMPTS} wrong PINs; a teller-admin of the bank must unlock it")]
    Locked,
    #[error("the key has no PIN yet: set one with the activation code first")]
    NoPin,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key as its user sees it.
pub struct UsableKey {
    pub key: SigningKeyRecord,
    pub certificate_der: Vec<u8>,
}

/// The signatures of one request.
pub struct Signed {
    pub format: SignFormat,
    /// Base64 DER (CMS) or compact JWS, one per input.
    pub signatures: Vec<String>,
}

pub struct SigningService {
    authority: Arc<Authority>,
}

impl SigningService {
    pub fn new(authority: Arc<Authority>) -> Self {
        SigningService { authority }
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.authority.store()
    }

    fn now(&self) -> i64 {
        self.authority.clock().now()
    }

    /// The key if `who` may use it; another bank's key does not exist for `who`.
    fn key_for_user(&self, who: &Principal, key_id: &str) -> Result<SigningKeyRecord, SignError> {
        let key = self
            .store()
            .signing_key(key_id)?
            .filter(|k| k.tenant_id == who.tenant.id)
            .ok_or_else(|| SignError::UnknownKey(key_id.into()))?;
        let allowed = match key.kind.as_str() {
            "seal" => who.role == Role::Sealer,
            "teller" => who.role == Role::Teller && who.teller_id == key.teller_id,
            _ => false,
        };
        if !allowed {
            return Err(SignError::Forbidden(format!(
                "key {key_id} signs only for its owner ({}); this {} credential is not it",
                if key.kind == "seal" {
                    "the bank's sealers"
                } else {
                    "its teller"
                },
                who.role
            )));
        }
        Ok(key)
    }

    /// A key signs only while its certificate is issued, unrevoked, not on hold and valid.
    fn check_certificate(&self, key: &SigningKeyRecord) -> Result<(), SignError> {
        let now = self.now();
        let rec = self
            .store()
            .certificate(&key.certificate_serial)?
            .ok_or_else(|| {
                SignError::Store(StoreError::Corrupt(format!(
                    "certificate of key {}",
                    key.id
                )))
            })?;
        let why = match rec.revocation {
            Some(r) if r.reason_code == Some(crate::ca::HOLD_REASON_CODE) => Some("is on hold"),
            Some(_) => Some("is revoked"),
            None if rec.status != crate::store::CertStatus::Issued => Some("is not issued"),
            None if now > rec.not_after => Some("has expired"),
            None if now < rec.not_before => Some("is not yet valid"),
            None => None,
        };
        match why {
            Some(w) => Err(SignError::Forbidden(format!(
                "key {}'s certificate {} {w}: the key no longer signs",
                key.id, key.certificate_serial
            ))),
            None => Ok(()),
        }
    }

    /// `GET /v1/signing-keys`: the caller's usable keys.
    pub fn usable_keys(&self, who: &Principal) -> Result<Vec<UsableKey>, SignError> {
        let mut out = Vec::new();
        for key in self.store().signing_keys(&who.tenant.id)? {
            if self.key_for_user(who, &key.id).is_ok() {
                let certificate_der = self.certificate(&key)?;
                out.push(UsableKey {
                    key,
                    certificate_der,
                });
            }
        }
        Ok(out)
    }

    fn certificate(&self, key: &SigningKeyRecord) -> Result<Vec<u8>, SignError> {
        self.store()
            .certificate(&key.certificate_serial)?
            .and_then(|c| c.cert_der)
            .ok_or_else(|| {
                SignError::Store(StoreError::Corrupt(format!(
                    "certificate of key {}",
                    key.id
                )))
            })
    }

    fn signer(&self, key: &SigningKeyRecord) -> Result<SignerCert, SignError> {
        let certificate_der = self.certificate(key)?;
        let issuer = if key.kind == "seal" {
            IssuerId::Customer
        } else {
            IssuerId::Teller
        };
        Ok(SignerCert {
            certificate_der,
            chain: vec![
                self.authority.ca(issuer)?.der.clone(),
                self.authority.ca(IssuerId::Root)?.der.clone(),
            ],
        })
    }

    /// Checks a teller key's PIN, counting wrong ones (and auditing every attempt).
    fn check_pin(
        &self,
        who: &Principal,
        key: &SigningKeyRecord,
        given: Option<&str>,
    ) -> Result<(), SignError> {
        if key.kind != "teller" {
            return Ok(());
        }
        if key.locked {
            return Err(SignError::Locked);
        }
        let stored = key.pin_hash.as_deref().ok_or(SignError::NoPin)?;
        let given = given.ok_or(SignError::PinRequired)?;
        // Checked before the attempt is counted, so that a token that cannot answer costs the
        // teller no attempt. Concurrent guesses still cannot get past the limit: an outcome is
        // acted on (and told) only for an attempt that the reservation below counted.
        let ok = pin::verify(given, stored, |d| self.authority.pin_mac(d))?;
        let now = self.now();
        // Whichever store call locks the key appends this in the lock's own transaction.
        // The lock comes at exactly MAX_PIN_ATTEMPTS: reservations stop counting there.
        let lock_event = AuditEvent::new(
            &who.actor(),
            "signing_key.lock",
            &key.id,
            serde_json::json!({"after_wrong_pins": MAX_PIN_ATTEMPTS}),
        )
        .for_tenant(Some(&who.tenant.id));
        // Counted before its outcome is used: concurrent guesses cannot get past the limit.
        match self
            .store()
            .reserve_pin_attempt(&key.id, MAX_PIN_ATTEMPTS, now, &lock_event)?
        {
            PinReservation::Reserved => {}
            PinReservation::Locked(lock) => {
                if let Some(rec) = lock {
                    self.authority.auditor().after_commit(&rec);
                }
                return Err(SignError::Locked);
            }
        }
        let ev = AuditEvent::new(
            &who.actor(),
            if ok {
                "signing_key.pin_ok"
            } else {
                "signing_key.pin_wrong"
            },
            &key.id,
            serde_json::json!({}),
        )
        .for_tenant(Some(&who.tenant.id));
        let attempt = if ok {
            PinAttempt::Correct
        } else {
            PinAttempt::Wrong {
                max: MAX_PIN_ATTEMPTS,
            }
        };
        let outcome = self
            .store()
            .pin_attempt(&key.id, attempt, now, &ev, &lock_event)?;
        for rec in &outcome.records {
            self.authority.auditor().after_commit(rec);
        }
        let after = outcome.key;
        // A right PIN on a key that other (wrong) attempts locked meanwhile is refused all
        // the same.
        if after.locked {
            return Err(SignError::Locked);
        }
        if ok {
            // A hash an older Signet stored (PBKDF2 alone) is bound to the token now that its
            // PIN has opened the key; `signet ca upgrade` binds those not used since.
            if let Err(e) = self.bind_pin(key, stored, &who.actor()) {
                tracing::warn!(key = %key.id, error = %e, "cannot bind a PIN hash to the token");
            }
            return Ok(());
        }
        Err(SignError::WrongPin {
            remaining: MAX_PIN_ATTEMPTS.saturating_sub(after.failed_attempts),
        })
    }

    /// `POST /v1/signing-keys/{id}/pin`: the teller sets the key's PIN with the one-time
    /// activation code, or changes it with the old PIN.
    pub fn set_pin(
        &self,
        who: &Principal,
        key_id: &str,
        activation_code: Option<&str>,
        old_pin: Option<&str>,
        new_pin: &str,
    ) -> Result<(), SignError> {
        let key = self.key_for_user(who, key_id)?;
        if key.kind != "teller" {
            return Err(SignError::Invalid("only teller keys have a PIN".into()));
        }
        pin::check_new(new_pin).map_err(SignError::Invalid)?;
        let mut used_activation = None;
        match (activation_code, old_pin) {
            (Some(code), None) => {
                let expected = key.activation_hash.as_deref().ok_or_else(|| {
                    SignError::Invalid(
                        "the activation code was already used: change the PIN with old_pin".into(),
                    )
                })?;
                let given = hex::encode(Sha256::digest(code.trim().as_bytes()));
                if !pin::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                    // Not counted (80 random bits are not guessed), but on record: someone
                    // with the teller's credential tried a code that is not the key's.
                    let ev = AuditEvent::new(
                        &who.actor(),
                        "signing_key.activation_wrong",
                        key_id,
                        serde_json::json!({}),
                    )
                    .for_tenant(Some(&who.tenant.id));
                    let rec = self.store().append_audit(self.now(), &ev)?;
                    self.authority.auditor().after_commit(&rec);
                    return Err(SignError::Forbidden("wrong activation code".into()));
                }
                used_activation = Some(expected.to_string());
            }
            (None, Some(old)) => self.check_pin(who, &key, Some(old))?,
            _ => {
                return Err(SignError::Invalid(
                    "give either activation_code or old_pin, with new_pin".into(),
                ))
            }
        }
        let salt = self.authority.hsm_random(16)?;
        let hash = pin::hash(new_pin, &salt, |d| self.authority.pin_mac(d))?;
        let ev = AuditEvent::new(
            &who.actor(),
            "signing_key.set_pin",
            key_id,
            serde_json::json!({}),
        )
        .for_tenant(Some(&who.tenant.id));
        // With an activation code, only while it is unused (two uses at once: one wins).
        let rec = self
            .store()
            .set_pin(key_id, &hash, used_activation.as_deref(), self.now(), &ev)
            .map_err(|e| match e {
                StoreError::Conflict(m) => SignError::Forbidden(m),
                other => SignError::Store(other),
            })?;
        self.authority.auditor().after_commit(&rec);
        Ok(())
    }

    /// Binds every PIN hash stored before the PIN key to the token (`signet ca upgrade`):
    /// each becomes the same PIN's hash under the PIN key, audited per key
    /// (`signing_key.pin_bound`). The PINs are not needed. Returns how many it bound.
    pub fn bind_pins_to_token(&self, actor: &str) -> Result<usize, SignError> {
        let mut bound = 0;
        for key in self.store().signing_keys_with_pins()? {
            if let Some(old) = key.pin_hash.as_deref() {
                bound += usize::from(self.bind_pin(&key, old, actor)?);
            }
        }
        Ok(bound)
    }

    /// Binds `key`'s PIN hash `old` to the token if it is a PBKDF2-only hash (audited as
    /// `signing_key.pin_bound`); whether it did. A hash that is not `old` any more (a PIN
    /// changed meanwhile, hashed under the key already) is left alone.
    fn bind_pin(&self, key: &SigningKeyRecord, old: &str, actor: &str) -> Result<bool, SignError> {
        let Some(new) = pin::rewrap(old, |d| self.authority.pin_mac(d))? else {
            return Ok(false);
        };
        let ev = AuditEvent::new(
            actor,
            "signing_key.pin_bound",
            &key.id,
            serde_json::json!({}),
        )
        .for_tenant(Some(&key.tenant_id));
        match self
            .store()
            .replace_pin_hash(&key.id, old, &new, self.now(), &ev)?
        {
            Some(rec) => {
                self.authority.auditor().after_commit(&rec);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `POST /v1/signing-keys/{id}/unlock`: a teller-admin of the key's bank.
    pub fn unlock(&self, who: &Principal, key_id: &str) -> Result<(), SignError> {
        let key = self
            .store()
            .signing_key(key_id)?
            .filter(|k| k.tenant_id == who.tenant.id)
            .ok_or_else(|| SignError::UnknownKey(key_id.into()))?;
        if who.role != Role::TellerAdmin {
            return Err(SignError::Forbidden(format!(
                "a {} credential cannot unlock keys",
                who.role
            )));
        }
        let ev = AuditEvent::new(
            &who.actor(),
            "signing_key.unlock",
            &key.id,
            serde_json::json!({}),
        )
        .for_tenant(Some(&who.tenant.id));
        let rec = self.store().unlock_key(&key.id, self.now(), &ev)?;
        self.authority.auditor().after_commit(&rec);
        Ok(())
    }

    /// `POST /v1/signatures`.
    pub fn sign(
        &self,
        who: &Principal,
        key_id: &str,
        format: SignFormat,
        input: SignInput,
        pin: Option<Zeroizing<String>>,
    ) -> Result<Signed, SignError> {
        let key = self.key_for_user(who, key_id)?;
        check_input(format, &input)?;
        self.check_certificate(&key)?;
        self.check_pin(who, &key, pin.as_deref().map(|s| s.as_str()))?;
        self.produce(&key, format, input, &who.actor(), Some(&who.tenant.id))
    }

    /// Audits every signature about to be made (who authorized, which key, digest, time),
    /// then makes them in the HSM.
    fn produce(
        &self,
        key: &SigningKeyRecord,
        format: SignFormat,
        input: SignInput,
        actor: &str,
        tenant: Option<&str>,
    ) -> Result<Signed, SignError> {
        // Refused before anything is written: a chain the process no longer holds to takes
        // no more signature events (nor would it checkpoint them).
        if let Some(why) = self.authority.auditor().altered() {
            return Err(CaError::from(AuditError::ChainAltered(why)).into());
        }
        let now = self.now();
        let digests: Vec<Vec<u8>> = match &input {
            SignInput::Data(d) => vec![Sha256::digest(d).to_vec()],
            SignInput::Hashes(h) => h.clone(),
        };
        let events: Vec<AuditEvent> = digests
            .iter()
            .map(|d| {
                AuditEvent::new(
                    actor,
                    "signature.create",
                    &key.id,
                    serde_json::json!({"kind": key.kind, "format": format.as_str(), "sha256": hex::encode(d), "serial": key.certificate_serial}),
                )
                .for_tenant(tenant)
            })
            .collect();
        let created = self.store().append_audit_many(now, &events)?;
        let made = self.make(key, format, input, now, &created);
        if made.is_err() {
            // The log said these signatures were being made: it says they were not.
            let seqs: Vec<u64> = created.iter().map(|r| r.seq).collect();
            let error = made.as_ref().err().map(ToString::to_string);
            let ev = AuditEvent::new(
                actor,
                "signature.fail",
                &key.id,
                serde_json::json!({"kind": key.kind, "format": format.as_str(), "error": error, "create_events": seqs}),
            )
            .for_tenant(tenant);
            match self.store().append_audit(self.now(), &ev) {
                Ok(rec) => self.authority.auditor().after_commit(&rec),
                Err(e) => {
                    tracing::error!(key = %key.id, error = %e, "cannot audit a failed signature")
                }
            }
        }
        made
    }

    /// Checkpoints the `created` events when due, then makes the signatures in the HSM.
    fn make(
        &self,
        key: &SigningKeyRecord,
        format: SignFormat,
        input: SignInput,
        now: i64,
        created: &[AuditRecord],
    ) -> Result<Signed, SignError> {
        self.authority
            .auditor()
            .after_append_all(created)
            .map_err(CaError::from)?;
        let signer = self.signer(key)?;
        let failure: RefCell<Option<CaError>> = RefCell::new(None);
        let sign = |bytes: &[u8]| {
            self.authority
                .sign_with_key(&key.key_label, bytes)
                .map_err(|e| {
                    let text = e.to_string();
                    *failure.borrow_mut() = Some(e);
                    text
                })
        };
        let b64 = |d: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(d);
        let made: Result<Vec<String>, String> = match (format, input) {
            (SignFormat::Jws, SignInput::Data(d)) => {
                format::jws_es256(&d, &signer, now, &sign).map(|j| vec![j])
            }
            (SignFormat::CmsAttached, SignInput::Data(d)) => {
                format::cms_signed_data(CmsContent::Attached(&d), &signer, now, &sign)
                    .map(|c| vec![b64(c)])
            }
            (SignFormat::CmsDetached, SignInput::Data(d)) => {
                format::cms_signed_data(CmsContent::Detached(&d), &signer, now, &sign)
                    .map(|c| vec![b64(c)])
            }
            (SignFormat::CmsDetached, SignInput::Hashes(hs)) => hs
                .iter()
                .map(|h| {
                    let mut digest = [0u8; 32];
                    digest.copy_from_slice(h);
                    format::cms_signed_data(CmsContent::DetachedDigest(digest), &signer, now, &sign)
                        .map(b64)
                })
                .collect(),
            _ => Err("unsupported input for this format".into()),
        };
        match made {
            Ok(signatures) => Ok(Signed { format, signatures }),
            Err(text) => Err(match failure.into_inner() {
                Some(e) => SignError::Ca(e),
                None => SignError::Invalid(text),
            }),
        }
    }
}

fn check_input(format: SignFormat, input: &SignInput) -> Result<(), SignError> {
    match input {
        SignInput::Data(d) if d.is_empty() => Err(SignError::Invalid("`data` is empty".into())),
        SignInput::Data(_) => Ok(()),
        SignInput::Hashes(_) if format != SignFormat::CmsDetached => Err(SignError::Invalid(
            "`hashes` work only with the cms-detached format".into(),
        )),
        SignInput::Hashes(hs) if hs.is_empty() || hs.len() > MAX_BATCH => Err(SignError::Invalid(
            format!("`hashes` holds 1 to {MAX_BATCH} SHA-256 digests"),
        )),
        SignInput::Hashes(hs) => match hs.iter().position(|h| h.len() != 32) {
            Some(i) => Err(SignError::Invalid(format!(
                "hashes[{i}] is {} bytes: a SHA-256 digest is 32",
                hs[i].len()
            ))),
            None => Ok(()),
        },
    }
}
