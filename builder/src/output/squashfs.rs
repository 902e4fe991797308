//! `root.squashfs`: the guest's tree as a read-only SquashFS 4.0 image, zstd-compressed,
//! written with `backhand` (pure Rust, maintained; 0.25.5: earlier releases mis-wrote empty
//! files and directory indexes). The small boot initramfs (`output::bootinitrd`) mounts it
//! under a tmpfs overlay.
//!
//! The same tree gives the same bytes: entries go in in the tree's sorted order, which is the
//! order backhand numbers inodes and lays out directories in; the image's time is the epoch
//! and every inode's mtime is clamped to it (as in the initramfs); owners and modes are the
//! tree's; identical files share their data blocks (backhand's duplicate check, which matches
//! files by length and xxh64 alone; [`duplicate_check_is_sound`] compares the bytes of those
//! it would match, and turns it off for an image where two differ). Like the newc initramfs,
//! the image carries no xattrs; backhand writes no hardlinks, so a hardlink becomes a file of
//! its own whose data is shared with its target.
//!
//! backhand compresses one block at a time on the thread that writes; [`Ahead`] compresses
//! the files' data blocks on every CPU ahead of it (as mksquashfs does), with the same
//! compressor, so the bytes are the same as a single thread's. With a block cache
//! ([`super::blockcache`]), a block the last image held is taken from there, checked, instead.

use std::cell::RefCell;
use std::collections::{btree_map, BTreeMap};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use backhand::compression::{CompressionAction, CompressionOptions, Compressor, DefaultCompressor};
use backhand::kind::Kind;
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, InnerNode, NodeHeader, SuperBlock};

use super::blockcache::{self, BlockCache, Packed};
use super::cpio::{CpioEntry, ReadArchive};

use crate::cancel::Cancel;
use crate::fsutil;
use crate::report::{Reporter, Reporting};
use crate::tree::{Blob, ContentStore, NodeKind, Tree};

/// The superblock's length: the boot initramfs identifies the root image by these bytes.
pub const SUPERBLOCK_LEN: usize = 96;
/// mksquashfs's default, and the most one zstd call may take at once.
const BLOCK_SIZE: u32 = backhand::DEFAULT_BLOCK_SIZE;
/// The image's zstd level (the profile's `level` is the initramfs's): decompression costs the
/// same at any level, and the image is read from disk on demand, so a fast level is the
/// better trade.
pub const DEFAULT_LEVEL: u32 = 6;

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SquashfsError {
    /// backhand refused an entry or failed to write the image.
    #[error("{path}: writing the SquashFS root image{entry}: {message}", entry = entry_text(.entry))]
    Write { path: String, entry: Option<String>, message: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] fsutil::IoError),
}

fn entry_text(entry: &Option<String>) -> String {
    entry.as_ref().map(|e| format!(" (/{e})")).unwrap_or_default()
}

/// What was written.
/// (Not its SHA-256: the build hashes the image while it makes the boot initramfs.)
pub struct Written {
    pub size: u64,
    /// The image's first bytes, by which the boot initramfs finds it among the block devices.
    pub superblock: [u8; SUPERBLOCK_LEN],
    /// Data blocks made ready (compressed, or taken from the block cache) ahead of the writer:
    /// all those backhand asked for, unless the plan missed its order.
    pub blocks_ahead: usize,
    /// Blocks (data, fragments, metadata) backhand asked the compressor for, and how many of
    /// them came from the block cache. (backhand also compresses a duplicate file's blocks
    /// before it finds the file is one, so a duplicate's blocks count too.)
    pub blocks: usize,
    pub blocks_cached: usize,
    /// The block cache's pack, if one was used.
    pub cache: Option<PathBuf>,
    /// What went wrong with the block cache, or why identical files do not share their
    /// blocks (the image is whole either way).
    pub warnings: Vec<String>,
}

