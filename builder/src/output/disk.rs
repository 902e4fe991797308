//! Raw EFI disk images: a GPT (protective MBR, primary and backup headers and partition
//! tables, CRC32s) holding an EFI System Partition — FAT32, label `HYVE-EFI` — and, when asked
//! for, a `hyve-data` partition left unformatted with the guest's format-me header.
//!
//! The GPT is written by hand (UEFI 2.10 §5.3): it is a few fixed structures, and the `gpt`
//! crate draws partition GUIDs at random and owns the device I/O, while every byte here must
//! follow from the inputs. The ESP's FAT32 is written by `output::fat`; `fatfs` reads it
//! back for `hyve inspect`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::esp::EspFile;
use super::fat;
use crate::datadisk;
use crate::fsutil;

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;
/// The ESP and the data partition start on 1 MiB boundaries.
const ALIGN_LBA: u64 = MIB / SECTOR;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// LBAs the partition entry array takes (128 × 128 bytes).
const TABLE_LBAS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// The Discoverable Partitions Specification's root partition types (uapi-group.org
/// specifications/specs/discoverable_partitions_specification), so tools know the image for
/// what it is; the guest itself finds it by its superblock.
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const ROOT_ARM64_TYPE: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
/// The same specification's "read-only" attribute (bit 60).
const READ_ONLY_ATTRIBUTE: u64 = 1 << 60;
pub const ROOT_LABEL: &str = "hyve-root";
pub const ESP_LABEL: &str = "HYVE-EFI";

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskError {
    /// The files do not fit the ESP of the disk size the profile fixed.
    #[error("the EFI system partition ({esp_mib} MiB) cannot hold its {need_mib} MiB of files; set output.disk_size_mib to at least {suggest_mib} in the profile, or leave it unset (there and in the profiles it extends) to size the disk to fit")]
    TooSmall { esp_mib: u64, need_mib: u64, suggest_mib: u64 },
    #[error("{path}: the ESP: {source}")]
    Fat { path: String, source: fat::FatError },
    /// A disk image that is not what `hyve` writes (for `inspect`).
    #[error("{path}: {detail}")]
    NotGpt { path: String, detail: String },
    /// The FAT reader gave up on the ESP.
    #[error("{path}: the ESP's FAT is damaged (its reader gave up on it); this is not a disk image hyve wrote, or it was changed since")]
    DamagedFat { path: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
    /// The data partition's format-me header.
    #[error("the data partition's header: {0}")]
    #[serde(untagged)]
    FormatMe(#[from] datadisk::DataDiskError),
}

/// A GUID's on-disk bytes from its text form (first three fields little-endian).
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let raw: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("GUID literal")).collect();
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..].copy_from_slice(&raw[8..]);
    b
}

/// The text form of on-disk GUID bytes.
pub fn guid_text(b: &[u8]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        hex::encode_upper(&b[10..16])
    )
}

