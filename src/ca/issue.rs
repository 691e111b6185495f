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
    pub chain: Vec<std::sync::Arc<CaCert>>,
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
        self.issue_batch(vec![req])
            .pop()
            .unwrap_or_else(|| Err(CaError::InvalidRequest("nothing to issue".into())))
    }

    /// Issues several end-entity certificates, each exactly as [`Authority::issue`] would: its
    /// own serial, pending record, HSM signature, certificate record and audit events, and its
    /// own result (one refused or failed leaves the others issued). The batch's pending
    /// records are handed to the group committer together, then its certificates: two
    /// commits for the batch rather than two per certificate.
    pub fn issue_batch(&self, reqs: Vec<LeafRequest<'_>>) -> Vec<Result<Issued, CaError>> {
        // Refusals first, so that a request the CA refuses is told why even with the HSM down.
        let mut accepted: Vec<_> = reqs.into_iter().map(|r| self.accept_leaf(r)).collect();
        // Refused before anything is recorded (a record, its void and a CRL entry per retry).
        if let Some(why) = self.auditor.altered() {
            for a in accepted.iter_mut().filter(|a| a.is_ok()) {
                *a = Err(crate::audit::AuditError::ChainAltered(why.clone()).into());
            }
        }
        let wanted = accepted.iter().filter(|a| a.is_ok()).count();
        let mut serials = match self.new_serials(wanted) {
            Ok(serials) => serials.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e); wanted],
        }
        .into_iter();
        let mut leaves: Vec<Result<Leaf<'_>, CaError>> = accepted
            .into_iter()
            .map(|accepted| match (accepted, serials.next()) {
                (Ok(accepted), Some(serial)) => self.prepare_leaf(accepted, serial?),
                (Ok(_), None) => Err(CaError::Encoding("no serial number was drawn".into())),
                (Err(e), _) => Err(e),
            })
            .collect();

        // Durable before the HSM signs (invariant 2), grouped with concurrent issuances.
        let writes = ok_mut(&mut leaves).map(|l| l.pending_write()).collect();
        let mut recorded = self.commits.write_all(writes).into_iter();
        for slot in &mut leaves {
            let Ok(leaf) = slot else { continue };
            let outcome = recorded
                .next()
                .unwrap_or_else(|| Err(unanswered()))
                .map_err(CaError::from)
                .and_then(|applied| {
                    self.auditor.after_append(&applied.audit).map_err(|e| {
                        let e = CaError::from(e);
                        self.void_unsigned(leaf, &e);
                        e
                    })
                });
            if let Err(e) = outcome {
                *slot = Err(e);
            } else if self.fault == Fault::AfterRecord {
                *slot = Err(CaError::FaultInjected {
                    serial: leaf.serial.clone(),
                });
            }
        }

        // Each issuer's certificates in one HSM call: one hand-off to an HSM thread per batch.
        let mut labels: Vec<String> = Vec::new();
        for leaf in ok_mut(&mut leaves) {
            if !labels.contains(&leaf.issuer.key_label) {
                labels.push(leaf.issuer.key_label.clone());
            }
        }
        for label in &labels {
            let group: Vec<usize> = (0..leaves.len())
                .filter(|&i| matches!(&leaves[i], Ok(l) if &l.issuer.key_label == label))
                .collect();
            let signed = {
                let tbs: Vec<&[u8]> = group
                    .iter()
                    .filter_map(|&i| leaves[i].as_ref().ok())
                    .map(|l| l.record.tbs_der.as_slice())
                    .collect();
                if self.fault == Fault::SignFails {
                    Err(crate::hsm::HsmError::Unavailable {
                        token: self.hsm.token_name(),
                        reason: "fault injected: the signing call failed".into(),
                    })
                } else {
                    self.count_certificates_to_sign(tbs.len());
                    self.hsm.sign_many_p256_sha256(label, &tbs)
                }
            };
            for (k, &i) in group.iter().enumerate() {
                let failed = {
                    let Ok(leaf) = &mut leaves[i] else { continue };
                    let der = match &signed {
                        Ok(signatures) => leaf.assemble(signatures.get(k)),
                        Err(e) => Err(CaError::Hsm(e.clone())),
                    };
                    match der {
                        Ok(der) => {
                            leaf.der = der;
                            None
                        }
                        Err(e) => {
                            self.void_unsigned(leaf, &e);
                            Some(e)
                        }
                    }
                };
                if let Some(e) = failed {
                    leaves[i] = Err(e);
                }
            }
        }

        // Durable before the certificates are handed out.
        let at = self.clock.now();
        let writes = ok_mut(&mut leaves).map(|l| l.complete_write(at)).collect();
        let mut stored = self.commits.write_all(writes).into_iter();
        leaves
            .into_iter()
            .map(|slot| {
                let leaf = slot?;
                let applied = stored.next().unwrap_or_else(|| Err(unanswered()))?;
                self.auditor.after_commit(&applied.audit);
                Ok(Issued {
                    serial: leaf.serial,
                    issuer: leaf.issuer.id,
                    der: leaf.der,
                    chain: vec![leaf.issuer],
                })
            })
            .collect()
    }

    /// The CA's own checks of a request: its issuer is there and not expired, its subject
    /// is sound. Decides the validity.
    fn accept_leaf<'a>(&self, req: LeafRequest<'a>) -> Result<Accepted<'a>, CaError> {
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
        Ok(Accepted {
            req,
            issuer,
            now,
            not_after,
        })
    }

    /// An accepted request's TBS certificate and records, with its serial number.
    fn prepare_leaf<'a>(
        &self,
        accepted: Accepted<'a>,
        serial_bytes: Vec<u8>,
    ) -> Result<Leaf<'a>, CaError> {
        let Accepted {
            req,
            issuer,
            now,
            not_after,
        } = accepted;
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
        let subject_digest = hex::encode(Sha256::digest(req.subject.to_der()?));
        let record = CertRecord {
            serial: serial.clone(),
            issuer: issuer.id,
            profile: req.profile.name.clone(),
            status: CertStatus::Pending,
            subject: x509::name_text(&req.subject),
            subject_serial_digest: req.subject_serial_digest.clone(),
            shard: shard.unwrap_or(0),
            not_before: now,
            not_after,
            tbs_der: prepared.tbs_der.clone(),
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
        Ok(Leaf {
            actor: req.actor,
            owner: req.owner,
            serial,
            issuer,
            details,
            record,
            prepared: Some(prepared),
            der: Vec::new(),
        })
    }

    /// Voids a recorded issuance that failed before the HSM handed back a signature (the HSM is
    /// down or did not answer in time), so that no record is left half-issued. The serial goes
    /// on the next CRL, as for every voided issuance: a token that signed without answering
    /// would otherwise leave a valid-looking certificate nobody can revoke. When the store
    /// cannot take the change either, the record stays pending and the interrupted-issuance
    /// sweep voids it after the issuance timeout.
    fn void_unsigned(&self, leaf: &Leaf<'_>, why: &CaError) {
        let serial = &leaf.serial;
        let mut details = leaf.details.clone();
        if let Some(obj) = details.as_object_mut() {
            obj.insert(
                "why".into(),
                serde_json::Value::String(format!("signing failed: {why}")),
            );
        }
        let ev = AuditEvent::new(leaf.actor, "certificate.void", serial, &details)
            .for_tenant(leaf.owner.as_deref());
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
                crate::policy::ExtendedKeyUsage::is_critical_for(&p.extended_key_usage),
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

/// A request the CA accepted, waiting for its serial number.
struct Accepted<'a> {
    req: LeafRequest<'a>,
    issuer: std::sync::Arc<CaCert>,
    now: i64,
    not_after: i64,
}