/// Whether backhand's duplicate check may stay on for `tree`. backhand (0.25.5, v4/data.rs
/// `DataWriter::add_bytes`) gives a file of a block or more (shorter ones go into fragments,
/// unchecked) the data blocks of an earlier one of the same length and xxh64 (`key` here)
/// without comparing their bytes, and xxh64 is no cryptographic hash: two different files
/// made to match (in a package, a local repository or an overlay) would both read as the
/// first. So those files, where another has their length, are keyed, and those that share a
/// key compared byte by byte; the others are not read.
fn duplicate_check_is_sound(
    tree: &Tree,
    store: &ContentStore,
    key: impl Fn(&mut dyn Read) -> io::Result<u64>,
) -> io::Result<bool> {
    let mut by_len: BTreeMap<u64, Vec<Blob>> = BTreeMap::new();
    let shared = tree.iter().filter_map(|(_, node)| contents(tree, node)).filter(|b| b.len >= u64::from(BLOCK_SIZE));
    for blob in shared {
        let same_len = by_len.entry(blob.len).or_default();
        if !same_len.contains(&blob) {
            same_len.push(blob);
        }
    }
    for blobs in by_len.values().filter(|blobs| blobs.len() > 1) {
        let mut by_key: BTreeMap<u64, Blob> = BTreeMap::new();
        for blob in blobs {
            match by_key.entry(key(&mut store.open(*blob))?) {
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(*blob);
                }
                btree_map::Entry::Occupied(first) => {
                    if !same_bytes(store.open(*first.get()), store.open(*blob))? {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}

/// backhand's key for a file's data: xxh64 with seed 0 over all its bytes.
fn xxh64(reader: &mut dyn Read) -> io::Result<u64> {
    let mut hasher = xxhash_rust::xxh64::Xxh64::new(0);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok(hasher.digest()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Whether two readers of the same length give the same bytes.
fn same_bytes(mut a: impl Read, mut b: impl Read) -> io::Result<bool> {
    let (mut buf_a, mut buf_b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut buf_a)?;
        if n == 0 {
            return Ok(b.read(&mut buf_b[..1])? == 0);
        }
        b.read_exact(&mut buf_b[..n])?;
        if buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
    }
}

/// The bytes of the files `tree` holds, for the phase's progress.
pub fn input_bytes(tree: &Tree) -> u64 {
    tree.iter().filter_map(|(_, node)| contents(tree, node)).map(|blob| blob.len).sum()
}

/// What the image holds for `node`: a file's contents, also under a hardlink's name.
fn contents(tree: &Tree, node: &crate::tree::Node) -> Option<Blob> {
    match &node.kind {
        NodeKind::File(blob) => Some(*blob),
        NodeKind::Hardlink(target) => tree.file(target),
        _ => None,
    }
}

/// The image's compressor: zstd at `level` (also the block cache's).
pub(super) fn compressor(level: u32) -> Result<FilesystemCompressor, BackhandError> {
    let options = CompressionOptions::Zstd(backhand::compression::Zstd { compression_level: level });
    FilesystemCompressor::new(Compressor::Zstd, Some(options))
}

/// How to write the image.
pub struct Settings<'a> {
    /// zstd's level.
    pub level: u32,
    /// The image's time, and the newest any inode may have.
    pub epoch: u64,
    /// The block cache's pack ([`super::blockcache`]), if the build keeps one.
    pub cache: Option<&'a Path>,
}

/// Writes `tree` as a SquashFS image to `path`; the files' bytes count toward the current
/// phase.
pub fn write(
    path: &Path,
    tree: &Tree,
    store: &ContentStore,
    settings: Settings,
    cancel: &Cancel,
    reporter: &dyn Reporter,
) -> Result<Written, SquashfsError> {
    let Settings { level, epoch, cache } = settings;
    let error = |entry: Option<&str>, e: backhand::BackhandError| SquashfsError::Write {
        path: path.display().to_string(),
        entry: entry.map(str::to_string),
        message: e.to_string(),
    };
    let clamp = |t: u64| u32::try_from(t.min(epoch)).unwrap_or(u32::MAX);
    let mut fs = FilesystemWriter::default();
    let compressor = compressor(level).map_err(|e| error(None, e))?;
    fs.set_kind(Kind::new_v4(&AheadCompressor));
    fs.set_block_size(BLOCK_SIZE);
    fs.set_compressor(compressor);
    fs.set_time(clamp(epoch));
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    let mut warnings = Vec::new();
    if !duplicate_check_is_sound(tree, store, xxh64).map_err(fsutil::at(path))? {
        fs.set_no_duplicate_files(false);
        warnings.push(format!(
            "{}: two different files of the same length have the same xxh64, by which backhand \
             would take one for a copy of the other: identical files do not share their blocks in \
             this image (it is larger, and holds every file's own bytes)",
            path.display()
        ));
    }
    for (name, node) in tree.iter() {
        // A hardlink is its target's file under another name: its bytes and its metadata.
        let node = match &node.kind {
            NodeKind::Hardlink(target) => {
                tree.get(target).expect("hardlinks are checked when the packages are installed")
            }
            _ => node,
        };
        let header = NodeHeader::new((node.mode & 0o7777) as u16, node.uid, node.gid, clamp(node.mtime));
        let pushed = match &node.kind {
            NodeKind::Dir => fs.push_dir(name, header),
            NodeKind::File(blob) => {
                fs.push_file(Reporting::phase(cancel.wrap(store.open(*blob)), reporter), name, header)
            }
            NodeKind::Hardlink(_) => unreachable!("a hardlink's target is a file"),
            NodeKind::Symlink(target) => fs.push_symlink(target, name, header),
            NodeKind::CharDevice(major, minor) => fs.push_char_device(dev_number(*major, *minor), name, header),
            NodeKind::BlockDevice(major, minor) => fs.push_block_device(dev_number(*major, *minor), name, header),
            NodeKind::Fifo => fs.push_fifo(name, header),
        };
        pushed.map_err(|e| error(Some(name), e))?;
    }
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(fsutil::at(path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let cache = cache.and_then(|pack| {
        BlockCache::open(pack, level, BLOCK_SIZE)
            .inspect_err(|e| {
                let what = "the root image's block cache cannot be used; every block is compressed";
                warnings.push(format!("{}: {e}: {what}", pack.display()));
            })
            .ok()
    });
    let ahead = Ahead::plan(tree, compressor, cache);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blocks_ahead = std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| ahead.work(store));
        }
        ahead.while_handing_over(|| fs.write(&mut out))
    })
    .map(|_| ahead.handoff.lock().taken)
    .map_err(|e| match e {
        backhand::BackhandError::StdIo(io) => SquashfsError::Io(fsutil::at(path)(io)),
        other => error(None, other),
    })?;
    let file = out.into_inner().map_err(|e| fsutil::at(path)(e.into_error()))?;
    let cache = ahead.handoff.cache.as_ref().map(|cache| {
        if let Err(e) = cache.commit() {
            warnings.push(format!("{}: {e}: the root image's block cache was not updated", cache.path().display()));
        }
        cache.path().to_path_buf()
    });
    let (blocks, blocks_cached) =
        (ahead.handoff.blocks.load(Ordering::Relaxed), ahead.handoff.cached.load(Ordering::Relaxed));
    let mut superblock = [0u8; SUPERBLOCK_LEN];
    file.read_exact_at(&mut superblock, 0).map_err(fsutil::at(path))?;
    let size = file.metadata().map_err(fsutil::at(path))?.len();
    Ok(Written { size, superblock, blocks_ahead, blocks, blocks_cached, cache, warnings })
}

/// The data blocks of the image's files, compressed on every CPU ahead of backhand's writer.
/// backhand asks its compressor for one block at a time, in the order of its nodes (paths
/// compared component by component), each file cut into blocks of the block size (a file
/// shorter than one block goes into a shared fragment block instead, and an all-zero block
/// becomes a hole). The plan is that sequence; workers compress it in order, at most
/// [`Ahead::WINDOW`] blocks ahead of the writer, and the writer takes the next planned block
/// when it asks for exactly its bytes. Anything else it asks for (fragments, metadata, a block
/// out of the planned order) is compressed where it is asked: a wrong guess costs time, never
/// bytes, as each block is compressed by backhand's own compressor either way (or taken from
/// the block cache, which holds what that compressor made of the same bytes).
struct Ahead {
    plan: Vec<(Blob, u64, usize)>,
    fc: FilesystemCompressor,
    next: AtomicUsize,
    handoff: Arc<Handoff>,
}

/// What the writing thread's compressor reaches through [`HANDOFF`].
#[derive(Default)]
struct Handoff {
    /// How many blocks the plan has.
    planned: usize,
    cache: Option<BlockCache>,
    /// Blocks the writer asked for, and how many of them came from the cache.
    blocks: AtomicUsize,
    cached: AtomicUsize,
    state: Mutex<HandoffState>,
    /// A block was compressed.
    filled: Condvar,
    /// The writer took one, or stopped.
    taken: Condvar,
}

#[derive(Default)]
struct HandoffState {
    /// The next planned block the writer will ask for.
    head: usize,
    /// Planned blocks ready, by index: their bytes and compressed bytes; `None` for a block
    /// backhand will not ask for (all zeros), or that could not be read here.
    ready: BTreeMap<usize, Option<ReadyBlock>>,
    /// Compressed blocks the writer took.
    taken: usize,
    stopped: bool,
    /// The bytes of blocks the writer is done with, for the workers to read the next ones
    /// into: a fresh 128 KiB buffer per block came from memory the allocator had given back
    /// to the kernel, and faulting it in again was most of a warm build's page faults.
    spare: Vec<Vec<u8>>,
}

/// A planned block's bytes, ready for the writer in their compressed form.
struct ReadyBlock {
    bytes: Vec<u8>,
    packed: Packed,
}

thread_local! {
    /// The handoff of the image being written on this thread, if any.
    static HANDOFF: RefCell<Option<Arc<Handoff>>> = const { RefCell::new(None) };
}

impl Ahead {
    /// How many blocks the workers may run ahead of the writer (8 MiB at 128 KiB blocks).
    const WINDOW: usize = 64;

    fn plan(tree: &Tree, fc: FilesystemCompressor, cache: Option<BlockCache>) -> Ahead {
        let block_size = u64::from(BLOCK_SIZE);
        let mut files: Vec<(&Path, Blob)> = tree
            .iter()
            .filter_map(|(name, node)| contents(tree, node).map(|blob| (Path::new(name.as_str()), blob)))
            .filter(|(_, blob)| blob.len >= block_size)
            .collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        let plan: Vec<_> = files
            .into_iter()
            .flat_map(|(_, blob)| {
                (0..blob.len)
                    .step_by(BLOCK_SIZE as usize)
                    .map(move |at| (blob, at, (blob.len - at).min(block_size) as usize))
            })
            .collect();
        let handoff = Arc::new(Handoff { planned: plan.len(), cache, ..Handoff::default() });
        Ahead { plan, fc, next: AtomicUsize::new(0), handoff }
    }

    /// A worker: claims planned blocks in order and compresses them (or takes them from the
    /// block cache), until all are done or the writer stopped.
    fn work(&self, store: &ContentStore) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&(blob, at, len)) = self.plan.get(i) else { return };
            // Whatever happens here, the writer finds the block (as `None` if not compressed).
            let mut fill = Fill { handoff: &self.handoff, i, block: None };
            let state = self.handoff.lock();
            let mut state = (self.handoff.taken)
                .wait_while(state, |s| i >= s.head + Self::WINDOW && !s.stopped)
                .unwrap_or_else(PoisonError::into_inner);
            if state.stopped {
                return;
            }
            let mut bytes = state.spare.pop().unwrap_or_default();
            drop(state);
            // Only the growth is zeroed: the read fills all `len` bytes, or the block is not used.
            bytes.resize(len, 0);
            if store.read_exact_at(blob, at, &mut bytes).is_ok() && bytes.iter().any(|b| *b != 0) {
                fill.block = blockcache::compress(self.handoff.cache.as_ref(), &bytes, self.fc, BLOCK_SIZE)
                    .ok()
                    .map(|packed| ReadyBlock { bytes, packed });
            }
        }
    }

    /// Runs `write` with this plan's blocks handed to the compressor on this thread; the
    /// workers end with it, however it ends.
    fn while_handing_over<T>(&self, write: impl FnOnce() -> T) -> T {
        struct Done<'a>(&'a Handoff);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                HANDOFF.with(|h| *h.borrow_mut() = None);
                self.0.lock().stopped = true;
                self.0.taken.notify_all();
            }
        }
        HANDOFF.with(|h| *h.borrow_mut() = Some(self.handoff.clone()));
        let _done = Done(&self.handoff);
        write()
    }
}

