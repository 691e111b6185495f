//! CRLs (RFC 5280 section 5): one per issuing CA and shard, and the root's ARL. The CRL number
//! comes from the store (monotonic per issuer and shard); the TBS is recorded before it is signed.

use std::collections::HashSet;
use std::sync::Mutex;

use der::asn1::{OctetString, Uint};
use der::Encode;
use x509_cert::certificate::Version;
use x509_cert::crl::{RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::name::DistributionPointName;
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::serial_number::SerialNumber;

use super::crl_der::{CrlBuffer, TbsFrame};
use super::issue::uri;
use super::x509::{self, extension, raw_extension};
use super::{crl_reason, Authority, CaError, CrlScope, IssuerId};
use crate::audit::AuditEvent;
use crate::store::{NewCrl, RevokedEntry, StoreError, Succeeds};

/// How many times an operator's CRL is made again when the store refuses it because another
/// process recorded a newer one meanwhile.
const NEWEST_CRL_ATTEMPTS: usize = 5;

/// A signed CRL.
#[derive(Debug, Clone)]
pub struct SignedCrl {
    pub number: u64,
    pub der: Vec<u8>,
    pub this_update: i64,
    pub next_update: i64,
}

impl Authority {
    /// Builds, records and signs the next CRL of `issuer` (and `shard`, when the issuer's CRL is
    /// split). The root's CRL is an ARL: it lists revoked CA certificates.
    pub fn generate_crl(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        actor: &str,
    ) -> Result<SignedCrl, CaError> {
        // The store refuses a CRL that another process's, made meanwhile from later records,
        // would be succeeded by: read the store again.
        for _ in 0..NEWEST_CRL_ATTEMPTS {
            if let Some(crl) =
                self.generate_crl_succeeding(issuer, shard, actor, Succeeds::Newest)?
            {
                return Ok(crl);
            }
        }
        Err(CaError::Store(StoreError::Conflict(format!(
            "other processes made {NEWEST_CRL_ATTEMPTS} newer CRLs of the {issuer} CA while \
             this one was being made; they list every revocation, so try again later if one \
             is still needed"
        ))))
    }

    /// As [`Authority::generate_crl`], as the successor `succeeds` names: with
    /// [`Succeeds::Only`], `None` (nothing recorded or signed) when the scope's newest CRL is
    /// another by then: another process made one since its caller judged.
    pub fn generate_crl_succeeding(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        actor: &str,
        succeeds: Succeeds,
    ) -> Result<Option<SignedCrl>, CaError> {
        let shards = self.settings.crl_shards;
        let shard = match (issuer, shard) {
            (IssuerId::Root, Some(_)) => {
                return Err(CaError::InvalidRequest(
                    "the root's CRL (ARL) has no shards".into(),
                ))
            }
            (IssuerId::Root, None) => None,
            (_, Some(s)) if s >= shards => {
                return Err(CaError::InvalidRequest(format!(
                "shard {s} does not exist: the {issuer} CRL has {shards} shard(s), numbered from 0"
            )))
            }
            (_, Some(_)) if shards == 1 => None,
            (_, None) if shards > 1 => {
                return Err(CaError::InvalidRequest(format!(
                    "the {issuer} CRL is split in {shards} shards; name one with --shard"
                )))
            }
            (_, s) => s,
        };
        let ca = self.ca(issuer)?;
        let this_update = self.clock.now();
        let next_update = this_update + i64::from(self.settings.crl_next_update_hours) * 3600;
        let idp_url = shard.map(|_| self.settings.crl_url(issuer, shard));
        let object = match shard {
            Some(s) => format!("crl:{issuer}-{s}"),
            None => format!("crl:{issuer}"),
        };
        // The fields around revokedCertificates, from x509-cert (the CRL number is only in the
        // extensions after the entries, so the part before them does not depend on it).
        let frame = |number: u64| -> Result<TbsFrame, CaError> {
            let tbs = build_tbs(
                &ca.certificate,
                &ca.key_id,
                &[],
                number,
                this_update,
                next_update,
                idp_url.as_deref(),
            )?;
            TbsFrame::split(&tbs.to_der()?)
        };
        // Not worth building when another process has already succeeded the CRL judged (the
        // store checks again when it records).
        if let Succeeds::Only(judged) = succeeds {
            let newest = self.store.newest_crl_number(issuer, shard)?;
            if newest.map(|n| n.number) != judged {
                return Ok(None);
            }
        }
        // Read before the entries: every change up to it is among them (a later one has a
        // larger epoch), which lets a process see that this CRL needs no successor yet.
        let status_epoch = self.store.crl_scope_epoch(issuer, shard)?;
        // Entries straight from the store into the DER buffer, one row at a time.
        let mut buffer = CrlBuffer::new(&frame(0)?);
        self.store.each_revoked(issuer, shard, &mut |e| {
            buffer.push(e).map_err(|e| e.to_string())
        })?;
        let ev = AuditEvent::new(
            actor,
            "crl.generate",
            &object,
            serde_json::json!({"entries": buffer.entries, "next_update": next_update}),
        );
        let new = NewCrl {
            issuer,
            shard,
            this_update,
            next_update,
            status_epoch,
            succeeds,
        };
        let scope = (issuer, shard);
        // Listed as being signed from before its record commits (until this returns), so that
        // a caller in this process that finds it unsigned in the store knows it is on its way.
        let mut in_flight = None;
        let Some((number, audit)) = self.store.record_crl(
            &new,
            &mut |number| {
                in_flight = Some(InFlight::new(&self.crls_in_flight, (scope, number)));
                let frame = frame(number).map_err(|e| e.to_string())?;
                Ok(buffer.finish_tbs(&frame).to_vec())
            },
            &ev,
        )?
        else {
            return Ok(None);
        };
        let sign_and_store = || -> Result<Vec<u8>, CaError> {
            self.auditor.after_commit(&audit);
            let sig = self.sign(&ca.key_label, buffer.tbs())?;
            let der = buffer.finish_crl(&x509::ecdsa_sha256().to_der()?, &sig);
            self.store.complete_crl(issuer, shard, number, &der)?;
            Ok(der)
        };
        let signed = sign_and_store();
        let mut left_unsigned = self
            .crls_left_unsigned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &signed {
            Ok(_) => left_unsigned.retain(|&(s, n)| s != scope || n > number),
            Err(_) => {
                left_unsigned.insert((scope, number));
            }
        }
        drop(left_unsigned);
        drop(in_flight);
        let der = signed?;
        Ok(Some(SignedCrl {
            number,
            der,
            this_update,
            next_update,
        }))
    }
}

/// A CRL this process is signing, listed in `set` while the value lives.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<(CrlScope, u64)>>,
    crl: (CrlScope, u64),
}

