//! The key ceremony: CA keys made in the token, the root self-signed, the issuing CAs signed by
//! the root, each certificate recorded before it is signed. Runs once; `upgrade` adds only what
//! is missing.

use std::path::Path;
use std::str::FromStr;

use der::asn1::OctetString;
use der::Encode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::{
    BasicConstraints, CertificatePolicies, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;

use super::issue::{authority_info_access, crl_distribution_point};
use super::x509::{self, extension, DecidedProfile, PreparedCertificate};
use super::{Authority, CaError, IssuerId};
use crate::audit::AuditEvent;
use crate::store::{CaRecord, CertRecord, CertStatus};

/// anyPolicy (RFC 5280 4.2.1.4): issuing CAs accept every policy of the project's arc.
const ANY_POLICY: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("2.5.29.32.0");

/// What a ceremony created.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub created: Vec<String>,
}

const DAY: i64 = 86_400;

impl Authority {
    /// Runs the key ceremony. Refuses an initialized CA. Keys left in the token by an earlier
    /// ceremony that stopped before anything was stored are reused (they never signed anything
    /// that was handed out).
    pub fn init(&self, actor: &str, progress: &dyn Fn(&str)) -> Result<InitReport, CaError> {
        if let Some(first) = self.store.cas()?.first() {
            return Err(CaError::AlreadyInitialized {
                created: format!("at Unix time {}", first.created_at),
            });
        }
        let now = self.clock.now();
        let s = self.settings.clone();
        let mut created = Vec::new();

        let mut key = |label: &str| -> Result<SubjectPublicKeyInfoOwned, CaError> {
            let spki = self.key_in_token(label, progress)?;
            created.push(label.to_string());
            Ok(spki)
        };
        let root_label = s.key_label(IssuerId::Root);
        let root_spki = key(&root_label)?;
        let customer_spki = key(&s.key_label(IssuerId::Customer))?;
        let teller_spki = key(&s.key_label(IssuerId::Teller))?;
        let audit_label = s.audit_key_label();
        let audit_spki = key(&audit_label)?;

        let root_name = ca_name(&s.country, &s.organization, &s.root_common_name)?;
        let root_key_id = x509::key_identifier(&root_spki);
        let root_public = x509::verifying_key(&root_spki).map_err(CaError::Encoding)?;
        let root_not_after = now + i64::from(s.root_validity_days) * DAY - 1;

        progress("signing the root certificate");
        let root_exts = vec![
            extension(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                },
                true,
            )?,
            // digitalSignature: the root signs the OCSP answers about the issuing CAs itself
            // (RFC 5280 4.2.1.3; CA/Browser Forum BR 7.1.2.1 asks it of a root that does).
            extension(
                &KeyUsage(
                    KeyUsages::DigitalSignature | KeyUsages::KeyCertSign | KeyUsages::CRLSign,
                ),
                true,
            )?,
            extension(
                &SubjectKeyIdentifier(OctetString::new(root_key_id.clone())?),
                false,
            )?,
        ];
        let root_der = self.ceremony_sign(
            IssuerId::Root,
            "root",
            &root_label,
            root_public,
            root_name.clone(),
            root_name.clone(),
            root_spki.clone(),
            now,
            root_not_after,
            root_exts,
            actor,
        )?;

