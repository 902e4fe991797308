//! Unpacking verified packages into the tree, in install order, the way `apk add` would —
//! except that install scripts never run on the host. What the profiles' scripts do is
//! reproduced instead: users and groups (`addgroup` / `adduser`) and busybox applet links.
//! Anything else a script does is reported as a warning naming the package and the line.
//! Here: unpacking and checking; `scripts`: the script interpreter; `db`: the installed
//! database apk reads in the guest.

mod db;
mod scripts;

pub use db::installed_db;
use scripts::{busybox_links, run_scripts};

use std::collections::BTreeSet;
use std::path::PathBuf;

use sha2::Sha256;

use crate::apk::archive::{DataEntry, EntryKind};
use crate::apk::package::{Control, Limits, PackageReader};
use crate::apk::pkginfo::PkgInfo;
use crate::apk::Q1;
use crate::tree::{Blob, ContentStore, Node, NodeKind, Overwrite, StoreWriter, Tree, TreeError};

/// A package file to install and the identity it must have.
#[derive(Debug, Clone)]
pub struct PackageFile {
    pub path: PathBuf,
    pub q1: Q1,
    /// The lock's pin of the whole file (trust link 2), checked in the same pass that
    /// unpacks it.
    pub sha256: String,
    pub installed_size: u64,
}

/// What was installed, for `/lib/apk/db/installed`, the manifest and the SBOM.
#[derive(Debug, Clone)]
pub struct InstalledPackage {
    pub info: PkgInfo,
    pub q1: Q1,
    /// Paths the package owns, in archive order, with the SHA-1 apk records for them.
    pub files: Vec<(String, EntryKind, Option<[u8; 20]>)>,
}

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstallError {
    #[error("installing {package}: {source}")]
    Tree { package: String, source: Box<TreeError> },
    #[error("content store: {source}")]
    Store {
        #[from]
        #[serde(serialize_with = "crate::serialize_display")]
        source: std::io::Error,
    },
    #[error("installing {package}: {detail}")]
    Script { package: String, detail: String },
    /// A package built for another architecture (its .PKGINFO says so).
    #[error("{path}: {package} is built for {actual}, not {expected}; the repository serves the wrong architecture's package")]
    WrongArch { path: String, package: String, expected: String, actual: String },
    /// Trust link 2 on a cached file, checked while unpacking it.
    #[error("{path}: SHA-256 {actual} does not match the lock's {expected}; the corrupt cache entry was removed — run the build again to fetch it")]
    CacheCorrupt { path: String, expected: String, actual: String },
    #[error(transparent)]
    #[serde(untagged)]
    Apk(#[from] crate::apk::Error),
}

type Result<T> = std::result::Result<T, InstallError>;

/// A package read, checked and its files' contents stored, not yet in any tree: the half of
/// installing that needs no tree, so that packages unpack on several threads while
/// `Installer::install` takes them in install order.
pub struct Unpacked {
    control: Control,
    /// The data entries in archive order, with the blobs of the files.
    entries: Vec<(DataEntry, Option<Blob>)>,
}

/// Reads `pkg` once: its lock pin (trust link 2), Q1, datahash and every file's SHA-1 are
/// checked in the pass that unpacks it, and it must be built for `arch` (or `noarch`). The
/// contents go to `store` (a writer of the store the tree's blobs are in).
pub fn unpack(pkg: &PackageFile, arch: crate::apk::Arch, store: &mut StoreWriter) -> Result<Unpacked> {
    let origin = pkg.path.display().to_string();
    let io_error = |source| crate::apk::Error::Io { origin: origin.clone(), source };
    let file = std::fs::File::open(&pkg.path).map_err(io_error)?;
    let mut hashing = crate::fsutil::Hashing::<_, Sha256>::new(file);
    let reader = PackageReader::open(
        std::io::BufReader::new(&mut hashing),
        &origin,
        Limits::for_installed_size(pkg.installed_size),
        Some(pkg.q1),
    )
    .map_err(|e| corrupt_or(e, pkg))?;
    let control = reader.control.clone();
    if control.info.arch != arch.as_str() && control.info.arch != "noarch" {
        return Err(InstallError::WrongArch {
            path: origin,
            package: control.info.name.clone(),
            expected: arch.to_string(),
            actual: control.info.arch.clone(),
        });
    }
    let mut entries = Vec::new();
    reader
        .read_data(|entry, content| {
            let blob = match entry.kind {
                // Checked against the bytes before `read_data` returns.
                EntryKind::File => {
                    let sha1 = entry.sha1.expect("read_data shows a file only with its checksum");
                    Some(store.add(content, sha1).map_err(io_error)?)
                }
                _ => None,
            };
            entries.push((entry.clone(), blob));
            Ok(())
        })
        .map_err(|e| corrupt_or(e, pkg))?;
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io_error)?;
    let actual = hex::encode(hashing.finish().1);
    if actual != pkg.sha256 {
        return Err(cache_corrupt(pkg, actual));
    }
    Ok(Unpacked { control, entries })
}

/// Installs unpacked packages into a tree one at a time, in install order, as they become
/// available (the build unpacks packages on several threads while later ones are still
/// downloading); `finish` returns what was installed and warnings about script commands that
/// were not reproduced. (Mtimes are clamped when the tree is written.)
pub struct Installer<'a> {
    tree: &'a mut Tree,
    store: &'a mut ContentStore,
    installed: Vec<InstalledPackage>,
    warnings: Vec<String>,
}

