//! Arbitrary bytes as an .apk, read to the end with small limits: errors, never panics or
//! allocates past the limits.
#![no_main]

use std::io::Read;

use hyve::apk::package::{Limits, PackageReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { control_bytes: 1 << 20, data_bytes: 4 << 20 };
    if let Ok(reader) = PackageReader::open(data, "fuzz", limits, None) {
        let _ = reader.read_data(|_, content| {
            let mut buf = [0u8; 4096];
            while content.read(&mut buf).map_err(|e| hyve::apk::Error::Io { origin: "fuzz".into(), source: e })? > 0 {}
            Ok(())
        });
    }
});
