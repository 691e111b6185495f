//! Keys of Signet's own services. The validation service signs verification receipts (issue
//! 4, item 7) with a key made in the token and certified by the customer CA; its certificate
//! is kept as the `validation` row of the CA table, so that it is found again after a restart.

use std::str::FromStr;

use der::Encode;
use subtle::ConstantTimeEq;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::{CertificatePolicies, KeyUsage, KeyUsages};
use x509_cert::name::Name;

use super::issue::{authority_info_access, crl_distribution_point};
use super::x509::{self, extension, DecidedProfile, PreparedCertificate};
use super::{Authority, CaError, CaSettings, IssuerId};
use crate::audit::{AuditEvent, AuditRecord};
use crate::store::{CaRecord, CertRecord, CertStatus, StoreError};

/// The name of the validation service's row in the CA table.
pub const VALIDATION_ROW: &str = "validation";
/// The profile name its certificate is recorded under.
pub const VALIDATION_PROFILE: &str = "validation-service";
/// The CN of its certificate.
pub const VALIDATION_COMMON_NAME: &str = "Signet Validation Service";
/// The certificate policy of the validation service's certificate: what tells a receipt
/// signer from any other holder of a certificate of the same CA (customer certificates have
/// the same key usage and no extended key usage either). Under the project's arc
/// (policies/README.md), in a sub-arc of its own (`.2`: Signet's service keys) so that no
/// profile's OID can take it.
pub const VALIDATION_SERVICE_POLICY: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.7373.2.1");

const DAY: i64 = 86_400;

/// The validation service's signing key and certificate.
#[derive(Debug, Clone)]
pub struct ValidationService {
    /// Label of its P-256 key in the token.
    pub key_label: String,
    /// Its certificate, issued by the customer CA (DER).
    pub certificate_der: Vec<u8>,
    /// The issuing CA's certificate, then the root's (DER).
    pub chain: Vec<Vec<u8>>,
}

impl ValidationService {
    /// Its certificate's notAfter (Unix seconds).
    pub fn not_after(&self) -> Result<i64, CaError> {
        use der::Decode;
        let cert = x509_cert::Certificate::from_der(&self.certificate_der)?;
        Ok(cert
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs() as i64)
    }
}

impl CaSettings {
    /// Label of the validation service's key in the token.
    pub fn validation_key_label(&self) -> String {
        format!("{}-validation", self.key_prefix)
    }

    /// The start of the label of the HMAC key that binds stored PIN hashes to the token (a
    /// key made since this version adds a random suffix of its own; the CA table records the
    /// label).
    pub fn pin_key_label(&self) -> String {
        format!("{}-pin-mac", self.key_prefix)
    }
}

/// The name of the PIN key's row in the CA table. Its `public_key` column holds the key's
/// check value: a secret key has no public half, and the check value tells the key that bound
/// the stored PIN hashes from any other under the same label.
pub const PIN_KEY_ROW: &str = "pin";
/// What the check value is the PIN key's HMAC of (never a PIN hash's input, which starts
/// with its own domain).
const PIN_KEY_CHECK: &[u8] = b"signet PIN key check value";

impl Authority {
    /// Makes the PIN key in the token (an HMAC key that never leaves it) and records it with
    /// its check value, audited (`ca.pin_key`), unless one is recorded. Returns the label of
    /// the key it made. Once recorded, the key is never made again: a token that lost it must
    /// be restored (`PinKeyLost`), since the PIN hashes are bound to it.
    pub fn ensure_pin_key(&self, actor: &str) -> Result<Option<String>, CaError> {
        if let Some(row) = self.pin_key_row()? {
            self.check_pin_key(&row)?;
            return Ok(None);
        }
        self.make_pin_key(actor)
    }

    /// The second half of [`Authority::ensure_pin_key`], which a process reaches when it read
    /// no record: it makes a key under a label of its own, and records it unless another
    /// process recorded one first, in which case it destroys its own and checks the recorded
    /// one. (Under one shared label, two processes making the key at once would leave two keys
    /// that the label names, and no PIN could be checked again.) A key whose record failed
    /// otherwise, or whose run was killed before it, stays in the token, unused.
    #[doc(hidden)]
    pub fn make_pin_key(&self, actor: &str) -> Result<Option<String>, CaError> {
        let label = format!(
            "{}-{}",
            self.settings.pin_key_label(),
            hex::encode(self.hsm.random(8)?)
        );
        self.hsm.generate_hmac_key(&label)?;
        let record = || -> Result<AuditRecord, CaError> {
            let now = self.clock.now();
            let row = CaRecord {
                name: PIN_KEY_ROW.into(),
                key_label: label.clone(),
                cert_der: None,
                public_key: self.hsm.hmac_sha256(&label, PIN_KEY_CHECK)?.to_vec(),
                created_at: now,
            };
            let event = AuditEvent::new(actor, "ca.pin_key", &label, serde_json::json!({}));
            Ok(self.store.add_cas(&[row], now, &event)?)
        };
        match record() {
            Ok(audit) => {
                self.auditor.after_commit(&audit);
                Ok(Some(label))
            }
            // Another process recorded its key first: that one is the PIN key, and this one
            // is nobody's.
            Err(CaError::Store(StoreError::Conflict(_))) => {
                if let Err(why) = self.hsm.destroy_secret_key(&label) {
                    tracing::warn!(%label, error = %why, "cannot destroy a PIN key made while another process recorded its own: it is unused and may be deleted from the token");
                }
                let row = self.pin_key_row()?.ok_or(CaError::PinKeyNotMade)?;
                self.check_pin_key(&row)?;
                Ok(None)
            }
            // Any other failure may have recorded the key all the same (a COMMIT whose answer
            // was lost, one still landing): it stays in the token. If no record names it, it
            // is unused, and the next run makes and records another.
            Err(e) => {
                tracing::warn!(%label, error = %e, "the PIN key may not be recorded; it is kept in the token");
                Err(e)
            }
        }
    }

