//! The CRL of a trust anchor other than Signet's own hierarchy, checked once when read (and
//! read again when its file changes, see [`crate::watched`]) into the set of serials it
//! lists: a verification looks its signer's serial up instead of parsing and checking a CRL
//! of thousands of entries each time.

use std::collections::HashMap;

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

const ID_CE_CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");
const ID_CE_AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const ID_CE_DELTA_CRL_INDICATOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.27");
const ID_CE_FRESHEST_CRL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.46");
const ID_CE_CRL_REASONS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");

/// How far ahead of this host's clock a partner's CRL may be dated (the two clocks differ a
/// little).
pub const CRL_CLOCK_SKEW_SECS: i64 = 300;

/// What an anchor's CRL says.
#[derive(Debug)]
pub struct RevocationList {
    /// Serial (as `cms::serial_hex` spells it) → revocation time (Unix seconds) and reason
    /// code (none without a reasonCode entry extension: unspecified).
    revoked: HashMap<String, (i64, Option<u8>)>,
    /// Unix seconds.
    this_update: i64,
    /// Unix seconds.
    next_update: i64,
}

/// Why a CRL cannot be taken as the anchor's full list, if it cannot: a delta or partitioned
/// CRL lists part of the revocations, so a signer missing from it may still be revoked.
fn scope_problem(crl: &CertificateList<x509_cert::certificate::Rfc5280>) -> Option<String> {
    for ext in crl.tbs_cert_list.crl_extensions.iter().flatten() {
        if ext.extn_id == ID_CE_DELTA_CRL_INDICATOR {
            return Some("a delta CRL: give the anchor's full CRL".into());
        }
        if ext.extn_id == crate::ca::x509::ID_CE_ISSUING_DISTRIBUTION_POINT {
            return Some(
                "a CRL of part of the anchor's certificates (issuingDistributionPoint): give its full CRL"
                    .into(),
            );
        }
        let known = [
            ID_CE_CRL_NUMBER,
            ID_CE_AUTHORITY_KEY_IDENTIFIER,
            ID_CE_FRESHEST_CRL,
        ];
        if ext.critical && !known.contains(&ext.extn_id) {
            return Some(format!(
                "a critical CRL extension Signet does not know ({})",
                ext.extn_id
            ));
        }
    }
    for rc in crl.tbs_cert_list.revoked_certificates.iter().flatten() {
        for ext in rc.crl_entry_extensions.iter().flatten() {
            let known = [ID_CE_CRL_REASONS, crate::ca::x509::ID_CE_INVALIDITY_DATE];
            if ext.critical && !known.contains(&ext.extn_id) {
                // certificateIssuer (an indirect CRL) is one: its entries may be another CA's.
                return Some(format!(
                    "a critical entry extension Signet does not know ({})",
                    ext.extn_id
                ));
            }
        }
    }
    None
}