impl<'a> InFlight<'a> {
    fn new(set: &'a Mutex<HashSet<(CrlScope, u64)>>, crl: (CrlScope, u64)) -> Self {
        set.lock().unwrap_or_else(|e| e.into_inner()).insert(crl);
        InFlight { set, crl }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.crl);
    }
}

fn build_tbs(
    ca: &x509_cert::Certificate,
    ca_key_id: &[u8],
    entries: &[RevokedEntry],
    number: u64,
    this_update: i64,
    next_update: i64,
    idp_url: Option<&str>,
) -> Result<TbsCertList, CaError> {
    let mut revoked = Vec::with_capacity(entries.len());
    for e in entries {
        let serial_bytes = hex::decode(&e.serial)
            .map_err(|_| CaError::Encoding(format!("stored serial {:?} is not hex", e.serial)))?;
        let mut exts = Vec::new();
        if let Some(code) = e.revocation.reason_code {
            let reason = crl_reason(code)?;
            exts.push(extension(&reason, false)?);
        }
        if let Some(d) = e.revocation.invalidity_date {
            exts.push(raw_extension(
                x509::ID_CE_INVALIDITY_DATE,
                false,
                x509::generalized_time(d)?.to_der()?,
            )?);
        }
        revoked.push(RevokedCert {
            serial_number: SerialNumber::new(&serial_bytes)?,
            revocation_date: x509::x509_time(e.revocation.revoked_at)?,
            crl_entry_extensions: (!exts.is_empty()).then_some(exts),
        });
    }
    let mut exts = vec![
        extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(ca_key_id.to_vec())?),
                ..Default::default()
            },
            false,
        )?,
        extension(&CrlNumber(Uint::new(&number.to_be_bytes())?), false)?,
    ];
    if let Some(url) = idp_url {
        // A shard names itself, so that a CRL of one shard cannot stand in for another's.
        // x509-cert 0.3.0 gives IssuingDistributionPoint the OID of subjectInfoAccess, so the
        // extension is written with the right OID (2.5.29.28) by hand.
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
            only_contains_user_certs: true,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        exts.push(raw_extension(
            x509::ID_CE_ISSUING_DISTRIBUTION_POINT,
            true,
            idp.to_der()?,
        )?);
    }
    Ok(TbsCertList {
        version: Version::V2,
        signature: x509::ecdsa_sha256(),
        issuer: ca.tbs_certificate().subject().clone(),
        this_update: x509::x509_time(this_update)?,
        next_update: Some(x509::x509_time(next_update)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(exts),
    })
}
