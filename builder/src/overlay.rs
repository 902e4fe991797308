//! The profile's overlay directories and the files hyve generates, laid over the packages.
//! Modes are normalised the way git records them, so a checkout's umask never reaches the
//! guest: directories 0755, files 0755 when their owner may execute them, else 0644, unless
//! the overlay's `.hyve-modes` file (lines `PATH MODE`, octal) states a mode on purpose
//! (setuid helpers, 0600 secrets). Owners are root unless `.hyve-owners` (lines
//! `PATH UID GID`) says otherwise. Nothing from the host's metadata (owner, times, umask)
//! leaks in.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::tree::{ContentStore, Node, NodeKind, Overwrite, Tree};

/// The manifest of owners inside an overlay directory.
pub const OWNERS_FILE: &str = ".hyve-owners";
/// The manifest of modes stated on purpose inside an overlay directory.
pub const MODES_FILE: &str = ".hyve-modes";

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OverlayError {
    #[error("overlay directory {dir} does not exist (named by the profile); create it or remove it from `overlays`")]
    Missing { dir: String },
    #[error("{path}:{line}: expected `{expected}`, found {text:?}")]
    Listing { path: String, line: usize, expected: &'static str, text: String },
    #[error("{path}: names {entry}, which is not in the overlay")]
    ListedMissing { path: String, entry: String },
    #[error("{path}: {detail}")]
    Unsupported { path: String, detail: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
    #[error("overlay: {0}")]
    #[serde(untagged)]
    Tree(#[from] crate::tree::TreeError),
}

type Result<T> = std::result::Result<T, OverlayError>;

/// The lines `PATH FIELD...` of the listing `file` in `dir` (none when it does not exist),
/// each parsed by `parse`; `expected` describes a line for the error message.
fn read_listing<T>(
    dir: &Path,
    file: &str,
    expected: &'static str,
    parse: impl Fn(&[&str]) -> Option<T>,
) -> Result<BTreeMap<String, T>> {
    let path = dir.join(file);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(BTreeMap::new()) };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = f.split_first().and_then(|(p, rest)| Some((p.trim_start_matches('/').to_string(), parse(rest)?)));
        let (p, value) = parsed.ok_or_else(|| OverlayError::Listing {
            path: path.display().to_string(),
            line: i + 1,
            expected,
            text: line.into(),
        })?;
        out.insert(p, value);
    }
    Ok(out)
}

fn read_owners(dir: &Path) -> Result<BTreeMap<String, (u32, u32)>> {
    read_listing(dir, OWNERS_FILE, "PATH UID GID", |f| match f {
        [u, g] => u.parse().ok().zip(g.parse().ok()),
        _ => None,
    })
}

fn read_modes(dir: &Path) -> Result<BTreeMap<String, u32>> {
    read_listing(dir, MODES_FILE, "PATH MODE (octal, at most 7777)", |f| match f {
        [m] => u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777),
        _ => None,
    })
}

/// The mode git would record for an entry (what every checkout of it agrees on).
fn normalised_mode(meta: &std::fs::Metadata) -> u32 {
    let ft = meta.file_type();
    if ft.is_symlink() {
        0o777
    } else if ft.is_dir() || meta.permissions().mode() & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

/// What one overlay directory contributed, as the manifest and the SBOM record it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlaySummary {
    /// The directory's own name (`docker`), not its host path, so the manifest does not
    /// depend on where the checkout lives.
    pub name: String,
    pub entries: usize,
    /// SHA-256 over the sorted listing: path, type, mode, owner and content SHA-1 or link
    /// target of every entry. Changes exactly when what the guest gets changes.
    pub sha256: String,
}

/// Lays `dir` over the tree (its files win over the packages').
pub fn apply_dir(tree: &mut Tree, store: &mut ContentStore, dir: &Path, mtime: u64) -> Result<OverlaySummary> {
    if !dir.is_dir() {
        return Err(OverlayError::Missing { dir: dir.display().to_string() });
    }
    let owners = read_owners(dir)?;
    let modes = read_modes(dir)?;
    let paths: Vec<String> =
        fsutil::relative_paths(dir)?.into_iter().filter(|p| p != OWNERS_FILE && p != MODES_FILE).collect();
    for (file, listed) in [(OWNERS_FILE, owners.keys().collect::<Vec<_>>()), (MODES_FILE, modes.keys().collect())] {
        if let Some(entry) = listed.into_iter().find(|p| paths.binary_search(p).is_err()) {
            return Err(OverlayError::ListedMissing {
                path: dir.join(file).display().to_string(),
                entry: entry.clone(),
            });
        }
    }
    let mut digest = Sha256::new();
    for rel in &paths {
        let full = dir.join(rel);
        let meta = std::fs::symlink_metadata(&full).map_err(fsutil::at(&full))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&full).map_err(fsutil::at(&full))?;
            NodeKind::Symlink(
                t.to_str()
                    .ok_or_else(|| OverlayError::Unsupported {
                        path: full.display().to_string(),
                        detail: "link target is not UTF-8".into(),
                    })?
                    .to_string(),
            )
        } else if ft.is_file() {
            let mut f = std::fs::File::open(&full).map_err(fsutil::at(&full))?;
            NodeKind::File(store.add(&mut f).map_err(fsutil::at(&full))?)
        } else {
            return Err(OverlayError::Unsupported {
                path: full.display().to_string(),
                detail: "only files, directories and symlinks can be in an overlay".into(),
            });
        };
        let (uid, gid) = owners.get(rel).copied().unwrap_or((0, 0));
        let mode = match modes.get(rel) {
            Some(&stated) if !ft.is_symlink() => stated,
            _ => normalised_mode(&meta),
        };
        let _ = meta.uid(); // the host owner never reaches the guest
        let what = match &kind {
            NodeKind::File(blob) => format!("file {}", hex::encode(blob.sha1)),
            NodeKind::Symlink(target) => format!("link {target}"),
            _ => "dir".to_string(),
        };
        digest.update(format!("{rel}\0{what}\0{mode:o}\0{uid}:{gid}\n").as_bytes());
        let node = Node { kind, mode, uid, gid, mtime, xattrs: vec![], owner: "overlay".into() };
        if ft.is_dir() && tree.get(rel).is_some_and(|n| n.kind == NodeKind::Dir) {
            continue; // an existing directory keeps the package's metadata
        }
        tree.insert(rel, node, Overwrite::Allowed)?;
    }
    let name = dir.canonicalize().map_err(fsutil::at(dir))?.file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(OverlaySummary { name: name.unwrap_or_default(), entries: paths.len(), sha256: hex::encode(digest.finalize()) })
}

