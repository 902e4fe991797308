//! Versions and dependency atoms: no panics, and ordering is antisymmetric and reflexive.
#![no_main]

use std::cmp::Ordering;

use hyve::apk::version::{compare, is_valid};
use hyve::apk::Dep;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (a, b) = s.split_once('\n').unwrap_or((s, "1.0"));
    let _ = is_valid(a);
    let _ = Dep::parse(a);
    assert_eq!(compare(a, b), compare(b, a).reverse(), "{a:?} vs {b:?}");
    if is_valid(a) {
        assert_eq!(compare(a, a), Ordering::Equal);
    }
});
