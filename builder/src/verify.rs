//! `hyve verify`: a published build (a directory, a `SHA256SUMS` file or a URL) against a
//! rebuild from the lock, file by file and byte by byte. Where the published bytes can be
//! had, a difference is reported with its first differing offset; where only a checksum was
//! published, by checksum.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::build::SHA256SUMS;
use crate::fetch::{FetchError, Fetcher};
use crate::fsutil;
use crate::output::lima::LIMA_TEMPLATE;
use crate::output::manifest::Manifest;
use crate::output::sums::{parse_sha256sums, BadSums};

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifyError {
    /// The published manifest cannot be read.
    #[error("{origin}: not a hyve manifest.json ({detail}); was it written by another tool or a much older hyve?")]
    Manifest { origin: String, detail: String },
    /// A published file could not be downloaded.
    #[error("the published {name} could not be fetched: {source}")]
    Fetch { name: String, source: Box<FetchError> },
    /// `--against` names nothing usable.
    #[error("--against {against:?}: expected an output directory, a SHA256SUMS file or an http(s)/file URL (of SHA256SUMS or of the directory holding it)")]
    Against { against: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    #[serde(untagged)]
    Sums(#[from] BadSums),
}

type Result<T> = std::result::Result<T, VerifyError>;

/// What was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// An output directory: every file in it.
    Dir(PathBuf),
    /// A `SHA256SUMS` file: the files it lists (compared byte for byte when they sit beside it).
    Sums(PathBuf),
    /// `<base>/SHA256SUMS` on a server, the files beside it fetched when they differ.
    Url { base: String },
}

impl Published {
    pub fn parse(against: &str) -> Result<Published> {
        if ["http://", "https://", "file://"].iter().any(|p| against.starts_with(p)) {
            let trimmed = against.trim_end_matches('/');
            let base = trimmed.strip_suffix(&format!("/{SHA256SUMS}")).unwrap_or(trimmed);
            return Ok(Published::Url { base: base.to_string() });
        }
        let path = PathBuf::from(against);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Published::Dir(path)),
            Ok(_) => Ok(Published::Sums(path)),
            Err(_) => Err(VerifyError::Against { against: against.to_string() }),
        }
    }

    /// Where a published file's bytes are, if they can be had.
    fn source(&self, name: &str) -> Source {
        match self {
            Published::Dir(d) => Source::Local(d.join(name)),
            Published::Sums(p) => {
                let beside = p.parent().unwrap_or(Path::new(".")).join(name);
                if beside.is_file() {
                    Source::Local(beside)
                } else {
                    Source::Unavailable
                }
            }
            Published::Url { base } => Source::Remote(format!("{base}/{name}")),
        }
    }

    fn fetch(&self, name: &str, fetcher: &Fetcher, scratch: &Path) -> Result<Option<PathBuf>> {
        match self.source(name) {
            Source::Local(p) => Ok(Some(p)),
            Source::Unavailable => Ok(None),
            Source::Remote(url) => {
                let (tmp, _, _) = fetcher
                    .download_file(&url, scratch)
                    .map_err(|e| VerifyError::Fetch { name: name.to_string(), source: Box::new(e) })?;
                let (_, path) = tmp.keep().map_err(|e| crate::fsutil::at_named(url)(e.error))?;
                Ok(Some(path))
            }
        }
    }

    /// The published `manifest.json`, when there is one: a rebuild takes its
    /// SOURCE_DATE_EPOCH and arch from it.
    pub fn manifest(&self, fetcher: &Fetcher, scratch: &Path) -> Result<Option<Manifest>> {
        let path = match self.fetch("manifest.json", fetcher, scratch) {
            Ok(Some(p)) if p.is_file() => p,
            Ok(_) => return Ok(None),
            Err(VerifyError::Fetch { source, .. }) if matches!(*source, FetchError::NotFound { .. }) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let bytes = std::fs::read(&path).map_err(fsutil::at(&path))?;
        Manifest::from_json(&bytes)
            .map(Some)
            .map_err(|detail| VerifyError::Manifest { origin: path.display().to_string(), detail })
    }

    /// Published file names with their listed SHA-256 (`None` when only the bytes are known).
    fn listing(&self, fetcher: &Fetcher, scratch: &Path) -> Result<BTreeMap<String, Option<String>>> {
        if let Published::Dir(d) = self {
            let mut out = BTreeMap::new();
            for e in std::fs::read_dir(d).map_err(fsutil::at(d))? {
                let e = e.map_err(fsutil::at(d))?;
                if e.file_type().map_err(fsutil::at(&e.path()))?.is_file() {
                    out.insert(e.file_name().to_string_lossy().into_owned(), None);
                }
            }
            return Ok(out);
        }
        let sums = self.fetch(SHA256SUMS, fetcher, scratch)?.expect("SHA256SUMS is local or fetched");
        let text = std::fs::read_to_string(&sums).map_err(fsutil::at(&sums))?;
        let origin = match self {
            Published::Url { base } => format!("{base}/{SHA256SUMS}"),
            _ => sums.display().to_string(),
        };
        let mut out: BTreeMap<_, _> =
            parse_sha256sums(&text, &origin)?.into_iter().map(|(n, h)| (n, Some(h))).collect();
        out.insert(SHA256SUMS.to_string(), None);
        Ok(out)
    }
}

