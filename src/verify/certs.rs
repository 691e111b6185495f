//! Certificates read once. A payment gateway sends the same few signer certificates and CA
//! chains again and again; decoding them and formatting the names a report shows cost more
//! than the ECDSA verify itself (profiled on the verification bench). So a certificate is
//! decoded once and kept, keyed by the SHA-256 of its DER: a changed byte is another
//! certificate. Only what follows from the bytes alone is kept here; validity at a time,
//! revocation status and path constraints are checked on every verification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::ext::pkix::{CertificatePolicies, ExtendedKeyUsage, KeyUsage};
use x509_cert::Certificate;

use super::cms::{public_key_of, PublicKey};
use super::report::rfc3339;

/// A decoded certificate with its DER and what reports derive from it.
#[derive(Debug)]
pub struct KnownCert {
    pub cert: Certificate,
    /// The DER as received.
    pub der: Vec<u8>,
    /// SHA-256 of `der`.
    pub sha256: [u8; 32],
    facts: OnceLock<CertFacts>,
    issuer_der: OnceLock<Option<Vec<u8>>>,
    public_key: OnceLock<PublicKey>,
}

/// The certificate's names and dates as text, as the report shows them, and the extensions
/// every verification consults.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex, as the store keeps it.
    pub serial: String,
    /// The subject's O.
    pub bank: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub not_before_text: String,
    pub not_after_text: String,
    /// The policy identifiers of its certificatePolicies (empty without the extension).
    pub policies: Vec<ObjectIdentifier>,
    pub key_usage: Option<KeyUsage>,
    /// The purposes of its extendedKeyUsage (None without the extension; an extension that
    /// cannot be read names no purpose).
    pub extended_key_usage: Option<Vec<ObjectIdentifier>>,
}

impl KnownCert {
    /// Decodes `der` (exactly one certificate, nothing after it).
    pub fn parse(der: &[u8]) -> Result<KnownCert, der::Error> {
        let cert = Certificate::from_der(der)?;
        Ok(KnownCert {
            cert,
            der: der.to_vec(),
            sha256: Sha256::digest(der).into(),
            facts: OnceLock::new(),
            issuer_der: OnceLock::new(),
            public_key: OnceLock::new(),
        })
    }

    /// A certificate decoded elsewhere (Signet's own CA certificates).
    pub fn from_certificate(cert: Certificate) -> Result<KnownCert, der::Error> {
        let der = cert.to_der()?;
        Ok(KnownCert {
            sha256: Sha256::digest(&der).into(),
            cert,
            der,
            facts: OnceLock::new(),
            issuer_der: OnceLock::new(),
            public_key: OnceLock::new(),
        })
    }

    /// The issuer Name's DER (what a CMS IssuerAndSerialNumber is compared with), encoded on
    /// first use.
    pub fn issuer_der(&self) -> Option<&[u8]> {
        self.issuer_der
            .get_or_init(|| self.cert.tbs_certificate().issuer().to_der().ok())
            .as_deref()
    }

    /// The subject public key, read (and its point checked) on first use.
    pub(crate) fn public_key(&self) -> &PublicKey {
        self.public_key.get_or_init(|| public_key_of(&self.cert))
    }

    /// Names and dates, formatted on first use.
    pub fn facts(&self) -> &CertFacts {
        self.facts.get_or_init(|| {
            let tbs = self.cert.tbs_certificate();
            let (not_before, not_after) = super::path::validity(&self.cert);
            CertFacts {
                subject: tbs.subject().to_string(),
                issuer: tbs.issuer().to_string(),
                serial: serial_hex(&self.cert),
                bank: tbs
                    .subject()
                    .organization()
                    .ok()
                    .flatten()
                    .map(|o| o.value().into_owned()),
                not_before,
                not_after,
                not_before_text: rfc3339(not_before),
                not_after_text: rfc3339(not_after),
                policies: tbs
                    .get_extension::<CertificatePolicies>()
                    .ok()
                    .flatten()
                    .map(|(_, cp)| cp.0.iter().map(|p| p.policy_identifier).collect())
                    .unwrap_or_default(),
                key_usage: super::path::key_usage(&self.cert),
                extended_key_usage: match tbs.get_extension::<ExtendedKeyUsage>() {
                    Ok(Some((_, eku))) => Some(eku.0),
                    Ok(None) => None,
                    Err(_) => Some(Vec::new()),
                },
            }
        })
    }
}