impl RevocationList {
    /// `der` read as the CRL of `anchor`: issued in its name and signed by its key (ECDSA
    /// P-256 with SHA-256, the only kind of anchor key Signet accepts).
    pub fn of_anchor(der: &[u8], anchor: &Certificate) -> Result<Self, String> {
        let crl = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
            .map_err(|e| format!("not a CRL (PEM X509 CRL or DER): {e}"))?;
        let issuer = crl
            .tbs_cert_list
            .issuer
            .to_der()
            .map_err(|e| e.to_string())?;
        if anchor.tbs_certificate().subject().to_der().ok() != Some(issuer) {
            return Err(format!(
                "a CRL of {}, not of the anchor {}",
                crate::ca::x509::name_text(&crl.tbs_cert_list.issuer),
                crate::ca::x509::name_text(anchor.tbs_certificate().subject())
            ));
        }
        if !crate::ca::x509::crl_signed_by(&crl, anchor) {
            return Err(
                "not signed by the anchor's key (or not with ECDSA P-256/SHA-256)".to_string(),
            );
        }
        if let Some(problem) = scope_problem(&crl) {
            return Err(problem);
        }
        // Without it nothing says when the list stops being current: taken for good, it would
        // hide every revocation after it.
        let next_update = crl
            .tbs_cert_list
            .next_update
            .ok_or("a CRL without nextUpdate (RFC 5280 requires it): Signet cannot tell when it stops being current; ask the partner for a CRL with nextUpdate")?;
        let revoked = crl
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|rc| {
                let reason = rc
                    .crl_entry_extensions
                    .iter()
                    .flatten()
                    .find(|e| e.extn_id == ID_CE_CRL_REASONS)
                    .map(|e| {
                        x509_cert::ext::pkix::CrlReason::from_der(e.extn_value.as_bytes())
                            .map(|r| r as u8)
                            .map_err(|e| format!("an entry's reasonCode is not a CRLReason: {e}"))
                    })
                    .transpose()?;
                Ok((
                    super::cms::serial_hex(rc.serial_number.as_bytes()),
                    (
                        rc.revocation_date.to_unix_duration().as_secs() as i64,
                        reason,
                    ),
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(RevocationList {
            revoked,
            this_update: crl.tbs_cert_list.this_update.to_unix_duration().as_secs() as i64,
            next_update: next_update.to_unix_duration().as_secs() as i64,
        })
    }

    /// When the certificate of serial `serial_hex` (as `cms::serial_hex` spells it) was
    /// revoked and why (its RFC 5280 reason code; certificateHold: on hold), if the CRL lists
    /// it.
    pub fn revocation(&self, serial_hex: &str) -> Option<(i64, Option<u8>)> {
        self.revoked.get(serial_hex).copied()
    }

    pub fn next_update(&self) -> i64 {
        self.next_update
    }

    /// Whether this CRL may take the place of `in_use` (none at the start) at `now`: not an
    /// older one (put back by mistake, it would un-revoke what the newer one lists), nor one
    /// dated ahead of this host's clock by more than [`CRL_CLOCK_SKEW_SECS`] (the partner's
    /// clock was wrong: once in use, it would keep out every correct CRL after it as older).
    pub fn may_replace(&self, in_use: Option<&Self>, now: i64) -> Result<(), String> {
        let time = |t: i64| crate::clock::format_utc(t).unwrap_or_else(|| t.to_string());
        if self.this_update > now + CRL_CLOCK_SKEW_SECS {
            return Err(format!(
                "issued in the future (thisUpdate {}, more than {CRL_CLOCK_SKEW_SECS} s ahead of \
                 this host's clock): ask the partner for a CRL dated by a correct clock, or check \
                 this host's clock",
                time(self.this_update),
            ));
        }
        match in_use {
            Some(old) if self.this_update < old.this_update => Err(format!(
                "issued before the CRL in use (thisUpdate {} < {})",
                time(self.this_update),
                time(old.this_update)
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dated(this_update: i64) -> RevocationList {
        RevocationList {
            revoked: HashMap::new(),
            this_update,
            next_update: this_update + 7 * 86_400,
        }
    }

    #[test]
    fn a_crl_dated_a_little_ahead_of_this_hosts_clock_is_taken() {
        assert!(dated(1_000 + CRL_CLOCK_SKEW_SECS)
            .may_replace(None, 1_000)
            .is_ok());
    }

    #[test]
    fn a_crl_dated_further_ahead_is_refused_at_the_start_and_as_a_replacement() {
        let ahead = dated(1_001 + CRL_CLOCK_SKEW_SECS);
        for in_use in [None, Some(&dated(900))] {
            let why = ahead.may_replace(in_use, 1_000).unwrap_err();
            assert!(why.contains("issued in the future"), "{why}");
        }
    }

    #[test]
    fn an_older_crl_than_the_one_in_use_is_refused_and_a_newer_one_taken() {
        let in_use = dated(900);
        let why = dated(899).may_replace(Some(&in_use), 1_000).unwrap_err();
        assert!(why.contains("issued before the CRL in use"), "{why}");
        assert!(dated(900).may_replace(Some(&in_use), 1_000).is_ok());
        assert!(dated(950).may_replace(Some(&in_use), 1_000).is_ok());
    }
}
