//! `.apk` packages: three gzip members — signature, control (`.PKGINFO` and scripts), data —
//! read as a stream with every link checked, and written byte-for-byte deterministically.
//!
//! Reading never holds the data member in memory: it is decompressed entry by entry while its
//! raw bytes are hashed for `datahash`, and each file is hashed as the caller reads it.

use std::io::{self, BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::archive::{self, DataEntry, EntryKind, TarWriter, CHECKSUM_RECORD};
use super::pkginfo::PkgInfo;
use super::sign::{self, Keyring, SigAlgo, Signature, SigningKey, Verdict};
use super::stream::{self, LimitedReader, Tap, TappedReader};
use super::{Error, Result, Q1};
use crate::fsutil::Hashing;

/// Size limits that turn hostile inputs into errors instead of memory or disk exhaustion.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decompressed size of the signature and control members, each.
    pub control_bytes: u64,
    /// Decompressed size of the data member (headers and content).
    pub data_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { control_bytes: 16 << 20, data_bytes: 16 << 30 }
    }
}

impl Limits {
    /// Limits for a package whose index record declares `installed_size`: content can't
    /// exceed what the index promised by more than tar overhead and slack.
    pub fn for_installed_size(installed_size: u64) -> Self {
        Limits { data_bytes: installed_size.saturating_mul(2).saturating_add(64 << 20), ..Limits::default() }
    }
}

/// Install scripts and other control files apk knows.
pub const SCRIPT_NAMES: &[&str] = &[
    ".pre-install",
    ".post-install",
    ".pre-upgrade",
    ".post-upgrade",
    ".pre-deinstall",
    ".post-deinstall",
    ".trigger",
];

/// What the signature and control members said.
#[derive(Debug, Clone)]
pub struct Control {
    pub signatures: Vec<Signature>,
    pub info: PkgInfo,
    /// `(name, content)` of `.pre-install` etc., in archive order.
    pub scripts: Vec<(String, Vec<u8>)>,
    /// Identity: SHA-1 of the raw control member.
    pub q1: Q1,
    /// Raw bytes of the control member (the signed bytes).
    control_raw: Vec<u8>,
}

impl Control {
    pub fn verify_signature(&self, keyring: &Keyring) -> Verdict {
        keyring.verify(&self.signatures, &self.control_raw)
    }

    pub fn control_member_len(&self) -> usize {
        self.control_raw.len()
    }
}

/// Facts about the data member after it was read to its end and checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataSummary {
    /// SHA-256 of the raw data member, which matched `.PKGINFO datahash`.
    pub datahash: String,
    pub compressed_size: u64,
    pub entries: u64,
    pub content_bytes: u64,
}

/// A package opened for reading: control already parsed, data still to stream.
pub struct PackageReader<R: BufRead> {
    origin: String,
    input: TappedReader<R>,
    limits: Limits,
    pub control: Control,
}