/// A version-4-shaped GUID derived from `seed` and `what`: the same inputs, the same GUID.
fn derived_guid(seed: &[u8], what: &str) -> [u8; 16] {
    let h = Sha256::new().chain_update(seed).chain_update(what.as_bytes()).finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[7] = (b[7] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// A partition to write into the GPT.
#[derive(Debug, Clone)]
pub struct Partition {
    pub type_guid: [u8; 16],
    pub guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// Where the partitions of a disk lie: byte offset and length of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub esp: (u64, u64),
    /// The read-only root image, right after the ESP.
    pub root: Option<(u64, u64)>,
    /// The data partition, at the end (so that it can grow with the disk).
    pub data: Option<(u64, u64)>,
}

/// The partitions of a disk of `size` bytes: a root partition of `root_len` bytes (rounded up
/// to whole MiB) and a data partition of `data_mib` MiB at the end when asked for, and the
/// ESP in the rest.
pub fn layout(size: u64, root_len: Option<u64>, data_mib: Option<u64>) -> Layout {
    let total = size / SECTOR;
    // The last usable LBA before the backup table, rounded down to the alignment.
    let end = (total - 1 - TABLE_LBAS) / ALIGN_LBA * ALIGN_LBA;
    let esp_start = ALIGN_LBA;
    let data_start = end - data_mib.unwrap_or(0) * ALIGN_LBA;
    let root_start = data_start - root_len.map_or(0, |len| len.div_ceil(MIB) * ALIGN_LBA);
    let bytes = |from: u64, to: u64| (from * SECTOR, (to - from) * SECTOR);
    Layout {
        esp: bytes(esp_start, root_start),
        root: root_len.map(|_| bytes(root_start, data_start)),
        data: data_mib.map(|_| bytes(data_start, end)),
    }
}

fn header(total: u64, disk_guid: &[u8; 16], primary: bool, table_crc: u32) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    let (my, alternate, table) = if primary { (1, total - 1, 2) } else { (total - 1, 1, total - 1 - TABLE_LBAS) };
    h[..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alternate.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + TABLE_LBAS).to_le_bytes());
    h[48..56].copy_from_slice(&(total - 2 - TABLE_LBAS).to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&table.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&table_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the protective MBR and both GPT copies into `disk` (of `size` bytes).
pub fn write_gpt(
    disk: &mut (impl Write + Seek),
    size: u64,
    disk_guid: &[u8; 16],
    parts: &[Partition],
) -> std::io::Result<()> {
    let total = size / SECTOR;
    let mut mbr = [0u8; SECTOR as usize];
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    entry[4] = 0xEE;
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    entry[12..16].copy_from_slice(&u32::try_from(total - 1).unwrap_or(u32::MAX).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let mut table = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut table[i * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        e[..16].copy_from_slice(&p.type_guid);
        e[16..32].copy_from_slice(&p.guid);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let table_crc = crc32fast::hash(&table);
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&mbr)?;
    disk.write_all(&header(total, disk_guid, true, table_crc))?;
    disk.write_all(&table)?;
    disk.seek(SeekFrom::Start((total - 1 - TABLE_LBAS) * SECTOR))?;
    disk.write_all(&table)?;
    disk.write_all(&header(total, disk_guid, false, table_crc))?;
    Ok(())
}

/// A partition as read back from a GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPartition {
    pub type_guid: String,
    pub guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// Reads and checks a GPT: signature, header and table CRCs, the backup copy.
pub fn read_gpt(disk: &mut (impl Read + Seek), path: &str) -> Result<(String, Vec<ReadPartition>), DiskError> {
    let bad = |detail: String| DiskError::NotGpt { path: path.into(), detail };
    let size = disk.seek(SeekFrom::End(0)).map_err(fsutil::at_named(path))?;
    let read_at = |disk: &mut dyn ReadSeek, at: u64, len: usize| -> Result<Vec<u8>, DiskError> {
        let mut b = vec![0u8; len];
        disk.seek(SeekFrom::Start(at)).map_err(fsutil::at_named(path))?;
        disk.read_exact(&mut b).map_err(fsutil::at_named(path))?;
        Ok(b)
    };
    let mbr = read_at(disk, 0, SECTOR as usize)?;
    if mbr[510..512] != [0x55, 0xAA] || mbr[450] != 0xEE {
        return Err(bad("no protective MBR (not a GPT disk)".into()));
    }
    let mut tables = Vec::new();
    for lba in [1, size / SECTOR - 1] {
        let h = read_at(disk, lba * SECTOR, SECTOR as usize)?;
        if &h[..8] != b"EFI PART" {
            return Err(bad(format!("no GPT header at LBA {lba}")));
        }
        let mut zeroed = h[..92].to_vec();
        zeroed[16..20].fill(0);
        let stored = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
        if crc32fast::hash(&zeroed) != stored {
            return Err(bad(format!("GPT header at LBA {lba}: CRC32 mismatch")));
        }
        let table_lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
        let table = read_at(disk, table_lba * SECTOR, (ENTRIES * ENTRY_SIZE) as usize)?;
        if crc32fast::hash(&table) != u32::from_le_bytes(h[88..92].try_into().expect("4 bytes")) {
            return Err(bad(format!("partition table at LBA {table_lba}: CRC32 mismatch")));
        }
        tables.push((guid_text(&h[56..72]), table));
    }
    if tables[0] != tables[1] {
        return Err(bad("the backup GPT differs from the primary".into()));
    }
    let (disk_guid, table) = tables.swap_remove(0);
    let parts = table
        .chunks(ENTRY_SIZE as usize)
        .filter(|e| e[..16].iter().any(|b| *b != 0))
        .map(|e| ReadPartition {
            type_guid: guid_text(&e[..16]),
            guid: guid_text(&e[16..32]),
            first_lba: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            last_lba: u64::from_le_bytes(e[40..48].try_into().expect("8 bytes")),
            name: String::from_utf16_lossy(
                &e[56..128]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|u| *u != 0)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect();
    Ok((disk_guid, parts))
}

trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A window of a file, so the FAT code sees one partition as a whole device.
pub struct Slice<F> {
    inner: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Slice<F> {
    pub fn new(mut inner: F, start: u64, len: u64) -> std::io::Result<Slice<F>> {
        inner.seek(SeekFrom::Start(start))?;
        Ok(Slice { inner, start, len, pos: 0 })
    }
}

impl<F: Read + Seek> Read for Slice<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.inner.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: Write + Seek> Write for Slice<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<F: Seek> Seek for Slice<F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 || target > self.len as i128 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek outside the partition"));
        }
        self.pos = target as u64;
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(self.pos)
    }
}

/// A reader `fatfs` can mount: it wants a writable device even to read, and reading writes
/// nothing (no access dates; the dirty flag is only set by writes), so every write is an
/// error here and a disk image is opened read-only.
struct ReadOnly<R>(R);

impl<R: Read> Read for ReadOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R> Write for ReadOnly<R> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the disk image is opened read-only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<R: Seek> Seek for ReadOnly<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

/// What the disk is made of besides its files.
pub struct DiskSpec<'a> {
    /// The disk's size in bytes (whole MiB); `None`: the least that holds its partitions.
    pub size: Option<u64>,
    /// The read-only root image to copy into its own partition.
    pub root: Option<RootImage<'a>>,
    pub data_mib: Option<u64>,
    /// Hashed into the disk and partition GUIDs and the FAT serial.
    pub seed: &'a [u8],
    pub epoch: u64,
}

/// A root image file and its partition type.
pub struct RootImage<'a> {
    pub path: &'a Path,
    pub len: u64,
    pub type_guid: &'static str,
}

/// FAT32's least size with 512-byte clusters (65525 of them), in MiB.
const LEAST_ESP_MIB: u64 = 33;

/// No ESP is smaller than its files, nor than FAT32's least.
fn esp_floor_mib(files: &[EspFile]) -> u64 {
    files.iter().map(|f| f.size).sum::<u64>().div_ceil(MIB).max(LEAST_ESP_MIB)
}

/// The least ESP, in whole MiB, that holds `files`: from [`esp_floor_mib`], as the FATs and
/// directories take a little more. Found a MiB at a time, as a larger ESP may take larger
/// clusters (`fat::Geometry`), which hold less of files that end mid-cluster.
fn fitted_esp_mib(files: &[EspFile]) -> Result<u64, fat::FatError> {
    let mut esp_mib = esp_floor_mib(files);
    loop {
        match fat::check_fits(esp_mib * MIB, files) {
            Ok(()) => return Ok(esp_mib),
            Err(fat::FatError::Full { .. }) => esp_mib += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `path`: GPT, the ESP with `files`, the root image, and the data partition's
/// format-me header.
pub fn write_disk(path: &Path, spec: &DiskSpec, files: Vec<EspFile>) -> Result<(), DiskError> {
    let shown = path.display().to_string();
    let fat_error = |source| DiskError::Fat { path: shown.clone(), source };
    // Besides the ESP: the root and data partitions, the GPT's first MiB and the last, which
    // holds the backup table.
    let root_mib = spec.root.as_ref().map_or(0, |r| r.len.div_ceil(MIB));
    let others_mib = root_mib + spec.data_mib.unwrap_or(0) + 2;
    let size = match spec.size {
        None => (fitted_esp_mib(&files).map_err(fat_error)? + others_mib) * MIB,
        Some(size) if others_mib + LEAST_ESP_MIB > size / MIB => {
            let need_mib = esp_floor_mib(&files);
            let esp_mib = (size / MIB).saturating_sub(others_mib);
            return Err(DiskError::TooSmall { esp_mib, need_mib, suggest_mib: others_mib + need_mib + 8 });
        }
        Some(size) => size,
    };
    let parts = layout(size, spec.root.as_ref().map(|r| r.len), spec.data_mib);
    let (esp_start, esp_len) = parts.esp;
    match fat::check_fits(esp_len, &files) {
        Ok(()) => {}
        Err(fat::FatError::Full { need, cluster, .. }) => {
            // The files' clusters plus the two FATs, and the rest of the disk as it is.
            let need_mib = (need * cluster).div_ceil(MIB) + (esp_len / cluster * 4 * 2).div_ceil(MIB);
            let other = (size - esp_len).div_ceil(MIB);
            return Err(DiskError::TooSmall { esp_mib: esp_len / MIB, need_mib, suggest_mib: need_mib + other + 8 });
        }
        Err(e) => return Err(fat_error(e)),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(fsutil::at_named(&shown))?;
    file.set_len(size).map_err(fsutil::at_named(&shown))?;
    let mut disk = file;
    let mut gpt_parts = vec![Partition {
        type_guid: guid_bytes(ESP_TYPE),
        guid: derived_guid(spec.seed, "esp"),
        first_lba: esp_start / SECTOR,
        last_lba: (esp_start + esp_len) / SECTOR - 1,
        attributes: 0,
        name: "EFI System Partition".into(),
    }];
    if let (Some(root), Some((start, len))) = (&spec.root, parts.root) {
        gpt_parts.push(Partition {
            type_guid: guid_bytes(root.type_guid),
            guid: derived_guid(spec.seed, "root"),
            first_lba: start / SECTOR,
            last_lba: (start + len) / SECTOR - 1,
            attributes: READ_ONLY_ATTRIBUTE,
            name: ROOT_LABEL.into(),
        });
        let mut image = std::fs::File::open(root.path).map_err(fsutil::at(root.path))?;
        disk.seek(SeekFrom::Start(start)).map_err(fsutil::at_named(&shown))?;
        let copied = std::io::copy(&mut image, &mut disk).map_err(fsutil::at_named(&shown))?;
        if copied != root.len {
            let changed = std::io::Error::other(format!("{copied} bytes, expected {}: changed while read", root.len));
            return Err(fsutil::at(root.path)(changed).into());
        }
    }
    if let Some((start, len)) = parts.data {
        gpt_parts.push(Partition {
            type_guid: guid_bytes(LINUX_DATA_TYPE),
            guid: derived_guid(spec.seed, "data"),
            first_lba: start / SECTOR,
            last_lba: (start + len) / SECTOR - 1,
            attributes: 0,
            name: "hyve-data".into(),
        });
        // The guest formats this partition on first boot (datadisk's protocol).
        let header = datadisk::user_data_tar(&[])?;
        disk.seek(SeekFrom::Start(start)).map_err(fsutil::at_named(&shown))?;
        disk.write_all(&header).map_err(fsutil::at_named(&shown))?;
    }
    write_gpt(&mut disk, size, &derived_guid(spec.seed, "disk"), &gpt_parts).map_err(fsutil::at_named(&shown))?;

    let serial = u32::from_le_bytes(derived_guid(spec.seed, "fat-serial")[..4].try_into().expect("4 bytes"));
    let hidden = u32::try_from(esp_start / SECTOR).expect("the ESP starts at 1 MiB");
    let volume = fat::Volume { start: esp_start, len: esp_len, hidden, serial, label: ESP_LABEL, epoch: spec.epoch };
    fat::write_fat32(&mut disk, &volume, files).map_err(fat_error)?;
    Ok(())
}

/// One entry of a FAT directory listing: path, size (None for directories).
pub type EspEntry = (String, Option<u64>);

/// The ESP of a hyve disk, opened for reading with `fatfs`.
fn open_esp<'a, R: Read + Seek>(
    disk: &'a mut R,
    esp: &ReadPartition,
    what: &str,
) -> Result<fatfs::FileSystem<Slice<ReadOnly<&'a mut R>>>, DiskError> {
    let start = esp.first_lba * SECTOR;
    let len = (esp.last_lba + 1 - esp.first_lba) * SECTOR;
    let slice = Slice::new(ReadOnly(disk), start, len).map_err(fsutil::at_named(what))?;
    Ok(fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).map_err(fsutil::at_named(format!("{what}: the ESP")))?)
}

/// Every file and directory on the ESP of a hyve disk, depth first, sorted by name.
pub fn list_esp(disk: &mut (impl Read + Seek), esp: &ReadPartition, path: &str) -> Result<Vec<EspEntry>, DiskError> {
    /// A damaged or hostile FAT can chain a directory back to its parent: the walk stops
    /// this deep, and after this many entries, instead of recursing or reading forever.
    const MAX_DEPTH: usize = 16;
    const MAX_ENTRIES: usize = 100_000;
    fn walk<T: fatfs::ReadWriteSeek>(
        dir: fatfs::Dir<T>,
        prefix: &str,
        depth: usize,
        out: &mut Vec<EspEntry>,
    ) -> std::io::Result<()> {
        let too_much =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}; the FAT is damaged"));
        if depth > MAX_DEPTH {
            return Err(too_much(&format!("directories nested more than {MAX_DEPTH} deep at {prefix}")));
        }
        let mut entries = Vec::new();
        for e in dir.iter() {
            if out.len() + entries.len() >= MAX_ENTRIES {
                return Err(too_much(&format!("more than {MAX_ENTRIES} entries")));
            }
            entries.push(e?);
        }
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let full = format!("{prefix}{name}");
            if e.is_dir() {
                out.push((format!("{full}/"), None));
                walk(e.to_dir(), &format!("{full}/"), depth + 1, out)?;
            } else {
                out.push((full, Some(e.len())));
            }
        }
        Ok(())
    }
    survive_fatfs(path, || {
        let fs = open_esp(disk, esp, path)?;
        let mut out = Vec::new();
        walk(fs.root_dir(), "", 0, &mut out).map_err(fsutil::at_named(format!("{path}: the ESP")))?;
        Ok(out)
    })
}

