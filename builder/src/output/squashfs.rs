//! `root.squashfs`: the guest's tree as a read-only SquashFS 4.0 image, zstd-compressed,
//! written with `backhand` (pure Rust, maintained; 0.25.5: earlier releases mis-wrote empty
//! files and directory indexes). The small boot initramfs (`output::bootinitrd`) mounts it
//! under a tmpfs overlay.
//!
//! The same tree gives the same bytes: entries go in in the tree's sorted order, which is the
//! order backhand numbers inodes and lays out directories in; the image's time is the epoch
//! and every inode's mtime is clamped to it (as in the initramfs); owners and modes are the
//! tree's; identical files share their data blocks (backhand's duplicate check, keyed on the
//! bytes). Like the newc initramfs, the image carries no xattrs; backhand writes no hardlinks,
//! so a hardlink becomes a file of its own whose data is shared with its target.

use std::io::{Read, Seek};
use std::path::Path;

use backhand::compression::{CompressionOptions, Compressor};
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use crate::cancel::Cancel;
use crate::fsutil;
use crate::report::{Reporter, Reporting};
use crate::tree::{ContentStore, NodeKind, Tree};

/// The superblock's length: the boot initramfs identifies the root image by these bytes.
pub const SUPERBLOCK_LEN: usize = 96;
/// zstd's level when the profile names none: decompression costs the same at any level, and
/// the image is read from disk on demand, so a fast level is the better trade.
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
pub struct Written {
    pub sha256: String,
    pub size: u64,
    /// The image's first bytes, by which the boot initramfs finds it among the block devices.
    pub superblock: [u8; SUPERBLOCK_LEN],
}

/// The bytes of the files `tree` holds, for the phase's progress.
pub fn input_bytes(tree: &Tree) -> u64 {
    tree.iter()
        .map(|(_, node)| match &node.kind {
            NodeKind::File(blob) => blob.len,
            NodeKind::Hardlink(target) => match tree.get(target).map(|n| &n.kind) {
                Some(NodeKind::File(blob)) => blob.len,
                _ => 0,
            },
            _ => 0,
        })
        .sum()
}

/// Writes `tree` as a SquashFS image to `path`, compressed with zstd at `level`; the files'
/// bytes count toward the current phase.
pub fn write(
    path: &Path,
    tree: &Tree,
    store: &ContentStore,
    level: u32,
    epoch: u64,
    cancel: &Cancel,
    reporter: &dyn Reporter,
) -> Result<Written, SquashfsError> {
    let error = |entry: Option<&str>, e: backhand::BackhandError| SquashfsError::Write {
        path: path.display().to_string(),
        entry: entry.map(str::to_string),
        message: e.to_string(),
    };
    let clamp = |t: u64| u32::try_from(t.min(epoch)).unwrap_or(u32::MAX);
    let mut fs = FilesystemWriter::default();
    let options = CompressionOptions::Zstd(backhand::compression::Zstd { compression_level: level });
    fs.set_compressor(FilesystemCompressor::new(Compressor::Zstd, Some(options)).map_err(|e| error(None, e))?);
    fs.set_time(clamp(epoch));
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    for (name, node) in tree.iter() {
        let header = NodeHeader::new((node.mode & 0o7777) as u16, node.uid, node.gid, clamp(node.mtime));
        let pushed = match &node.kind {
            NodeKind::Dir => fs.push_dir(name, header),
            NodeKind::File(blob) => {
                fs.push_file(Reporting::phase(cancel.wrap(store.open(*blob)), reporter), name, header)
            }
            NodeKind::Hardlink(target) => match tree.get(target).map(|n| &n.kind) {
                Some(NodeKind::File(blob)) => {
                    fs.push_file(Reporting::phase(cancel.wrap(store.open(*blob)), reporter), name, header)
                }
                _ => unreachable!("hardlinks are checked when the packages are installed"),
            },
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
    fs.write(&mut out).map_err(|e| match e {
        backhand::BackhandError::StdIo(io) => SquashfsError::Io(fsutil::at(path)(io)),
        other => error(None, other),
    })?;
    let mut file = out.into_inner().map_err(|e| fsutil::at(path)(e.into_error()))?;
    file.sync_all().map_err(fsutil::at(path))?;
    file.rewind().map_err(fsutil::at(path))?;
    let mut superblock = [0u8; SUPERBLOCK_LEN];
    file.read_exact(&mut superblock).map_err(fsutil::at(path))?;
    file.rewind().map_err(fsutil::at(path))?;
    let (sha256, size) = fsutil::sha256_of(file).map_err(fsutil::at(path))?;
    Ok(Written { sha256, size, superblock })
}

/// The kernel's `new_encode_dev`, which SquashFS stores for device inodes.
fn dev_number(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}
