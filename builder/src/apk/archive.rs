//! Tar entries as apk sees them, and a deterministic writer for the tar streams inside
//! packages and indexes.
//!
//! The writer is hand-made rather than `tar::Builder` because abuild's layout matters byte
//! for byte: PAX headers named `<dir>/PaxHeaders/<name>` carrying
//! `APK-TOOLS.checksum.SHA1`, the legacy `APK2` checksum in the linkname field of regular
//! files, streams "cut" without end-of-archive blocks, and no host metadata (owner names,
//! times) leaking in. Reading uses the `tar` crate.

use std::io::{self, Write};

use sha1::{Digest, Sha1};

/// What kind of filesystem object a tar entry is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink { target: String },
    Hardlink { target: String },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

impl EntryKind {
    fn typeflag(&self) -> u8 {
        match self {
            EntryKind::File => b'0',
            EntryKind::Hardlink { .. } => b'1',
            EntryKind::Symlink { .. } => b'2',
            EntryKind::CharDevice { .. } => b'3',
            EntryKind::BlockDevice { .. } => b'4',
            EntryKind::Dir => b'5',
            EntryKind::Fifo => b'6',
        }
    }

    pub fn short_name(&self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::Hardlink { .. } => "hardlink",
            EntryKind::CharDevice { .. } => "chardev",
            EntryKind::BlockDevice { .. } => "blockdev",
            EntryKind::Fifo => "fifo",
        }
    }

    fn link_target(&self) -> Option<&str> {
        match self {
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => Some(target),
            _ => None,
        }
    }
}

/// One entry of a package's data tar (or one to be written into one).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataEntry {
    /// Relative path without a leading `./` or trailing `/`.
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Owner names from the header; apk resolves these against the guest's /etc/passwd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gname: Option<String>,
    pub mtime: u64,
    pub size: u64,
    /// `APK-TOOLS.checksum.SHA1` (files: of the content; symlinks: of the target).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "hex_opt")]
    pub sha1: Option<[u8; 20]>,
    /// Extended attributes from `SCHILY.xattr.*` PAX records, sorted by name.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "xattrs_hex")]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl DataEntry {
    /// An entry owned by root (uid/gid 0, names "root"), with no content yet; size and
    /// checksum are filled in by whoever adds the content.
    pub fn owned_by_root(path: &str, kind: EntryKind, mode: u32, mtime: u64) -> Self {
        DataEntry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: Some("root".into()),
            gname: Some("root".into()),
            mtime,
            size: 0,
            sha1: None,
            xattrs: vec![],
        }
    }
}

fn hex_opt<S: serde::Serializer>(v: &Option<[u8; 20]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_str(&hex::encode(d)),
        None => s.serialize_none(),
    }
}

fn xattrs_hex<S: serde::Serializer>(v: &[(String, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, val) in v {
        m.serialize_entry(k, &hex::encode(val))?;
    }
    m.end()
}

/// The PAX record name holding a data entry's SHA-1.
pub const CHECKSUM_RECORD: &str = "APK-TOOLS.checksum.SHA1";

/// Formats one PAX record: `"<len> <key>=<value>\n"` where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn put_octal(field: &mut [u8], value: u64) -> io::Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("value {value} does not fit a tar header field"),
        ));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

fn put_str(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
}

struct Header([u8; 512]);

impl Header {
    fn new(name: &[u8], typeflag: u8, mode: u32, uid: u32, gid: u32, size: u64, mtime: u64) -> io::Result<Header> {
        let mut h = [0u8; 512];
        put_str(&mut h[0..100], name);
        put_octal(&mut h[100..108], u64::from(mode))?;
        put_octal(&mut h[108..116], u64::from(uid))?;
        put_octal(&mut h[116..124], u64::from(gid))?;
        put_octal(&mut h[124..136], size)?;
        put_octal(&mut h[136..148], mtime)?;
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        put_octal(&mut h[329..337], 0)?;
        put_octal(&mut h[337..345], 0)?;
        Ok(Header(h))
    }

    fn finish(mut self) -> [u8; 512] {
        self.0[148..156].fill(b' ');
        let sum: u64 = self.0.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        self.0[148..156].copy_from_slice(s.as_bytes());
        self.0
    }
}

/// The PAX header name GNU tar (and so abuild) gives an entry: `<dir>/PaxHeaders/<base>`.
fn pax_header_name(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/PaxHeaders/{base}"),
        None => format!("./PaxHeaders/{path}"),
    }
}