impl<R: BufRead> PackageReader<R> {
    /// Reads the signature and control members. `origin` names the file or URL in errors.
    /// With `expected_q1` (trust link 3: the checksum the signed index gives), the control
    /// member's identity is checked before a byte of it is parsed.
    pub fn open(input: R, origin: &str, limits: Limits, expected_q1: Option<Q1>) -> Result<Self> {
        let mut input = TappedReader::new(input);
        let io_err = |source| Error::Io { origin: origin.to_string(), source };
        if input.fill_buf().map_err(io_err)?.starts_with(b"ADB") {
            return Err(Error::V3Unsupported { origin: origin.to_string(), what: "package" });
        }
        let (first_raw, first) = read_raw_member(&mut input, origin, "first gzip member", limits.control_bytes)?;
        let first_entries = parse_tar(&first, origin, "first gzip member")?;
        let (signatures, control_raw, control_entries) = if sign::is_signature_member(&first_entries) {
            let sigs = sign::read_signature_member(first_entries, first.len(), origin)?;
            let (raw, control) = read_raw_member(&mut input, origin, "control member", limits.control_bytes)?;
            (sigs, raw, parse_tar(&control, origin, "control member")?)
        } else {
            (Vec::new(), first_raw, first_entries)
        };

        let q1 = Q1(Sha1::digest(&control_raw).into());
        if let Some(expected) = expected_q1.filter(|&e| e != q1) {
            return Err(Error::Q1Mismatch { origin: origin.to_string(), expected, actual: q1 });
        }
        let mut pkginfo = None;
        let mut scripts = Vec::new();
        for (name, _, data) in control_entries {
            if name == ".PKGINFO" {
                let text = String::from_utf8(data).map_err(|_| format_err(origin, ".PKGINFO is not UTF-8".into()))?;
                pkginfo = Some(PkgInfo::parse(&text, origin)?);
            } else if name.starts_with('.') {
                scripts.push((name, data));
            } else {
                return Err(format_err(
                    origin,
                    format!("control member holds {name:?}; only dot-files belong there (is the member order wrong?)"),
                ));
            }
        }
        let info = pkginfo.ok_or_else(|| format_err(origin, "control member has no .PKGINFO".into()))?;
        if info.datahash.is_none() {
            return Err(format_err(
                origin,
                ".PKGINFO has no datahash; packages from abuild before 2.x are not supported".into(),
            ));
        }
        // The signed .PKGINFO declares the installed size: the data may exceed it by tar
        // overhead and slack only, whoever opened the package (`hyve inspect` too; a build
        // passes the index's size, which may be tighter).
        let declared = Limits::for_installed_size(info.installed_size).data_bytes;
        let limits = Limits { data_bytes: limits.data_bytes.min(declared), ..limits };
        Ok(PackageReader {
            origin: origin.to_string(),
            input,
            limits,
            control: Control { signatures, info, scripts, q1, control_raw },
        })
    }

    /// Streams the data member. `visit` sees each entry and may read its content (it is
    /// hashed as it is read, and the rest is drained and hashed after `visit` returns).
    /// A file reaches `visit` only with a SHA-1 (`DataEntry::sha1`); every file's SHA-1 and
    /// finally the member's datahash are checked; an error from any of them means nothing
    /// `visit` saw may be used.
    pub fn read_data<F>(mut self, visit: F) -> Result<DataSummary>
    where
        F: FnMut(&DataEntry, &mut dyn Read) -> Result<()>,
    {
        let origin = self.origin.clone();
        let expected = self.control.info.datahash.clone().expect("checked in open");
        let start = self.input.consumed();
        self.input.set_tap(Tap::Sha256(Box::default()));
        self.input.take_ran_dry();
        let streamed = self.stream_entries(visit);
        // The decompressor asked for bytes past the end of the file: the member never
        // finished, so the file is cut short (decided from the stream, not from the
        // decompressor's wording of the error).
        let cut_short = streamed.is_err() && self.input.take_ran_dry();
        if streamed.is_err() {
            // Corrupt compressed data can decompress to plausible garbage before the CRC
            // check at the member's end, so a parse error may really be tampering. Hash the
            // rest of the raw bytes: if the datahash is wrong, that is the broken link.
            let _ = io::copy(&mut self.input, &mut io::sink());
        }
        let Tap::Sha256(hasher) = self.input.set_tap(Tap::Off) else { unreachable!("tap set above") };
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            let why = if cut_short {
                "the file ends inside its data member: it is truncated (an interrupted download or copy)"
            } else {
                "the package contents were altered"
            };
            return Err(Error::DataHashMismatch { origin, expected, actual, why });
        }
        let (entries, content_bytes) = streamed?;
        if !self.input.at_eof().map_err(|source| Error::Io { origin: origin.clone(), source })? {
            return Err(format_err(&origin, "unexpected bytes after the data member".into()));
        }
        Ok(DataSummary { datahash: actual, compressed_size: self.input.consumed() - start, entries, content_bytes })
    }

    /// Decompresses the data member to its end, visiting and checking each entry; returns
    /// (entries, content bytes).
    fn stream_entries<F>(&mut self, mut visit: F) -> Result<(u64, u64)>
    where
        F: FnMut(&DataEntry, &mut dyn Read) -> Result<()>,
    {
        let origin = self.origin.clone();
        let member = "data member";
        let map_io = |e: io::Error| -> Error {
            if let Some(limit) = stream::limit_exceeded(&e) {
                return Error::TooLarge { origin: origin.clone(), member, limit };
            }
            classify_io(&origin, member, e)
        };
        let mut limited = LimitedReader::new(stream::GzipMember::new(&mut self.input), self.limits.data_bytes);
        let mut entries = 0u64;
        let mut content_bytes = 0u64;
        {
            let mut archive = tar::Archive::new(&mut limited);
            for entry in archive.entries().map_err(map_io)? {
                let mut entry = entry.map_err(map_io)?;
                let Some(data_entry) = describe_entry(&mut entry, &origin).map_err(|e| match e {
                    Error::Io { source, .. } => map_io(source),
                    other => other,
                })?
                else {
                    continue;
                };
                entries += 1;
                content_bytes += data_entry.size;
                let expected = expected_checksum(&data_entry, &origin)?;
                let mut hashing = Hashing::<_, Sha1>::new((&mut entry).take(data_entry.size));
                visit(&data_entry, &mut hashing)?;
                io::copy(&mut hashing, &mut io::sink()).map_err(map_io)?;
                let (_, actual, count) = hashing.finish();
                if count != data_entry.size {
                    return Err(Error::UnsafeEntry {
                        origin: origin.clone(),
                        path: data_entry.path,
                        reason: format!(
                            "the header declares {} bytes but the stream ends after {}",
                            data_entry.size, count
                        ),
                    });
                }
                if let Some(expected) = expected {
                    check_entry_checksum(&data_entry, expected, actual.into(), &origin)?;
                }
            }
        }
        // Drain padding and trailing zero blocks so the whole member is hashed and its CRC
        // checked.
        io::copy(&mut limited, &mut io::sink()).map_err(map_io)?;
        Ok((entries, content_bytes))
    }
}

