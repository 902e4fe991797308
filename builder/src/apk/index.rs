//! `APKINDEX.tar.gz`: a signature member followed by a gzip'd tar holding `DESCRIPTION` and
//! `APKINDEX`. The signature covers the raw compressed bytes of everything after the
//! signature member. Reading verifies before it parses; writing produces what `apk index` +
//! `abuild-sign` would.

use std::fmt::Write as _;

use super::archive::{self, TarWriter};
use super::dep::Dep;
use super::package::Control;
use super::pkginfo::display_list;
use super::sign::{self, Keyring, SigAlgo, Signature, SigningKey, Verdict};
use super::stream::{self, Tap, TappedReader};
use super::version::Version;
use super::{Error, Result, Q1};

/// Largest decompressed index accepted; Alpine's biggest (community) is ~10 MB.
const MAX_INDEX_BYTES: u64 = 512 << 20;

/// One package in an index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexRecord {
    pub checksum: Q1,
    pub name: String,
    pub version: Version,
    pub arch: String,
    /// Size of the .apk file.
    pub size: u64,
    pub installed_size: u64,
    pub description: String,
    pub url: String,
    pub license: String,
    pub origin: Option<String>,
    pub maintainer: Option<String>,
    pub build_time: Option<u64>,
    pub commit: Option<String>,
    pub provider_priority: Option<u64>,
    #[serde(serialize_with = "display_list")]
    pub depends: Vec<Dep>,
    #[serde(serialize_with = "display_list")]
    pub provides: Vec<Dep>,
    #[serde(serialize_with = "display_list")]
    pub install_if: Vec<Dep>,
    /// Fields hyve does not interpret (unknown lowercase ones, installed-db ones), in order.
    pub extra: Vec<(char, String)>,
    /// Why apk would refuse to install this record (an unknown uppercase field, a bad
    /// dependency), or `None`.
    pub uninstallable: Option<String>,
}

impl IndexRecord {
    /// The record `apk index` writes for a package file of `size` bytes.
    pub fn from_package(control: &Control, size: u64) -> Self {
        let i = &control.info;
        IndexRecord {
            checksum: control.q1,
            name: i.name.clone(),
            version: i.version.clone(),
            arch: i.arch.clone(),
            size,
            installed_size: i.installed_size,
            description: i.description.clone(),
            url: i.url.clone(),
            license: i.license.clone(),
            origin: Some(i.origin.clone()),
            maintainer: Some(i.maintainer.clone()).filter(|m| !m.is_empty()),
            build_time: Some(i.build_date).filter(|&t| t != 0),
            commit: Some(i.commit.clone()).filter(|c| !c.is_empty()),
            provider_priority: i.provider_priority,
            depends: i.depends.clone(),
            provides: i.provides.clone(),
            install_if: i.install_if.clone(),
            extra: vec![],
            uninstallable: None,
        }
    }

    /// Reads a package file completely (every hash checked) and returns the record
    /// `apk index` would write for it.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        use super::package::{Limits, PackageReader};
        let origin = path.display().to_string();
        let io_err = |source| Error::Io { origin: origin.clone(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let reader = PackageReader::open(std::io::BufReader::new(file), &origin, Limits::default(), None)?;
        let control = reader.control.clone();
        reader.read_data(|_, _| Ok(()))?;
        Ok(IndexRecord::from_package(&control, size))
    }

    /// The repository file name: `<name>-<version>.apk`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.apk", self.name, self.version)
    }