/// A claimed block, handed to the writer when the worker is done with it.
struct Fill<'a> {
    handoff: &'a Handoff,
    i: usize,
    block: Option<ReadyBlock>,
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        self.handoff.lock().ready.insert(self.i, self.block.take());
        self.handoff.filled.notify_all();
    }
}

impl Handoff {
    /// The state, also after a thread panicked holding it (the panic is reported by the
    /// thread scope; this only keeps the others from hanging).
    fn lock(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer's block: compressed ahead or here, and kept for the next image's cache.
    fn block_for_writer(
        &self,
        bytes: &[u8],
        fc: FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, BackhandError> {
        let packed = match self.take(bytes) {
            Some(packed) => packed,
            None => blockcache::compress(self.cache.as_ref(), bytes, fc, block_size)?,
        };
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.cached.fetch_add(usize::from(packed.cached), Ordering::Relaxed);
        if let Some(cache) = &self.cache {
            cache.keep(&packed);
        }
        Ok(packed.compressed)
    }

    /// The compressed block of `bytes` if they are the next planned block.
    fn take(&self, bytes: &[u8]) -> Option<Packed> {
        let mut state = self.lock();
        while state.head < self.planned {
            let head = state.head;
            state =
                self.filled.wait_while(state, |s| !s.ready.contains_key(&head)).unwrap_or_else(PoisonError::into_inner);
            if matches!(&state.ready[&head], Some(block) if block.bytes != bytes) {
                return None;
            }
            // The one asked for, or one backhand will not ask for (all zeros) or that was not
            // compressed here: either way the next one is next.
            let block = state.ready.remove(&head).expect("waited for it");
            state.head += 1;
            self.taken.notify_all();
            if let Some(ReadyBlock { packed, bytes }) = block {
                state.spare.push(bytes);
                state.taken += 1;
                return Some(packed);
            }
        }
        None
    }
}

/// backhand's compressor, taking the blocks [`Ahead`] compressed when they are the ones asked
/// for (backhand keeps a custom compressor for the life of the program, so this one is
/// stateless and finds the image being written through [`HANDOFF`]).
struct AheadCompressor;

impl CompressionAction for AheadCompressor {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(&self, bytes: &[u8], out: &mut Vec<u8>, compressor: Compressor) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, compressor)
    }

