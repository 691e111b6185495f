//! An OCSP request as the responder reads it (`Authority::ocsp_respond` before it signs):
//! `parse_request`, then for each CertID whether it names the fixed CA and which serial it asks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::ca::ocsp;
use x509_cert::der::Decode;
use x509_cert::Certificate;

fuzz_target!(|data: &[u8]| {
    thread_local!(static CA: Certificate =
        Certificate::from_der(include_bytes!("../fixtures/ca.der")).expect("fixture"));
    if let Ok(req) = ocsp::parse_request(data) {
        CA.with(|ca| {
            for id in &req.cert_ids {
                let _ = ocsp::names_issuer(id, ca);
                let _ = ocsp::store_serial(id);
            }
        });
    }
});