/// Writes tar entries in apk's layout to `out`. Callers choose whether to end the archive
/// (`finish`) or leave it "cut" (`into_inner`), as signature and control members are.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    fn write_padded(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        let pad = (512 - data.len() % 512) % 512;
        self.out.write_all(&[0u8; 512][..pad])
    }

    /// A plain entry with no PAX header, as used for `.SIGN.*`, `.PKGINFO`, `DESCRIPTION`.
    pub fn append_plain(&mut self, name: &str, mode: u32, mtime: u64, data: &[u8]) -> io::Result<()> {
        let mut h = Header::new(name.as_bytes(), b'0', mode, 0, 0, data.len() as u64, mtime)?;
        put_str(&mut h.0[265..297], b"root");
        put_str(&mut h.0[297..329], b"root");
        self.out.write_all(&h.finish())?;
        self.write_padded(data)
    }

    /// A data entry with its checksum PAX record (and `path`/`linkpath` records when the
    /// names exceed ustar's 100 bytes). For files, exactly `entry.size` bytes are copied
    /// from `content`; a source of any other length is an error.
    pub fn append_data(&mut self, entry: &DataEntry, content: &mut dyn io::Read) -> io::Result<()> {
        let mut name = entry.path.clone();
        if entry.kind == EntryKind::Dir {
            name.push('/');
        }
        let target = entry.kind.link_target().unwrap_or("");
        let mut pax = Vec::new();
        if name.len() > 100 {
            pax.extend(pax_record("path", name.as_bytes()));
        }
        if target.len() > 100 {
            pax.extend(pax_record("linkpath", target.as_bytes()));
        }
        for (key, value) in &entry.xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{key}"), value));
        }
        if let Some(sha1) = entry.sha1 {
            pax.extend(pax_record(CHECKSUM_RECORD, hex::encode(sha1).as_bytes()));
        }
        if !pax.is_empty() {
            let pax_name = pax_header_name(&entry.path);
            let h = Header::new(pax_name.as_bytes(), b'x', 0o644, 0, 0, pax.len() as u64, entry.mtime)?;
            self.out.write_all(&h.finish())?;
            self.write_padded(&pax)?;
        }
        let size = if entry.kind == EntryKind::File { entry.size } else { 0 };
        let mut h =
            Header::new(name.as_bytes(), entry.kind.typeflag(), entry.mode, entry.uid, entry.gid, size, entry.mtime)?;
        put_str(&mut h.0[157..257], target.as_bytes());
        if let (EntryKind::File, Some(sha1)) = (&entry.kind, entry.sha1) {
            // abuild-tar's legacy checksum: "APK2", u16 LE OpenSSL NID (64 = SHA-1),
            // u16 LE digest size, then the digest — at linkname[3].
            let legacy = &mut h.0[157 + 3..157 + 3 + 28];
            legacy[..4].copy_from_slice(b"APK2");
            legacy[4..6].copy_from_slice(&64u16.to_le_bytes());
            legacy[6..8].copy_from_slice(&20u16.to_le_bytes());
            legacy[8..28].copy_from_slice(&sha1);
        }
        if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } = entry.kind {
            put_octal(&mut h.0[329..337], u64::from(major))?;
            put_octal(&mut h.0[337..345], u64::from(minor))?;
        }
        if let Some(u) = &entry.uname {
            put_str(&mut h.0[265..297], u.as_bytes());
        }
        if let Some(g) = &entry.gname {
            put_str(&mut h.0[297..329], g.as_bytes());
        }
        self.out.write_all(&h.finish())?;
        if size > 0 {
            let copied = io::copy(&mut <&mut dyn io::Read as io::Read>::take(&mut *content, size), &mut self.out)?;
            let mut probe = [0u8; 1];
            if copied != size || content.read(&mut probe)? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: expected {size} bytes of content; the source changed while it was being packed",
                        entry.path
                    ),
                ));
            }
            let pad = ((512 - size % 512) % 512) as usize;
            self.out.write_all(&[0u8; 512][..pad])?;
        }
        Ok(())
    }

    /// Ends the archive with two zero blocks and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }

    /// Returns the writer without end-of-archive blocks (abuild-tar `--cut`).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// SHA-1 of a symlink's target, which apk stores as the symlink's checksum.
pub fn symlink_sha1(target: &str) -> [u8; 20] {
    Sha1::digest(target.as_bytes()).into()
}

/// A gzip stream the way `gzip -n` writes one: no name, mtime 0, Unix OS byte. abuild
/// uses level 9.
pub fn gzip_writer<W: Write>(out: W, level: u32) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new().operating_system(3).write(out, flate2::Compression::new(level))
}

