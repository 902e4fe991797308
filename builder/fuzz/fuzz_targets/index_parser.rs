//! Arbitrary bytes as an APKINDEX.tar.gz, and as APKINDEX text: errors, never panics.
#![no_main]

use hyve::apk::index::{parse_records, read_index};
use hyve::apk::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_index(data, "fuzz", &Keyring::empty());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_records(text, "fuzz");
    }
});
