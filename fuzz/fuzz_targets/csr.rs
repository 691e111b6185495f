//! A certificate request as the RA checks it (`Registrar::check_request`): the CSR is parsed
//! (PEM or DER), its key type named and, for a supported key, its proof of possession checked;
//! the vetted subject is parsed and built under the customer profile.
//! Input: `<subject>\n<CSR>` (no newline: all of it is the CSR).
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::policy::Profile;
use signet::ra::{build_subject, csr, parse_vetted, BankIdentity, RaError};

fuzz_target!(|data: &[u8]| {
    thread_local!(static PROFILE: Profile = Profile::parse(
        "customer",
        "customer.toml",
        include_str!("../../policies/customer.toml"),
    )
    .expect("policies/customer.toml"));
    let (subject, csr_bytes) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    if let Ok(parsed) = csr::parse(csr_bytes) {
        let _ = parsed.key.to_string();
        if matches!(parsed.key, csr::CsrKey::Supported(_)) {
            let _ = csr::verify_proof_of_possession(&parsed);
        }
    }
    let Ok(subject) = std::str::from_utf8(subject) else {
        return;
    };
    if let Ok(vetted) = parse_vetted(subject) {
        let bank = BankIdentity {
            organization: "Fuzz Bank".into(),
            country: "CN".into(),
        };
        let id_hash = |v: &str| -> Result<String, RaError> { Ok(format!("h{}", v.len())) };
        PROFILE.with(|p| {
            let _ = build_subject(p, &vetted, &bank, &id_hash);
        });
    }
});
