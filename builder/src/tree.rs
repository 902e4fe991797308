//! The guest's file tree, in memory except for file contents, which are spilled to one
//! temporary file (so a 200 MB userland does not mean 200 MB of RAM). Iteration is in
//! sorted path order; every rule about two packages owning one path lives here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use sha1::Sha1;

use crate::fsutil::Hashing;

/// Where a file's bytes are in the content store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    /// Which of the store's files holds it.
    segment: u32,
    offset: u64,
    pub len: u64,
    pub sha1: [u8; 20],
}

/// Append-only storage for file contents, in temporary files: `add` appends to the first,
/// and each `StoreWriter` (packages unpack on several threads) to one of its own.
pub struct ContentStore {
    files: Vec<File>,
    end: u64,
}

impl ContentStore {
    pub fn new() -> io::Result<Self> {
        Ok(ContentStore { files: vec![tempfile::tempfile()?], end: 0 })
    }

    /// Copies `reader` in; returns where it went and its SHA-1.
    pub fn add(&mut self, reader: &mut dyn Read) -> io::Result<Blob> {
        let mut hashing = Hashing::<_, Sha1>::new(reader);
        let (offset, len) = append(&self.files[0], &mut self.end, &mut hashing)?;
        Ok(Blob { segment: 0, offset, len, sha1: hashing.finish().1.into() })
    }

    pub fn add_bytes(&mut self, bytes: &[u8]) -> io::Result<Blob> {
        self.add(&mut &bytes[..])
    }

    /// `n` writers that add to this store from other threads, each into a file of its own
    /// (so a build holds `n + 1` files, however many packages it has). Their blobs read
    /// back from this store, also while the writers go on appending.
    pub fn writers(&mut self, n: usize) -> io::Result<Vec<StoreWriter>> {
        (0..n)
            .map(|_| {
                let file = tempfile::tempfile()?;
                let segment = u32::try_from(self.files.len()).expect("fewer than 2^32 writers");
                self.files.push(file.try_clone()?);
                Ok(StoreWriter { file, segment, end: 0 })
            })
            .collect()
    }

    fn file(&self, blob: Blob) -> &File {
        &self.files[blob.segment as usize]
    }

    /// A reader over one blob (positioned reads; the store stays shareable).
    pub fn open(&self, blob: Blob) -> BlobReader<'_> {
        BlobReader { file: self.file(blob), pos: blob.offset, end: blob.offset + blob.len }
    }

    /// Fills `buf` with `blob`'s bytes from `offset` on (positioned: any thread may read).
    pub fn read_exact_at(&self, blob: Blob, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(offset + buf.len() as u64 <= blob.len, "a read past the end of a blob");
        self.file(blob).read_exact_at(buf, blob.offset + offset)
    }

    pub fn read_all(&self, blob: Blob) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(blob.len as usize);
        self.open(blob).read_to_end(&mut v)?;
        Ok(v)
    }
}

/// Adds to a `ContentStore` from another thread (`ContentStore::writers`).
pub struct StoreWriter {
    file: File,
    segment: u32,
    end: u64,
}

impl StoreWriter {
    /// Copies `reader` in; returns where it went, recorded with the `sha1` its bytes are
    /// checked against by whoever reads them (a package's data: `PackageReader::read_data`,
    /// whose failure discards every blob). It is not hashed twice: SHA-1 was a fifth of a
    /// warm build's CPU.
    pub fn add(&mut self, reader: &mut dyn Read, sha1: [u8; 20]) -> io::Result<Blob> {
        let (offset, len) = append(&self.file, &mut self.end, reader)?;
        Ok(Blob { segment: self.segment, offset, len, sha1 })
    }
}

/// Copies `reader` to `file` at `*end` (positioned writes: the file's descriptor is shared
/// with the store's readers) and moves `*end` past it; returns where it went and its length.
fn append(file: &File, end: &mut u64, reader: &mut dyn Read) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all_at(&buf[..n], *end + len)?;
        len += n as u64;
    }
    let offset = *end;
    *end += len;
    Ok((offset, len))
}

