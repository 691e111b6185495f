//! The API's JSON request bodies: the bytes decoded as every request type the routes accept,
//! through the same function the `ApiJson` extractor uses (size, nesting depth, serde).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (_route, outcome) in signet::api::decode_request_bodies(data) {
        if let Err(e) = outcome {
            assert!(e.status.is_client_error(), "{} {}", e.status, e.code);
        }
    }
});
