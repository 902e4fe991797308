//! The profile's overlay directories and the files hyve generates, laid over the packages.
//! Overlay files keep their permission bits; owners are root unless the overlay's
//! `.hyve-owners` file (lines `PATH UID GID`) says otherwise. Nothing from the host's
//! metadata (owner, times) leaks in.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::tree::{ContentStore, Node, NodeKind, Overwrite, Tree};

/// The manifest of owners inside an overlay directory.
pub const OWNERS_FILE: &str = ".hyve-owners";

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay directory {dir} does not exist (named by the profile); create it or remove it from `overlays`")]
    Missing { dir: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: expected `PATH UID GID`, found {text:?}")]
    Owners { path: String, line: usize, text: String },
    #[error("{path}: {detail}")]
    Unsupported { path: String, detail: String },
    #[error("overlay: {0}")]
    Tree(#[from] crate::tree::TreeError),
}

type Result<T> = std::result::Result<T, OverlayError>;

fn io_err(p: &Path) -> impl Fn(std::io::Error) -> OverlayError + '_ {
    move |source| OverlayError::Io { path: p.display().to_string(), source }
}

fn read_owners(dir: &Path) -> Result<BTreeMap<String, (u32, u32)>> {
    let path = dir.join(OWNERS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(BTreeMap::new()) };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [p, u, g] => u.parse().ok().zip(g.parse().ok()).map(|ids| (p.trim_start_matches('/').to_string(), ids)),
            _ => None,
        };
        let (p, ids) = parsed.ok_or_else(|| OverlayError::Owners {
            path: path.display().to_string(),
            line: i + 1,
            text: line.into(),
        })?;
        out.insert(p, ids);
    }
    Ok(out)
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
    let mut paths = Vec::new();
    collect(dir, "", &mut paths)?;
    paths.sort();
    let mut digest = Sha256::new();
    for rel in &paths {
        let full = dir.join(rel);
        let meta = std::fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&full).map_err(io_err(&full))?;
            NodeKind::Symlink(
                t.to_str()
                    .ok_or_else(|| OverlayError::Unsupported {
                        path: full.display().to_string(),
                        detail: "link target is not UTF-8".into(),
                    })?
                    .to_string(),
            )
        } else if ft.is_file() {
            let mut f = std::fs::File::open(&full).map_err(io_err(&full))?;
            NodeKind::File(store.add(&mut f).map_err(io_err(&full))?)
        } else {
            return Err(OverlayError::Unsupported {
                path: full.display().to_string(),
                detail: "only files, directories and symlinks can be in an overlay".into(),
            });
        };
        let (uid, gid) = owners.get(rel).copied().unwrap_or((0, 0));
        let mode = if ft.is_symlink() { 0o777 } else { meta.permissions().mode() & 0o7777 };
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
    let name = dir.canonicalize().map_err(io_err(dir))?.file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(OverlaySummary { name: name.unwrap_or_default(), entries: paths.len(), sha256: hex::encode(digest.finalize()) })
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_str().map(str::to_string).ok_or_else(|| OverlayError::Unsupported {
            path: e.path().display().to_string(),
            detail: "file name is not UTF-8".into(),
        })?;
        if prefix.is_empty() && name == OWNERS_FILE {
            continue;
        }
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if e.file_type().map_err(io_err(&e.path()))?.is_dir() {
            collect(&e.path(), &rel, out)?;
        }
        out.push(rel);
    }
    Ok(())
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
        Generated::Text(t) => NodeKind::File(store.add_bytes(t.as_bytes()).map_err(io_err(Path::new(path)))?),
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
    Dir,
    CharDevice(u32, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_wins_keeps_modes_and_reads_owners() {
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
        assert_eq!((n.mode, n.uid, n.gid, n.mtime), (0o750, 0, 42, 5));
        assert!(tree.get(".hyve-owners").is_none());
        let NodeKind::File(b) = n.kind else { panic!() };
        assert_eq!(store.read_all(b).unwrap(), b"#!/bin/sh\n");
        // Contents, modes and owners change the digest; the host's times do not.
        let again = apply_dir(&mut tree, &mut store, d.path(), 9).unwrap();
        assert_eq!(again.sha256, summary.sha256);
        std::fs::set_permissions(d.path().join("etc/init.d/hyve"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(apply_dir(&mut tree, &mut store, d.path(), 5).unwrap().sha256, summary.sha256);
        let e = apply_dir(&mut tree, &mut store, &d.path().join("nope"), 0).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    }
}
