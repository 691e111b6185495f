//! The CRL of a trust anchor other than Signet's own hierarchy, checked once when read (and
//! read again when its file changes, see [`crate::watched`]) into the set of serials it
//! lists: a verification looks its signer's serial up instead of parsing and checking a CRL
//! of thousands of entries each time.

use std::collections::HashMap;

use der::{Decode, Encode};
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

/// What an anchor's CRL says.
#[derive(Debug)]
pub struct RevocationList {
    /// Serial (lower-case hex, without leading zero bytes) → revocation time (Unix seconds).
    revoked: HashMap<String, i64>,
    /// Unix seconds; none when the CRL has no nextUpdate.
    next_update: Option<i64>,
}

fn serial_key(hex: &str) -> &str {
    hex.trim_start_matches("00")
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
        let revoked = crl
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|rc| {
                (
                    serial_key(&hex::encode(rc.serial_number.as_bytes())).to_string(),
                    rc.revocation_date.to_unix_duration().as_secs() as i64,
                )
            })
            .collect();
        Ok(RevocationList {
            revoked,
            next_update: crl
                .tbs_cert_list
                .next_update
                .map(|t| t.to_unix_duration().as_secs() as i64),
        })
    }

    /// When the certificate of serial `serial_hex` was revoked, if the CRL lists it.
    pub fn revoked_at(&self, serial_hex: &str) -> Option<i64> {
        self.revoked
            .get(serial_key(&serial_hex.to_ascii_lowercase()))
            .copied()
    }

    pub fn next_update(&self) -> Option<i64> {
        self.next_update
    }
}
