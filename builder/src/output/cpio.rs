//! The initramfs archive: "newc" cpio, as the kernel's `init/initramfs.c` reads it —
//! entries in sorted path order, inode numbers assigned in that order, hardlinks as real
//! newc hardlinks (shared inode, the data on the last link, as GNU cpio writes them),
//! mtimes clamped to SOURCE_DATE_EPOCH, and a trailer. Written by hand because the format
//! is 110-byte headers and padding, and byte-for-byte control is the point.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::tree::{ContentStore, NodeKind, Tree};

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

struct Header<'a> {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u64,
    size: u64,
    rdev: (u32, u32),
    name: &'a str,
}

fn pad4(out: &mut dyn Write, len: u64) -> io::Result<()> {
    let pad = ((4 - len % 4) % 4) as usize;
    out.write_all(&[0u8; 3][..pad])
}

fn write_header(out: &mut dyn Write, h: &Header) -> io::Result<()> {
    let namesize = h.name.len() + 1;
    let size = u32::try_from(h.size).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{}: newc cannot hold files of 4 GiB or more", h.name))
    })?;
    let mtime = u32::try_from(h.mtime).unwrap_or(u32::MAX);
    write!(
        out,
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        h.ino, h.mode, h.uid, h.gid, h.nlink, mtime, size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0
    )?;
    out.write_all(h.name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + namesize as u64)
}

/// Writes `tree` as newc to `out`; returns the number of entries (without the trailer).
pub fn write_tree(tree: &Tree, store: &ContentStore, clamp: u64, out: &mut dyn Write) -> io::Result<u64> {
    // Hardlink groups: the file a link points at, its inode, member count, and the last
    // member in path order (which carries the data).
    let mut group_size: BTreeMap<&str, u32> = BTreeMap::new();
    let mut group_last: BTreeMap<&str, &str> = BTreeMap::new();
    for (path, node) in tree.iter() {
        let head = match &node.kind {
            NodeKind::Hardlink(target) => target.as_str(),
            NodeKind::File(_) => path.as_str(),
            _ => continue,
        };
        *group_size.entry(head).or_insert(0) += 1;
        group_last.insert(head, path.as_str());
    }
    let mut inodes: BTreeMap<&str, u32> = BTreeMap::new();
    let mut next_ino = 1u32;
    let mut count = 0u64;
    for (path, node) in tree.iter() {
        let (type_bits, rdev, head) = match &node.kind {
            NodeKind::File(_) => (S_IFREG, (0, 0), Some(path.as_str())),
            NodeKind::Hardlink(target) => (S_IFREG, (0, 0), Some(target.as_str())),
            NodeKind::Dir => (S_IFDIR, (0, 0), None),
            NodeKind::Symlink(_) => (S_IFLNK, (0, 0), None),
            NodeKind::CharDevice(ma, mi) => (S_IFCHR, (*ma, *mi), None),
            NodeKind::BlockDevice(ma, mi) => (S_IFBLK, (*ma, *mi), None),
            NodeKind::Fifo => (S_IFIFO, (0, 0), None),
        };
        let ino = match head {
            Some(h) => *inodes.entry(h).or_insert_with(|| {
                next_ino += 1;
                next_ino - 1
            }),
            None => {
                next_ino += 1;
                next_ino - 1
            }
        };
        // For a hardlink, the target's metadata is the inode's.
        let meta = match &node.kind {
            NodeKind::Hardlink(t) => tree.get(t).expect("hardlinks checked at install"),
            _ => node,
        };
        let (nlink, data): (u32, Option<Vec<u8>>) = match (&node.kind, head) {
            (NodeKind::Dir, _) => (2, None),
            (NodeKind::Symlink(target), _) => (1, Some(target.clone().into_bytes())),
            (_, Some(h)) => {
                let carries = group_last[h] == path.as_str();
                (group_size[h], carries.then(Vec::new))
            }
            _ => (1, None),
        };
        let blob = match &meta.kind {
            NodeKind::File(b) => Some(*b),
            _ => None,
        };
        let size = match (&node.kind, &data, blob) {
            (NodeKind::Symlink(t), _, _) => t.len() as u64,
            (_, Some(_), Some(b)) => b.len,
            _ => 0,
        };
        write_header(
            out,
            &Header {
                ino,
                mode: type_bits | (meta.mode & 0o7777),
                uid: meta.uid,
                gid: meta.gid,
                nlink,
                mtime: meta.mtime.min(clamp),
                size,
                rdev,
                name: path,
            },
        )?;
        match (&node.kind, blob) {
            (NodeKind::Symlink(t), _) => out.write_all(t.as_bytes())?,
            (_, Some(b)) if data.is_some() => {
                io::copy(&mut store.open(b), out)?;
            }
            _ => {}
        }
        pad4(out, size)?;
        count += 1;
    }
    write_header(
        out,
        &Header { ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, size: 0, rdev: (0, 0), name: "TRAILER!!!" },
    )?;
    Ok(count)
}

/// One entry read back from a newc archive (for `inspect` and tests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CpioEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub size: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Reads a newc archive from decompressed bytes, streaming.
pub fn read_entries(input: impl io::Read) -> io::Result<Vec<CpioEntry>> {
    Ok(read_archive(input, |_| false)?.0)
}

/// Entries of an archive, and the contents kept of some of them, by name.
pub type ReadArchive = (Vec<CpioEntry>, std::collections::BTreeMap<String, Vec<u8>>);