/// The first `limit` bytes of a file on the ESP (UKI headers, the loader entry).
pub fn read_esp_file(
    disk: &mut (impl Read + Seek),
    esp: &ReadPartition,
    file: &str,
    limit: u64,
) -> Result<Vec<u8>, DiskError> {
    with_esp_file(disk, esp, file, |f| {
        let mut b = Vec::new();
        f.take(limit).read_to_end(&mut b)?;
        Ok(b)
    })
}

/// Streams a file on the ESP to `read` (the initrd, without holding it in memory).
pub fn with_esp_file<T>(
    disk: &mut (impl Read + Seek),
    esp: &ReadPartition,
    file: &str,
    read: impl FnOnce(&mut dyn Read) -> std::io::Result<T>,
) -> Result<T, DiskError> {
    survive_fatfs(file, || {
        let fs = open_esp(disk, esp, file)?;
        let mut f = fs.root_dir().open_file(file).map_err(fsutil::at_named(file))?;
        Ok(read(&mut f).map_err(fsutil::at_named(file))?)
    })
}

/// Runs `read` on a FAT through `fatfs`, turning a panic inside it into an error. fatfs
/// 0.3.6, its last release, panics on some damaged file systems (a cluster number below 2
/// underflows in `sector_from_cluster`, found by `make fuzz`), and no input may crash hyve.
/// The panic message is kept off stderr: the error says what happened.
fn survive_fatfs<T>(what: &str, read: impl FnOnce() -> Result<T, DiskError>) -> Result<T, DiskError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|_| Err(DiskError::DamagedFat { path: what.to_string() }))
}