enum Source {
    Local(PathBuf),
    Remote(String),
    Unavailable,
}

/// How one file compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Identical,
    Differs,
    /// The rebuild wrote it; the published set lacks it.
    NotPublished,
    /// Published, but the rebuild does not write it.
    NotRebuilt,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileCheck {
    pub name: String,
    pub verdict: Verdict,
    pub published_sha256: Option<String>,
    pub published_size: Option<u64>,
    pub rebuilt_sha256: Option<String>,
    pub rebuilt_size: Option<u64>,
    /// The first byte offset at which the two differ (the shorter file's length when one
    /// is a prefix of the other); `None` when the published bytes were not available.
    pub first_difference: Option<u64>,
}

/// A file's SHA-256 (hex) and size.
type Digested = (String, u64);

/// SHA-256 and size of a file.
fn digest(path: &Path) -> Result<Digested> {
    Ok(fsutil::sha256_of_file(path)?)
}

/// Both files' SHA-256 and size, and where they first differ, in one streaming pass.
fn compare_files(a: &Path, b: &Path) -> Result<(Digested, Digested, Option<u64>)> {
    let open = |p: &Path| std::fs::File::open(p).map(|f| BufReader::with_capacity(1 << 20, f)).map_err(fsutil::at(p));
    let (mut ra, mut rb) = (open(a)?, open(b)?);
    let (mut ha, mut hb) = (Sha256::new(), Sha256::new());
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let (mut na, mut nb) = (0u64, 0u64);
    let mut first = None;
    loop {
        let la = read_full(&mut ra, &mut ba).map_err(fsutil::at(a))?;
        let lb = read_full(&mut rb, &mut bb).map_err(fsutil::at(b))?;
        ha.update(&ba[..la]);
        hb.update(&bb[..lb]);
        if first.is_none() {
            let common = la.min(lb);
            if let Some(i) = ba[..common].iter().zip(&bb[..common]).position(|(x, y)| x != y) {
                first = Some(na + i as u64);
            } else if la != lb {
                first = Some(na + common as u64);
            }
        }
        na += la as u64;
        nb += lb as u64;
        if la == 0 && lb == 0 {
            break;
        }
    }
    Ok(((hex::encode(ha.finalize()), na), (hex::encode(hb.finalize()), nb), first))
}

