//! Arbitrary bytes as a manifest.json that `hyve diff` and `hyve verify` read from someone
//! else: errors, never panics.
#![no_main]

use hyve::output::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::from_json(data);
});