/// A generated file or node (hostname, os-release, manifest, /dev/console, mount points).
pub fn put(
    tree: &mut Tree,
    store: &mut ContentStore,
    path: &str,
    kind: Generated,
    mode: u32,
    mtime: u64,
) -> Result<()> {
    let kind = match kind {
        Generated::Text(t) => NodeKind::File(store.add_bytes(t.as_bytes()).map_err(fsutil::at(Path::new(path)))?),
        Generated::Bytes(b) => NodeKind::File(store.add_bytes(&b).map_err(fsutil::at(Path::new(path)))?),
        Generated::Blob(blob) => NodeKind::File(blob),
        Generated::Dir => {
            if tree.get(path).is_some_and(|n| n.kind == NodeKind::Dir) {
                return Ok(());
            }
            NodeKind::Dir
        }
        Generated::CharDevice(ma, mi) => NodeKind::CharDevice(ma, mi),
    };
    tree.insert(
        path,
        Node { kind, mode, uid: 0, gid: 0, mtime, xattrs: vec![], owner: "hyve".into() },
        Overwrite::Allowed,
    )?;
    Ok(())
}

pub enum Generated {
    Text(String),
    Bytes(Vec<u8>),
    /// Bytes already in the store.
    Blob(crate::tree::Blob),
    Dir,
    CharDevice(u32, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_wins_normalises_modes_and_reads_owners() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/init.d")).unwrap();
        std::fs::write(d.path().join("etc/init.d/hyve"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(d.path().join("etc/init.d/hyve"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(d.path().join(OWNERS_FILE), "# path uid gid\n/etc/init.d/hyve 0 42\n").unwrap();
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        put(&mut tree, &mut store, "etc/init.d/hyve", Generated::Text("old".into()), 0o644, 1).unwrap();
        let summary = apply_dir(&mut tree, &mut store, d.path(), 5).unwrap();
        assert_eq!(summary.entries, 3);
        let n = tree.get("etc/init.d/hyve").unwrap();
        assert_eq!((n.mode, n.uid, n.gid, n.mtime), (0o755, 0, 42, 5), "owner-executable: 0755 as git has it");
        assert!(tree.get(".hyve-owners").is_none());
        let NodeKind::File(b) = n.kind else { panic!() };
        assert_eq!(store.read_all(b).unwrap(), b"#!/bin/sh\n");
        // Contents, modes and owners change the digest; the host's times and umask do not.
        let again = apply_dir(&mut tree, &mut store, d.path(), 9).unwrap();
        assert_eq!(again.sha256, summary.sha256);
        std::fs::set_permissions(d.path().join("etc/init.d/hyve"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path().join("etc"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(apply_dir(&mut tree, &mut store, d.path(), 5).unwrap().sha256, summary.sha256, "umask 077");
        assert_eq!(tree.get("etc").unwrap().mode, 0o755);
        std::fs::set_permissions(d.path().join("etc/init.d/hyve"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(apply_dir(&mut tree, &mut store, d.path(), 5).unwrap().sha256, summary.sha256);
        assert_eq!(tree.get("etc/init.d/hyve").unwrap().mode, 0o644);
        let e = apply_dir(&mut tree, &mut store, &d.path().join("nope"), 0).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn modes_stated_on_purpose() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/secret")).unwrap();
        std::fs::write(d.path().join("etc/secret/key"), b"k").unwrap();
        std::fs::write(d.path().join("helper"), b"#!/bin/sh\n").unwrap();
        std::fs::write(d.path().join(MODES_FILE), "/etc/secret 0700\n/etc/secret/key 600\nhelper 4755\n").unwrap();
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        apply_dir(&mut tree, &mut store, d.path(), 5).unwrap();
        let mode = |p: &str| tree.get(p).unwrap().mode;
        assert_eq!((mode("etc/secret"), mode("etc/secret/key"), mode("helper")), (0o700, 0o600, 0o4755));
        assert!(tree.get(MODES_FILE).is_none());
        std::fs::write(d.path().join(MODES_FILE), "helper 9755\n").unwrap();
        let e = apply_dir(&mut tree, &mut store, d.path(), 5).unwrap_err().to_string();
        assert!(e.contains(".hyve-modes:1: expected `PATH MODE (octal, at most 7777)`, found \"helper 9755\""), "{e}");
        std::fs::write(d.path().join(MODES_FILE), "helpr 0755\n").unwrap();
        let e = apply_dir(&mut tree, &mut store, d.path(), 5).unwrap_err().to_string();
        assert!(e.contains(".hyve-modes: names helpr, which is not in the overlay"), "{e}");
    }
}
