//! Unified Kernel Images: systemd's EFI stub with `.osrel`, `.cmdline`, `.initrd` and
//! `.linux` sections appended (UAPI group's unified_kernel_image.md, as ukify does it).
//!
//! Written by hand because no maintained crate edits PE images: the change is small — four
//! section headers into the stub's spare header space, the section bodies after its end —
//! and it has to stream a 100 MB initrd without holding it in memory.
//!
//! Layout rules: each new section's VirtualAddress is the previous end rounded up to
//! SectionAlignment, its raw data starts at a FileAlignment boundary and is padded to one;
//! NumberOfSections, SizeOfImage and SizeOfInitializedData are updated and CheckSum is 0.
//! A signed stub is refused: appending sections would break its signature.

use std::io::{Read, Write};

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UkiError {
    /// The stub is not a PE32+ image this module understands.
    #[error("EFI stub {path}: {detail}")]
    BadStub { path: String, detail: String },
    /// A section's body ended before its planned length.
    #[error("UKI section {section}: expected {expected} bytes, read {read}")]
    ShortSection { section: String, expected: u64, read: u64 },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

/// One section of a PE image, as its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
}

const PE32_PLUS: u16 = 0x20b;
const SECTION_HEADER: usize = 40;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ, as ukify marks them.
const DATA_READ: u32 = 0x4000_0040;

struct Headers {
    /// Offset of the optional header.
    opt: usize,
    sections: usize,
    count: usize,
    section_alignment: u32,
    file_alignment: u32,
    size_of_headers: u32,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn headers(image: &[u8]) -> Result<Headers, String> {
    if image.get(..2) != Some(b"MZ") {
        return Err("no MZ header".into());
    }
    let pe = u32_at(image, 0x3c).ok_or("truncated DOS header")? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("no PE signature".into());
    }
    let count = u16_at(image, pe + 6).ok_or("truncated COFF header")? as usize;
    let opt_size = u16_at(image, pe + 20).ok_or("truncated COFF header")? as usize;
    let opt = pe + 24;
    let magic = u16_at(image, opt).ok_or("truncated optional header")?;
    if magic != PE32_PLUS {
        return Err(format!("optional header magic {magic:#x}, expected PE32+ ({PE32_PLUS:#x})"));
    }
    let field = |o: usize| u32_at(image, opt + o).ok_or_else(|| "truncated optional header".to_string());
    let (section_alignment, file_alignment, size_of_headers) = (field(32)?, field(36)?, field(60)?);
    if !section_alignment.is_power_of_two() || !file_alignment.is_power_of_two() {
        return Err(format!("alignments {section_alignment:#x}/{file_alignment:#x} are not powers of two"));
    }
    let sections = opt + opt_size;
    if image.len() < sections + count * SECTION_HEADER {
        return Err("section table past the end of the file".into());
    }
    Ok(Headers { opt, sections, count, section_alignment, file_alignment, size_of_headers })
}

/// The sections of a PE image (stub or UKI).
pub fn sections(image: &[u8]) -> Result<Vec<Section>, String> {
    let h = headers(image)?;
    Ok((0..h.count)
        .map(|i| {
            let s = &image[h.sections + i * SECTION_HEADER..][..SECTION_HEADER];
            let name = String::from_utf8_lossy(&s[..8]).trim_end_matches('\0').to_string();
            Section {
                name,
                virtual_size: u32_at(s, 8).unwrap_or(0),
                virtual_address: u32_at(s, 12).unwrap_or(0),
                raw_size: u32_at(s, 16).unwrap_or(0),
                raw_offset: u32_at(s, 20).unwrap_or(0),
            }
        })
        .collect())
}

fn align(n: u64, to: u32) -> u64 {
    n.div_ceil(u64::from(to)) * u64::from(to)
}

/// Where everything goes: the stub's bytes with the new headers, then each section at its
/// offset.
pub struct UkiLayout {
    head: Vec<u8>,
    /// (file offset, length) of each appended section, in order.
    placed: Vec<(u64, u64)>,
    total: u64,
}