    fn compress(&self, bytes: &[u8], fc: FilesystemCompressor, block_size: u32) -> Result<Vec<u8>, BackhandError> {
        HANDOFF.with(|h| match h.borrow().as_ref() {
            Some(handoff) => handoff.block_for_writer(bytes, fc, block_size),
            None => DefaultCompressor.compress(bytes, fc, block_size),
        })
    }

    fn compression_options(
        &self,
        superblock: &mut SuperBlock,
        kind: &Kind,
        fc: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        DefaultCompressor.compression_options(superblock, kind, fc)
    }
}

/// The kernel's `new_encode_dev`, which SquashFS stores for device inodes.
fn dev_number(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// `new_decode_dev`: (major, minor).
fn dev_parts(number: u32) -> (u32, u32) {
    ((number & 0xfff00) >> 8, (number & 0xff) | ((number >> 12) & 0xfff00))
}

/// SquashFS 4.0's magic, little-endian, at the start of an image.
pub const MAGIC: &[u8; 4] = b"hsqs";

/// The entries of the SquashFS image at `offset` in `input` (`hyve diff`, `hyve inspect`), in
/// the shape the initramfs reader gives them, with the contents of the files `keep` picks.
/// The image may be anything a user points at: a panic inside backhand on a damaged image
/// becomes an error naming it.
pub fn read_image(
    input: impl backhand::BufReadSeek,
    offset: u64,
    origin: &str,
    keep: impl Fn(&str) -> bool,
) -> std::io::Result<ReadArchive> {
    use sha2::{Digest, Sha256};
    use std::io::{Error, ErrorKind};
    let damaged = |detail: String| Error::new(ErrorKind::InvalidData, format!("{origin}: SquashFS image: {detail}"));
    let read = std::panic::AssertUnwindSafe(|| -> std::io::Result<ReadArchive> {
        let fs =
            backhand::FilesystemReader::from_reader_with_offset(input, offset).map_err(|e| damaged(e.to_string()))?;
        let (mut entries, mut kept) = (Vec::new(), std::collections::BTreeMap::new());
        for (ino, node) in (1..).zip(fs.files()) {
            let name = node.fullpath.to_string_lossy().trim_start_matches('/').to_string();
            if name.is_empty() {
                continue;
            }
            let h = &node.header;
            let mut entry = CpioEntry {
                name,
                ino,
                mode: u32::from(h.permissions),
                uid: h.uid,
                gid: h.gid,
                nlink: 1,
                mtime: h.mtime,
                size: 0,
                rdev_major: 0,
                rdev_minor: 0,
                link: None,
                sha256: None,
            };
            match &node.inner {
                InnerNode::File(file) => {
                    entry.mode |= 0o100000;
                    let mut hasher = Sha256::new();
                    let mut reader = fs.file(file).reader();
                    let size = if keep(&entry.name) {
                        let mut content = Vec::new();
                        reader.read_to_end(&mut content)?;
                        hasher.update(&content);
                        kept.insert(entry.name.clone(), content);
                        kept[&entry.name].len() as u64
                    } else {
                        std::io::copy(&mut reader, &mut hasher)?
                    };
                    entry.size = u32::try_from(size).unwrap_or(u32::MAX);
                    entry.sha256 = (size > 0).then(|| hex::encode(hasher.finalize()));
                }
                InnerNode::Dir(_) => entry.mode |= 0o040000,
                InnerNode::Symlink(link) => {
                    entry.mode |= 0o120000;
                    let target = link.link.to_string_lossy().into_owned();
                    entry.size = target.len() as u32;
                    entry.link = Some(target);
                }
                InnerNode::CharacterDevice(d) => {
                    entry.mode |= 0o020000;
                    (entry.rdev_major, entry.rdev_minor) = dev_parts(d.device_number);
                }
                InnerNode::BlockDevice(d) => {
                    entry.mode |= 0o060000;
                    (entry.rdev_major, entry.rdev_minor) = dev_parts(d.device_number);
                }
                InnerNode::NamedPipe => entry.mode |= 0o010000,
                InnerNode::Socket => entry.mode |= 0o140000,
            }
            entries.push(entry);
        }
        Ok((entries, kept))
    });
    std::panic::catch_unwind(read).unwrap_or_else(|_| Err(damaged("its reader gave up on it (damaged)".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Node, Overwrite};

    struct Quiet;
    impl Reporter for Quiet {}

    fn node(kind: NodeKind, mode: u32, uid: u32, mtime: u64) -> Node {
        Node { kind, mode, uid, gid: uid, mtime, xattrs: vec![], owner: "t".into() }
    }

    /// Every kind of entry the installer makes, some owned by others, one newer than the epoch.
    fn sample() -> (Tree, ContentStore) {
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        let hello = store.add_bytes(b"hello").unwrap();
        let big = store.add_bytes(&(0..300_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
        let empty = store.add_bytes(b"").unwrap();
        let entries = [
            ("bin", NodeKind::Dir, 0o755, 0),
            ("bin/a", NodeKind::File(hello), 0o4755, 0),
            ("bin/b", NodeKind::Hardlink("bin/a".into()), 0o4755, 0),
            ("bin/sh", NodeKind::Symlink("a".into()), 0o777, 0),
            ("dev", NodeKind::Dir, 0o755, 0),
            ("dev/console", NodeKind::CharDevice(5, 1), 0o600, 0),
            ("dev/vdz", NodeKind::BlockDevice(254, 300), 0o660, 6),
            ("run", NodeKind::Dir, 0o755, 0),
            ("run/fifo", NodeKind::Fifo, 0o600, 0),
            ("srv", NodeKind::Dir, 0o750, 100),
            ("srv/big", NodeKind::File(big), 0o640, 100),
            ("srv/empty", NodeKind::File(empty), 0o644, 100),
        ];
        for (path, kind, mode, uid) in entries {
            let mtime = if path == "srv/big" { 2_000_000_000 } else { 1_600_000_000 };
            tree.insert(path, node(kind, mode, uid, mtime), Overwrite::Never).unwrap();
        }
        (tree, store)
    }

    fn write_sample(dir: &Path, name: &str) -> (Written, Vec<u8>) {
        let (tree, store) = sample();
        let path = dir.join(name);
        let written = write(
            &path,
            &tree,
            &store,
            Settings { level: 3, epoch: 1_700_000_000, cache: None },
            &Cancel::new(),
            &Quiet,
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (written, bytes)
    }

    #[test]
    fn the_image_holds_the_tree_and_is_the_same_every_time() {
        let d = tempfile::tempdir().unwrap();
        let (written, bytes) = write_sample(d.path(), "a.squashfs");
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(written.superblock[..], bytes[..SUPERBLOCK_LEN]);
        assert_eq!(&bytes[..4], MAGIC);
        assert_eq!(bytes.len() % 4096, 0, "padded to 4 KiB for block devices");
        // The superblock's flags: backhand's duplicate check stayed on (nothing collides here).
        assert_ne!(u16::from_le_bytes([bytes[24], bytes[25]]) & 0x40, 0);
        assert!(written.warnings.is_empty(), "{:?}", written.warnings);
        let (again, bytes_again) = write_sample(d.path(), "b.squashfs");
        assert_eq!((again.size, again.superblock, bytes_again), (written.size, written.superblock, bytes.clone()));

        let (entries, kept) = read_image(std::io::Cursor::new(&bytes), 0, "a", |n| n == "bin/a").unwrap();
        let by_name: std::collections::BTreeMap<&str, &CpioEntry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(by_name.len(), 12);
        assert_eq!(kept["bin/a"], b"hello");
        let a = by_name["bin/a"];
        assert_eq!((a.mode, a.size, a.mtime), (0o104755, 5, 1_600_000_000));
        assert_eq!((by_name["bin/b"].mode, &by_name["bin/b"].sha256), (0o104755, &a.sha256), "a hardlink's bytes");
        assert_eq!(by_name["bin/sh"].link.as_deref(), Some("a"));
        let console = by_name["dev/console"];
        assert_eq!((console.mode, console.rdev_major, console.rdev_minor), (0o020600, 5, 1));
        let vdz = by_name["dev/vdz"];
        assert_eq!((vdz.mode, vdz.uid, vdz.rdev_major, vdz.rdev_minor), (0o060660, 6, 254, 300));
        assert_eq!(by_name["run/fifo"].mode, 0o010600);
        let big = by_name["srv/big"];
        assert_eq!((big.size, big.uid, big.gid, big.mtime), (300_000, 100, 100, 1_700_000_000), "clamped");
        assert_eq!(by_name["srv"].mode, 0o040750);
        assert_eq!((by_name["srv/empty"].size, &by_name["srv/empty"].sha256), (0, &None));
    }

    /// backhand would share the blocks of files of a block or more that match by length and
    /// xxh64 alone; with a key under which any two files of one length match, the check sees
    /// different bytes there, and leaves shorter files alone.
    #[test]
    fn files_that_share_backhands_key_are_compared_byte_by_byte() {
        let block = BLOCK_SIZE as usize;
        let mut store = ContentStore::new().unwrap();
        let one = vec![1u8; block + 3];
        let (a, copy_of_a) = (store.add_bytes(&one).unwrap(), store.add_bytes(&one).unwrap());
        let mut two = one.clone();
        two[block + 1] = 2;
        let b = store.add_bytes(&two).unwrap();
        let other_len = store.add_bytes(&[3u8; 10]).unwrap();
        // Shorter than a block: a fragment, which backhand never takes for a copy.
        let small_too = store.add_bytes(&[4u8; 10]).unwrap();
        let tree_of = |files: &[(&str, NodeKind)]| {
            let mut tree = Tree::new();
            for (path, kind) in files {
                tree.insert(path, node(kind.clone(), 0o644, 0, 0), Overwrite::Never).unwrap();
            }
            tree
        };
        let any_two_match = |_: &mut dyn Read| Ok(0);
        let copies = tree_of(&[
            ("a", NodeKind::File(a)),
            ("a-copy", NodeKind::File(copy_of_a)),
            ("a-link", NodeKind::Hardlink("a".into())),
            ("c", NodeKind::File(other_len)),
            ("d", NodeKind::File(small_too)),
        ]);
        assert!(duplicate_check_is_sound(&copies, &store, any_two_match).unwrap());
        let different =
            tree_of(&[("a", NodeKind::File(a)), ("b", NodeKind::File(b)), ("c", NodeKind::File(other_len))]);
        assert!(!duplicate_check_is_sound(&different, &store, any_two_match).unwrap());
        assert!(duplicate_check_is_sound(&different, &store, xxh64).unwrap(), "xxh64 tells these two apart");
    }

    #[test]
    fn damaged_images_are_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let (_, bytes) = write_sample(d.path(), "a.squashfs");
        // The superblock's bytes_used: what follows is padding.
        let used = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
        for cut in [4, 96, 200, used / 2, used - 1] {
            let e = read_image(std::io::Cursor::new(&bytes[..cut]), 0, "cut.img", |_| false).unwrap_err();
            assert!(e.to_string().starts_with("cut.img: SquashFS image: "), "{e}");
        }
        let mut flipped = bytes.clone();
        // The superblock's inode table start, pointing past the end.
        flipped[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_image(std::io::Cursor::new(&flipped), 0, "x", |_| false).is_err());
    }

    /// Every data block backhand compresses was compressed ahead, in its order (paths compared
    /// component by component: `a-b` sorts before `a/` as a string, after it as a path), past
    /// hardlinks, duplicates and all-zero blocks (holes, which it does not compress); the image
    /// holds the same bytes.
    #[test]
    fn data_blocks_are_compressed_ahead_in_the_writers_order() {
        let pattern =
            |n: usize, seed: u32| (0..n as u32).map(|i| (i.wrapping_mul(seed) % 251) as u8).collect::<Vec<_>>();
        let block = BLOCK_SIZE as usize;
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        let three = store.add_bytes(&pattern(2 * block + 1000, 7)).unwrap();
        let two = store.add_bytes(&pattern(block + 5, 13)).unwrap();
        let mut holes = pattern(block, 17);
        holes.resize(2 * block + 10_000, 0);
        let holes = store.add_bytes(&holes).unwrap();
        let small = store.add_bytes(b"fragment").unwrap();
        let entries = [
            ("a", NodeKind::Dir),
            ("a/b", NodeKind::File(two)),
            ("a/c", NodeKind::Hardlink("a-b/x".into())),
            ("a/d", NodeKind::File(two)),
            ("a/e", NodeKind::File(small)),
            ("a-b", NodeKind::Dir),
            ("a-b/x", NodeKind::File(three)),
            ("z", NodeKind::File(holes)),
        ];
        for (path, kind) in entries {
            tree.insert(path, node(kind, 0o644, 0, 0), Overwrite::Never).unwrap();
        }
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ahead.squashfs");
        let written =
            write(&path, &tree, &store, Settings { level: 3, epoch: 0, cache: None }, &Cancel::new(), &Quiet).unwrap();
        // a/b, a/c (a-b/x's three), a/d, a-b/x, z's first block.
        assert_eq!(written.blocks_ahead, 2 + 3 + 2 + 3 + 1);
        let bytes = std::fs::read(&path).unwrap();
        let (entries, _) = read_image(std::io::Cursor::new(&bytes), 0, "ahead", |_| false).unwrap();
        for (name, blob) in [("a/b", two), ("a/c", three), ("a/d", two), ("a/e", small), ("a-b/x", three), ("z", holes)]
        {
            let entry = entries.iter().find(|e| e.name == name).unwrap();
            let (sha256, _) = fsutil::sha256_of(store.open(blob)).unwrap();
            assert_eq!(entry.sha256.as_deref(), Some(sha256.as_str()), "{name}");
        }
    }
}
