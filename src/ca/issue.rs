//! Issuing an end-entity certificate: build the TBS from the profile, record it, sign it in the
//! HSM, store the certificate (design invariant 2).

use der::asn1::Ia5String;
use der::Encode;
use sha2::{Digest, Sha256};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, CertificatePolicies, CrlDistributionPoints,
    ExtendedKeyUsage, KeyUsage, KeyUsages,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;

use super::x509::{self, extension, DecidedProfile, PreparedCertificate};
use super::{Authority, CaCert, CaError, Fault, IssuerId};
use crate::audit::AuditEvent;
use crate::policy::{KeyUsageBit, Profile};
use crate::store::{CertRecord, CertStatus, GroupedWrite};

/// What the registration authority asks the CA to sign: everything already decided.
pub struct LeafRequest<'a> {
    pub profile: &'a Profile,
    /// The complete subject, as the profile and the bank's vetted data say.
    pub subject: Name,
    /// Hex SHA-256 of the subject's serialNumber, for lookups (never the ID number itself).
    pub subject_serial_digest: Option<String>,
    /// The subject's public key (from a CSR whose proof of possession was checked).
    pub spki: SubjectPublicKeyInfoOwned,
    /// Who asks (for the audit log).
    pub actor: &'a str,
    /// Extra facts for the audit event (e.g. that the operator's break-glass path was used).
    pub audit_details: serde_json::Value,
    /// Who the certificate belongs to (a tenant id): recorded, never interpreted by the CA.
    pub owner: Option<String>,
}

/// An issued certificate with its chain (issuing CA first, root excluded).
#[derive(Debug, Clone)]
pub struct Issued {
    pub serial: String,
    pub issuer: IssuerId,
    pub der: Vec<u8>,
    pub chain: Vec<CaCert>,
}

impl Issued {
    /// The certificate then its issuing CA, PEM.
    pub fn pem_with_chain(&self) -> String {
        let mut out = super::pem_certificate(&self.der);
        for ca in &self.chain {
            out.push_str(&ca.pem());
        }
        out
    }
}

const DAY: i64 = 86_400;

impl Authority {
    /// Issues an end-entity certificate.
    pub fn issue(&self, req: LeafRequest<'_>) -> Result<Issued, CaError> {
        let issuer = self.ca(req.profile.issuer)?;
        let now = self.clock.now();
        let issuer_not_after = issuer
            .certificate
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs() as i64;
        // Never outlive the issuer: a certificate valid past its CA's expiry cannot be validated then.
        let not_after = (now + req.profile.validity_days as i64 * DAY - 1).min(issuer_not_after);
        if not_after <= now {
            return Err(CaError::InvalidRequest(format!(
                "the {} CA certificate has expired; renew the CA before issuing",
                issuer.id
            )));
        }
        lint_leaf_subject(&req.subject)?;

        let serial_bytes = self.new_serial()?;
        let serial = hex::encode(&serial_bytes);
        let shard = if self.settings.crl_shards > 1 {
            Some(u32::from(serial_bytes[15]) % self.settings.crl_shards)
        } else {
            None
        };
        let extensions = self.leaf_extensions(&req, &issuer, shard)?;
        let issuer_key = x509::verifying_key(
            issuer
                .certificate
                .tbs_certificate()
                .subject_public_key_info(),
        )
        .map_err(CaError::Encoding)?;
        let prepared = PreparedCertificate::new(
            &serial_bytes,
            now,
            not_after,
            req.spki.clone(),
            DecidedProfile {
                subject: req.subject.clone(),
                issuer: issuer.certificate.tbs_certificate().subject().clone(),
                extensions,
            },
            issuer_key,
        )?;
        let tbs_der = prepared.tbs_der.clone();
        let subject_text = req.subject.to_string();
        let subject_digest = hex::encode(Sha256::digest(req.subject.to_der()?));

        let record = CertRecord {
            serial: serial.clone(),
            issuer: issuer.id,
            profile: req.profile.name.clone(),
            status: CertStatus::Pending,
            subject: subject_text,
            subject_serial_digest: req.subject_serial_digest.clone(),
            shard: shard.unwrap_or(0),
            not_before: now,
            not_after,
            tbs_der: tbs_der.clone(),
            cert_der: None,
            created_at: now,
            revocation: None,
            owner: req.owner.clone(),
            key_id: Some(hex::encode(x509::key_identifier(&req.spki))),
        };
        // The audit log names the subject by digest: it must not carry ID numbers in clear.
        let mut details = serde_json::json!({
            "issuer": issuer.id.as_str(),
            "profile": req.profile.name,
            "subject_digest": subject_digest,
            "not_after": not_after,
        });
        if let (Some(obj), serde_json::Value::Object(extra)) =
            (details.as_object_mut(), &req.audit_details)
        {
            obj.extend(extra.clone());
        }
        // Durable before the HSM signs (invariant 2), grouped with concurrent issuances.
        let audit = self
            .commits
            .write(GroupedWrite::Pending {
                record,
                event: AuditEvent::new(req.actor, "certificate.record", &serial, &details)
                    .for_tenant(req.owner.as_deref()),
            })?
            .audit;
        if let Err(e) = self.auditor.after_append(&audit) {
            let e = CaError::from(e);
            self.void_unsigned(&serial, &req, &details, &e);
            return Err(e);
        }

        if self.fault == Fault::AfterRecord {
            return Err(CaError::FaultInjected { serial });
        }

        let der = match self.sign_certificate(prepared, &issuer.key_label) {
            Ok(der) => der,
            Err(e) => {
                self.void_unsigned(&serial, &req, &details, &e);
                return Err(e);
            }
        };
        // Durable before the certificate is handed out.
        let audit = self
            .commits
            .write(GroupedWrite::Complete {
                serial: serial.clone(),
                cert_der: der.clone(),
                at: self.clock.now(),
                event: AuditEvent::new(req.actor, "certificate.issue", &serial, &details)
                    .for_tenant(req.owner.as_deref()),
            })?
            .audit;
        self.auditor.after_append(&audit)?;
        Ok(Issued {
            serial,
            issuer: issuer.id,
            der,
            chain: vec![issuer],
        })
    }