fn format_err(origin: &str, detail: String) -> Error {
    Error::Format { origin: origin.to_string(), detail }
}

/// Corrupt compressed data surfaces as InvalidInput/InvalidData/UnexpectedEof from the gzip
/// reader (`stream::GzipMember`), and tar structure errors as `Other`; tell the user which.
fn classify_io(origin: &str, member: &'static str, e: io::Error) -> Error {
    let origin = origin.to_string();
    match e.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            Error::Gzip { origin, member, detail: e.to_string() }
        }
        _ if e.get_ref().is_some() && e.raw_os_error().is_none() => {
            Error::Tar { origin, member, detail: e.to_string() }
        }
        _ => Error::Io { origin, source: e },
    }
}

/// Decompresses one small member, returning (raw compressed bytes, decompressed bytes).
fn read_raw_member<R: BufRead>(
    input: &mut TappedReader<R>,
    origin: &str,
    member: &'static str,
    limit: u64,
) -> Result<(Vec<u8>, Vec<u8>)> {
    if input.at_eof().map_err(|source| Error::Io { origin: origin.to_string(), source })? {
        return Err(Error::Gzip { origin: origin.to_string(), member, detail: "the file ends before it".into() });
    }
    input.set_tap(Tap::Record(Vec::new()));
    let result = stream::read_member(input, limit);
    let Tap::Record(raw) = input.set_tap(Tap::Off) else { unreachable!("tap set above") };
    match result {
        Ok(data) => Ok((raw, data)),
        Err(e) if stream::limit_exceeded(&e).is_some() => {
            Err(Error::TooLarge { origin: origin.to_string(), member, limit })
        }
        Err(e) => Err(classify_io(origin, member, e)),
    }
}

fn parse_tar(bytes: &[u8], origin: &str, member: &'static str) -> Result<Vec<(String, u8, Vec<u8>)>> {
    archive::read_small_tar(bytes).map_err(|e| Error::Tar { origin: origin.to_string(), member, detail: e.to_string() })
}