/// The serial as lowercase hex without a leading zero byte (the store's key).
pub fn serial_hex(c: &Certificate) -> String {
    super::cms::serial_hex(c.tbs_certificate().serial_number().as_bytes())
}

/// Decoded certificates by the SHA-256 of their DER; bounded (emptied when full, as the
/// signature cache is: the working set of a bank is far below the bound).
pub struct CertCache {
    entries: Mutex<HashMap<[u8; 32], Arc<KnownCert>>>,
    capacity: usize,
}

impl CertCache {
    pub fn new(capacity: usize) -> Self {
        CertCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The certificate of `der`, decoded now or earlier.
    pub fn get_or_parse(&self, der: &[u8]) -> Result<Arc<KnownCert>, der::Error> {
        let key: [u8; 32] = Sha256::digest(der).into();
        if let Some(known) = self.lock().get(&key) {
            return Ok(known.clone());
        }
        // Decoded outside the lock: concurrent verifications of new certificates do not wait
        // on each other; two decoding the same bytes at once both insert the same thing.
        let known = Arc::new(KnownCert::parse(der)?);
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, known.clone());
        Ok(known)
    }

    /// Certificates kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<KnownCert>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNER: &[u8] = include_bytes!("../../tests/data/verify/signer.der");
    const ISSUER_PEM: &str = include_str!("../../tests/data/ocsp/issuer.pem");

    fn some_certificate() -> Vec<u8> {
        SIGNER.to_vec()
    }

    fn another_certificate() -> Vec<u8> {
        der::pem::decode_vec(ISSUER_PEM.as_bytes()).expect("PEM").1
    }

    #[test]
    fn the_same_bytes_are_decoded_once() {
        let cache = CertCache::new(8);
        let der = some_certificate();
        let a = cache.get_or_parse(&der).unwrap();
        let b = cache.get_or_parse(&der).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.der, der);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_changed_byte_is_another_certificate() {
        let cache = CertCache::new(8);
        let der = some_certificate();
        let a = cache.get_or_parse(&der).unwrap();
        // Flip a byte of the signature value (the last bytes): still decodes.
        let mut other = der.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        let b = cache.get_or_parse(&other).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_ne!(a.sha256, b.sha256);
    }

    #[test]
    fn bytes_that_are_not_a_certificate_are_refused_and_not_kept() {
        let cache = CertCache::new(8);
        assert!(cache.get_or_parse(&[0x30, 0x00]).is_err());
        let mut der = some_certificate();
        der.push(0);
        assert!(cache.get_or_parse(&der).is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_never_grows_past_its_bound() {
        let cache = CertCache::new(1);
        for _ in 0..3 {
            cache.get_or_parse(&some_certificate()).unwrap();
            cache.get_or_parse(&another_certificate()).unwrap();
            assert_eq!(cache.len(), 1);
        }
    }

    #[test]
    fn facts_name_the_subject_issuer_and_serial() {
        let known = KnownCert::parse(&some_certificate()).unwrap();
        let facts = known.facts();
        let tbs = known.cert.tbs_certificate();
        assert_eq!(facts.subject, tbs.subject().to_string());
        assert_eq!(facts.issuer, tbs.issuer().to_string());
        assert_ne!(facts.issuer, facts.subject);
        assert_eq!(facts.serial, serial_hex(&known.cert));
        assert!(facts.not_before < facts.not_after);
    }
}
