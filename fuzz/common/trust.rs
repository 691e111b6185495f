//! The fixed in-memory trust setup of the signature targets: a throw-away root, customer CA
//! and signer certificate (fuzz/fixtures, made by fuzz/make-seeds.sh), standing in for the
//! token and the store that `signet::verify::Verifier` reads in the product.

use std::sync::Arc;

use signet::verify::certs::KnownCert;
use signet::verify::evidence::{CertificateResolver, SignerEvidence, SignerRef};
use signet::verify::path::{self, Anchor};
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// The instruction the seed signatures sign (detached ones need it).
pub const INSTRUCTION: &[u8] = br#"{"instruction_id":"P-1","amount":"100.00"}"#;
/// Validation time: 2027-01-15, inside the fixtures' validity.
pub const AT: i64 = 1_800_000_000;
/// Carried certificates path building looks at (as `Verifier` does).
const MAX_CARRIED_CERTIFICATES: usize = 10;

pub struct Trust {
    pub anchors: Vec<Anchor>,
    pub intermediates: Vec<Certificate>,
    pub signer: Arc<KnownCert>,
}

impl Trust {
    pub fn new() -> Trust {
        let cert = |der: &[u8]| Certificate::from_der(der).expect("fixture certificate");
        Trust {
            anchors: vec![Anchor {
                certificate: cert(include_bytes!("../fixtures/root.der")),
                own: true,
                crl: None,
                name: "fuzz-root".into(),
            }],
            intermediates: vec![cert(include_bytes!("../fixtures/ca.der"))],
            signer: Arc::new(
                KnownCert::parse(include_bytes!("../fixtures/signer.der")).expect("fixture"),
            ),
        }
    }

    /// What the verifier does with a signer's evidence after the format layer: the path of
    /// its certificate, from the carried certificates and the fixed CA, to the fixed root.
    pub fn validate(&self, evidence: &[SignerEvidence]) {
        for ev in evidence {
            let Some(cert) = &ev.certificate else {
                continue;
            };
            let mut intermediates: Vec<Certificate> = ev
                .other_certificates
                .iter()
                .take(MAX_CARRIED_CERTIFICATES)
                .map(|c| c.cert.clone())
                .collect();
            intermediates.extend(self.intermediates.iter().cloned());
            let _ = path::validate(&cert.cert, &intermediates, &self.anchors, AT);
            let _ = path::key_usage(&cert.cert);
            let _ = path::valid_at(&cert.cert, AT);
            let _ = cert.facts();
        }
    }
}

/// The store's part: a signer that is named but not carried is the fixed signer.
impl CertificateResolver for Trust {
    fn resolve(&self, signer: &SignerRef) -> Option<Arc<KnownCert>> {
        match signer {
            SignerRef::None => None,
            _ => Some(self.signer.clone()),
        }
    }
}