    fn write_text(&self, out: &mut String) {
        let list = Dep::format_list;
        let _ = write!(
            out,
            "C:{}\nP:{}\nV:{}\nA:{}\nS:{}\nI:{}\nT:{}\nU:{}\nL:{}\n",
            self.checksum,
            self.name,
            self.version,
            self.arch,
            self.size,
            self.installed_size,
            self.description,
            self.url,
            self.license
        );
        let mut opt = |tag: char, value: Option<String>| {
            if let Some(v) = value {
                let _ = writeln!(out, "{tag}:{v}");
            }
        };
        opt('o', self.origin.clone());
        opt('m', self.maintainer.clone());
        opt('t', self.build_time.map(|t| t.to_string()));
        opt('c', self.commit.clone());
        opt('k', self.provider_priority.map(|k| k.to_string()));
        opt('D', Some(list(&self.depends)).filter(|s| !s.is_empty()));
        opt('p', Some(list(&self.provides)).filter(|s| !s.is_empty()));
        opt('i', Some(list(&self.install_if)).filter(|s| !s.is_empty()));
        for (tag, v) in &self.extra {
            let _ = writeln!(out, "{tag}:{v}");
        }
        out.push('\n');
    }
}

/// A read index and what its signature check found.
#[derive(Debug, Clone)]
pub struct Index {
    pub description: String,
    pub records: Vec<IndexRecord>,
    pub signatures: Vec<Signature>,
    pub verdict: Verdict,
}

/// Reads an index and checks its signature, reporting the verdict without failing on it
/// (for `inspect`). Structural errors still fail.
pub fn read_index(bytes: &[u8], origin: &str, keyring: &Keyring) -> Result<Index> {
    let (signatures, verdict, text) = open_index(bytes, origin, keyring, false)?;
    let (description, records) = text;
    Ok(Index { description, records, signatures, verdict })
}

/// Trust link 1: reads an index only if a trusted key's signature verifies. Nothing in
/// the index is parsed before that.
pub fn read_verified_index(bytes: &[u8], origin: &str, keyring: &Keyring) -> Result<Index> {
    let (signatures, verdict, (description, records)) = open_index(bytes, origin, keyring, true)?;
    Ok(Index { description, records, signatures, verdict })
}

type Parsed = (String, Vec<IndexRecord>);

fn open_index(
    bytes: &[u8],
    origin: &str,
    keyring: &Keyring,
    require_trust: bool,
) -> Result<(Vec<Signature>, Verdict, Parsed)> {
    if bytes.starts_with(b"ADB") {
        return Err(Error::V3Unsupported { origin: origin.to_string(), what: "index (Packages.adb)" });
    }
    let member_err = |member: &'static str, e: std::io::Error| match stream::limit_exceeded(&e) {
        Some(limit) => Error::TooLarge { origin: origin.to_string(), member, limit },
        None => Error::Gzip { origin: origin.to_string(), member, detail: e.to_string() },
    };
    let tar_err = |member: &'static str, e: std::io::Error| Error::Tar {
        origin: origin.to_string(),
        member,
        detail: e.to_string(),
    };

    let mut input = TappedReader::new(bytes);
    let first = stream::read_member(&mut input, MAX_INDEX_BYTES).map_err(|e| member_err("first gzip member", e))?;
    let first_entries = archive::read_small_tar(&first).map_err(|e| tar_err("first gzip member", e))?;
    let signed_start = input.consumed() as usize;

    let (signatures, signed, index_entries) = if sign::is_signature_member(&first_entries) {
        let sigs = sign::read_signature_member(first_entries, first.len(), origin)?;
        (sigs, &bytes[signed_start..], None)
    } else {
        (Vec::new(), &bytes[..0], Some(first_entries))
    };
    let verdict = keyring.verify(&signatures, signed);
    if require_trust && !verdict.is_verified() {
        return Err(Error::Signature { origin: origin.to_string(), verdict });
    }
    let index_entries = match index_entries {
        Some(entries) => entries,
        None => {
            if input.at_eof().unwrap_or(true) {
                return Err(Error::Gzip {
                    origin: origin.to_string(),
                    member: "index member",
                    detail: "the file ends after the signature".into(),
                });
            }
            let data = stream::read_member(&mut input, MAX_INDEX_BYTES).map_err(|e| member_err("index member", e))?;
            archive::read_small_tar(&data).map_err(|e| tar_err("index member", e))?
        }
    };
    input.set_tap(Tap::Off);
    if !input.at_eof().unwrap_or(false) {
        return Err(Error::Format {
            origin: origin.to_string(),
            detail: "unexpected bytes after the index member (the signature would not cover them)".into(),
        });
    }
    let mut description = String::new();
    let mut text = None;
    for (name, _, data) in index_entries {
        match name.as_str() {
            "DESCRIPTION" => description = String::from_utf8_lossy(&data).trim_end().to_string(),
            "APKINDEX" => {
                text = Some(String::from_utf8(data).map_err(|_| Error::Format {
                    origin: origin.to_string(),
                    detail: "APKINDEX is not UTF-8".into(),
                })?)
            }
            _ => {}
        }
    }
    let text = text.ok_or_else(|| Error::Format {
        origin: origin.to_string(),
        detail: "no APKINDEX entry in the index member".into(),
    })?;
    let records = parse_records(&text, origin)?;
    Ok((signatures, verdict, (description, records)))
}