    /// HMAC-SHA256 of `data` in the token under the PIN key: a PIN hash made with it cannot
    /// be tried against guesses without the token (a copy of the database is not enough).
    /// Every call checks first that the token's key is the one recorded (one more HMAC in the
    /// token): a token restored or failed over to one with another key while the process
    /// runs must not call every PIN wrong, and lock the keys.
    pub fn pin_mac(&self, data: &[u8]) -> Result<[u8; 32], CaError> {
        let row = self.pin_key_row()?.ok_or(CaError::PinKeyNotMade)?;
        self.check_pin_key(&row)?;
        Ok(self.hsm.hmac_sha256(&row.key_label, data)?)
    }

    /// The PIN key's state, for a start-up warning: Ok when it is made and in the token.
    pub fn pin_key_ready(&self) -> Result<(), CaError> {
        let row = self.pin_key_row()?.ok_or(CaError::PinKeyNotMade)?;
        self.check_pin_key(&row)
    }

    /// The label of the recorded PIN key, if one is recorded.
    pub fn pin_key_label(&self) -> Result<Option<String>, CaError> {
        Ok(self.pin_key_row()?.map(|row| row.key_label))
    }

    fn pin_key_row(&self) -> Result<Option<CaRecord>, CaError> {
        Ok(self
            .store
            .cas()?
            .into_iter()
            .find(|c| c.name == PIN_KEY_ROW))
    }

