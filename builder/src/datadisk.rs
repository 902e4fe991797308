//! The persistent data disk's first bytes: boot2docker's "format-me" protocol, renamed.
//!
//! `hyve disk create` writes a sparse raw disk whose first 64 KiB hold a tar archive. Its first
//! member is an empty file named `hyve, please format-me`, so the disk's first bytes are that
//! name (a tar header starts with the member name). On first boot the guest sees the magic,
//! checks that the disk holds no partition table or filesystem, saves those 64 KiB, partitions
//! and formats the disk (GPT, ext4 labelled `hyve-data`) and unpacks the saved tar onto it:
//! `.ssh/authorized_keys`, `hostname`, `bootlocal.sh`, the Docker TLS CA (`docker-tls/`) and
//! any other user files. (boot2docker kept 4 KiB; a CA certificate and key with an ssh key
//! and a hostname need more. The data partition starts at 1 MiB. A tar that happens to carry
//! another format's signature at its offset only makes the guest refuse to format: the safe way.)

use std::io::Write;
use std::path::Path;

/// The first bytes of a disk the guest may format.
pub const FORMAT_MAGIC: &str = "hyve, please format-me";
/// What the guest saves before partitioning; the whole user-data tar must fit.
pub const USER_DATA_MAX: usize = 64 << 10;
/// Smallest disk accepted: room for a GPT and an ext4 filesystem worth having.
pub const MIN_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataDiskError {
    /// `--size` could not be read.
    #[error("--size {given:?}: {reason}; give a size like 20G, 512M or 1T (powers of 1024)")]
    BadSize { given: String, reason: String },
    /// A user file's destination is not a plain relative path.
    #[error("user file destination {dest:?}: {reason}")]
    BadDest { dest: String, reason: String },
    /// `--ssh-key` is not an OpenSSH public key.
    #[error("{path}: {reason}")]
    BadKey { path: String, reason: String },
    /// The user data does not fit in the first 64 KiB.
    #[error("the user data is {actual} bytes as a tar, but at most {max} fit before the data partition; leave out files or shorten them")]
    TooLarge { actual: usize, max: usize },
    /// The disk file exists already.
    #[error("{path} already exists; hyve never overwrites a disk (it may hold data): remove it or pick another name")]
    Exists { path: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

/// A file for the guest's data disk, relative to its mount point (`/var/lib/hyve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFile {
    pub dest: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

impl UserFile {
    /// A file whose destination is checked: relative, printable ASCII, no `.` or `..`
    /// components, short enough for a plain ustar name.
    pub fn new(dest: &str, content: Vec<u8>, mode: u32) -> Result<UserFile, DataDiskError> {
        let bad = |reason: &str| DataDiskError::BadDest { dest: dest.into(), reason: reason.into() };
        if dest.is_empty() || dest.starts_with('/') {
            return Err(bad("expected a path relative to the data disk, e.g. hostname or .ssh/authorized_keys"));
        }
        if !dest.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(bad("only printable ASCII is allowed"));
        }
        if dest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(bad("empty, `.` and `..` components are not allowed"));
        }
        if dest.len() > 99 || dest == FORMAT_MAGIC {
            return Err(bad("at most 99 characters, and not the format-me name"));
        }
        Ok(UserFile { dest: dest.into(), content, mode: mode & 0o777 })
    }

    /// `.ssh/authorized_keys` from an OpenSSH public key file.
    pub fn ssh_key(path: &Path) -> Result<UserFile, DataDiskError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(crate::fsutil::at(path))?;
        let bad = |reason: &str| DataDiskError::BadKey { path: shown.clone(), reason: reason.into() };
        if text.contains("PRIVATE KEY") {
            return Err(bad("this is a private key; pass the public one (the .pub file)"));
        }
        let keys: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let known = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"];
        if keys.is_empty() || !keys.iter().all(|k| known.iter().any(|p| k.starts_with(p))) {
            return Err(bad("expected OpenSSH public keys (lines like `ssh-ed25519 AAAA... comment`)"));
        }
        Ok(UserFile {
            dest: ".ssh/authorized_keys".into(),
            content: (keys.join("\n") + "\n").into_bytes(),
            mode: 0o600,
        })
    }
}

/// Parses `20G`, `512M`, `1T`, `4096K` or a byte count; powers of 1024.
pub fn parse_size(given: &str) -> Result<u64, DataDiskError> {
    let bad = |reason: &str| DataDiskError::BadSize { given: given.into(), reason: reason.into() };
    let s = given.trim().trim_end_matches("iB").trim_end_matches('B');
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad("not a whole number with an optional K, M, G or T"))?;
    let size = n.checked_mul(1 << shift).ok_or_else(|| bad("too large"))?;
    if size < MIN_SIZE {
        return Err(bad("a data disk needs at least 64M"));
    }
    if size % 512 != 0 {
        return Err(bad("not a whole number of 512-byte sectors"));
    }
    Ok(size)
}