pub struct BlobReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "content store truncated"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File(Blob),
    Dir,
    Symlink(String),
    /// A hardlink to another regular file's path (resolved when written out).
    Hardlink(String),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits (no type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The package (or "overlay", "hyve") that put it there.
    pub owner: String,
}

/// Two owners disagree about a path.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TreeError {
    #[error("{path}: both {first} and {second} install it with different contents; add `replaces` to one of them or remove one from the profile")]
    Conflict { path: String, first: String, second: String },
    #[error("{path}: {owner} installs a {new} where {existing_owner} installed a {existing}")]
    TypeClash { path: String, owner: String, new: &'static str, existing_owner: String, existing: &'static str },
    #[error("{path}: parent {parent} is a {kind}, not a directory")]
    NotADirectory {
        path: String,
        parent: String,
        #[serde(rename = "parent_kind")]
        kind: &'static str,
    },
    #[error("{path}: hardlink target {target} is not a regular file in the tree")]
    BadHardlink { path: String, target: String },
}

fn kind_name(k: &NodeKind) -> &'static str {
    match k {
        NodeKind::File(_) => "file",
        NodeKind::Dir => "directory",
        NodeKind::Symlink(_) => "symlink",
        NodeKind::Hardlink(_) => "hardlink",
        NodeKind::CharDevice(..) => "character device",
        NodeKind::BlockDevice(..) => "block device",
        NodeKind::Fifo => "fifo",
    }
}

/// The tree: relative paths (no leading `/`) to nodes, sorted.
#[derive(Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// How an insert treats an existing node owned by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Identical content is fine; anything else is a conflict (packages without `replaces`).
    Never,
    /// The newcomer wins (`replaces`, overlays, generated files).
    Allowed,
}