    /// Is the token's key under the row's label the recorded one (same check value)?
    pub(super) fn check_pin_key(&self, row: &CaRecord) -> Result<(), CaError> {
        let lost = || CaError::PinKeyLost {
            label: row.key_label.clone(),
        };
        match self.hsm.hmac_sha256(&row.key_label, PIN_KEY_CHECK) {
            Ok(check) if bool::from(check.as_slice().ct_eq(&row.public_key)) => Ok(()),
            Ok(_) | Err(crate::hsm::HsmError::KeyNotFound { .. }) => Err(lost()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Authority {
    /// Makes the validation service's key (in the token; a key left there by an interrupted
    /// run is reused) and has the customer CA certify it, recorded before it is signed like
    /// every certificate. Does nothing when the service already has its certificate. Returns
    /// whether it created one.
    pub fn ensure_validation_service(
        &self,
        actor: &str,
        progress: &dyn Fn(&str),
    ) -> Result<bool, CaError> {
        if !self.is_initialized() {
            return Err(CaError::NotInitialized);
        }
        if self.store.cas()?.iter().any(|c| c.name == VALIDATION_ROW) {
            return Ok(false);
        }
        let label = self.settings.validation_key_label();
        let spki = self.key_in_token(&label, progress)?;

        let subject = self.service_subject(VALIDATION_COMMON_NAME)?;
        let (serial, der) = self.certify_service_key(
            actor,
            progress,
            VALIDATION_PROFILE,
            subject,
            &spki,
            vec![
                // No extendedKeyUsage: `openssl cms -verify` (purpose smimesign) then accepts
                // it as it is, and the key signs nothing but receipts.
                extension(
                    &KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation),
                    true,
                )?,
                extension(
                    &CertificatePolicies(vec![PolicyInformation {
                        policy_identifier: VALIDATION_SERVICE_POLICY,
                        policy_qualifiers: None,
                    }]),
                    false,
                )?,
            ],
        )?;
        let now = self.clock.now();

        let row = CaRecord {
            name: VALIDATION_ROW.into(),
            key_label: label.clone(),
            cert_der: Some(der),
            public_key: spki.to_der()?,
            created_at: now,
        };
        let ev = AuditEvent::new(
            actor,
            "ca.validation_service",
            VALIDATION_ROW,
            serde_json::json!({"key": label, "serial": serial}),
        );
        match self.store.add_cas(&[row], now, &ev) {
            Ok(audit) => self.auditor.after_commit(&audit),
            // Another process made it meanwhile: its certificate serves, ours stays unused
            // (issued and in the store, like every certificate that was signed).
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        progress(&format!("validation service certificate serial {serial}"));
        Ok(true)
    }

    /// `CN=<cn>,O=<organization>,C=<country>` of a Signet service.
    pub(super) fn service_subject(&self, cn: &str) -> Result<Name, CaError> {
        let s = &self.settings;
        let esc = crate::ra::escape_dn_value;
        Ok(Name::from_str(&format!(
            "CN={},O={},C={}",
            esc(cn),
            esc(&s.organization),
            esc(&s.country)
        ))?)
    }

    /// Has the customer CA certify one of Signet's own service keys (recorded before it is
    /// signed, like every certificate; CRL distribution point and AIA as on every issued
    /// certificate). Returns the serial and the certificate (DER).
    pub(super) fn certify_service_key(
        &self,
        actor: &str,
        progress: &dyn Fn(&str),
        profile: &str,
        subject: Name,
        spki: &spki::SubjectPublicKeyInfoOwned,
        mut extensions: Vec<x509_cert::ext::Extension>,
    ) -> Result<(String, Vec<u8>), CaError> {
        let s = &self.settings;
        let issuer = self.ca(IssuerId::Customer)?;
        let now = self.clock.now();
        let issuer_tbs = issuer.certificate.tbs_certificate();
        let issuer_not_after = issuer_tbs.validity().not_after.to_unix_duration().as_secs() as i64;
        let not_after = (now + i64::from(s.issuing_validity_days) * DAY - 1).min(issuer_not_after);
        if not_after <= now {
            return Err(CaError::InvalidRequest(
                "the customer CA certificate has expired; renew the CA first".into(),
            ));
        }
        let serial_bytes = self.new_serial()?;
        let serial = hex::encode(&serial_bytes);
        // The same shard rule as end-entity certificates, so that a revocation lands on the CRL
        // the certificate names.
        let shard = (s.crl_shards > 1).then(|| u32::from(serial_bytes[15]) % s.crl_shards);
        extensions.push(crl_distribution_point(
            &s.crl_url(IssuerId::Customer, shard),
        )?);
        extensions.push(authority_info_access(
            &s.ca_issuers_url(IssuerId::Customer),
            Some(&s.ocsp_url()),
        )?);
        extensions.extend(x509::key_id_extensions(spki, &issuer.key_id)?);
        let issuer_key =
            x509::verifying_key(issuer_tbs.subject_public_key_info()).map_err(CaError::Encoding)?;
        let prepared = PreparedCertificate::new(
            &serial_bytes,
            now,
            not_after,
            spki.clone(),
            DecidedProfile {
                subject: subject.clone(),
                issuer: issuer_tbs.subject().clone(),
                extensions,
            },
            issuer_key,
        )?;

        progress(&format!(
            "signing the {profile} certificate with the customer CA key"
        ));
        let details = serde_json::json!({
            "issuer": IssuerId::Customer.as_str(),
            "profile": profile,
            "subject": subject.to_string(),
            "not_after": not_after,
        });
        let audit = self.store.record_pending(
            &CertRecord {
                serial: serial.clone(),
                issuer: IssuerId::Customer,
                profile: profile.into(),
                status: CertStatus::Pending,
                subject: subject.to_string(),
                subject_serial_digest: None,
                shard: shard.unwrap_or(0),
                not_before: now,
                not_after,
                tbs_der: prepared.tbs_der.clone(),
                cert_der: None,
                created_at: now,
                revocation: None,
                owner: None,
                key_id: Some(hex::encode(x509::key_identifier(spki))),
            },
            &AuditEvent::new(actor, "certificate.record", &serial, &details),
        )?;
        self.auditor.after_append(&audit)?;
        let der = self.sign_certificate(prepared, &issuer.key_label)?;
        let audit = self.store.complete_issuance(
            &serial,
            &der,
            self.clock.now(),
            &AuditEvent::new(actor, "certificate.issue", &serial, &details),
        )?;
        self.auditor.after_commit(&audit);
        Ok((serial, der))
    }

    /// The validation service's key label, certificate and chain, as the store holds them.
    /// `NotInitialized` when `signet ca upgrade` has not made them yet.
    pub fn validation_service(&self) -> Result<ValidationService, CaError> {
        let row = self
            .store
            .cas()?
            .into_iter()
            .find(|c| c.name == VALIDATION_ROW)
            .ok_or(CaError::NotInitialized)?;
        let certificate_der = row.cert_der.ok_or(CaError::NotInitialized)?;
        Ok(ValidationService {
            key_label: row.key_label,
            certificate_der,
            chain: vec![
                self.ca(IssuerId::Customer)?.der.clone(),
                self.ca(IssuerId::Root)?.der.clone(),
            ],
        })
    }
}