        let mut rows = vec![CaRecord {
            name: IssuerId::Root.as_str().into(),
            key_label: root_label.clone(),
            cert_der: Some(root_der),
            public_key: root_spki.to_der()?,
            created_at: now,
        }];
        for (id, cn, spki) in [
            (
                IssuerId::Customer,
                &s.customer_ca_common_name,
                customer_spki,
            ),
            (IssuerId::Teller, &s.teller_ca_common_name, teller_spki),
        ] {
            progress(&format!(
                "signing the {id} CA certificate with the root key"
            ));
            let name = ca_name(&s.country, &s.organization, cn)?;
            let not_after =
                (now + i64::from(s.issuing_validity_days) * DAY - 1).min(root_not_after);
            let mut exts = vec![
                extension(
                    &BasicConstraints {
                        ca: true,
                        path_len_constraint: Some(0),
                    },
                    true,
                )?,
                // digitalSignature: the issuing CA signs OCSP responses itself (RFC 6960 4.2.2.2).
                extension(
                    &KeyUsage(
                        KeyUsages::DigitalSignature | KeyUsages::KeyCertSign | KeyUsages::CRLSign,
                    ),
                    true,
                )?,
                extension(
                    &CertificatePolicies(vec![PolicyInformation {
                        policy_identifier: ANY_POLICY,
                        policy_qualifiers: None,
                    }]),
                    false,
                )?,
                crl_distribution_point(&s.crl_url(IssuerId::Root, None))?,
                authority_info_access(&s.ca_issuers_url(IssuerId::Root), None)?,
            ];
            exts.extend(x509::key_id_extensions(&spki, &root_key_id)?);
            let label = s.key_label(id);
            let der = self.ceremony_sign(
                IssuerId::Root,
                &format!("{id}-ca"),
                &root_label,
                root_public,
                root_name.clone(),
                name,
                spki.clone(),
                now,
                not_after,
                exts,
                actor,
            )?;
            rows.push(CaRecord {
                name: id.as_str().into(),
                key_label: label,
                cert_der: Some(der),
                public_key: spki.to_der()?,
                created_at: now,
            });
        }
        rows.push(CaRecord {
            name: "audit".into(),
            key_label: audit_label,
            cert_der: None,
            public_key: audit_spki.to_der()?,
            created_at: now,
        });
        let ev = AuditEvent::new(
            actor,
            "ca.init",
            "ca",
            serde_json::json!({
                "keys": created,
                "root": s.root_common_name,
                "customer_ca": s.customer_ca_common_name,
                "teller_ca": s.teller_ca_common_name,
            }),
        );
        let audit = self.store.add_cas(&rows, now, &ev)?;
        self.reload_cas()?;
        self.auditor.after_commit(&audit);
        if self.ensure_validation_service(actor, progress)? {
            created.push(s.validation_key_label());
        }
        created.extend(self.ensure_pin_key(actor)?);
        self.auditor.checkpoint_head()?;
        Ok(InitReport { created })
    }

    /// Adds what a newer Signet needs and an older ceremony did not create (the audit key, the
    /// validation service's key and certificate, the PIN key): reports what it created.
    pub fn upgrade(&self, actor: &str, progress: &dyn Fn(&str)) -> Result<InitReport, CaError> {
        if !self.is_initialized() {
            return Err(CaError::NotInitialized);
        }
        let present: Vec<String> = self.store.cas()?.into_iter().map(|c| c.name).collect();
        let mut created = Vec::new();
        if !present.iter().any(|n| n == "audit") {
            let label = self.settings.audit_key_label();
            let spki = self.key_in_token(&label, progress)?;
            let now = self.clock.now();
            let row = CaRecord {
                name: "audit".into(),
                key_label: label.clone(),
                cert_der: None,
                public_key: spki.to_der()?,
                created_at: now,
            };
            let audit = self.store.add_cas(
                &[row],
                now,
                &AuditEvent::new(
                    actor,
                    "ca.upgrade",
                    "audit",
                    serde_json::json!({"key": label}),
                ),
            )?;
            self.auditor.after_commit(&audit);
            created.push(label);
        }
        if self.ensure_validation_service(actor, progress)? {
            created.push(self.settings.validation_key_label());
        }
        created.extend(self.ensure_pin_key(actor)?);
        Ok(InitReport { created })
    }

    /// Writes root.pem, customer-ca.pem and teller-ca.pem into `dir`.
    pub fn export(&self, dir: &Path) -> Result<Vec<std::path::PathBuf>, CaError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CaError::InvalidRequest(format!("cannot create {}: {e}", dir.display()))
        })?;
        let mut written = Vec::new();
        for id in IssuerId::ALL {
            let ca = self.ca(id)?;
            let path = dir.join(format!("{}.pem", id.key_suffix()));
            std::fs::write(&path, ca.pem()).map_err(|e| {
                CaError::InvalidRequest(format!("cannot write {}: {e}", path.display()))
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Records, signs and completes one CA certificate.
    #[allow(clippy::too_many_arguments)]
    fn ceremony_sign(
        &self,
        issuer: IssuerId,
        profile: &str,
        signing_key: &str,
        signing_public: p256::ecdsa::VerifyingKey,
        issuer_name: Name,
        subject: Name,
        spki: SubjectPublicKeyInfoOwned,
        not_before: i64,
        not_after: i64,
        extensions: Vec<x509_cert::ext::Extension>,
        actor: &str,
    ) -> Result<Vec<u8>, CaError> {
        let serial_bytes = self.new_serial()?;
        let serial = hex::encode(&serial_bytes);
        let spki_for_id = spki.clone();
        let prepared = PreparedCertificate::new(
            &serial_bytes,
            not_before,
            not_after,
            spki,
            DecidedProfile {
                subject: subject.clone(),
                issuer: issuer_name,
                extensions,
            },
            signing_public,
        )?;
        let tbs_der = prepared.tbs_der.clone();
        let details = serde_json::json!({"issuer": issuer.as_str(), "profile": profile, "subject": subject.to_string()});
        let audit = self.store.record_pending(
            &CertRecord {
                serial: serial.clone(),
                issuer,
                profile: profile.into(),
                status: CertStatus::Pending,
                subject: subject.to_string(),
                subject_serial_digest: None,
                shard: 0,
                not_before,
                not_after,
                tbs_der,
                cert_der: None,
                created_at: not_before,
                revocation: None,
                owner: None,
                key_id: Some(hex::encode(x509::key_identifier(&spki_for_id))),
            },
            &AuditEvent::new(actor, "certificate.record", &serial, &details),
        )?;
        self.auditor.after_append(&audit)?;
        let der = self.sign_certificate(prepared, signing_key)?;
        let audit = self.store.complete_issuance(
            &serial,
            &der,
            self.clock.now(),
            &AuditEvent::new(actor, "certificate.issue", &serial, &details),
        )?;
        self.auditor.after_commit(&audit);
        Ok(der)
    }
}

/// C, O, CN with RFC 5280 string types (C PrintableString, the rest UTF8String).
fn ca_name(country: &str, org: &str, cn: &str) -> Result<Name, CaError> {
    let esc = |v: &str| crate::ra::escape_dn_value(v);
    Ok(Name::from_str(&format!(
        "CN={},O={},C={}",
        esc(cn),
        esc(org),
        esc(country)
    ))?)
}