impl UkiLayout {
    /// Plans a UKI from `stub` (read from `path`, for messages) and the named section lengths.
    pub fn new(stub: &[u8], path: &str, new: &[(&str, u64)]) -> Result<UkiLayout, UkiError> {
        let bad = |detail: String| UkiError::BadStub { path: path.into(), detail };
        let h = headers(stub).map_err(&bad)?;
        let security = u32_at(stub, h.opt + 112 + 4 * 8 + 4).unwrap_or(0);
        if security != 0 {
            return Err(bad("it is signed (it has a certificate table); appending sections would break the signature — use the unsigned linux*.efi.stub".into()));
        }
        let existing = sections(stub).map_err(&bad)?;
        for (name, _) in new {
            if existing.iter().any(|s| s.name == *name) {
                return Err(bad(format!("it already has a {name} section (is it a UKI already?)")));
            }
        }
        let table_end = h.sections + (h.count + new.len()) * SECTION_HEADER;
        let first_raw = existing.iter().filter(|s| s.raw_size > 0).map(|s| s.raw_offset as usize).min();
        if table_end > h.size_of_headers as usize || first_raw.is_some_and(|r| table_end > r) {
            return Err(bad(format!(
                "no room for {} more section headers (headers end at {:#x}, the table would end at {table_end:#x})",
                new.len(),
                h.size_of_headers
            )));
        }
        let mut head = stub.to_vec();
        let mut va = existing
            .iter()
            .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
            .max()
            .unwrap_or(u64::from(h.size_of_headers));
        let stub_end = existing
            .iter()
            .map(|s| u64::from(s.raw_offset) + u64::from(s.raw_size))
            .max()
            .unwrap_or(0)
            .max(stub.len() as u64);
        let mut raw = align(stub_end, h.file_alignment);
        let mut placed = Vec::new();
        let mut initialized = u64::from(u32_at(stub, h.opt + 8).unwrap_or(0));
        for (i, (name, len)) in new.iter().enumerate() {
            va = align(va, h.section_alignment);
            let raw_size = align(*len, h.file_alignment);
            let fits = |n: u64| u32::try_from(n).map_err(|_| bad(format!("section {name} does not fit a PE image")));
            let mut entry = [0u8; SECTION_HEADER];
            let name_bytes = name.as_bytes();
            entry[..name_bytes.len().min(8)].copy_from_slice(&name_bytes[..name_bytes.len().min(8)]);
            entry[8..12].copy_from_slice(&fits(*len)?.to_le_bytes());
            entry[12..16].copy_from_slice(&fits(va)?.to_le_bytes());
            entry[16..20].copy_from_slice(&fits(raw_size)?.to_le_bytes());
            entry[20..24].copy_from_slice(&fits(raw)?.to_le_bytes());
            entry[36..40].copy_from_slice(&DATA_READ.to_le_bytes());
            let at = h.sections + (h.count + i) * SECTION_HEADER;
            head[at..at + SECTION_HEADER].copy_from_slice(&entry);
            placed.push((raw, *len));
            initialized += raw_size;
            va += len;
            raw += raw_size;
        }
        let count = u16::try_from(h.count + new.len()).map_err(|_| bad("too many sections".into()))?;
        let pe = h.opt - 24;
        head[pe + 6..pe + 8].copy_from_slice(&count.to_le_bytes());
        let size_of_image = u32::try_from(align(va, h.section_alignment)).map_err(|_| bad("image too large".into()))?;
        head[h.opt + 56..h.opt + 60].copy_from_slice(&size_of_image.to_le_bytes());
        let initialized = u32::try_from(initialized).map_err(|_| bad("image too large".into()))?;
        head[h.opt + 8..h.opt + 12].copy_from_slice(&initialized.to_le_bytes());
        head[h.opt + 64..h.opt + 68].copy_from_slice(&0u32.to_le_bytes());
        Ok(UkiLayout { head, placed, total: raw })
    }

