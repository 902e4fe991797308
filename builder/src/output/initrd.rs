//! `initrd.img`: the tree as a newc archive (`cpio`), compressed (`compress`), streamed to
//! its file while it is hashed; the archive's bytes count toward the initramfs phase.

use std::path::Path;

use sha2::Sha256;

use super::compress::Compressor;
use super::cpio;
use crate::cancel::Cancel;
use crate::fsutil::{self, Hashing, IoError};
use crate::profile::Compression;
use crate::report::{Reporter, Reporting};
use crate::tree::{ContentStore, NodeKind, Tree};

/// What was written.
pub struct Written {
    pub sha256: String,
    pub size: u64,
    /// Archive entries.
    pub entries: u64,
}

/// How to compress it.
pub struct Settings {
    pub compression: Compression,
    pub level: Option<u32>,
    /// Compression threads (the output is the same for any count).
    pub workers: u32,
    /// Every timestamp in the archive.
    pub epoch: u64,
}

/// About how many archive bytes `tree` makes, for the phase's progress: per entry a newc
/// header (110 bytes), its name and its data or link target, each padded to 4 bytes.
pub fn archive_bytes(tree: &Tree) -> u64 {
    let padded = |n: u64| n.div_ceil(4) * 4;
    tree.iter()
        .map(|(path, node)| {
            let data = match &node.kind {
                NodeKind::File(b) => b.len,
                NodeKind::Symlink(target) => target.len() as u64,
                _ => 0,
            };
            padded(110 + path.len() as u64 + 1) + padded(data)
        })
        .sum()
}

/// Writes the compressed archive of `tree` to `path`.
pub fn write(
    path: &Path,
    tree: &Tree,
    store: &ContentStore,
    settings: &Settings,
    cancel: &Cancel,
    reporter: &dyn Reporter,
) -> Result<Written, IoError> {
    let file = std::fs::File::create(path).map_err(fsutil::at(path))?;
    let hashing = Hashing::<_, Sha256>::new(file);
    let mut compressor = Compressor::new(
        settings.compression,
        settings.level,
        std::io::BufWriter::with_capacity(1 << 20, hashing),
        settings.workers,
    )
    .map_err(fsutil::at(path))?;
    let mut input = Reporting::phase(cancel.wrap(&mut compressor), reporter);
    let entries = cpio::write_tree(tree, store, settings.epoch, &mut input).map_err(fsutil::at(path))?;
    let hashing =
        compressor.finish().and_then(|w| w.into_inner().map_err(|e| e.into_error())).map_err(fsutil::at(path))?;
    let (_, sha256, size) = hashing.finish();
    Ok(Written { sha256: hex::encode(sha256), size, entries })
}
