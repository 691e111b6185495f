//! CMS SignedData verification as `Verifier::verify` does it, minus the store: the transport
//! decoding (`decode_signature`), the CMS reading and signature checks (`examine_cms`), then
//! path validation of each signer against a fixed trust setup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::verify::{cms, input};

#[path = "../common/trust.rs"]
mod trust;

fuzz_target!(|data: &[u8]| {
    thread_local!(static TRUST: trust::Trust = trust::Trust::new());
    TRUST.with(|t| {
        // Raw bytes as the CLI reads a file; the API hands the same function base64-decoded bytes.
        let Ok(input::SignatureInput::Cms(der)) = input::decode_signature(data) else {
            return;
        };
        for instruction in [trust::INSTRUCTION, b"".as_slice()] {
            if let Ok(evidence) = cms::examine_cms(&der, instruction, t) {
                t.validate(&evidence);
            }
        }
    });
});