    /// Voids a recorded issuance that failed before the HSM handed back a signature (the HSM is
    /// down or did not answer in time), so that no record is left half-issued. The serial goes
    /// on the next CRL, as for every voided issuance: a token that signed without answering
    /// would otherwise leave a valid-looking certificate nobody can revoke. When the store
    /// cannot take the change either, the record stays pending and the interrupted-issuance
    /// sweep voids it after the issuance timeout.
    fn void_unsigned(
        &self,
        serial: &str,
        req: &LeafRequest<'_>,
        details: &serde_json::Value,
        why: &CaError,
    ) {
        let mut details = details.clone();
        if let Some(obj) = details.as_object_mut() {
            obj.insert(
                "why".into(),
                serde_json::Value::String(format!("signing failed: {why}")),
            );
        }
        let ev = AuditEvent::new(req.actor, "certificate.void", serial, &details)
            .for_tenant(req.owner.as_deref());
        match self.store.void_pending(serial, self.clock.now(), &ev) {
            Ok(audit) => {
                tracing::warn!(%serial, error = %why, "voided an issuance whose signing failed");
                if let Err(e) = self.auditor.after_append(&audit) {
                    tracing::warn!(error = %e, "audit checkpoint after a void failed");
                }
            }
            Err(e) => {
                tracing::warn!(%serial, error = %e, "cannot void a failed issuance now; the sweep will")
            }
        }
    }

    fn leaf_extensions(
        &self,
        req: &LeafRequest<'_>,
        issuer: &CaCert,
        shard: Option<u32>,
    ) -> Result<Vec<Extension>, CaError> {
        let p = req.profile;
        let mut ku = der::flagset::FlagSet::<KeyUsages>::default();
        for bit in &p.key_usage {
            ku |= match bit {
                KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
                KeyUsageBit::NonRepudiation => KeyUsages::NonRepudiation,
                KeyUsageBit::KeyEncipherment => KeyUsages::KeyEncipherment,
                KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
            };
        }
        let mut exts = vec![extension(&KeyUsage(ku), true)?];
        exts.extend(x509::key_id_extensions(&req.spki, &issuer.key_id)?);
        if !p.extended_key_usage.is_empty() {
            exts.push(extension(
                &ExtendedKeyUsage(p.extended_key_usage.iter().map(|e| e.oid()).collect()),
                false,
            )?);
        }
        exts.push(extension(
            &CertificatePolicies(vec![PolicyInformation {
                policy_identifier: p.policy_oid,
                policy_qualifiers: None,
            }]),
            false,
        )?);
        exts.push(crl_distribution_point(
            &self.settings.crl_url(issuer.id, shard),
        )?);
        exts.push(authority_info_access(
            &self.settings.ca_issuers_url(issuer.id),
            Some(&self.settings.ocsp_url()),
        )?);
        Ok(exts)
    }
}

pub(super) fn uri(s: &str) -> Result<GeneralName, CaError> {
    Ok(GeneralName::UniformResourceIdentifier(Ia5String::new(s)?))
}

pub(super) fn crl_distribution_point(url: &str) -> Result<Extension, CaError> {
    Ok(extension(
        &CrlDistributionPoints(vec![DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
            reasons: None,
            crl_issuer: None,
        }]),
        false,
    )?)
}

pub(super) fn authority_info_access(
    ca_issuers: &str,
    ocsp: Option<&str>,
) -> Result<Extension, CaError> {
    use const_oid::db::rfc5280::{ID_AD_CA_ISSUERS, ID_AD_OCSP};
    let mut ads = Vec::new();
    if let Some(o) = ocsp {
        ads.push(AccessDescription {
            access_method: ID_AD_OCSP,
            access_location: uri(o)?,
        });
    }
    ads.push(AccessDescription {
        access_method: ID_AD_CA_ISSUERS,
        access_location: uri(ca_issuers)?,
    });
    Ok(extension(&AuthorityInfoAccessSyntax(ads), false)?)
}

/// The CA's last look at a subject before signing: not empty, has a CN, no duplicate RDNs.
fn lint_leaf_subject(subject: &Name) -> Result<(), CaError> {
    if subject.is_empty() {
        return Err(CaError::InvalidRequest("empty subject".into()));
    }
    let has_cn = subject
        .iter()
        .any(|atv| atv.oid == const_oid::db::rfc4519::CN);
    if !has_cn {
        return Err(CaError::InvalidRequest("subject has no CN".into()));
    }
    Ok(())
}