/// The tar the guest unpacks onto its new data filesystem: the format-me member first, then
/// `files` in order. Owners root, times zero: the same files give the same bytes.
pub fn user_data_tar(files: &[UserFile]) -> Result<Vec<u8>, DataDiskError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |name: &str, content: &[u8], mode: u32| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, name, content)
    };
    let io = |source| crate::fsutil::at_named("user data")(source);
    append(FORMAT_MAGIC, b"", 0o644).map_err(io)?;
    for f in files {
        append(&f.dest, &f.content, f.mode).map_err(io)?;
    }
    let bytes = tar.into_inner().map_err(io)?;
    if bytes.len() > USER_DATA_MAX {
        return Err(DataDiskError::TooLarge { actual: bytes.len(), max: USER_DATA_MAX });
    }
    Ok(bytes)
}

/// Writes a sparse raw disk of `size` bytes at `path` starting with the user-data tar. The
/// file appears complete or not at all, and an existing file is never replaced.
pub fn create(path: &Path, size: u64, files: &[UserFile]) -> Result<(), DataDiskError> {
    let shown = path.display().to_string();
    let io = crate::fsutil::at(path);
    if path.symlink_metadata().is_ok() {
        return Err(DataDiskError::Exists { path: shown });
    }
    let header = user_data_tar(files)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".hyve-disk-").tempfile_in(parent).map_err(io)?;
    tmp.write_all(&header).map_err(io)?;
    tmp.as_file().set_len(size).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            DataDiskError::Exists { path: shown.clone() }
        } else {
            io(e.error).into()
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("67108864").unwrap(), 64 << 20);
        for bad in ["", "G", "20X", "1M", "-5G", "99999999999999T", "67108865"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn tar_starts_with_the_magic_and_reads_back() {
        let files = vec![
            UserFile::new("hostname", b"box\n".to_vec(), 0o644).unwrap(),
            UserFile::new("bin/bootlocal.sh", b"echo hi\n".to_vec(), 0o755).unwrap(),
        ];
        let bytes = user_data_tar(&files).unwrap();
        assert!(bytes.starts_with(FORMAT_MAGIC.as_bytes()));
        assert_eq!(bytes, user_data_tar(&files).unwrap(), "deterministic");
        // Nothing where the guest looks for other signatures (MBR, GPT, ext superblock).
        assert_eq!(&bytes[510..512], [0, 0]);
        assert_ne!(&bytes[512..520], b"EFI PART");
        assert_ne!(&bytes[1080..1082], [0x53, 0xef]);
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, [FORMAT_MAGIC, "hostname", "bin/bootlocal.sh"]);
    }

    #[test]
    fn bad_destinations_and_oversize_data_are_refused() {
        for dest in ["/etc/passwd", "../x", "a/../../b", "a//b", "", "caf\u{e9}", "./x"] {
            assert!(UserFile::new(dest, vec![], 0o644).is_err(), "{dest:?}");
        }
        let fits = UserFile::new("fits", vec![b'x'; USER_DATA_MAX - 4 * 512], 0o644).unwrap();
        assert!(user_data_tar(&[fits]).unwrap().len() <= USER_DATA_MAX);
        let big = UserFile::new("big", vec![b'x'; USER_DATA_MAX - 3 * 512], 0o644).unwrap();
        let e = user_data_tar(&[big]).unwrap_err().to_string();
        assert!(e.contains("at most 65536"), "{e}");
    }

    #[test]
    fn keys_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let private = d.path().join("id");
        std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        assert!(UserFile::ssh_key(&private).unwrap_err().to_string().contains("private key"));
        let public = d.path().join("id.pub");
        std::fs::write(&public, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me@host\n\n").unwrap();
        let f = UserFile::ssh_key(&public).unwrap();
        assert_eq!((f.dest.as_str(), f.mode), (".ssh/authorized_keys", 0o600));
        std::fs::write(&public, "hello\n").unwrap();
        assert!(UserFile::ssh_key(&public).unwrap_err().to_string().contains("OpenSSH public keys"));
    }

    #[test]
    fn create_is_sparse_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("data.img");
        create(&disk, 64 << 20, &[]).unwrap();
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 1 << 20, "sparse: {} blocks", meta.blocks());
        assert!(std::fs::read(&disk).unwrap().starts_with(FORMAT_MAGIC.as_bytes()));
        let e = create(&disk, 64 << 20, &[]).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temp file left");
    }
}
