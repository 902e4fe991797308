//! Arbitrary bytes as a root image (root.squashfs, or disk.img's hyve-root partition) that
//! `hyve diff` and `hyve inspect` read from someone else: errors, never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hyve::output::squashfs::read_image(std::io::Cursor::new(data.to_vec()), 0, "fuzz", |n| n == "etc/hyve/manifest.json");
});