/// Turns a tar entry into a checked `DataEntry`; `None` for entries apk skips (global PAX).
fn describe_entry<R: Read>(entry: &mut tar::Entry<R>, origin: &str) -> Result<Option<DataEntry>> {
    use tar::EntryType as T;
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let unsafe_entry = |reason: &str| Error::UnsafeEntry {
        origin: origin.to_string(),
        path: shown.clone(),
        reason: reason.to_string(),
    };
    let path = String::from_utf8(raw_path).map_err(|_| unsafe_entry("the path is not UTF-8"))?;
    let path = normalize_entry_path(&path).map_err(&unsafe_entry)?;
    let header = entry.header();
    let io_err = |source| Error::Io { origin: origin.to_string(), source };
    let link_target = || -> Result<String> {
        let t = entry.link_name_bytes().ok_or_else(|| unsafe_entry("link without a target"))?;
        String::from_utf8(t.into_owned()).map_err(|_| unsafe_entry("link target is not UTF-8"))
    };
    let device = || -> Result<(u32, u32)> {
        let major = header.device_major().map_err(io_err)?.unwrap_or(0);
        let minor = header.device_minor().map_err(io_err)?.unwrap_or(0);
        Ok((major, minor))
    };
    let kind = match header.entry_type() {
        T::Regular | T::Continuous => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink { target: link_target()? },
        T::Link => {
            let target = link_target()?;
            let target =
                normalize_entry_path(&target).map_err(|r| unsafe_entry(&format!("hardlink target {target:?}: {r}")))?;
            EntryKind::Hardlink { target }
        }
        T::Char => {
            let (major, minor) = device()?;
            EntryKind::CharDevice { major, minor }
        }
        T::Block => {
            let (major, minor) = device()?;
            EntryKind::BlockDevice { major, minor }
        }
        T::Fifo => EntryKind::Fifo,
        T::XGlobalHeader => return Ok(None),
        other => return Err(unsafe_entry(&format!("unsupported tar entry type {:?}", other.as_byte() as char))),
    };
    if path.is_empty() {
        if kind == EntryKind::Dir {
            return Ok(None); // "./" itself
        }
        return Err(unsafe_entry("empty path"));
    }
    let size = entry.size();
    if kind != EntryKind::File && size != 0 {
        return Err(unsafe_entry(&format!("a {} with {size} bytes of content", kind.short_name())));
    }
    let mut sha1 = None;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(io_err)? {
        for ext in exts {
            let ext = ext.map_err(io_err)?;
            let key = ext.key().map_err(|_| unsafe_entry("PAX key is not UTF-8"))?;
            if key == CHECKSUM_RECORD {
                let digest = hex::decode(ext.value_bytes())
                    .ok()
                    .and_then(|d| <[u8; 20]>::try_from(d).ok())
                    .ok_or_else(|| unsafe_entry("APK-TOOLS.checksum.SHA1 is not 40 hex digits"))?;
                sha1 = Some(digest);
            } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    xattrs.sort();
    let header = entry.header();
    Ok(Some(DataEntry {
        path,
        kind,
        mode: header.mode().map_err(io_err)? & 0o7777,
        uid: header.uid().map_err(io_err)?.try_into().map_err(|_| unsafe_entry("uid out of range"))?,
        gid: header.gid().map_err(io_err)?.try_into().map_err(|_| unsafe_entry("gid out of range"))?,
        uname: header.username().ok().flatten().filter(|s| !s.is_empty()).map(str::to_string),
        gname: header.groupname().ok().flatten().filter(|s| !s.is_empty()).map(str::to_string),
        mtime: header.mtime().map_err(io_err)?,
        size,
        sha1,
        xattrs,
    }))
}

/// Strips `./` and trailing `/`; rejects absolute paths, `..` and empty components.
pub fn normalize_entry_path(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("absolute path");
    }
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or("the path is not UTF-8")?),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte");
    }
    Ok(parts.join("/"))
}

/// The SHA-1 a file or symlink must have (`None` for other kinds), refused before its bytes
/// are read when the entry has none: `visit` sees a file only with the checksum its bytes
/// are then checked against.
fn expected_checksum(entry: &DataEntry, origin: &str) -> Result<Option<[u8; 20]>> {
    match (&entry.kind, entry.sha1) {
        (EntryKind::File | EntryKind::Symlink { .. }, None) => {
            Err(Error::MissingFileChecksum { origin: origin.to_string(), path: entry.path.clone() })
        }
        (EntryKind::File | EntryKind::Symlink { .. }, sha1) => Ok(sha1),
        _ => Ok(None),
    }
}

