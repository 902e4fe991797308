//! A FAT32 file system written in one pass, for the disk image's ESP.
//!
//! Written by hand because the `fatfs` crate (0.3.6, the released version) puts long-name
//! entries in front of every directory's `.` and `..` entries and points `..` of top-level
//! directories at cluster 2 instead of 0, which `fsck.vfat` reports as damage. Here the whole
//! tree is known up front, so the layout is simple: directories first, then each file in one
//! contiguous run of clusters, in the order given. A name that fits 8.3 is written as such
//! (with the lowercase flags Windows NT introduced); any other gets VFAT long-name entries in
//! front of a `~N` short alias.
//!
//! Layout (Microsoft's FAT specification): boot sector (with a backup at sector 6), FSInfo at
//! sector 1, 32 reserved sectors, two FATs, then the data region starting with the root
//! directory at cluster 2. All timestamps are SOURCE_DATE_EPOCH.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use super::esp::EspFile;

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const FATS: u64 = 2;
const MIN_FAT32_CLUSTERS: u64 = 65_525;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME: u8 = 0x08;

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FatError {
    #[error("ESP file name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("a {size} MiB partition has {clusters} clusters of {cluster} bytes; FAT32 needs at least 65525")]
    TooFewClusters { size: u64, clusters: u64, cluster: u64 },
    #[error("the files need {need} clusters of {cluster} bytes, the partition has {have}")]
    Full { need: u64, have: u64, cluster: u64 },
    /// A file's writer wrote another length than its entry announced.
    #[error("ESP file {path}: wrote {wrote} bytes, announced {announced}")]
    WrongSize { path: String, wrote: u64, announced: u64 },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

/// The 11-byte short name and NT case flags of a file name that fits 8.3.
fn short_name(name: &str) -> Result<([u8; 11], u8), FatError> {
    let bad = |reason| FatError::BadName { name: name.into(), reason };
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || ext.contains('.') {
        return Err(bad("must be an 8.3 name"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-~!#$%&'()@^`{}".contains(c);
    if !base.chars().chain(ext.chars()).all(allowed) {
        return Err(bad("only letters, digits and _-~!#$%&'()@^`{} are allowed"));
    }
    let case = |part: &str, flag: u8| {
        if part.chars().any(|c| c.is_ascii_lowercase()) {
            if part.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(bad("mixed case needs a long name"));
            }
            return Ok(flag);
        }
        Ok(0)
    };
    let flags = case(base, 0x08)? | case(ext, 0x10)?;
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base.to_ascii_uppercase().as_bytes());
    short[8..8 + ext.len()].copy_from_slice(ext.to_ascii_uppercase().as_bytes());
    Ok((short, flags))
}

/// FAT's packed date and time of a Unix time, UTC, clamped to 1980–2107.
pub fn fat_time(epoch: u64) -> (u16, u16) {
    let c = crate::epoch::civil(epoch.clamp(315_532_800, 4_354_819_199));
    let date = (((c.year - 1980) as u16) << 9) | ((c.month as u16) << 5) | c.day as u16;
    let time = (c.hour as u16) << 11 | (c.minute as u16) << 5 | (c.second / 2) as u16;
    (date, time)
}

/// The directory entries for `name`: VFAT long-name entries (when it does not fit 8.3) then
/// the short entry. `taken` holds the short names already in the directory.
fn name_entries(
    name: &str,
    taken: &mut Vec<[u8; 11]>,
    short_entry: impl Fn([u8; 11], u8) -> [u8; 32],
) -> Result<Vec<[u8; 32]>, FatError> {
    if let Ok((short, flags)) = short_name(name) {
        taken.push(short);
        return Ok(vec![short_entry(short, flags)]);
    }
    let bad = |reason| FatError::BadName { name: name.into(), reason };
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > 255 || name.contains(['/', '\\', ':', '*', '?', '"', '<', '>', '|']) {
        return Err(bad("not a valid long file name"));
    }
    // The alias: up to six characters of the base, ~N, three of the extension.
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let (base, ext) = (clean(base), clean(ext));
    let short = (1..1000)
        .map(|n| {
            let tail = format!("~{n}");
            let mut short = [b' '; 11];
            let keep = base.len().min(8 - tail.len());
            short[..keep].copy_from_slice(&base.as_bytes()[..keep]);
            short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
            short[8..8 + ext.len().min(3)].copy_from_slice(&ext.as_bytes()[..ext.len().min(3)]);
            short
        })
        .find(|s| !taken.contains(s))
        .ok_or_else(|| bad("no free short alias"))?;
    taken.push(short);
    let checksum = short.iter().fold(0u8, |sum, b| (sum >> 1 | (sum & 1) << 7).wrapping_add(*b));
    let mut padded = units.clone();
    if !padded.len().is_multiple_of(13) {
        padded.push(0);
        while !padded.len().is_multiple_of(13) {
            padded.push(0xFFFF);
        }
    }
    let count = padded.len() / 13;
    let mut out = Vec::new();
    for seq in (1..=count).rev() {
        let chunk = &padded[(seq - 1) * 13..seq * 13];
        let mut e = [0u8; 32];
        e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = checksum;
        for (i, unit) in chunk.iter().enumerate() {
            let at = match i {
                0..=4 => 1 + 2 * i,
                5..=10 => 14 + 2 * (i - 5),
                _ => 28 + 2 * (i - 11),
            };
            e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        out.push(e);
    }
    out.push(short_entry(short, 0));
    Ok(out)
}

fn dir_entry(name: [u8; 11], flags: u8, attr: u8, cluster: u32, size: u32, stamp: (u16, u16)) -> [u8; 32] {
    let (date, time) = stamp;
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(&name);
    e[11] = attr;
    e[12] = flags;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The file system's parameters for a partition of `len` bytes.
struct Geometry {
    total_sectors: u64,
    sectors_per_cluster: u64,
    fat_sectors: u64,
    clusters: u64,
}

impl Geometry {
    fn new(len: u64) -> Result<Geometry, FatError> {
        // Microsoft's table: 512-byte clusters up to 260 MiB, 4 KiB up to 8 GiB, 8 KiB above.
        let sectors_per_cluster = match len {
            l if l <= 260 << 20 => 1,
            l if l <= 8 << 30 => 8,
            _ => 16,
        };
        let total_sectors = len / SECTOR;
        // The specification's FATSz computation for FAT32.
        let fat_sectors = (total_sectors - RESERVED).div_ceil((256 * sectors_per_cluster + FATS) / 2);
        let clusters = (total_sectors - RESERVED - FATS * fat_sectors) / sectors_per_cluster;
        if clusters < MIN_FAT32_CLUSTERS {
            return Err(FatError::TooFewClusters { size: len >> 20, clusters, cluster: sectors_per_cluster * SECTOR });
        }
        Ok(Geometry { total_sectors, sectors_per_cluster, fat_sectors, clusters })
    }
    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }
    fn cluster_offset(&self, cluster: u32) -> u64 {
        (RESERVED + FATS * self.fat_sectors + (u64::from(cluster) - 2) * self.sectors_per_cluster) * SECTOR
    }
}

/// Where and what the file system is.
pub struct Volume<'a> {
    /// Byte offset of the partition in the device, and its length.
    pub start: u64,
    pub len: u64,
    /// The partition's first LBA (recorded in the boot sector).
    pub hidden: u32,
    pub serial: u32,
    pub label: &'a str,
    /// Every timestamp.
    pub epoch: u64,
}

/// Where everything goes: the directory tree (each directory's children, name -> file index
/// or `None` for a directory), each directory's and file's first cluster and cluster count.
struct Plan {
    g: Geometry,
    dirs: BTreeMap<String, Vec<(String, Option<usize>)>>,
    dir_cluster: BTreeMap<String, (u32, u32)>,
    file_cluster: Vec<(u32, u32)>,
    /// The first free cluster.
    next: u32,
}

impl Plan {
    fn new(len: u64, files: &[EspFile]) -> Result<Plan, FatError> {
        let g = Geometry::new(len)?;
        let cb = g.cluster_bytes();
        let mut dirs: BTreeMap<String, Vec<(String, Option<usize>)>> = BTreeMap::new();
        dirs.insert(String::new(), vec![]);
        for (i, f) in files.iter().enumerate() {
            let parts: Vec<&str> = f.path.split('/').collect();
            for depth in 0..parts.len() {
                let parent = parts[..depth].join("/");
                let is_file = depth == parts.len() - 1;
                let children = dirs.entry(parent).or_default();
                let name = parts[depth].to_string();
                if !children.iter().any(|(n, _)| *n == name) {
                    children.push((name, is_file.then_some(i)));
                }
                if !is_file {
                    dirs.entry(parts[..=depth].join("/")).or_default();
                }
            }
        }
        // Clusters: directories first (root at 2), then each file's contiguous run.
        let mut next: u32 = 2;
        let mut dir_cluster: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for (path, children) in &dirs {
            let mut taken = Vec::new();
            let mut entries = if path.is_empty() { 1 } else { 2 };
            for (name, _) in children {
                entries += name_entries(name, &mut taken, |s, f| dir_entry(s, f, 0, 0, 0, (0, 0)))?.len() as u64;
            }
            let n = (entries * 32).div_ceil(cb).max(1) as u32;
            dir_cluster.insert(path.clone(), (next, n));
            next += n;
        }
        let mut file_cluster = Vec::new();
        for f in files {
            let n = f.size.div_ceil(cb) as u32;
            file_cluster.push(if n == 0 { (0, 0) } else { (next, n) });
            next += n;
        }
        let used = u64::from(next - 2);
        if used > g.clusters {
            return Err(FatError::Full { need: used, have: g.clusters, cluster: cb });
        }
        Ok(Plan { g, dirs, dir_cluster, file_cluster, next })
    }
}

/// Whether `files` fit a FAT32 file system of `len` bytes, checked before anything is written.
pub fn check_fits(len: u64, files: &[EspFile]) -> Result<(), FatError> {
    Plan::new(len, files).map(|_| ())
}

/// Writes a FAT32 file system holding `files` into `dev` where `volume` says.
pub fn write_fat32(dev: &mut (impl Write + Seek), volume: &Volume, files: Vec<EspFile>) -> Result<(), FatError> {
    let Volume { start, len, hidden, serial, label, epoch } = *volume;
    let Plan { g, dirs, dir_cluster, file_cluster, next } = Plan::new(len, &files)?;
    let cb = g.cluster_bytes();
    let used = u64::from(next - 2);
    let stamp = fat_time(epoch);

    // The FAT: each run chained, the last cluster marked.
    let mut fat = vec![0u8; (g.fat_sectors * SECTOR) as usize];
    let mut set = |cluster: u32, value: u32| {
        fat[cluster as usize * 4..cluster as usize * 4 + 4].copy_from_slice(&value.to_le_bytes());
    };
    set(0, 0x0FFF_FFF8);
    set(1, END_OF_CHAIN);
    for &(first, n) in dir_cluster.values().chain(file_cluster.iter()) {
        for c in first..first + n {
            set(c, if c + 1 == first + n { END_OF_CHAIN } else { c + 1 });
        }
    }

    // Boot sector, FSInfo, their backups.
    let mut boot = [0u8; SECTOR as usize];
    boot[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    boot[3..11].copy_from_slice(b"MSWIN4.1");
    boot[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    boot[13] = g.sectors_per_cluster as u8;
    boot[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    boot[16] = FATS as u8;
    boot[21] = 0xF8;
    boot[24..26].copy_from_slice(&32u16.to_le_bytes());
    boot[26..28].copy_from_slice(&64u16.to_le_bytes());
    boot[28..32].copy_from_slice(&hidden.to_le_bytes());
    boot[32..36].copy_from_slice(&(g.total_sectors as u32).to_le_bytes());
    boot[36..40].copy_from_slice(&(g.fat_sectors as u32).to_le_bytes());
    boot[44..48].copy_from_slice(&2u32.to_le_bytes());
    boot[48..50].copy_from_slice(&1u16.to_le_bytes());
    boot[50..52].copy_from_slice(&6u16.to_le_bytes());
    boot[64] = 0x80;
    boot[66] = 0x29;
    boot[67..71].copy_from_slice(&serial.to_le_bytes());
    let mut volume = [b' '; 11];
    volume[..label.len().min(11)].copy_from_slice(&label.as_bytes()[..label.len().min(11)]);
    boot[71..82].copy_from_slice(&volume);
    boot[82..90].copy_from_slice(b"FAT32   ");
    boot[510] = 0x55;
    boot[511] = 0xAA;
    let mut info = [0u8; SECTOR as usize];
    info[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    info[488..492].copy_from_slice(&((g.clusters - used) as u32).to_le_bytes());
    info[492..496].copy_from_slice(&next.to_le_bytes());
    info[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    let at = |dev: &mut dyn WriteSeek, offset: u64, bytes: &[u8], what: &str| -> Result<(), FatError> {
        dev.seek(SeekFrom::Start(start + offset)).map_err(crate::fsutil::at_named(what))?;
        Ok(dev.write_all(bytes).map_err(crate::fsutil::at_named(what))?)
    };
    at(dev, 0, &boot, "FAT boot sector")?;
    at(dev, SECTOR, &info, "FAT FSInfo")?;
    at(dev, 6 * SECTOR, &boot, "FAT backup boot sector")?;
    at(dev, 7 * SECTOR, &info, "FAT backup FSInfo")?;
    for i in 0..FATS {
        at(dev, (RESERVED + i * g.fat_sectors) * SECTOR, &fat, "FAT")?;
    }

    // Directories.
    for (path, children) in &dirs {
        let (first, n) = dir_cluster[path];
        let mut table = Vec::with_capacity((u64::from(n) * cb) as usize);
        if path.is_empty() {
            table.extend_from_slice(&dir_entry(volume, 0, ATTR_VOLUME, 0, 0, stamp));
        } else {
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            let parent_cluster = if parent.is_empty() { 0 } else { dir_cluster[parent].0 };
            table.extend_from_slice(&dir_entry(*b".          ", 0, ATTR_DIR, first, 0, stamp));
            table.extend_from_slice(&dir_entry(*b"..         ", 0, ATTR_DIR, parent_cluster, 0, stamp));
        }
        let mut taken = Vec::new();
        for (name, file) in children {
            let (attr, cluster, size) = match file {
                Some(i) => (ATTR_ARCHIVE, file_cluster[*i].0, files[*i].size as u32),
                None => {
                    let child = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
                    (ATTR_DIR, dir_cluster[&child].0, 0)
                }
            };
            for e in name_entries(name, &mut taken, |short, flags| dir_entry(short, flags, attr, cluster, size, stamp))?
            {
                table.extend_from_slice(&e);
            }
        }
        table.resize((u64::from(n) * cb) as usize, 0);
        at(dev, g.cluster_offset(first), &table, &format!("ESP directory /{path}"))?;
    }

    // File contents, each padded to its last cluster.
    for (f, &(first, n)) in files.into_iter().zip(&file_cluster) {
        if n == 0 {
            continue;
        }
        let what = format!("ESP file {}", f.path);
        dev.seek(SeekFrom::Start(start + g.cluster_offset(first))).map_err(crate::fsutil::at_named(what.clone()))?;
        let mut counted = Counted { inner: &mut *dev, n: 0 };
        (f.write)(&mut counted).map_err(crate::fsutil::at_named(what.clone()))?;
        if counted.n != f.size {
            return Err(FatError::WrongSize { path: f.path.clone(), wrote: counted.n, announced: f.size });
        }
        let pad = u64::from(n) * cb - f.size;
        dev.write_all(&vec![0u8; pad as usize]).map_err(crate::fsutil::at_named(what))?;
    }
    Ok(())
}

trait WriteSeek: Write + Seek {}
impl<T: Write + Seek> WriteSeek for T {}

/// Counts what passes through, to check a file's announced size.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_case_flags() {
        assert_eq!(short_name("BOOTX64.EFI").unwrap(), (*b"BOOTX64 EFI", 0));
        assert_eq!(short_name("initrd.img").unwrap(), (*b"INITRD  IMG", 0x18));
        assert_eq!(short_name("hyve").unwrap(), (*b"HYVE       ", 0x08));
        for bad in ["toolongname", "a.b.c", "Mixed", "sp ace", "x.abcd", ""] {
            assert!(short_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_names_get_an_alias_and_a_checksum() {
        let mut taken = vec![];
        let e = name_entries("hyve.conf", &mut taken, |s, _| dir_entry(s, 0, ATTR_ARCHIVE, 0, 0, (0, 0))).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(&e[1][..11], b"HYVE~1  CON");
        assert_eq!((e[0][0], e[0][11]), (0x41, 0x0F));
        assert_eq!(&e[0][1..5], &[b'h', 0, b'y', 0]);
        let e = name_entries("hyve.config", &mut taken, |s, _| dir_entry(s, 0, 0, 0, 0, (0, 0))).unwrap();
        assert_eq!(&e[1][..11], b"HYVE~2  CON", "aliases stay unique");
    }

    #[test]
    fn dates() {
        let (date, time) = fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((date >> 9, (date >> 5) & 15, date & 31), (43, 11, 14));
        assert_eq!((time >> 11, (time >> 5) & 63, (time & 31) * 2), (22, 13, 20));
        assert_eq!(fat_time(0).0, 1 << 5 | 1, "clamped to 1980-01-01");
        let (date, _) = fat_time(951_782_400); // 2000-02-29
        assert_eq!((date >> 9, (date >> 5) & 15, date & 31), (20, 2, 29));
    }

    #[test]
    fn geometry_follows_the_specification() {
        let g = Geometry::new(254 << 20).unwrap();
        assert_eq!((g.sectors_per_cluster, g.fat_sectors), (1, 4033));
        assert!(g.clusters >= MIN_FAT32_CLUSTERS);
        let g = Geometry::new(510 << 20).unwrap();
        assert_eq!(g.sectors_per_cluster, 8);
        let e = Geometry::new(16 << 20).err().unwrap().to_string();
        assert!(e.contains("65525"), "{e}");
    }
}