/// Reads a newc archive, streaming, and keeps the contents of the regular files `keep`
/// picks (a manifest inside an initramfs, say).
pub fn read_archive(mut input: impl io::Read, keep: impl Fn(&str) -> bool) -> io::Result<ReadArchive> {
    use sha2::{Digest, Sha256};
    let mut kept = std::collections::BTreeMap::new();
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut h = [0u8; 110];
        input.read_exact(&mut h)?;
        if &h[..6] != b"070701" {
            return Err(bad(format!("not a newc header at offset {offset}")));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).map_err(|_| bad("bad header field".into()))?;
            u32::from_str_radix(s, 16).map_err(|_| bad(format!("bad header field {s:?}")))
        };
        let (ino, mode, uid, gid, nlink, mtime, size) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?, field(5)?, field(6)?);
        let (rdev_major, rdev_minor, namesize) = (field(9)?, field(10)?, field(11)? as usize);
        let mut name = vec![0u8; namesize];
        input.read_exact(&mut name)?;
        let name_pad = (4 - (110 + namesize) % 4) % 4;
        io::copy(&mut io::Read::take(&mut input, name_pad as u64), &mut io::sink())?;
        name.pop();
        let name = String::from_utf8(name).map_err(|_| bad("name is not UTF-8".into()))?;
        offset += (110 + namesize + name_pad) as u64;
        if name == "TRAILER!!!" {
            share_hardlink_data(&mut out);
            return Ok((out, kept));
        }
        let mut hasher = Sha256::new();
        let mut link = None;
        if mode & 0o170000 == S_IFLNK {
            let mut t = vec![0u8; size as usize];
            input.read_exact(&mut t)?;
            link = Some(String::from_utf8_lossy(&t).into_owned());
        } else if mode & 0o170000 == S_IFREG && keep(&name) {
            let mut content = vec![0u8; size as usize];
            input.read_exact(&mut content)?;
            hasher.update(&content);
            kept.insert(name.clone(), content);
        } else {
            let n = io::copy(&mut io::Read::take(&mut input, size as u64), &mut hasher)?;
            if n != size as u64 {
                return Err(bad(format!("{name}: truncated")));
            }
        }
        let pad = (4 - size as u64 % 4) % 4;
        io::copy(&mut io::Read::take(&mut input, pad), &mut io::sink())?;
        offset += size as u64 + pad;
        let sha256 = (mode & 0o170000 == S_IFREG && size > 0).then(|| hex::encode(hasher.finalize()));
        out.push(CpioEntry { name, ino, mode, uid, gid, nlink, mtime, size, rdev_major, rdev_minor, link, sha256 });
    }
}

/// newc stores a hardlink group's data with its last member only; every member gets the
/// group's size and hash, as the guest sees them.
fn share_hardlink_data(entries: &mut [CpioEntry]) {
    let mut data = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| e.nlink > 1 && e.sha256.is_some()) {
        data.insert(e.ino, (e.size, e.sha256.clone()));
    }
    for e in entries.iter_mut().filter(|e| e.nlink > 1 && e.mode & 0o170000 == S_IFREG && e.sha256.is_none()) {
        if let Some((size, sha256)) = data.get(&e.ino) {
            (e.size, e.sha256) = (*size, sha256.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Node, Overwrite};

    fn node(kind: NodeKind, mode: u32) -> Node {
        Node { kind, mode, uid: 0, gid: 0, mtime: 2_000_000_000, xattrs: vec![], owner: "t".into() }
    }

    #[test]
    fn newc_round_trip_with_hardlinks_and_devices() {
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        let blob = store.add_bytes(b"hello").unwrap();
        tree.insert("bin/a", node(NodeKind::File(blob), 0o755), Overwrite::Never).unwrap();
        tree.insert("bin/b", node(NodeKind::Hardlink("bin/a".into()), 0o755), Overwrite::Never).unwrap();
        tree.insert("bin/sh", node(NodeKind::Symlink("a".into()), 0o777), Overwrite::Never).unwrap();
        tree.insert("dev/console", node(NodeKind::CharDevice(5, 1), 0o600), Overwrite::Never).unwrap();
        let mut out = Vec::new();
        assert_eq!(write_tree(&tree, &store, 1_700_000_000, &mut out).unwrap(), 6);
        assert_eq!(out.len() % 4, 0);
        let e = read_entries(&out[..]).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/a", "bin/b", "bin/sh", "dev", "dev/console"]);
        assert_eq!((e[1].ino, e[2].ino, e[1].nlink, e[2].nlink), (2, 2, 2, 2));
        assert_eq!(out.windows(5).filter(|w| w == b"hello").count(), 1, "data rides on the last link only");
        assert_eq!((e[1].size, e[2].size, &e[1].sha256), (5, 5, &e[2].sha256), "each link reads as the file");
        assert_eq!(e[3].link.as_deref(), Some("a"));
        assert_eq!(e[3].mode, S_IFLNK | 0o777);
        assert_eq!((e[5].rdev_major, e[5].rdev_minor, e[5].mode), (5, 1, S_IFCHR | 0o600));
        assert!(e.iter().all(|x| x.mtime == 1_700_000_000), "mtimes clamped");
        let mut again = Vec::new();
        write_tree(&tree, &store, 1_700_000_000, &mut again).unwrap();
        assert_eq!(out, again);
        let (_, kept) = read_archive(&out[..], |n| n == "bin/b").unwrap();
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), [("bin/b".to_string(), b"hello".to_vec())]);
    }
}