/// Whether the first 520 bytes of a file are a protective MBR followed by a GPT header.
pub fn looks_like_gpt(head: &[u8]) -> bool {
    head.len() >= 520 && head[510..512] == [0x55, 0xAA] && &head[512..520] == b"EFI PART"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> ReadPartition {
        ReadPartition {
            type_guid: ESP_TYPE.into(),
            guid: String::new(),
            first_lba: 0,
            last_lba: bytes.len() as u64 / SECTOR - 1,
            name: String::new(),
        }
    }

    /// Found by `make fuzz` (disk_reader): a FAT whose directory chains back to its parent.
    /// Listing it is an error, not a stack overflow.
    #[test]
    fn a_directory_loop_in_the_fat_is_an_error() {
        let bytes = include_bytes!("fixtures/fat-directory-loop.bin");
        let e = list_esp(&mut std::io::Cursor::new(&bytes[..]), &whole(bytes), "loop.img").unwrap_err().to_string();
        assert!(e.contains("loop.img") && e.contains("damaged"), "{e}");
    }

    /// Found by `make fuzz` (disk_reader): a file whose first cluster is 0 makes fatfs
    /// underflow; reading it is an error. With overflow checks (debug builds) fatfs panics,
    /// which is caught and told as a damaged FAT; without them (release builds) the wrapped
    /// cluster number points outside the partition.
    #[test]
    fn a_fat_that_panics_fatfs_is_an_error() {
        let bytes = include_bytes!("fixtures/fat-cluster-zero.bin");
        let mut image = std::io::Cursor::new(&bytes[..]);
        let part = whole(bytes);
        let files = list_esp(&mut image, &part, "zero.img").unwrap_or_default();
        let results: Vec<_> = files
            .iter()
            .filter(|(_, size)| size.is_some())
            .map(|(p, _)| read_esp_file(&mut image, &part, p, 64))
            .collect();
        let told = |r: &Result<_, DiskError>| match r {
            Err(DiskError::DamagedFat { .. }) => true,
            Err(DiskError::Io(e)) => e.to_string().contains("outside the partition"),
            _ => false,
        };
        assert!(results.iter().any(told), "{results:?}");
    }

    #[test]
    fn guids_round_trip_and_are_derived() {
        assert_eq!(guid_text(&guid_bytes(ESP_TYPE)), ESP_TYPE);
        assert_eq!(guid_bytes(ESP_TYPE)[..4], [0x28, 0x73, 0x2A, 0xC1]);
        let a = derived_guid(b"seed", "disk");
        assert_eq!(a, derived_guid(b"seed", "disk"));
        assert_ne!(a, derived_guid(b"seed", "esp"));
        assert_eq!(guid_text(&a).as_bytes()[14], b'4', "version 4 shape: {}", guid_text(&a));
    }

    #[test]
    fn disk_round_trips_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            DiskSpec { size: Some(80 * MIB), root: None, data_mib: Some(8), seed: b"inputs", epoch: 1_700_000_000 };
        let files = || {
            vec![
                EspFile {
                    path: "EFI/BOOT/BOOTX64.EFI".into(),
                    size: 3000,
                    write: Box::new(|w: &mut dyn Write| w.write_all(&[7u8; 3000])),
                },
                EspFile {
                    path: "loader/entries/hyve.conf".into(),
                    size: 5,
                    write: Box::new(|w: &mut dyn Write| w.write_all(b"title")),
                },
            ]
        };
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_disk(&a, &spec, files()).unwrap();
        write_disk(&b, &spec, files()).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "byte-identical");
        let mut f = std::fs::File::open(&a).unwrap();
        let (_, parts) = read_gpt(&mut f, "a.img").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].type_guid.as_str(), parts[0].first_lba), (ESP_TYPE, 2048));
        assert_eq!(parts[1].name, "hyve-data");
        // Read from bytes that cannot be written: the ESP reader needs no write access.
        let bytes = std::fs::read(&a).unwrap();
        let mut image = std::io::Cursor::new(bytes.as_slice());
        let listing = list_esp(&mut image, &parts[0], "a.img").unwrap();
        assert!(listing.contains(&("EFI/BOOT/BOOTX64.EFI".to_string(), Some(3000))), "{listing:?}");
        assert_eq!(read_esp_file(&mut image, &parts[0], "loader/entries/hyve.conf", 100).unwrap(), b"title");
        let data = (parts[1].first_lba * SECTOR) as usize;
        assert!(bytes[data..].starts_with(datadisk::FORMAT_MAGIC.as_bytes()));
        // A flipped byte in the backup table is caught.
        let mut broken = bytes.clone();
        let at = broken.len() - 2 * SECTOR as usize - 100;
        broken[at] ^= 1;
        std::fs::write(&b, &broken).unwrap();
        let e = read_gpt(&mut std::fs::File::open(&b).unwrap(), "b.img").unwrap_err().to_string();
        assert!(e.contains("CRC32"), "{e}");
        let small = DiskSpec { size: Some(64 * MIB), root: None, data_mib: None, seed: b"x", epoch: 0 };
        let big = vec![EspFile { path: "big".into(), size: 100 * MIB, write: Box::new(|_: &mut dyn Write| Ok(())) }];
        let e = write_disk(&dir.path().join("c.img"), &small, big).unwrap_err().to_string();
        assert!(e.contains("disk_size_mib"), "{e}");
        assert!(!dir.path().join("c.img").exists());
    }

    #[test]
    fn a_disk_without_a_size_is_the_least_that_holds_its_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let root_path = dir.path().join("root.squashfs");
        std::fs::write(&root_path, vec![9u8; (3 * MIB + 5) as usize]).unwrap();
        let esp_files = |size: u64| {
            let write = move |w: &mut dyn Write| std::io::copy(&mut std::io::repeat(1).take(size), w).map(|_| ());
            vec![
                EspFile { path: "hyve/kernel".into(), size, write: Box::new(write) },
                EspFile {
                    path: "loader/entries/hyve.conf".into(),
                    size: 5,
                    write: Box::new(|w| w.write_all(b"title")),
                },
            ]
        };
        for (esp_bytes, expected_esp_mib) in [(1, LEAST_ESP_MIB), (40 * MIB, 41)] {
            let root = RootImage { path: &root_path, len: 3 * MIB + 5, type_guid: ROOT_X86_64_TYPE };
            let spec = DiskSpec { size: None, root: Some(root), data_mib: Some(64), seed: b"s", epoch: 0 };
            let path = dir.path().join(format!("fit-{esp_bytes}.img"));
            write_disk(&path, &spec, esp_files(esp_bytes)).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, (expected_esp_mib + 4 + 64 + 2) * MIB, "ESP, root, data, GPT");
            let (_, parts) = read_gpt(&mut std::io::Cursor::new(&bytes), "fit.img").unwrap();
            let esp_len = (parts[0].last_lba + 1 - parts[0].first_lba) * SECTOR;
            assert_eq!(esp_len, expected_esp_mib * MIB);
            // The least: the files fit the ESP, and a MiB less would not hold them as FAT32.
            fat::check_fits(esp_len, &esp_files(esp_bytes)).unwrap();
            assert!(fat::check_fits(esp_len - MIB, &esp_files(esp_bytes)).is_err());
            let listing = list_esp(&mut std::io::Cursor::new(bytes.as_slice()), &parts[0], "fit.img").unwrap();
            assert!(listing.contains(&("hyve/kernel".to_string(), Some(esp_bytes))), "{listing:?}");
            assert_eq!(parts[2].name, "hyve-data");
            assert_eq!((parts[2].last_lba + 1) * SECTOR, bytes.len() as u64 - MIB, "data ends at the last MiB");
        }
        // The least also where the clusters grow from 512 bytes to 4 KiB (above 260 MiB).
        for mib in [200, 255, 257, 258, 259, 260, 300] {
            let files = vec![EspFile { path: "big".into(), size: mib * MIB, write: Box::new(|_| Ok(())) }];
            let esp_mib = fitted_esp_mib(&files).unwrap();
            fat::check_fits(esp_mib * MIB, &files).unwrap();
            assert!(fat::check_fits((esp_mib - 1) * MIB, &files).is_err(), "{mib} MiB of files: {esp_mib} MiB");
        }
    }

    #[test]
    fn the_root_image_gets_a_read_only_partition_between_esp_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let root_path = dir.path().join("root.squashfs");
        let root: Vec<u8> = (0..(3 * MIB + 5)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&root_path, &root).unwrap();
        let image = RootImage { path: &root_path, len: root.len() as u64, type_guid: ROOT_ARM64_TYPE };
        let spec = DiskSpec { size: Some(80 * MIB), root: Some(image), data_mib: Some(8), seed: b"s", epoch: 0 };
        let esp_file =
            || vec![EspFile { path: "a".into(), size: 1, write: Box::new(|w: &mut dyn Write| w.write_all(b"a")) }];
        let path = dir.path().join("d.img");
        write_disk(&path, &spec, esp_file()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, parts) = read_gpt(&mut std::io::Cursor::new(&bytes), "d.img").unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["EFI System Partition", ROOT_LABEL, "hyve-data"], "data stays last, so it can grow");
        let r = &parts[1];
        assert_eq!(r.type_guid, ROOT_ARM64_TYPE);
        assert_eq!((r.last_lba + 1 - r.first_lba) * SECTOR, 4 * MIB, "whole MiB");
        assert_eq!(parts[0].last_lba + 1, r.first_lba);
        assert_eq!(r.last_lba + 1, parts[2].first_lba);
        let at = (r.first_lba * SECTOR) as usize;
        assert_eq!(&bytes[at..at + root.len()], &root[..]);
        // The read-only attribute (bit 60) of the second entry of the table at LBA 2.
        let entry = &bytes[(2 * SECTOR + ENTRY_SIZE) as usize..][..ENTRY_SIZE as usize];
        assert_eq!(u64::from_le_bytes(entry[48..56].try_into().unwrap()), 1 << 60);
        // Root and data leave the ESP too little: refused before anything is written.
        let image = RootImage { path: &root_path, len: 40 * MIB, type_guid: ROOT_ARM64_TYPE };
        let tight = DiskSpec { size: Some(80 * MIB), root: Some(image), data_mib: Some(8), seed: b"s", epoch: 0 };
        let e = write_disk(&dir.path().join("e.img"), &tight, esp_file()).unwrap_err().to_string();
        assert!(e.contains("disk_size_mib to at least") && e.contains("leave it unset"), "{e}");
        assert!(!dir.path().join("e.img").exists());
    }
}
