//! `hyve diff`: what differs between two builds — output directories, initrds, root images or
//! disk images — in terms a person can act on: packages and versions, kernel, command line, and
//! the files of the guest (type, mode, owner, size, SHA-256). Modification times are left
//! out: they all equal SOURCE_DATE_EPOCH, which is compared once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read};
use std::path::Path;

use serde::Serialize;

use crate::build::{ROOT_IMAGE, SHA256SUMS};
use crate::fsutil;
use crate::output::cpio::{read_archive, CpioEntry, ReadArchive};
use crate::output::manifest::Manifest;
use crate::output::sums::{parse_sha256sums, BadSums};
use crate::output::{disk, squashfs};

/// Where the guest keeps its copy of the build manifest.
pub const GUEST_MANIFEST: &str = "etc/hyve/manifest.json";

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiffError {
    #[error("{path}: not a hyve manifest ({detail})")]
    Manifest { path: String, detail: String },
    /// Neither an output directory nor an image.
    #[error("{path}: expected a hyve output directory, an initrd.img, a root.squashfs or a disk.img ({detail})")]
    Unknown { path: String, detail: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    #[serde(untagged)]
    Disk(#[from] disk::DiskError),
    #[error(transparent)]
    #[serde(untagged)]
    Sums(#[from] BadSums),
}

type Result<T> = std::result::Result<T, DiffError>;

/// One side of a diff.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub manifest: Option<Manifest>,
    /// The guest's files by path (from the root image or the initrd, or the disk image's copy).
    pub files: Option<BTreeMap<String, CpioEntry>>,
    /// Output file → SHA-256 (from SHA256SUMS, for an output directory).
    pub outputs: BTreeMap<String, String>,
    pub kernel_sha256: Option<String>,
    pub cmdline: Option<String>,
}

fn parse_manifest(bytes: &[u8], path: &str) -> Result<Manifest> {
    Manifest::from_json(bytes).map_err(|detail| DiffError::Manifest { path: path.into(), detail })
}

/// A guest's files by path, and the manifest among them (kept by the reader).
fn guest_files((entries, kept): ReadArchive, origin: &str) -> Result<(BTreeMap<String, CpioEntry>, Option<Manifest>)> {
    let manifest = match kept.get(GUEST_MANIFEST) {
        Some(bytes) => Some(parse_manifest(bytes, &format!("{origin}: /{GUEST_MANIFEST}"))?),
        None => None,
    };
    Ok((entries.into_iter().map(|e| (e.name.clone(), e)).collect(), manifest))
}

/// The files of a compressed initramfs, and the guest manifest inside it.
fn read_initrd(input: impl Read, origin: &str) -> Result<(BTreeMap<String, CpioEntry>, Option<Manifest>)> {
    let at = |e| DiffError::from(crate::fsutil::at_named(origin)(e));
    let reader = crate::output::compress::decompressor(BufReader::new(input)).map_err(at)?;
    let archive = read_archive(BufReader::new(reader), |n| n == GUEST_MANIFEST).map_err(at)?;
    guest_files(archive, origin)
}

/// The files of a SquashFS root image at `offset` in `path`, and the guest manifest inside.
fn read_root_image(path: &Path, offset: u64, origin: &str) -> Result<(BTreeMap<String, CpioEntry>, Option<Manifest>)> {
    let file = std::fs::File::open(path).map_err(fsutil::at(path))?;
    let at = |e| DiffError::from(crate::fsutil::at_named(origin)(e));
    let image = squashfs::read_image(BufReader::new(file), offset, origin, |n| n == GUEST_MANIFEST).map_err(at)?;
    guest_files(image, origin)
}

/// The guest's files (from its root partition, else the initrd), kernel and command line
/// inside a hyve disk image.
fn read_disk(path: &Path) -> Result<Snapshot> {
    let origin = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(fsutil::at(path))?;
    let (_, parts) = disk::read_gpt(&mut f, &origin)?;
    let esp = parts.iter().find(|p| p.type_guid == disk::ESP_TYPE).ok_or_else(|| DiffError::Unknown {
        path: origin.clone(),
        detail: "the GPT has no EFI system partition".into(),
    })?;
    let (files, manifest) = match parts.iter().find(|p| p.name == disk::ROOT_LABEL) {
        Some(root) => read_root_image(path, root.first_lba * disk::SECTOR, &format!("{origin}: {}", disk::ROOT_LABEL))?,
        None => disk::with_esp_file(&mut f, esp, "hyve/initrd.img", |r| {
            read_initrd(r, &format!("{origin}: hyve/initrd.img")).map_err(std::io::Error::other)
        })?,
    };
    let (kernel_sha256, _) = disk::with_esp_file(&mut f, esp, "hyve/kernel", |r| crate::fsutil::sha256_of(r))?;
    let entry = disk::read_esp_file(&mut f, esp, "loader/entries/hyve.conf", 64 << 10)?;
    let cmdline =
        String::from_utf8_lossy(&entry).lines().find_map(|l| l.strip_prefix("options ")).map(|s| s.trim().to_string());
    Ok(Snapshot { manifest, files: Some(files), outputs: BTreeMap::new(), kernel_sha256: Some(kernel_sha256), cmdline })
}

/// Reads an output directory, an initrd or a disk image.
pub fn load(path: &Path) -> Result<Snapshot> {
    let origin = path.display().to_string();
    if path.is_dir() {
        let mpath = path.join("manifest.json");
        let bytes = std::fs::read(&mpath).map_err(|e| DiffError::Unknown {
            path: origin.clone(),
            detail: format!("no readable manifest.json: {e}"),
        })?;
        let manifest = parse_manifest(&bytes, &mpath.display().to_string())?;
        let sums_path = path.join(SHA256SUMS);
        let outputs = match std::fs::read_to_string(&sums_path) {
            Ok(text) => parse_sha256sums(&text, &sums_path.display().to_string())?,
            Err(_) => BTreeMap::new(),
        };
        let root = path.join(ROOT_IMAGE);
        let mut snap = if root.is_file() {
            let (files, _) = read_root_image(&root, 0, &root.display().to_string())?;
            Snapshot { files: Some(files), ..Default::default() }
        } else if path.join("initrd.img").is_file() {
            let p = path.join("initrd.img");
            let (files, _) = read_initrd(std::fs::File::open(&p).map_err(fsutil::at(&p))?, &p.display().to_string())?;
            Snapshot { files: Some(files), ..Default::default() }
        } else if path.join("disk.img").is_file() {
            read_disk(&path.join("disk.img"))?
        } else {
            Snapshot::default()
        };
        snap.kernel_sha256 = manifest.outputs.get("kernel").map(|o| o.sha256.clone()).or(snap.kernel_sha256);
        snap.cmdline = Some(manifest.cmdline.clone());
        snap.manifest = Some(manifest);
        snap.outputs = outputs;
        return Ok(snap);
    }
    let mut head = Vec::new();
    std::fs::File::open(path).map_err(fsutil::at(path))?.take(520).read_to_end(&mut head).map_err(fsutil::at(path))?;
    if disk::looks_like_gpt(&head) {
        return read_disk(path);
    }
    if head.starts_with(squashfs::MAGIC) {
        let (files, manifest) = read_root_image(path, 0, &origin)?;
        let cmdline = manifest.as_ref().map(|m| m.cmdline.clone());
        return Ok(Snapshot { manifest, files: Some(files), outputs: BTreeMap::new(), kernel_sha256: None, cmdline });
    }
    let file = std::fs::File::open(path).map_err(fsutil::at(path))?;
    let (files, manifest) =
        read_initrd(file, &origin).map_err(|e| DiffError::Unknown { path: origin.clone(), detail: e.to_string() })?;
    let cmdline = manifest.as_ref().map(|m| m.cmdline.clone());
    Ok(Snapshot { manifest, files: Some(files), outputs: BTreeMap::new(), kernel_sha256: None, cmdline })
}

/// A value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub from: T,
    pub to: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedChange {
    pub name: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Default, Serialize)]
pub struct PackageDiff {
    /// (name, version)
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    /// Version changes.
    pub changed: Vec<NamedChange>,
    /// Same version, different .apk file (a rebuild upstream, or another repository).
    pub rebuilt: Vec<NamedChange>,
}

impl PackageDiff {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.rebuilt.is_empty()
    }
}