/// A certificate on its way through [`Authority::issue_batch`].
struct Leaf<'a> {
    actor: &'a str,
    owner: Option<String>,
    serial: String,
    issuer: std::sync::Arc<CaCert>,
    /// The audit events' details (the subject by digest, never in clear).
    details: serde_json::Value,
    /// The pending record.
    record: CertRecord,
    /// The TBS certificate, until the HSM signs it.
    prepared: Option<PreparedCertificate>,
    /// The signed certificate, once signed.
    der: Vec<u8>,
}

impl Leaf<'_> {
    /// The certificate: the TBS with the HSM's signature attached, DER.
    fn assemble(&mut self, signature: Option<&Vec<u8>>) -> Result<Vec<u8>, CaError> {
        let missing = || CaError::Encoding("the HSM returned no signature for it".into());
        let signature = signature.ok_or_else(missing)?;
        let prepared = self.prepared.take().ok_or_else(missing)?;
        Ok(prepared.assemble(signature)?)
    }

    fn pending_write(&self) -> GroupedWrite {
        GroupedWrite::Pending {
            record: self.record.clone(),
            event: AuditEvent::new(
                self.actor,
                "certificate.record",
                &self.serial,
                &self.details,
            )
            .for_tenant(self.owner.as_deref()),
        }
    }

    fn complete_write(&self, at: i64) -> GroupedWrite {
        GroupedWrite::Complete {
            serial: self.serial.clone(),
            cert_der: self.der.clone(),
            at,
            event: AuditEvent::new(self.actor, "certificate.issue", &self.serial, &self.details)
                .for_tenant(self.owner.as_deref()),
        }
    }
}

/// The leaves still on their way (those not refused or failed so far).
fn ok_mut<'s, 'a>(
    leaves: &'s mut [Result<Leaf<'a>, CaError>],
) -> impl Iterator<Item = &'s mut Leaf<'a>> {
    leaves.iter_mut().filter_map(|l| l.as_mut().ok())
}

fn unanswered() -> crate::store::StoreError {
    crate::store::StoreError::Unavailable("an issuance record went unanswered".into())
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