    /// Size of the whole UKI in bytes.
    pub fn size(&self) -> u64 {
        self.total
    }

    /// Writes the UKI, reading each section's body from `bodies` (same order and lengths as
    /// planned).
    pub fn write(&self, out: &mut impl Write, bodies: Vec<(&str, &mut dyn Read)>) -> Result<(), UkiError> {
        out.write_all(&self.head).map_err(crate::fsutil::at_named("UKI headers"))?;
        let mut at = self.head.len() as u64;
        for ((offset, len), (name, body)) in self.placed.iter().zip(bodies) {
            pad(out, offset - at).map_err(crate::fsutil::at_named(name))?;
            let copied = std::io::copy(&mut body.take(*len), out).map_err(crate::fsutil::at_named(name))?;
            if copied != *len {
                return Err(UkiError::ShortSection { section: name.to_string(), expected: *len, read: copied });
            }
            at = offset + len;
        }
        Ok(pad(out, self.total - at).map_err(crate::fsutil::at_named("UKI padding"))?)
    }
}

fn pad(out: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    let zeros = [0u8; 4096];
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// A minimal PE32+ image with one `.text` section, for tests (here and in tests/).
pub fn test_stub(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 0x600];
    b[..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    b[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
    b[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
    let opt = 0x98;
    b[opt..opt + 2].copy_from_slice(&PE32_PLUS.to_le_bytes());
    b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
    b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
    b[opt + 56..opt + 60].copy_from_slice(&0x2000u32.to_le_bytes());
    b[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
    b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
    let s = opt + 240;
    b[s..s + 5].copy_from_slice(b".text");
    b[s + 8..s + 12].copy_from_slice(&0x100u32.to_le_bytes());
    b[s + 12..s + 16].copy_from_slice(&0x1000u32.to_le_bytes());
    b[s + 16..s + 20].copy_from_slice(&0x200u32.to_le_bytes());
    b[s + 20..s + 24].copy_from_slice(&0x400u32.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_appended_aligned() {
        let stub = test_stub(0x8664);
        let layout = UkiLayout::new(&stub, "stub", &[(".osrel", 10), (".cmdline", 5000), (".linux", 3)]).unwrap();
        let mut out = Vec::new();
        let (mut a, mut b, mut c) = (&b"ID=hyve\n\n\n"[..], &vec![b'x'; 5000][..], &b"MZk"[..]);
        layout.write(&mut out, vec![(".osrel", &mut a), (".cmdline", &mut b), (".linux", &mut c)]).unwrap();
        assert_eq!(out.len() as u64, layout.size());
        let s = sections(&out).unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".cmdline", ".linux"]);
        assert_eq!((s[1].virtual_address, s[1].raw_offset, s[1].virtual_size), (0x2000, 0x600, 10));
        assert_eq!((s[2].virtual_address, s[2].raw_offset, s[2].raw_size), (0x3000, 0x800, 0x1400));
        assert_eq!((s[3].virtual_address, s[3].raw_offset), (0x5000, 0x1c00));
        assert_eq!(&out[0x1c00..0x1c03], b"MZk");
        assert_eq!(u32_at(&out, 0x98 + 56), Some(0x6000), "SizeOfImage");
        assert_eq!(u16_at(&out, 0x86), Some(4));
    }

    #[test]
    fn signed_or_odd_stubs_are_refused() {
        let mut signed = test_stub(0x8664);
        signed[0x98 + 112 + 36..0x98 + 112 + 40].copy_from_slice(&100u32.to_le_bytes());
        let e = UkiLayout::new(&signed, "s.efi", &[(".linux", 1)]).err().unwrap().to_string();
        assert!(e.contains("s.efi") && e.contains("signed"), "{e}");
        let e = UkiLayout::new(b"MZ", "x", &[]).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        let many: Vec<(&str, u64)> = (0..30).map(|_| (".x", 1)).collect();
        let e = UkiLayout::new(&test_stub(0x8664), "x", &many).err().unwrap().to_string();
        assert!(e.contains("no room"), "{e}");
    }
}