/// `gzip_writer` over an in-memory buffer.
pub fn gzip_best(data: &[u8]) -> Vec<u8> {
    let mut enc = gzip_writer(Vec::with_capacity(data.len() / 3 + 64), 9);
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Reads a small, fully decompressed tar member (signature or control): each entry's name,
/// typeflag and content. Streams must end at a header boundary or with zero blocks.
pub(crate) fn read_small_tar(bytes: &[u8]) -> io::Result<Vec<(String, u8, Vec<u8>)>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry name is not UTF-8"))?;
        let flag = entry.header().entry_type().as_byte();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        out.push((name, flag, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        let r = pax_record(CHECKSUM_RECORD, b"b261ba9eb77e829f4b27f114716b844939d292a1");
        assert_eq!(r, b"68 APK-TOOLS.checksum.SHA1=b261ba9eb77e829f4b27f114716b844939d292a1\n");
        // The length crosses a digit boundary: 9 + 1 digit would be 10, so it must be 11.
        let r = pax_record("k", b"12345");
        assert_eq!(r.len().to_string(), String::from_utf8_lossy(&r).split(' ').next().unwrap());
        for n in 0..300 {
            let r = pax_record("x", &vec![b'v'; n]);
            let len: usize = String::from_utf8_lossy(&r).split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "value length {n}");
        }
    }

    #[test]
    fn written_tar_reads_back_with_the_tar_crate() {
        let content = b"#!/bin/sh\necho hi\n";
        let file = DataEntry {
            path: "usr/bin/hello".into(),
            kind: EntryKind::File,
            mode: 0o755,
            uid: 0,
            gid: 0,
            uname: Some("root".into()),
            gname: Some("root".into()),
            mtime: 1_700_000_000,
            size: content.len() as u64,
            sha1: Some(Sha1::digest(content).into()),
            xattrs: vec![("security.capability".into(), vec![1, 2, 3])],
        };
        let long = "a/".repeat(60) + "file";
        let link = DataEntry {
            path: long.clone(),
            kind: EntryKind::Symlink { target: "/usr/bin/hello".into() },
            mode: 0o777,
            size: 0,
            sha1: Some(symlink_sha1("/usr/bin/hello")),
            xattrs: vec![],
            ..file.clone()
        };
        let dev = DataEntry {
            path: "dev/console".into(),
            kind: EntryKind::CharDevice { major: 5, minor: 1 },
            mode: 0o600,
            size: 0,
            sha1: None,
            xattrs: vec![],
            ..file.clone()
        };
        let mut w = TarWriter::new(Vec::new());
        w.append_data(&file, &mut &content[..]).unwrap();
        w.append_data(&link, &mut io::empty()).unwrap();
        w.append_data(&dev, &mut io::empty()).unwrap();
        let mut short = TarWriter::new(Vec::new());
        assert!(short.append_data(&file, &mut &content[1..]).unwrap_err().to_string().contains("usr/bin/hello"));
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);

        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let pax: Vec<(String, Vec<u8>)> = e
                .pax_extensions()
                .unwrap()
                .map(|exts| {
                    exts.map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                    })
                    .collect()
                })
                .unwrap_or_default();
            seen.push((
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
                pax,
                e.header().device_major().unwrap(),
            ));
        }
        assert_eq!(seen[0].0, "usr/bin/hello");
        assert_eq!(seen[0].1, 0o755);
        assert!(seen[0].2.iter().any(|(k, v)| k == CHECKSUM_RECORD && v == hex::encode(file.sha1.unwrap()).as_bytes()));
        assert!(seen[0].2.iter().any(|(k, v)| k == "SCHILY.xattr.security.capability" && v == &[1, 2, 3]));
        assert_eq!(seen[1].0, long);
        assert_eq!(seen[2].3, Some(5));
    }

    #[test]
    fn output_is_independent_of_call_site() {
        let e = DataEntry::owned_by_root("etc", EntryKind::Dir, 0o755, 5);
        let a = {
            let mut w = TarWriter::new(Vec::new());
            w.append_data(&e, &mut io::empty()).unwrap();
            w.into_inner()
        };
        let b = {
            let mut w = TarWriter::new(Vec::new());
            w.append_data(&e, &mut io::empty()).unwrap();
            w.into_inner()
        };
        assert_eq!(a, b);
        assert_eq!(&a[0..4], b"etc/");
        assert_eq!(gzip_best(b"x"), gzip_best(b"x"));
        assert_eq!(&gzip_best(b"x")[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
    }
}