/// Parses APKINDEX text: records of `X:value` lines separated by blank lines.
pub fn parse_records(text: &str, origin: &str) -> Result<Vec<IndexRecord>> {
    let mut records = Vec::new();
    let mut fields: Vec<(usize, char, &str)> = Vec::new();
    for (i, line) in text.lines().chain(std::iter::once("")).enumerate() {
        if line.is_empty() {
            if !fields.is_empty() {
                records.push(build_record(&fields, origin)?);
                fields.clear();
            }
            continue;
        }
        let mut chars = line.chars();
        let (Some(tag), Some(':')) = (chars.next(), chars.next()) else {
            return Err(Error::IndexRecord {
                origin: origin.to_string(),
                line: i + 1,
                detail: format!("expected `X:value`, found {line:?}"),
            });
        };
        fields.push((i + 1, tag, &line[tag.len_utf8() + 1..]));
    }
    Ok(records)
}

fn build_record(fields: &[(usize, char, &str)], origin: &str) -> Result<IndexRecord> {
    let first_line = fields[0].0;
    let err = |line: usize, detail: String| Error::IndexRecord { origin: origin.to_string(), line, detail };
    let find = |tag: char| fields.iter().find(|(_, t, _)| *t == tag);
    let required = |tag: char, what: &str| {
        find(tag).ok_or_else(|| err(first_line, format!("record has no {tag}: ({what}) field")))
    };
    let number = |(line, tag, v): &(usize, char, &str)| {
        v.parse::<u64>().map_err(|_| err(*line, format!("{tag}: expected a number, found {v:?}")))
    };

    let (line, _, c) = required('C', "checksum")?;
    let checksum = Q1::parse(c).ok_or_else(|| err(*line, format!("C: expected a Q1 SHA-1 checksum, found {c:?}")))?;
    let (line, _, v) = required('V', "version")?;
    let version = Version::parse(v).map_err(|e| err(*line, e.to_string()))?;
    let mut rec = IndexRecord {
        checksum,
        name: required('P', "name")?.2.to_string(),
        version,
        arch: find('A').map(|f| f.2.to_string()).unwrap_or_default(),
        size: find('S').map(number).transpose()?.unwrap_or(0),
        installed_size: find('I').map(number).transpose()?.unwrap_or(0),
        description: find('T').map(|f| f.2.to_string()).unwrap_or_default(),
        url: find('U').map(|f| f.2.to_string()).unwrap_or_default(),
        license: find('L').map(|f| f.2.to_string()).unwrap_or_default(),
        origin: None,
        maintainer: None,
        build_time: None,
        commit: None,
        provider_priority: None,
        depends: vec![],
        provides: vec![],
        install_if: vec![],
        extra: vec![],
        uninstallable: None,
    };
    for field @ (_, tag, value) in fields {
        // apk-tools' rules for atoms it cannot parse (pc: versions like `v2.4` do occur):
        // a bad dependency makes the package uninstallable, a bad provide is skipped, a bad
        // install_if disables the whole rule.
        let atoms = value.split_ascii_whitespace().map(Dep::parse);
        match tag {
            'C' | 'P' | 'V' | 'A' | 'S' | 'I' | 'T' | 'U' | 'L' => {}
            'o' => rec.origin = Some(value.to_string()),
            'm' => rec.maintainer = Some(value.to_string()),
            't' => rec.build_time = Some(number(field)?),
            'c' => rec.commit = Some(value.to_string()),
            'k' => rec.provider_priority = Some(number(field)?),
            'D' => match atoms.collect::<Result<Vec<_>, _>>() {
                Ok(d) => rec.depends = d,
                Err(e) => {
                    rec.uninstallable.get_or_insert(format!("D: {e}"));
                }
            },
            'p' => rec.provides = atoms.filter_map(Result::ok).collect(),
            'i' => rec.install_if = atoms.collect::<Result<Vec<_>, _>>().unwrap_or_default(),
            // Installed-database fields apk-tools tolerates in an index.
            'F' | 'M' | 'R' | 'Z' | 'r' | 'q' | 'a' | 's' | 'f' => rec.extra.push((*tag, value.to_string())),
            t if t.is_ascii_lowercase() => rec.extra.push((*tag, value.to_string())),
            t => {
                rec.uninstallable.get_or_insert(format!("unknown field {t}: (written by a newer apk-tools)"));
                rec.extra.push((*tag, value.to_string()));
            }
        }
    }
    Ok(rec)
}

