//! The root image's block cache: the compressed form of each block the last root image of a
//! profile and arch held, found by the XXH3-128 of the block's bytes, so that a rebuild
//! compresses only the blocks that changed (zstd is most of a warm build's CPU time). The key
//! only finds a record; the check below is what makes it safe to use, so it need not resist
//! collisions: a block whose key another block shares is compressed afresh. (SHA-256 took
//! a third of a warm root image's CPU time.)
//!
//! It gives the bytes compressing afresh gives: a pack is used only by the compressor that
//! wrote it — its header names the zstd library's version, the level, the block size and the
//! digest of a fixed sample as this compressor compresses it, so a new zstd, or a change in
//! how backhand drives it that shows on the sample, leaves an old pack unused. A record is
//! checked before it is used: it must be one zstd frame, exactly the record's length, that
//! decompresses to exactly the block's bytes; else the block is compressed afresh (as a
//! cached package that no longer matches its pin is fetched again).
//!
//! The format is this module's own (a content-addressed pack is a few lines; no crate keeps
//! one that fits): a header line, then records `[XXH3-128 of the block: 16 bytes, LE][compressed
//! length: u32 LE][compressed bytes]`. Each image written makes a new pack of exactly its
//! blocks, beside the old one (locked while written; one a killed build left is removed by
//! the next) and renamed over it at the end, so the pack never outgrows the image it
//! describes and a reader never sees half of one; a pack cut short (a crash) is used up to
//! its last whole record. An image whose blocks are the old pack's, in its order (a rebuild
//! of what did not change), leaves the old pack as it is: nothing is written until the new
//! pack would differ from it. It is a cache: losing it costs compressing again, so the build
//! goes on without it, with a warning, when it cannot be read or written.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use backhand::compression::{CompressionAction, DefaultCompressor};
use backhand::{BackhandError, FilesystemCompressor};
use sha2::{Digest, Sha256};

use super::squashfs::compressor;
use crate::fsutil;

/// The XXH3-128 of a block's bytes (little-endian).
pub type Key = [u8; 16];

fn key_of(bytes: &[u8]) -> Key {
    xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes()
}

thread_local! {
    /// One zstd context and one buffer for the decompressed block per worker thread: making
    /// a context per block was a hundredth of a warm build's CPU, and a fresh 128 KiB buffer
    /// per block (memory the allocator maps and unmaps again) half of its page faults.
    static CHECKER: RefCell<(zstd::bulk::Decompressor<'static>, Vec<u8>)> = RefCell::new((
        zstd::bulk::Decompressor::new().expect("zstd allocates a decompression context"),
        Vec::new(),
    ));
}

/// A block compressed, and how.
pub struct Packed {
    pub compressed: Vec<u8>,
    /// Its key in the cache, if there is one.
    pub key: Option<Key>,
    /// Taken from the cache.
    pub cached: bool,
}

/// `bytes` compressed with `fc`: through `cache` when there is one (which compresses as `fc`
/// does: zstd at the image's level and block size), else afresh.
pub fn compress(
    cache: Option<&BlockCache>,
    bytes: &[u8],
    fc: FilesystemCompressor,
    block_size: u32,
) -> Result<Packed, BackhandError> {
    match cache {
        Some(cache) => cache.compress(bytes),
        None => Ok(Packed { compressed: DefaultCompressor.compress(bytes, fc, block_size)?, key: None, cached: false }),
    }
}

/// Compressed blocks of the last image, and the pack of the image being written.
pub struct BlockCache {
    path: PathBuf,
    header: String,
    fc: FilesystemCompressor,
    block_size: u32,
    old: Option<OldPack>,
    new: Mutex<Option<NewPack>>,
}

/// The pack found at the cache's path: where each record's compressed bytes are.
struct OldPack {
    file: File,
    records: HashMap<Key, (u64, u32)>,
    /// The keys in the order of their records in the file.
    order: Vec<Key>,
}

struct NewPack {
    /// How many of the old pack's records, in its order, the image's blocks were so far,
    /// while the new pack is the same as the old one up to there.
    same: usize,
    /// The new pack, once it differs from the old one (~100 MB not written and freed again
    /// on every rebuild of what did not change).
    out: Option<BufWriter<tempfile::NamedTempFile>>,
    kept: HashSet<Key>,
    /// The first write that failed, reported by [`BlockCache::commit`].
    failed: Option<io::Error>,
}

