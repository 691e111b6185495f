//! JWS verification as `Verifier::verify` does it, minus the store: the transport decoding
//! (`decode_signature`), the JWS reading and signature checks (`examine_jws`), then path
//! validation of each signer against a fixed trust setup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::verify::{input, jws};

#[path = "../common/trust.rs"]
mod trust;

fuzz_target!(|data: &[u8]| {
    thread_local!(static TRUST: trust::Trust = trust::Trust::new());
    TRUST.with(|t| {
        let Ok(input::SignatureInput::Jws(text)) = input::decode_signature(data) else {
            return;
        };
        for instruction in [trust::INSTRUCTION, b"".as_slice()] {
            if let Ok(evidence) = jws::examine_jws(&text, instruction, t) {
                t.validate(&evidence);
            }
        }
    });
});
