//! A host directory turned into package entries for `hyve pkg create`, the way abuild's
//! fakeroot'd `tar -c` sees a package directory — minus everything the host would leak:
//! owners are root, times are the build date, order is sorted by path.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::archive::{DataEntry, EntryKind};
use super::package::NewEntry;

/// Walks `root` (not included itself) and returns its entries sorted by path, parents
/// before children. Files with several links become one file plus hardlinks to it.
pub fn entries_from_dir(root: &Path, mtime: u64) -> io::Result<Vec<NewEntry>> {
    let paths = crate::fsutil::relative_paths(root).map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
    let mut first_link: HashMap<(u64, u64), String> = HashMap::new();
    let mut out = Vec::with_capacity(paths.len());
    for rel in paths {
        let full = root.join(&rel);
        let meta = std::fs::symlink_metadata(&full)?;
        let ft = meta.file_type();
        let entry = DataEntry::owned_by_root(&rel, EntryKind::Dir, meta.mode() & 0o7777, mtime);
        let unsupported = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {what} cannot go into a package", full.display()))
        };
        let new = if ft.is_dir() {
            NewEntry::without_content(entry)
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full)?;
            let target = target.to_str().ok_or_else(|| unsupported("a symlink to a non-UTF-8 target"))?.to_string();
            NewEntry::without_content(DataEntry { kind: EntryKind::Symlink { target }, mode: 0o777, ..entry })
        } else if ft.is_file() {
            // Hardlinks are recorded against the first path (in sorted order) of the inode.
            match (meta.nlink() > 1).then(|| first_link.get(&(meta.dev(), meta.ino()))).flatten() {
                Some(target) => NewEntry::without_content(DataEntry {
                    kind: EntryKind::Hardlink { target: target.clone() },
                    ..entry
                }),
                None => {
                    if meta.nlink() > 1 {
                        first_link.insert((meta.dev(), meta.ino()), rel.clone());
                    }
                    NewEntry::from_file(DataEntry { kind: EntryKind::File, ..entry }, &full)?
                }
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = split_dev(meta.rdev());
            let kind = if ft.is_char_device() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            };
            NewEntry::without_content(DataEntry { kind, ..entry })
        } else if ft.is_fifo() {
            NewEntry::without_content(DataEntry { kind: EntryKind::Fifo, ..entry })
        } else {
            return Err(unsupported("a socket"));
        };
        out.push(new);
    }
    Ok(out)
}

/// Linux `dev_t` encoding (glibc's `major()`/`minor()`).
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn walks_sorted_with_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr-x")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"binary").unwrap();
        std::fs::set_permissions(root.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/alias")).unwrap();
        std::os::unix::fs::symlink("tool", root.join("usr/bin/link")).unwrap();
        let entries = entries_from_dir(root, 42).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(paths, ["usr", "usr-x", "usr/bin", "usr/bin/alias", "usr/bin/link", "usr/bin/tool"]);
        let alias = &entries[3].entry;
        assert_eq!(alias.kind, EntryKind::File, "first in sorted order holds the content");
        assert_eq!(alias.mode, 0o4755);
        assert_eq!(entries[5].entry.kind, EntryKind::Hardlink { target: "usr/bin/alias".into() });
        assert_eq!(entries[4].entry.kind, EntryKind::Symlink { target: "tool".into() });
        assert!(entries.iter().all(|e| e.entry.uid == 0 && e.entry.mtime == 42));
    }

    #[test]
    fn dev_numbers() {
        assert_eq!(split_dev(0x0501), (5, 1));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
    }
}