impl<'a> Installer<'a> {
    pub fn new(tree: &'a mut Tree, store: &'a mut ContentStore) -> Self {
        Installer { tree, store, installed: Vec::new(), warnings: Vec::new() }
    }

    /// Installs the next package in install order. Only a package that `unpack` checked
    /// whole, into one of this store's writers, reaches the tree.
    pub fn install(&mut self, pkg: Unpacked) -> Result<()> {
        let (tree, store, warnings) = (&mut *self.tree, &mut *self.store, &mut self.warnings);
        let Unpacked { control, entries } = pkg;
        let name = control.info.name.clone();
        let replaces: BTreeSet<String> = control.info.replaces.iter().map(|d| d.name.clone()).collect();
        run_scripts(tree, store, &name, &control.scripts, &[".pre-install"], warnings)?;
        let mut files = Vec::new();
        for (entry, blob) in entries {
            let (uid, gid) = owner_ids(tree, store, &entry);
            let kind = match &entry.kind {
                EntryKind::File => NodeKind::File(blob.expect("blob stored for files")),
                EntryKind::Dir => NodeKind::Dir,
                EntryKind::Symlink { target } => NodeKind::Symlink(target.clone()),
                EntryKind::Hardlink { target } => NodeKind::Hardlink(target.clone()),
                EntryKind::CharDevice { major, minor } => NodeKind::CharDevice(*major, *minor),
                EntryKind::BlockDevice { major, minor } => NodeKind::BlockDevice(*major, *minor),
                EntryKind::Fifo => NodeKind::Fifo,
            };
            let node = Node {
                kind,
                mode: entry.mode,
                uid,
                gid,
                mtime: entry.mtime,
                xattrs: entry.xattrs.clone(),
                owner: name.clone(),
            };
            let overwrite = match tree.get(&entry.path) {
                Some(existing) if replaces.contains(&existing.owner) => Overwrite::Allowed,
                _ => Overwrite::Never,
            };
            tree.insert(&entry.path, node, overwrite)
                .map_err(|source| InstallError::Tree { package: name.clone(), source: Box::new(source) })?;
            files.push((entry.path, entry.kind, entry.sha1));
        }
        run_scripts(tree, store, &name, &control.scripts, &[".post-install", ".trigger"], warnings)?;
        self.installed.push(InstalledPackage { info: control.info, q1: control.q1, files });
        Ok(())
    }

    /// Checks hardlinks across packages, adds busybox's applet links; what was installed and
    /// the warnings.
    pub fn finish(mut self) -> Result<(Vec<InstalledPackage>, Vec<String>)> {
        self.tree
            .check_hardlinks()
            .map_err(|source| InstallError::Tree { package: "(all)".into(), source: Box::new(source) })?;
        busybox_links(self.tree, self.store, &mut self.warnings)?;
        Ok((self.installed, self.warnings))
    }
}

/// A cached file that fails a check it passed on its way into the cache has changed since:
/// when its bytes no longer match the pin, that is the error (and the entry is removed).
fn corrupt_or(e: crate::apk::Error, pkg: &PackageFile) -> InstallError {
    match std::fs::File::open(&pkg.path).and_then(crate::fsutil::sha256_of) {
        Ok((actual, _)) if actual != pkg.sha256 => cache_corrupt(pkg, actual),
        _ => e.into(),
    }
}

fn cache_corrupt(pkg: &PackageFile, actual: String) -> InstallError {
    let _ = std::fs::remove_file(&pkg.path);
    InstallError::CacheCorrupt { path: pkg.path.display().to_string(), expected: pkg.sha256.clone(), actual }
}

/// Header owner names win over numbers when the guest's passwd/group know them, as apk
/// resolves them against the target root.
fn owner_ids(tree: &Tree, store: &ContentStore, entry: &DataEntry) -> (u32, u32) {
    let lookup = |file: &str, name: &Option<String>, fallback: u32| -> u32 {
        let Some(name) = name else { return fallback };
        if name == "root" {
            return 0;
        }
        read_text(tree, store, file)
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok()).flatten()
                })
            })
            .unwrap_or(fallback)
    };
    (lookup("etc/passwd", &entry.uname, entry.uid), lookup("etc/group", &entry.gname, entry.gid))
}

pub(crate) fn read_text(tree: &Tree, store: &ContentStore, path: &str) -> Option<String> {
    let bytes = store.read_all(tree.file(path)?).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn write_text(
    tree: &mut Tree,
    store: &mut ContentStore,
    path: &str,
    text: &str,
    mode: u32,
    mtime: u64,
) -> Result<()> {
    let blob = store.add_bytes(text.as_bytes())?;
    let (uid, gid, mode, mtime) = match tree.get(path) {
        Some(n) => (n.uid, n.gid, n.mode, n.mtime),
        None => (0, 0, mode, mtime),
    };
    let node = Node { kind: NodeKind::File(blob), mode, uid, gid, mtime, xattrs: vec![], owner: "hyve".into() };
    tree.insert(path, node, Overwrite::Allowed)
        .map_err(|source| InstallError::Tree { package: "hyve".into(), source: Box::new(source) })
}