/// Fills `buf` unless the input ends first; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every published and every rebuilt file, compared byte for byte where the published bytes
/// can be had (remote ones are downloaded into `scratch` one at a time and removed). With
/// `checksums_only`, a listed checksum that matches the rebuild is trusted without fetching.
pub fn compare(
    published: &Published,
    rebuilt: &Path,
    fetcher: &Fetcher,
    scratch: &Path,
    checksums_only: bool,
) -> Result<Vec<FileCheck>> {
    let mut listed = published.listing(fetcher, scratch)?;
    let mut rebuilt_names = BTreeSet::new();
    for e in std::fs::read_dir(rebuilt).map_err(fsutil::at(rebuilt))? {
        rebuilt_names.insert(e.map_err(fsutil::at(rebuilt))?.file_name().to_string_lossy().into_owned());
    }
    // The Lima template names its own directory's path: not reproducible by design, and not
    // in SHA256SUMS; the disk image it points at is compared like every other output.
    listed.remove(LIMA_TEMPLATE);
    rebuilt_names.remove(LIMA_TEMPLATE);
    let names: BTreeSet<&String> = listed.keys().chain(&rebuilt_names).collect();
    let mut out = Vec::new();
    for name in names {
        let mine = rebuilt_names.contains(name).then(|| rebuilt.join(name));
        let check = |verdict, published: Option<Digested>, rebuilt: Option<Digested>, first| FileCheck {
            name: name.clone(),
            verdict,
            published_sha256: published.as_ref().map(|p| p.0.clone()),
            published_size: published.as_ref().map(|p| p.1),
            rebuilt_sha256: rebuilt.as_ref().map(|r| r.0.clone()),
            rebuilt_size: rebuilt.as_ref().map(|r| r.1),
            first_difference: first,
        };
        let Some(listed_sha) = listed.get(name) else {
            out.push(check(Verdict::NotPublished, None, Some(digest(mine.as_ref().expect("rebuilt"))?), None));
            continue;
        };
        let Some(mine) = mine else {
            let published = match published.source(name) {
                Source::Local(p) => Some(digest(&p)?),
                _ => None,
            };
            let mut c = check(Verdict::NotRebuilt, published, None, None);
            c.published_sha256 = c.published_sha256.or_else(|| listed_sha.clone());
            out.push(c);
            continue;
        };
        let bytes_wanted = !checksums_only || listed_sha.is_none();
        let theirs = match published.source(name) {
            Source::Unavailable => None,
            Source::Remote(_) if !bytes_wanted => None,
            _ => published.fetch(name, fetcher, scratch)?,
        };
        let Some(theirs) = theirs else {
            // Only the listed checksum to go by.
            let r = digest(&mine)?;
            let verdict =
                if listed_sha.as_deref() == Some(r.0.as_str()) { Verdict::Identical } else { Verdict::Differs };
            let mut c = check(verdict, None, Some(r), None);
            c.published_sha256 = listed_sha.clone();
            out.push(c);
            continue;
        };
        let compared = compare_files(&theirs, &mine);
        if let Source::Remote(_) = published.source(name) {
            let _ = std::fs::remove_file(&theirs); // a downloaded copy; disk images are large
        }
        let (p, r, first) = compared?;
        // The bytes decide; a SHA256SUMS that lists other bytes than it sits beside is wrong too.
        let listed_agrees = listed_sha.as_ref().is_none_or(|s| *s == p.0);
        let verdict = if first.is_none() && listed_agrees { Verdict::Identical } else { Verdict::Differs };
        let mut c = check(verdict, Some(p), Some(r), first);
        if !listed_agrees && first.is_none() {
            c.published_sha256 = listed_sha.clone();
            c.published_size = None;
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lima.yaml names the directory it sits in, so it differs between any two builds: it is
    /// left out on both sides, and everything beside it is still compared.
    #[test]
    fn the_lima_template_is_not_compared() {
        struct Quiet;
        impl crate::report::Reporter for Quiet {}
        let d = tempfile::tempdir().unwrap();
        let (published, rebuilt) = (d.path().join("published"), d.path().join("rebuilt"));
        for (dir, location) in [(&published, "/home/ci/out/disk.img"), (&rebuilt, "/tmp/verify/disk.img")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("disk.img"), b"the same disk").unwrap();
            std::fs::write(dir.join(LIMA_TEMPLATE), format!("images:\n- location: {location:?}\n")).unwrap();
        }
        std::fs::write(rebuilt.join("kernel"), b"only rebuilt").unwrap();
        let fetcher = Fetcher::new(crate::fetch::FetchOptions::new(d.path().join("cache")), &Quiet).unwrap();
        let checks = compare(&Published::Dir(published), &rebuilt, &fetcher, d.path(), false).unwrap();
        let verdicts: Vec<_> = checks.iter().map(|c| (c.name.as_str(), c.verdict)).collect();
        assert_eq!(verdicts, [("disk.img", Verdict::Identical), ("kernel", Verdict::NotPublished)]);
    }

    #[test]
    fn first_difference_and_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(compare_files(&a, &b).unwrap().2, None);
        bytes[150_001] ^= 0x40;
        std::fs::write(&b, &bytes).unwrap();
        let (pa, pb, first) = compare_files(&a, &b).unwrap();
        assert_eq!(first, Some(150_001));
        assert_ne!(pa.0, pb.0);
        assert_eq!((pa.1, pb.1), (200_000, 200_000));
        std::fs::write(&b, &bytes[..70_000]).unwrap();
        assert_eq!(compare_files(&a, &b).unwrap().2, Some(70_000), "a prefix differs where it ends");
    }

    #[test]
    fn against_is_a_dir_a_sums_file_or_a_url() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Published::parse(d.path().to_str().unwrap()).unwrap(), Published::Dir(d.path().into()));
        let sums = d.path().join("SHA256SUMS");
        std::fs::write(&sums, "").unwrap();
        assert_eq!(Published::parse(sums.to_str().unwrap()).unwrap(), Published::Sums(sums));
        assert_eq!(
            Published::parse("https://example.org/r/v1/SHA256SUMS").unwrap(),
            Published::Url { base: "https://example.org/r/v1".into() }
        );
        assert_eq!(Published::parse("http://h/r/").unwrap(), Published::Url { base: "http://h/r".into() });
        let e = Published::parse("/no/such/thing").unwrap_err().to_string();
        assert!(e.contains("/no/such/thing") && e.contains("SHA256SUMS"), "{e}");
    }
}