impl Tree {
    pub fn new() -> Self {
        Tree::default()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The contents of the regular file at `path` (not through a hardlink).
    pub fn file(&self, path: &str) -> Option<Blob> {
        match self.nodes.get(path)?.kind {
            NodeKind::File(blob) => Some(blob),
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    pub fn remove(&mut self, path: &str) -> Option<Node> {
        self.nodes.remove(path)
    }

    /// Paths under `dir` (exclusive), sorted.
    pub fn children_of<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = format!("{dir}/");
        self.nodes.range(prefix.clone()..).take_while(move |(p, _)| p.starts_with(&prefix))
    }

    /// Creates missing parent directories (root-owned, 0755) for `path`.
    fn ensure_parents(&mut self, path: &str, mtime: u64, owner: &str) -> Result<(), TreeError> {
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.nodes.get(&parent) {
                Some(Node { kind: NodeKind::Dir, .. }) => {}
                Some(n) => {
                    return Err(TreeError::NotADirectory {
                        path: path.into(),
                        parent: parent.clone(),
                        kind: kind_name(&n.kind),
                    })
                }
                None => {
                    self.nodes.insert(
                        parent.clone(),
                        Node {
                            kind: NodeKind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            mtime,
                            xattrs: vec![],
                            owner: owner.into(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Inserts `node` at `path` following apk's rules: directories merge (the first
    /// metadata stays), identical files and links are shared, anything else needs
    /// `Overwrite::Allowed`.
    pub fn insert(&mut self, path: &str, node: Node, overwrite: Overwrite) -> Result<(), TreeError> {
        self.ensure_parents(path, node.mtime, &node.owner)?;
        if let Some(existing) = self.nodes.get(path) {
            let same = match (&existing.kind, &node.kind) {
                (NodeKind::Dir, NodeKind::Dir) => return Ok(()),
                (NodeKind::File(a), NodeKind::File(b)) => a.sha1 == b.sha1 && a.len == b.len,
                (a, b) => a == b,
            };
            if overwrite == Overwrite::Never && same {
                return Ok(()); // shared: the first owner keeps it
            }
            if overwrite == Overwrite::Never {
                if std::mem::discriminant(&existing.kind) != std::mem::discriminant(&node.kind) {
                    return Err(TreeError::TypeClash {
                        path: path.into(),
                        owner: node.owner,
                        new: kind_name(&node.kind),
                        existing_owner: existing.owner.clone(),
                        existing: kind_name(&existing.kind),
                    });
                }
                return Err(TreeError::Conflict {
                    path: path.into(),
                    first: existing.owner.clone(),
                    second: node.owner,
                });
            }
            if existing.kind == NodeKind::Dir && node.kind != NodeKind::Dir {
                // Replacing a directory drops what was under it.
                let doomed: Vec<String> = self.children_of(path).map(|(p, _)| p.clone()).collect();
                for p in doomed {
                    self.nodes.remove(&p);
                }
            }
        }
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    /// Checks that every hardlink points at a regular file.
    pub fn check_hardlinks(&self) -> Result<(), TreeError> {
        for (path, node) in &self.nodes {
            if let NodeKind::Hardlink(target) = &node.kind {
                if !matches!(self.nodes.get(target).map(|n| &n.kind), Some(NodeKind::File(_))) {
                    return Err(TreeError::BadHardlink { path: path.clone(), target: target.clone() });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(store: &mut ContentStore, content: &[u8], owner: &str) -> Node {
        let blob = store.add_bytes(content).unwrap();
        Node { kind: NodeKind::File(blob), mode: 0o644, uid: 0, gid: 0, mtime: 1, xattrs: vec![], owner: owner.into() }
    }

    #[test]
    fn sorted_with_parents_and_content_round_trip() {
        let mut store = ContentStore::new().unwrap();
        let mut t = Tree::new();
        t.insert("usr/bin/b", file(&mut store, b"bbb", "p"), Overwrite::Never).unwrap();
        t.insert("etc/a", file(&mut store, b"aaaa", "p"), Overwrite::Never).unwrap();
        let paths: Vec<&String> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["etc", "etc/a", "usr", "usr/bin", "usr/bin/b"]);
        let NodeKind::File(blob) = t.get("usr/bin/b").unwrap().kind else { panic!() };
        assert_eq!(store.read_all(blob).unwrap(), b"bbb");
        assert_eq!(t.children_of("usr").count(), 2);
    }

    #[test]
    fn writers_add_from_other_threads_and_read_back_from_the_store() {
        let mut store = ContentStore::new().unwrap();
        let before = store.add_bytes(b"main").unwrap();
        let writers = store.writers(2).unwrap();
        let blobs: Vec<Vec<Blob>> = std::thread::scope(|s| {
            let handles: Vec<_> = writers
                .into_iter()
                .enumerate()
                .map(|(k, mut w)| {
                    s.spawn(move || {
                        let text = |i| format!("writer {k}, blob {i}");
                        (0..3).map(|i| w.add(&mut text(i).as_bytes(), [0; 20]).unwrap()).collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let after = store.add_bytes(b"after").unwrap();
        let read = |b| String::from_utf8(store.read_all(b).unwrap()).unwrap();
        for (k, written) in blobs.iter().enumerate() {
            for (i, b) in written.iter().enumerate() {
                assert_eq!(read(*b), format!("writer {k}, blob {i}"));
            }
        }
        assert_eq!((read(before), read(after)), ("main".to_string(), "after".to_string()));
        let mut tail = [0u8; 6];
        store.read_exact_at(blobs[1][2], 10, &mut tail).unwrap();
        assert_eq!(&tail, b"blob 2");
    }

    #[test]
    fn ownership_rules() {
        let mut store = ContentStore::new().unwrap();
        let mut t = Tree::new();
        t.insert("etc/x", file(&mut store, b"same", "a"), Overwrite::Never).unwrap();
        t.insert("etc/x", file(&mut store, b"same", "b"), Overwrite::Never).unwrap();
        let e = t.insert("etc/x", file(&mut store, b"other", "c"), Overwrite::Never).unwrap_err().to_string();
        assert!(e.contains("etc/x") && e.contains("a and c") && e.contains("replaces"), "{e}");
        t.insert("etc/x", file(&mut store, b"other", "c"), Overwrite::Allowed).unwrap();
        let sym = Node {
            kind: NodeKind::Symlink("y".into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: vec![],
            owner: "d".into(),
        };
        let e = t.insert("etc/x", sym, Overwrite::Never).unwrap_err().to_string();
        assert!(e.contains("symlink") && e.contains("file"), "{e}");
        let e = t.insert("etc/x/y", file(&mut store, b"z", "e"), Overwrite::Never).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