impl BlockCache {
    /// The cache at `path` for zstd at `level` with blocks of `block_size` (a pack written
    /// by the same compressor, if there is one; any other file there is ignored, and
    /// replaced at [`BlockCache::commit`]).
    pub fn open(path: &Path, level: u32, block_size: u32) -> io::Result<BlockCache> {
        let fc = compressor(level).map_err(io::Error::other)?;
        let header = header(fc, level, block_size)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let old = match File::open(path) {
            Ok(file) => read_pack(file, &header)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        fsutil::remove_abandoned_beside(path)?;
        let new = NewPack { same: 0, out: None, kept: HashSet::new(), failed: None };
        Ok(BlockCache { path: path.to_path_buf(), header, fc, block_size, old, new: Mutex::new(Some(new)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `bytes` compressed: the cached record when it decompresses to them, else afresh.
    fn compress(&self, bytes: &[u8]) -> Result<Packed, BackhandError> {
        let key = key_of(bytes);
        if let Some(compressed) = self.cached(&key, bytes) {
            return Ok(Packed { compressed, key: Some(key), cached: true });
        }
        let compressed = DefaultCompressor.compress(bytes, self.fc, self.block_size)?;
        Ok(Packed { compressed, key: Some(key), cached: false })
    }

    fn cached(&self, key: &Key, bytes: &[u8]) -> Option<Vec<u8>> {
        let old = self.old.as_ref()?;
        let &(offset, len) = old.records.get(key)?;
        let mut compressed = vec![0; len as usize];
        old.file.read_exact_at(&mut compressed, offset).ok()?;
        // One frame and nothing after it: zstd would also decode a frame followed by others.
        if zstd::zstd_safe::find_frame_compressed_size(&compressed).ok()? != compressed.len() {
            return None;
        }
        let same = CHECKER.with_borrow_mut(|(decompressor, plain)| {
            // Into the buffer's room, at least the block's length: a frame that holds more
            // fails here or in the comparison.
            plain.clear();
            plain.reserve(bytes.len());
            decompressor.decompress_to_buffer(&compressed, plain).is_ok_and(|_| plain[..] == *bytes)
        });
        same.then_some(compressed)
    }

    /// Puts a block the image holds into the new pack (once per key).
    pub fn keep(&self, block: &Packed) {
        let Some(key) = block.key else { return };
        let mut new = self.new.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pack) = new.as_mut().filter(|p| p.failed.is_none()) else { return };
        if !pack.kept.insert(key) {
            return;
        }
        if pack.out.is_none() {
            // The old pack's next record, taken from it: the packs are still the same.
            if block.cached && self.old.as_ref().and_then(|old| old.order.get(pack.same)) == Some(&key) {
                pack.same += 1;
                return;
            }
            if let Err(e) = self.start_writing(pack) {
                pack.failed = Some(e);
                return;
            }
        }
        let out = pack.out.as_mut().expect("started above");
        let len = u32::try_from(block.compressed.len()).expect("a compressed block is smaller than 4 GiB");
        let written = (out.write_all(&key))
            .and_then(|()| out.write_all(&len.to_le_bytes()))
            .and_then(|()| out.write_all(&block.compressed));
        pack.failed = written.err();
    }

    /// Starts the new pack beside the old one: the header, and the old pack's records it
    /// has been the same as so far, copied.
    fn start_writing(&self, pack: &mut NewPack) -> io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, fsutil::locked_temp_beside(&self.path)?);
        out.write_all(self.header.as_bytes())?;
        if let Some(old) = self.old.as_ref().filter(|_| pack.same > 0) {
            let (offset, len) = old.records[&old.order[pack.same - 1]];
            let start = self.header.len() as u64;
            let mut file = &old.file;
            file.seek(SeekFrom::Start(start))?;
            let want = offset + u64::from(len) - start;
            if io::copy(&mut file.take(want), &mut out)? != want {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the old pack was cut short while read"));
            }
        }
        pack.out = Some(out);
        Ok(())
    }

    /// Puts the new pack in place of the old one.
    pub fn commit(&self) -> io::Result<()> {
        let pack = self.new.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(mut pack) = pack else { return Ok(()) };
        if let Some(e) = pack.failed.take() {
            return Err(e);
        }
        if pack.out.is_none() {
            if self.old.as_ref().is_some_and(|old| pack.same == old.order.len()) {
                return Ok(());
            }
            // The image's blocks were the old pack's first ones only (or there is no old pack).
            self.start_writing(&mut pack)?;
        }
        let out = pack.out.expect("started above");
        // No sync: a pack lost or cut short by a crash only costs compressing again. The old
        // pack is removed first, not renamed over: ext4 (auto_da_alloc) writes back a file
        // renamed over another at once, on the renaming thread (a tenth of a second here).
        let pack = out.into_inner().map_err(|e| e.into_error())?;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        pack.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A record's key and compressed length.
const RECORD_HEAD: usize = size_of::<Key>() + size_of::<u32>();

/// The pack's first line: everything the compressed bytes depend on besides the block.
fn header(fc: FilesystemCompressor, level: u32, block_size: u32) -> io::Result<String> {
    // Text with repeats at many distances, so the sample exercises the match finder.
    let sample: Vec<u8> =
        (0u32..8192).flat_map(|i| format!("{i} {}\n", i.wrapping_mul(i) % 977).into_bytes()).collect();
    let compressed = DefaultCompressor.compress(&sample, fc, block_size).map_err(io::Error::other)?;
    Ok(format!(
        "hyve root blocks 2: zstd {} level {level} block {block_size} sample {}\n",
        zstd::zstd_safe::version_string(),
        hex::encode(Sha256::digest(compressed))
    ))
}

/// The records of a pack whose header is `header` (read record head by record head);
/// `None` for a pack of another compressor.
fn read_pack(file: File, header: &str) -> io::Result<Option<OldPack>> {
    let mut found = vec![0; header.len()];
    if file.read_exact_at(&mut found, 0).is_err() || found != header.as_bytes() {
        return Ok(None);
    }
    let end = file.metadata()?.len();
    let (mut records, mut order) = (HashMap::new(), Vec::new());
    let mut at = header.len() as u64;
    let mut head = [0u8; RECORD_HEAD];
    while file.read_exact_at(&mut head, at).is_ok() {
        let (key, len) = head.split_at(size_of::<Key>());
        let key: Key = key.try_into().expect("a key's length");
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
        at += head.len() as u64;
        if at + u64::from(len) > end {
            break;
        }
        // A key twice (no pack hyve writes has one) is found at its first record.
        records.entry(key).or_insert((at, len));
        order.push(key);
        at += u64::from(len);
    }
    Ok(Some(OldPack { file, records, order }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd(level: u32) -> FilesystemCompressor {
        compressor(level).unwrap()
    }

    fn fresh(bytes: &[u8], level: u32) -> Vec<u8> {
        DefaultCompressor.compress(bytes, zstd(level), 131072).unwrap()
    }

    fn block(seed: u32) -> Vec<u8> {
        (0u32..40_000).map(|i| (i.wrapping_mul(seed) % 61) as u8).collect()
    }

    /// Compresses `blocks` through a cache at `path`, keeps them, commits; how many came
    /// from the cache.
    fn pass(path: &Path, level: u32, blocks: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
        let cache = BlockCache::open(path, level, 131072).unwrap();
        let mut hits = 0;
        let out = blocks
            .iter()
            .map(|b| {
                let packed = compress(Some(&cache), b, zstd(level), 131072).unwrap();
                cache.keep(&packed);
                hits += usize::from(packed.cached);
                packed.compressed
            })
            .collect();
        cache.commit().unwrap();
        (out, hits)
    }

    #[test]
    fn a_rebuild_takes_the_same_bytes_from_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/x86_64.pack");
        let fresh: Vec<_> = [block(7), block(13)].iter().map(|b| fresh(b, 6)).collect();
        assert_eq!(pass(&path, 6, &[block(7), block(13)]), (fresh.clone(), 0));
        assert_eq!(
            pass(&path, 6, &[block(7), block(13), block(7)]),
            (fresh.iter().chain([&fresh[0]]).cloned().collect(), 3)
        );
        // The pack holds the last image's blocks only, each once.
        assert_eq!(pass(&path, 6, &[block(13)]).1, 1);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(len, header(zstd(6), 6, 131072).unwrap().len() + RECORD_HEAD + fresh[1].len());
        assert_eq!(pass(&path, 6, &[block(7)]).1, 0);
    }

    #[test]
    fn another_compressor_or_a_damaged_record_compresses_afresh() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p");
        pass(&path, 6, &[block(7), block(13)]);
        let (out, hits) = pass(&path, 3, &[block(7)]);
        assert_eq!((out, hits), (vec![fresh(&block(7), 3)], 0));
        // Flip a byte inside the first record's compressed bytes: that one block is
        // compressed again, the other still comes from the pack.
        pass(&path, 6, &[block(7), block(13)]);
        let mut bytes = std::fs::read(&path).unwrap();
        let first = header(zstd(6), 6, 131072).unwrap().len() + RECORD_HEAD;
        bytes[first + 20] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(pass(&path, 6, &[block(7), block(13)]).1, 1);
        assert_eq!(pass(&path, 6, &[block(7)]), (vec![fresh(&block(7), 6)], 1));
        // A record that decodes right but holds more than one frame is not used.
        let header = header(zstd(6), 6, 131072).unwrap();
        let mut record = fresh(&block(7), 6);
        record.extend([0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
        let mut bytes = header.clone().into_bytes();
        bytes.extend(key_of(&block(7)));
        bytes.extend((record.len() as u32).to_le_bytes());
        bytes.extend(&record);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(pass(&path, 6, &[block(7)]), (vec![fresh(&block(7), 6)], 0));
        // A pack cut short keeps its whole records; garbage is no pack at all.
        pass(&path, 6, &[block(7), block(13)]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(pass(&path, 6, &[block(7), block(13)]).1, 1);
        std::fs::write(&path, b"not a pack").unwrap();
        assert_eq!(pass(&path, 6, &[block(7)]).1, 0);
    }

    /// The new pack is written beside the old one, locked; one a killed build left behind
    /// (nobody holds it) is removed when the cache is next opened, one being written is not.
    #[test]
    fn a_pack_left_half_written_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.pack");
        let left = d.path().join(".p.pack.tmp-killed");
        std::fs::write(&left, b"half").unwrap();
        let writing = BlockCache::open(&path, 6, 131072).unwrap();
        assert!(!left.exists());
        let temps = || std::fs::read_dir(d.path()).unwrap().count();
        let keep = |cache: &BlockCache| cache.keep(&compress(Some(cache), &block(7), zstd(6), 131072).unwrap());
        keep(&writing);
        assert_eq!(temps(), 1, "the one being written");
        let other = BlockCache::open(&path, 6, 131072).unwrap();
        keep(&other);
        assert_eq!(temps(), 2, "both being written");
        writing.commit().unwrap();
        other.commit().unwrap();
        assert_eq!(temps(), 1, "the pack alone");
        assert!(path.exists());
    }

    /// A rebuild whose blocks are the pack's, in its order, leaves the pack as it is; one that
    /// differs anywhere, or ends sooner, writes a new pack of exactly its own blocks.
    #[test]
    fn an_unchanged_image_leaves_the_pack_unwritten() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.pack");
        let blocks = [block(7), block(13), block(17)];
        pass(&path, 6, &blocks);
        let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        let (first, bytes) = (inode(), std::fs::read(&path).unwrap());
        assert_eq!(pass(&path, 6, &blocks).1, 3);
        assert_eq!((inode(), std::fs::read(&path).unwrap()), (first, bytes.clone()), "not rewritten");
        // Fewer blocks: the pack is cut to them.
        assert_eq!(pass(&path, 6, &blocks[..2]).1, 2);
        assert_ne!(inode(), first);
        let two = bytes.len() - RECORD_HEAD - fresh(&block(17), 6).len();
        assert_eq!(std::fs::read(&path).unwrap(), bytes[..two]);
        // Another order, then a new block after the same ones: rewritten each time, and a
        // pack as a fresh cache would write it.
        let swapped = [block(13), block(7)];
        pass(&path, 6, &swapped);
        let direct = d.path().join("direct.pack");
        pass(&direct, 6, &swapped);
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&direct).unwrap());
        let longer = [block(13), block(7), block(19)];
        assert_eq!(pass(&path, 6, &longer).1, 2);
        let direct = d.path().join("direct-longer.pack");
        pass(&direct, 6, &longer);
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&direct).unwrap());
    }
}