/// A guest file as the diff shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    pub path: String,
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo`, `socket`
    pub kind: &'static str,
    pub mode: String,
    pub owner: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl FileInfo {
    fn of(e: &CpioEntry) -> FileInfo {
        let kind = match e.mode & 0o170000 {
            0o100000 => "file",
            0o040000 => "dir",
            0o120000 => "symlink",
            0o020000 => "char",
            0o060000 => "block",
            0o010000 => "fifo",
            _ => "socket",
        };
        FileInfo {
            path: format!("/{}", e.name),
            kind,
            mode: format!("{:04o}", e.mode & 0o7777),
            owner: format!("{}:{}", e.uid, e.gid),
            size: u64::from(e.size),
            sha256: e.sha256.clone(),
            link: e.link.clone(),
            device: (kind == "char" || kind == "block").then(|| format!("{},{}", e.rdev_major, e.rdev_minor)),
        }
    }

    /// What differs, as `field: from -> to`.
    fn changes(&self, to: &FileInfo) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} {a} -> {b}"));
            }
        };
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        field("type", self.kind.into(), to.kind.into());
        field("mode", self.mode.clone(), to.mode.clone());
        field("owner", self.owner.clone(), to.owner.clone());
        field("size", self.size.to_string(), to.size.to_string());
        field("sha256", opt(&self.sha256), opt(&to.sha256));
        field("link", opt(&self.link), opt(&to.link));
        field("device", opt(&self.device), opt(&to.device));
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    pub path: String,
    pub changes: Vec<String>,
    pub from: FileInfo,
    pub to: FileInfo,
}

#[derive(Debug, Default, Serialize)]
pub struct FileDiff {
    pub added: Vec<FileInfo>,
    pub removed: Vec<FileInfo>,
    pub changed: Vec<FileChange>,
}

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    /// Profile, arch, branch, SOURCE_DATE_EPOCH, lock, hyve version.
    pub build: Vec<NamedChange>,
    /// `None` when a side has no manifest.
    pub packages: Option<PackageDiff>,
    pub kernel: Option<Change<String>>,
    pub cmdline: Option<Change<String>>,
    /// `None` when a side has no initrd to read.
    pub files: Option<FileDiff>,
    /// Output files whose SHA-256 differs, or that only one side has.
    pub outputs: Vec<NamedChange>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.build.is_empty()
            && self.packages.as_ref().is_none_or(PackageDiff::is_empty)
            && self.kernel.is_none()
            && self.cmdline.is_none()
            && self.files.as_ref().is_none_or(|f| f.added.is_empty() && f.removed.is_empty() && f.changed.is_empty())
            && self.outputs.is_empty()
    }
}

fn kernel_text(m: Option<&Manifest>, sha: &Option<String>) -> String {
    let pkg = m.map(|m| format!("{} {} ", m.kernel.package, m.kernel.version)).unwrap_or_default();
    format!("{pkg}sha256 {}", sha.as_deref().unwrap_or("unknown"))
}

/// Compares two snapshots.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Diff {
    let mut d = Diff::default();
    if let (Some(ma), Some(mb)) = (&a.manifest, &b.manifest) {
        let fields = [
            ("profile", ma.profile.clone(), mb.profile.clone()),
            ("arch", ma.arch.clone(), mb.arch.clone()),
            ("branch", ma.branch.clone(), mb.branch.clone()),
            ("source_date_epoch", ma.source_date_epoch.to_string(), mb.source_date_epoch.to_string()),
            ("lock", ma.lock.sha256.clone(), mb.lock.sha256.clone()),
            ("hyve_version", ma.hyve_version.clone(), mb.hyve_version.clone()),
        ];
        d.build = fields
            .into_iter()
            .filter(|(_, x, y)| x != y)
            .map(|(n, from, to)| NamedChange { name: n.into(), from, to })
            .collect();
        let index = |m: &Manifest| m.packages.iter().map(|p| (p.name.clone(), p.clone())).collect::<BTreeMap<_, _>>();
        let (pa, pb) = (index(ma), index(mb));
        let mut pd = PackageDiff::default();
        for (name, p) in &pa {
            match pb.get(name) {
                None => pd.removed.push((name.clone(), p.version.clone())),
                Some(q) if q.version != p.version => {
                    pd.changed.push(NamedChange { name: name.clone(), from: p.version.clone(), to: q.version.clone() })
                }
                Some(q) if q.sha256 != p.sha256 => {
                    pd.rebuilt.push(NamedChange { name: name.clone(), from: p.sha256.clone(), to: q.sha256.clone() })
                }
                Some(_) => {}
            }
        }
        pd.added =
            pb.iter().filter(|(n, _)| !pa.contains_key(*n)).map(|(n, p)| (n.clone(), p.version.clone())).collect();
        d.packages = Some(pd);
    }
    if a.kernel_sha256.is_some() && b.kernel_sha256.is_some() && a.kernel_sha256 != b.kernel_sha256 {
        d.kernel = Some(Change {
            from: kernel_text(a.manifest.as_ref(), &a.kernel_sha256),
            to: kernel_text(b.manifest.as_ref(), &b.kernel_sha256),
        });
    }
    if let (Some(x), Some(y)) = (&a.cmdline, &b.cmdline) {
        if x != y {
            d.cmdline = Some(Change { from: x.clone(), to: y.clone() });
        }
    }
    if let (Some(fa), Some(fb)) = (&a.files, &b.files) {
        let mut fd = FileDiff::default();
        for (path, e) in fa {
            match fb.get(path) {
                None => fd.removed.push(FileInfo::of(e)),
                Some(f) => {
                    let (x, y) = (FileInfo::of(e), FileInfo::of(f));
                    let changes = x.changes(&y);
                    if !changes.is_empty() {
                        fd.changed.push(FileChange { path: x.path.clone(), changes, from: x, to: y });
                    }
                }
            }
        }
        fd.added = fb.iter().filter(|(p, _)| !fa.contains_key(*p)).map(|(_, e)| FileInfo::of(e)).collect();
        d.files = Some(fd);
    }
    let names: BTreeSet<&String> = a.outputs.keys().chain(b.outputs.keys()).collect();
    for name in names {
        let (x, y) = (a.outputs.get(name), b.outputs.get(name));
        if x != y {
            let show = |s: Option<&String>| s.cloned().unwrap_or_else(|| "(absent)".into());
            d.outputs.push(NamedChange { name: name.clone(), from: show(x), to: show(y) });
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, mode: u32, size: u32, sha: Option<&str>) -> CpioEntry {
        CpioEntry {
            name: name.into(),
            ino: 1,
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 5,
            size,
            rdev_major: 0,
            rdev_minor: 0,
            link: None,
            sha256: sha.map(Into::into),
        }
    }

    #[test]
    fn files_added_removed_and_changed_field_by_field() {
        let files = |v: Vec<CpioEntry>| Some(v.into_iter().map(|e| (e.name.clone(), e)).collect());
        let a = Snapshot {
            files: files(vec![
                entry("etc", 0o040755, 0, None),
                entry("etc/motd", 0o100644, 3, Some("aa")),
                entry("bin/old", 0o100755, 1, Some("bb")),
            ]),
            ..Default::default()
        };
        let mut moved = entry("etc/motd", 0o100600, 4, Some("cc"));
        moved.mtime = 99;
        let b = Snapshot {
            files: files(vec![entry("etc", 0o040755, 0, None), moved, entry("bin/new", 0o100755, 1, Some("bb"))]),
            ..Default::default()
        };
        let d = diff(&a, &b);
        let f = d.files.as_ref().unwrap();
        assert_eq!(f.added.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/bin/new"]);
        assert_eq!(f.removed.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/bin/old"]);
        assert_eq!(f.changed.len(), 1);
        assert_eq!(
            f.changed[0].changes,
            ["mode 0644 -> 0600", "size 3 -> 4", "sha256 aa -> cc"],
            "mtime is not a change"
        );
        assert!(!d.is_empty());
        assert!(diff(&a, &a).is_empty());
    }
}
