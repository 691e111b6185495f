//! Policy loading from a string: the same text read as a certificate profile
//! (`Profile::parse`) and as the payment-signature policy (`SignaturePolicy::parse`, against
//! the shipped profiles).
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::policy::{Profile, Profiles, SignaturePolicy};

fuzz_target!(|data: &[u8]| {
    thread_local!(static PROFILES: Profiles = Profiles::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
    )
    .expect("policies/"));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Profile::parse("fuzz", "fuzz.toml", text);
    PROFILES.with(|p| {
        let _ = SignaturePolicy::parse("fuzz-signature.toml", text, p);
    });
});
