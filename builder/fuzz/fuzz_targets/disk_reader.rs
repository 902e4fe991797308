//! Arbitrary bytes as what `hyve inspect` and `hyve diff` read of a disk image: the GPT,
//! then the same bytes as an ESP (FAT) with its files and a UKI's sections. Errors, never
//! panics.
#![no_main]

use std::io::Cursor;

use hyve::output::{disk, uki};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disk::read_gpt(&mut Cursor::new(data), "fuzz");
    if data.len() < 512 {
        return;
    }
    let whole = disk::ReadPartition {
        type_guid: disk::ESP_TYPE.into(),
        guid: String::new(),
        first_lba: 0,
        last_lba: data.len() as u64 / 512 - 1,
        name: String::new(),
    };
    let mut image = Cursor::new(data);
    let Ok(files) = disk::list_esp(&mut image, &whole, "fuzz") else { return };
    for (path, size) in files {
        if size.is_some() {
            if let Ok(head) = disk::read_esp_file(&mut image, &whole, &path, 64 << 10) {
                let _ = uki::sections(&head);
            }
        }
    }
});