fn check_entry_checksum(entry: &DataEntry, expected: [u8; 20], actual: [u8; 20], origin: &str) -> Result<()> {
    let actual = match &entry.kind {
        EntryKind::Symlink { target } => archive::symlink_sha1(target),
        _ => actual,
    };
    if expected != actual {
        return Err(Error::FileChecksumMismatch {
            origin: origin.to_string(),
            path: entry.path.clone(),
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// Where a new entry's content comes from.
#[derive(Debug, Clone)]
pub enum Source {
    None,
    Bytes(Vec<u8>),
    /// Read when the package is written, so only one file is in memory at a time.
    File(PathBuf),
}

/// One data entry to be written.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub entry: DataEntry,
    pub source: Source,
}

impl NewEntry {
    /// An entry with in-memory content; fills in size and checksum for files and symlinks.
    pub fn from_bytes(entry: DataEntry, content: Vec<u8>) -> Self {
        let mut e = NewEntry { entry, source: Source::None };
        if e.entry.kind == EntryKind::File {
            e.entry.size = content.len() as u64;
            e.entry.sha1 = Some(Sha1::digest(&content).into());
            e.source = Source::Bytes(content);
        }
        e.fill_link_checksum();
        e
    }

    /// A regular file whose content stays on disk; it is hashed now and read again when
    /// the package is written (a change in between is detected).
    pub fn from_file(mut entry: DataEntry, path: &Path) -> io::Result<Self> {
        let (sha1, size) = crate::fsutil::digest_of::<Sha1>(std::fs::File::open(path)?)?;
        entry.size = size;
        entry.sha1 = Some(sha1.into());
        Ok(NewEntry { entry, source: Source::File(path.to_path_buf()) })
    }

    /// A directory, link, device or fifo.
    pub fn without_content(entry: DataEntry) -> Self {
        let mut e = NewEntry { entry, source: Source::None };
        e.entry.size = 0;
        e.fill_link_checksum();
        e
    }

    fn fill_link_checksum(&mut self) {
        if let EntryKind::Symlink { target } = &self.entry.kind {
            self.entry.sha1 = Some(archive::symlink_sha1(target));
        }
    }

    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(match &self.source {
            Source::None => Box::new(io::empty()),
            Source::Bytes(b) => Box::new(&b[..]),
            Source::File(p) => Box::new(io::BufReader::new(std::fs::File::open(p)?)),
        })
    }
}

/// Writes a signed package: data member first (its SHA-256 goes into `.PKGINFO`), then the
/// control member, signed, then all three concatenated. `info.installed_size` and
/// `info.datahash` are computed here. Entries are written in the order given; pass them
/// sorted by path for reproducible output.
pub fn write_package<W: Write>(
    out: &mut W,
    info: &mut PkgInfo,
    scripts: &[(String, Vec<u8>)],
    entries: &[NewEntry],
    key: &SigningKey,
    algo: SigAlgo,
) -> io::Result<Q1> {
    let mut tar = TarWriter::new(archive::gzip_writer(Vec::new(), 9));
    let mut installed = 0u64;
    for e in entries {
        let mut content = e.open().map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", e.entry.path)))?;
        tar.append_data(&e.entry, &mut content)?;
        if e.entry.kind == EntryKind::File {
            installed += e.entry.size.div_ceil(4096) * 4096;
        }
    }
    let data = tar.finish()?.finish()?;
    info.installed_size = installed;
    assemble_package(out, info, scripts, &data, key, algo)
}

/// Signature, control and the given data member, concatenated; sets `info.datahash`.
fn assemble_package<W: Write>(
    out: &mut W,
    info: &mut PkgInfo,
    scripts: &[(String, Vec<u8>)],
    data: &[u8],
    key: &SigningKey,
    algo: SigAlgo,
) -> io::Result<Q1> {
    info.datahash = Some(hex::encode(Sha256::digest(data)));

    let mut control = TarWriter::new(Vec::new());
    control.append_plain(".PKGINFO", 0o644, info.build_date, info.to_text().as_bytes())?;
    for (name, content) in scripts {
        if !SCRIPT_NAMES.contains(&name.as_str()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not an apk script name ({})", SCRIPT_NAMES.join(" ")),
            ));
        }
        control.append_plain(name, 0o755, info.build_date, content)?;
    }
    let control = archive::gzip_best(&control.into_inner());

    let signature = key.sign(algo, &control).map_err(io::Error::other)?;
    let mut sig_tar = TarWriter::new(Vec::new());
    sig_tar.append_plain(&signature.entry_name(), 0o644, info.build_date, &signature.bytes)?;
    out.write_all(&archive::gzip_best(&sig_tar.into_inner()))?;
    out.write_all(&control)?;
    out.write_all(data)?;
    Ok(Q1(Sha1::digest(&control).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apk::version::Version;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/alpine/packages").join(name);
        std::fs::read(p).unwrap()
    }

    pub(crate) fn read_all(bytes: &[u8], keyring: &Keyring) -> Result<(Control, Vec<DataEntry>, DataSummary)> {
        let reader = PackageReader::open(bytes, "test.apk", Limits::default(), None)?;
        let control = reader.control.clone();
        assert!(control.verify_signature(keyring).is_verified(), "{}", control.verify_signature(keyring));
        let mut seen = Vec::new();
        let summary = reader.read_data(|e, _| {
            seen.push(e.clone());
            Ok(())
        })?;
        Ok((control, seen, summary))
    }

    #[test]
    fn reads_real_alpine_packages() {
        let ring = Keyring::alpine(None);
        let (c, entries, s) = read_all(&fixture("alpine-keys-2.4-r1.apk"), &ring).unwrap();
        assert_eq!(c.info.name, "alpine-keys");
        assert_eq!(c.q1.to_string(), "Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=");
        assert_eq!(s.datahash, "4da5fcc08f60e7e7aeecbf0dc3130c0b49938598a31a09d13b8505e2218551e1");
        let link = entries
            .iter()
            .find(|e| e.path == "usr/share/apk/keys/aarch64/alpine-devel@lists.alpinelinux.org-58199dcc.rsa.pub")
            .unwrap();
        assert_eq!(
            link.kind,
            EntryKind::Symlink { target: "../alpine-devel@lists.alpinelinux.org-58199dcc.rsa.pub".into() }
        );
        assert!(entries.iter().any(|e| e.path == "etc/apk/keys" && e.kind == EntryKind::Dir));

        let (_, entries, _) = read_all(&fixture("alpine-baselayout-data-3.4.3-r2.apk"), &ring).unwrap();
        let shadow = entries.iter().find(|e| e.path == "etc/shadow").unwrap();
        assert_eq!((shadow.mode, shadow.gid, shadow.gname.as_deref()), (0o640, 42, Some("shadow")));
        let (c, _, _) = read_all(&fixture("libc6-compat-1.1.24-r10.apk"), &ring).unwrap();
        assert_eq!(c.signatures[0].key_name, "alpine-devel@lists.alpinelinux.org-4a6a0840.rsa.pub");
    }

    #[test]
    fn content_is_hashed_as_read() {
        let bytes = fixture("alpine-baselayout-data-3.4.3-r2.apk");
        let reader = PackageReader::open(&bytes[..], "t", Limits::default(), None).unwrap();
        let mut hostname = Vec::new();
        reader
            .read_data(|e, r| {
                if e.path == "etc/hostname" {
                    r.read_to_end(&mut hostname).unwrap();
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(hostname, b"localhost\n");
    }

    fn test_key() -> SigningKey {
        SigningKey::generate("test.rsa.pub", 1024).unwrap()
    }

    fn sample_package(key: &SigningKey) -> (Vec<u8>, PkgInfo) {
        let mut info = PkgInfo::new("hello", Version::parse("1.0-r0").unwrap(), "x86_64");
        info.build_date = 1_700_000_000;
        let base = DataEntry::owned_by_root("", EntryKind::Dir, 0o755, 1_700_000_000);
        let entries = vec![
            NewEntry::without_content(DataEntry { path: "usr".into(), ..base.clone() }),
            NewEntry::without_content(DataEntry { path: "usr/bin".into(), ..base.clone() }),
            NewEntry::from_bytes(
                DataEntry { path: "usr/bin/hello".into(), kind: EntryKind::File, ..base.clone() },
                b"#!/bin/sh\necho hello\n".to_vec(),
            ),
            NewEntry::without_content(DataEntry {
                path: "usr/bin/hi".into(),
                kind: EntryKind::Symlink { target: "hello".into() },
                mode: 0o777,
                ..base.clone()
            }),
        ];
        let mut out = Vec::new();
        write_package(
            &mut out,
            &mut info,
            &[(".pre-install".into(), b"#!/bin/sh\naddgroup -S hello\n".to_vec())],
            &entries,
            key,
            SigAlgo::RsaSha256,
        )
        .unwrap();
        (out, info)
    }

    #[test]
    fn written_package_reads_back_and_verifies() {
        let key = test_key();
        let (bytes, info) = sample_package(&key);
        let mut ring = Keyring::empty();
        ring.add("test.rsa.pub", key.public_key());
        let (c, entries, s) = read_all(&bytes, &ring).unwrap();
        assert_eq!(c.info, info);
        assert_eq!(c.scripts[0].0, ".pre-install");
        assert_eq!(entries.len(), 4);
        assert_eq!(s.datahash, info.datahash.unwrap());
        assert_eq!(info.installed_size, 4096);
    }

    /// A file cut anywhere inside its data member is called truncated; a changed byte in
    /// the middle of a complete one is called altered.
    #[test]
    fn truncated_and_altered_data_are_told_apart() {
        let key = test_key();
        let (bytes, _) = sample_package(&key);
        let data_start =
            PackageReader::open(&bytes[..], "t", Limits::default(), None).unwrap().input.consumed() as usize;
        let why =
            |b: &[u8]| match PackageReader::open(b, "t", Limits::default(), None).unwrap().read_data(|_, _| Ok(())) {
                Err(Error::DataHashMismatch { why, .. }) => why,
                other => panic!("{other:?}"),
            };
        for cut in [data_start + 1, (data_start + bytes.len()) / 2, bytes.len() - 1] {
            assert!(why(&bytes[..cut]).contains("truncated"), "cut at {cut} of {}", bytes.len());
        }
        let mut altered = bytes.clone();
        altered[(data_start + bytes.len()) / 2] ^= 0x40;
        assert!(why(&altered).contains("altered"));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let key = test_key();
        let (bytes, _) = sample_package(&key);
        let mut ring = Keyring::empty();
        ring.add("test.rsa.pub", key.public_key());
        let opened = PackageReader::open(&bytes[..], "t", Limits::default(), None).unwrap();
        let sig_len = opened.input.consumed() as usize - opened.control.control_member_len();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let result = PackageReader::open(&bad[..], "t", Limits::default(), None).and_then(|r| {
                let verdict = r.control.verify_signature(&ring);
                if !verdict.is_verified() {
                    return Err(Error::Signature { origin: "t".into(), verdict });
                }
                r.read_data(|_, _| Ok(())).map(|_| ())
            });
            // Only the signature member is outside every signed or hashed region (a flip in
            // its gzip header may decompress to the same signature); everything after it must
            // fail one check or another.
            if i >= sig_len {
                assert!(result.is_err(), "flipping byte {i} (past the signature member) went unnoticed");
            }
        }
    }

    #[test]
    fn hostile_entry_size_is_refused() {
        let key = test_key();
        let entry = DataEntry {
            size: 3,
            sha1: Some(Sha1::digest(b"abc").into()),
            ..DataEntry::owned_by_root("big", EntryKind::File, 0o644, 0)
        };
        let mut tar = TarWriter::new(Vec::new());
        tar.append_data(&entry, &mut &b"abc"[..]).unwrap();
        let mut data_tar = tar.finish().unwrap();
        const H: usize = 1024; // the file header follows its PAX header and record block
                               // Claim 2 GiB in the header (size field at 124..136), fix the header checksum.
        data_tar[H + 124..H + 136].copy_from_slice(b"20000000000\0");
        data_tar[H + 148..H + 156].fill(b' ');
        let sum: u32 = data_tar[H..H + 512].iter().map(|&b| u32::from(b)).sum();
        data_tar[H + 148..H + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut info = PkgInfo::new("big", Version::parse("1").unwrap(), "x86_64");
        let mut bytes = Vec::new();
        assemble_package(&mut bytes, &mut info, &[], &archive::gzip_best(&data_tar), &key, SigAlgo::RsaSha256).unwrap();
        let e = PackageReader::open(&bytes[..], "big.apk", Limits::default(), None)
            .unwrap()
            .read_data(|_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("big.apk") && e.contains("\"big\"") && e.contains("declares 2147483648 bytes"), "{e}");
    }

    /// The store records a file with the checksum of its entry, unhashed: a file without one
    /// must not reach `visit` at all.
    #[test]
    fn a_file_without_a_checksum_never_reaches_visit() {
        let key = test_key();
        let mut tar = TarWriter::new(archive::gzip_writer(Vec::new(), 1));
        let dir = DataEntry::owned_by_root("etc", EntryKind::Dir, 0o755, 0);
        tar.append_data(&dir, &mut io::empty()).unwrap();
        let file = DataEntry { size: 3, ..DataEntry::owned_by_root("etc/unsummed", EntryKind::File, 0o644, 0) };
        tar.append_data(&file, &mut &b"abc"[..]).unwrap();
        let data = tar.finish().unwrap().finish().unwrap();
        let mut info = PkgInfo::new("bare", Version::parse("1").unwrap(), "x86_64");
        let mut bytes = Vec::new();
        assemble_package(&mut bytes, &mut info, &[], &data, &key, SigAlgo::RsaSha256).unwrap();
        let mut seen = Vec::new();
        let e = PackageReader::open(&bytes[..], "bare.apk", Limits::default(), None)
            .unwrap()
            .read_data(|entry, _| {
                seen.push(entry.path.clone());
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(&e, Error::MissingFileChecksum { path, .. } if path == "etc/unsummed"), "{e}");
        assert_eq!(seen, ["etc"]);
    }

    /// 300 MiB of data under a declared `size = 100` stops at the limit the declaration
    /// allows, with no index to say otherwise.
    #[test]
    fn data_far_beyond_the_declared_size_is_refused() {
        let key = test_key();
        let big = 300u64 << 20;
        // The checksum is not reached: the limit stops the read first.
        let entry = DataEntry {
            size: big,
            sha1: Some([0; 20]),
            ..DataEntry::owned_by_root("zeros", EntryKind::File, 0o644, 0)
        };
        let mut tar = TarWriter::new(archive::gzip_writer(Vec::new(), 1));
        tar.append_data(&entry, &mut io::repeat(0).take(big)).unwrap();
        let data = tar.finish().unwrap().finish().unwrap();
        let mut info = PkgInfo::new("liar", Version::parse("1").unwrap(), "x86_64");
        info.installed_size = 100;
        let mut bytes = Vec::new();
        assemble_package(&mut bytes, &mut info, &[], &data, &key, SigAlgo::RsaSha256).unwrap();
        let e = PackageReader::open(&bytes[..], "liar.apk", Limits::default(), None)
            .unwrap()
            .read_data(|_, _| Ok(()))
            .unwrap_err();
        assert!(
            matches!(e, Error::TooLarge { limit, .. } if limit == Limits::for_installed_size(100).data_bytes),
            "{e}"
        );
    }

    #[test]
    fn rejects_unsafe_paths() {
        for p in ["/etc/passwd", "../x", "a/../../b", "a/b/.."] {
            assert!(normalize_entry_path(p).is_err(), "{p}");
        }
        assert_eq!(normalize_entry_path("./etc/").unwrap(), "etc");
        assert_eq!(normalize_entry_path("usr//bin").unwrap(), "usr/bin");
    }

    #[test]
    fn control_member_must_come_with_datahash() {
        let mut control = TarWriter::new(Vec::new());
        control.append_plain(".PKGINFO", 0o644, 0, b"pkgname = a\npkgver = 1\narch = x86_64\n").unwrap();
        let bytes = archive::gzip_best(&control.into_inner());
        let e = PackageReader::open(&bytes[..], "x.apk", Limits::default(), None).err().unwrap().to_string();
        assert!(e.contains("x.apk") && e.contains("datahash"), "{e}");
    }
}