/// Writes a signed APKINDEX.tar.gz. Records are sorted by name, version and checksum so
/// the output depends only on the set of packages; `mtime` stamps the tar entries.
pub fn write_index(
    records: &[IndexRecord],
    description: &str,
    key: &SigningKey,
    algo: SigAlgo,
    mtime: u64,
) -> std::io::Result<Vec<u8>> {
    let mut sorted: Vec<&IndexRecord> = records.iter().collect();
    sorted.sort_by(|a, b| {
        a.name.cmp(&b.name).then_with(|| a.version.compare(&b.version)).then_with(|| a.checksum.cmp(&b.checksum))
    });
    let mut text = String::new();
    for r in sorted {
        r.write_text(&mut text);
    }
    let mut tar = TarWriter::new(Vec::new());
    tar.append_plain("DESCRIPTION", 0o644, mtime, description.as_bytes())?;
    tar.append_plain("APKINDEX", 0o644, mtime, text.as_bytes())?;
    let index_member = archive::gzip_best(&tar.finish()?);
    let signature = key.sign(algo, &index_member).map_err(std::io::Error::other)?;
    let mut sig_tar = TarWriter::new(Vec::new());
    sig_tar.append_plain(&signature.entry_name(), 0o644, mtime, &signature.bytes)?;
    let mut out = archive::gzip_best(&sig_tar.into_inner());
    out.extend_from_slice(&index_member);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/alpine/apkindex").join(name))
            .unwrap()
    }

    #[test]
    fn reads_real_alpine_indexes() {
        let ring = Keyring::alpine(Some(crate::apk::Arch::X86_64));
        for (file, count) in [
            ("v3.19-main-x86_64_v3.19.0-327.APKINDEX.tar.gz", 5436),
            ("v3.22-main-x86_64_v3.22.2-204.APKINDEX.tar.gz", 5646),
            ("iso-3.19.1-standard-x86_64.APKINDEX.tar.gz", 100),
        ] {
            let idx = read_verified_index(&fixture(file), file, &ring).unwrap();
            assert_eq!(idx.records.len(), count, "{file}");
            assert!(matches!(&idx.verdict, Verdict::Verified { key_name, .. } if key_name.contains("6165ee59")));
            assert!(idx.records.iter().all(|r| r.uninstallable.is_none()), "{file}");
        }
        let old = read_verified_index(&fixture("v3.19-main-x86_64_v3.19.0-327.APKINDEX.tar.gz"), "t", &ring).unwrap();
        let rtmp = old.records.iter().find(|r| r.name == "rtmpdump-dev").unwrap();
        assert!(rtmp.provides.iter().all(|p| p.name != "pc:librtmp"), "the unparsable `pc:librtmp=v2.4` is skipped");
        let idx = read_verified_index(&fixture("v3.22-main-x86_64_v3.22.2-204.APKINDEX.tar.gz"), "t", &ring).unwrap();
        assert_eq!(idx.description, "v3.22.2-204-g64f4965b8a7");
        let z = idx.records.iter().find(|r| r.name == "7zip").unwrap();
        assert_eq!(z.version.as_str(), "24.09-r0");
        assert_eq!(z.provider_priority, Some(100));
        assert_eq!(
            z.provides.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["7zip-virtual", "p7zip=24.09-r0", "cmd:7z=24.09-r0", "cmd:7zz=24.09-r0"]
        );
        assert_eq!(z.depends[0].name, "so:libc.musl-x86_64.so.1");
    }

    #[test]
    fn untrusted_and_tampered_indexes_fail() {
        let bytes = fixture("iso-3.19.1-standard-x86_64.APKINDEX.tar.gz");
        let aarch64_only = Keyring::alpine(Some(crate::apk::Arch::Aarch64));
        let e = read_verified_index(&bytes, "idx", &aarch64_only).unwrap_err().to_string();
        assert!(e.contains("UNTRUSTED") && e.contains("6165ee59") && e.contains("--key"), "{e}");
        let ring = Keyring::alpine(None);
        let mut bad = bytes.clone();
        let last = bad.len() - 20;
        bad[last] ^= 0x40;
        let e = read_verified_index(&bad, "idx", &ring).unwrap_err().to_string();
        assert!(e.contains("INVALID"), "{e}");
    }

    #[test]
    fn unknown_fields() {
        let text = "C:Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=\nP:a\nV:1-r0\nA:x86_64\nS:1\nI:2\nz:kept\n\nC:Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=\nP:b\nV:1\nX:new\n";
        let recs = parse_records(text, "t").unwrap();
        assert_eq!(recs[0].extra, [('z', "kept".to_string())]);
        assert!(recs[0].uninstallable.is_none());
        assert!(recs[1].uninstallable.as_deref().unwrap().contains("X:"));
        let e = parse_records("C:Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=\nP:a\nV:1\ngarbage\n", "idx").unwrap_err().to_string();
        assert!(e.contains("idx") && e.contains("line 4"), "{e}");
        let e = parse_records("P:a\nV:1\n", "idx").unwrap_err().to_string();
        assert!(e.contains("C:"), "{e}");
    }

    #[test]
    fn v3_is_named() {
        let e = read_index(b"ADB.xxxx", "Packages.adb", &Keyring::empty()).unwrap_err().to_string();
        assert!(e.contains("Packages.adb") && e.contains("apk v3") && e.contains("only v2"), "{e}");
    }

    #[test]
    fn real_index_round_trips_through_writer() {
        let ring = Keyring::alpine(None);
        let idx = read_verified_index(&fixture("iso-3.19.1-standard-x86_64.APKINDEX.tar.gz"), "t", &ring).unwrap();
        let key = SigningKey::generate("test.rsa.pub", 1024).unwrap();
        let written = write_index(&idx.records, &idx.description, &key, SigAlgo::RsaSha256, 1_700_000_000).unwrap();
        let mut mine = Keyring::empty();
        mine.add("test.rsa.pub", key.public_key());
        let again = read_verified_index(&written, "mine", &mine).unwrap();
        let mut want = idx.records.clone();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(again.records, want);
        assert_eq!(
            written,
            write_index(&idx.records, &idx.description, &key, SigAlgo::RsaSha256, 1_700_000_000).unwrap()
        );
    }
}
