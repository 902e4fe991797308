//! Filesystem helpers shared by every stage that writes: nothing half-written is ever left
//! at a final path.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O error and the file it happened on: the one shape every module's error enum
/// carries for I/O (`#[error(transparent)] Io(#[from] IoError)`).
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{path}: {source}")]
#[serde(tag = "kind", rename = "io_error")]
pub struct IoError {
    pub path: String,
    #[serde(serialize_with = "crate::serialize_display")]
    pub source: std::io::Error,
}

/// For `map_err`: the error names `path`.
pub fn at(path: &Path) -> impl Fn(std::io::Error) -> IoError + Copy + '_ {
    move |source| IoError { path: path.display().to_string(), source }
}

/// For `map_err`: the error names `what` (a file inside an image, a URL, a device).
pub fn at_named(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IoError {
    let path = what.into();
    move |source| IoError { path, source }
}

/// Every path below `dir` (not `dir` itself), relative and `/`-separated, sorted so that
/// parents come before their children; symlinks are listed, not followed. A name that is
/// not UTF-8 is an error naming it.
pub fn relative_paths(dir: &Path) -> Result<Vec<String>, IoError> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), IoError> {
        for entry in std::fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            let path = entry.path();
            let name = entry.file_name().into_string().map_err(|_| {
                at(&path)(std::io::Error::new(std::io::ErrorKind::InvalidData, "file name is not UTF-8"))
            })?;
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if entry.file_type().map_err(at(&path))?.is_dir() {
                walk(&path, &rel, out)?;
            }
            out.push(rel);
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, "", &mut paths)?;
    paths.sort();
    Ok(paths)
}

/// SHA-256 (lower-case hex) and length of everything `input` yields.
pub fn sha256_of(input: impl Read) -> std::io::Result<(String, u64)> {
    let (digest, n) = digest_of::<Sha256>(input)?;
    Ok((hex::encode(digest), n))
}

/// SHA-256 (lower-case hex) and length of the file at `path`, reading only its data: a hole
/// (a sparse disk image is mostly holes) is hashed as the zeros it reads as, without asking
/// the kernel to zero pages for it. Where the filesystem cannot tell (no SEEK_DATA), the
/// whole file is read.
pub fn sha256_of_file(path: &Path) -> Result<(String, u64), IoError> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).map_err(at(path))?;
    let len = file.metadata().map_err(at(path))?.len();
    let seek = |from: u64, whence| {
        // SAFETY: lseek on a descriptor this function owns; it moves only that file's offset.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
        if at < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(at as u64)
        }
    };
    if seek(0, libc::SEEK_DATA).is_err_and(|e| e.raw_os_error() != Some(libc::ENXIO)) {
        return sha256_of(file).map_err(at(path));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let zero = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        // ENXIO: no data after `pos`, the rest is a hole.
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(d) => d.min(len),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => len,
            Err(e) => return Err(at(path)(e)),
        };
        for step in (pos..data).step_by(zero.len()) {
            hasher.update(&zero[..(data - step).min(zero.len() as u64) as usize]);
        }
        if data == len {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE).map_err(at(path))?.min(len);
        let mut at_byte = data;
        while at_byte < hole {
            let want = (hole - at_byte).min(buf.len() as u64) as usize;
            let n = file.read_at(&mut buf[..want], at_byte).map_err(at(path))?;
            if n == 0 {
                return Err(at(path)(std::io::ErrorKind::UnexpectedEof.into()));
            }
            hasher.update(&buf[..n]);
            at_byte += n as u64;
        }
        pos = hole;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// The `D` digest and length of everything `input` yields.
pub fn digest_of<D: Digest>(input: impl Read) -> std::io::Result<(sha2::digest::Output<D>, u64)> {
    let mut hashing = Hashing::<_, D>::new(input);
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let (_, digest, n) = hashing.finish();
    Ok((digest, n))
}

/// Passes bytes through from or to `inner` while hashing them with `D` and counting them:
/// the one adapter for every stream hyve checks as it reads or writes it.
pub struct Hashing<T, D> {
    inner: T,
    hasher: D,
    count: u64,
}

impl<T, D: Digest> Hashing<T, D> {
    pub fn new(inner: T) -> Self {
        Hashing { inner, hasher: D::new(), count: 0 }
    }

    /// Bytes passed through so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The stream, the digest of what passed and how many bytes that was.
    pub fn finish(self) -> (T, sha2::digest::Output<D>, u64) {
        (self.inner, self.hasher.finalize(), self.count)
    }
}

impl<T: Read, D: Digest> Read for Hashing<T, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<T: Write, D: Digest> Write for Hashing<T, D> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `bytes` to a temporary file beside `path`, sets `mode`, syncs, and renames it over
/// `path`. Readers see the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".hyve-tmp-").tempfile_in(dir)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Copies `src` to `dst` through a temporary file beside `dst` (streaming, atomic).
pub fn copy_atomic(src: &Path, dst: &Path) -> std::io::Result<()> {
    let dir = dst.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".hyve-tmp-").tempfile_in(dir)?;
    std::io::copy(&mut std::fs::File::open(src)?, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(dst).map_err(|e| e.error)?;
    Ok(())
}

/// A directory filled beside its final path and swapped in whole by [`StagingDir::commit`].
///
/// While it is being filled it is `.NAME.tmp-XXXXXX` beside `NAME`, locked (`flock`) by this
/// process: a staging directory nobody holds is what a killed run left, and the next
/// [`StagingDir::beside`] for the same target removes it. Dropping it uncommitted removes it.
///
/// What it holds is not synced to disk before the swap (as cargo and mksquashfs leave their
/// outputs): the swap is what keeps a reader from half an output, and a build's outputs are
/// derived, so one lost to a power cut is rebuilt byte for byte (and `SHA256SUMS` shows it).
/// Syncing them cost 0.65 s of a 4.5 s warm build. The price: a write error that a
/// filesystem reports only on sync or close (NFS, some quotas) goes unseen, and a power cut
/// soon after the swap can lose the new output after the old one was removed.
pub struct StagingDir {
    dir: tempfile::TempDir,
    // Held for the lock; closing it releases the lock.
    _lock: std::fs::File,
    target: PathBuf,
}

impl StagingDir {
    /// A new, locked staging directory beside `target`, after removing the ones killed
    /// runs left there.
    pub fn beside(target: &Path) -> std::io::Result<StagingDir> {
        let (parent, prefix) = staging_prefix(target);
        std::fs::create_dir_all(parent)?;
        remove_abandoned(parent, &prefix)?;
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent)?;
        let lock = std::fs::File::open(dir.path())?;
        if !try_lock(&lock)? {
            return Err(std::io::Error::other(format!("{} is locked by another process", dir.path().display())));
        }
        Ok(StagingDir { dir, _lock: lock, target: target.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Puts the staged directory at the target in one step: readers see the old target or
    /// the new one, never neither (`rename` when there is none, else an atomic exchange);
    /// the old one is removed afterwards. Where the filesystem cannot exchange, the old
    /// target is renamed aside first, the one moment it is missing.
    pub fn commit(self) -> std::io::Result<()> {
        let staged = self.dir.path().to_path_buf();
        match std::fs::symlink_metadata(&self.target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(&staged, &self.target)?;
                // Renamed away: nothing for the TempDir to remove.
                let _ = self.dir.keep();
                return Ok(());
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        match exchange(&staged, &self.target) {
            // The staging path now holds the old target.
            Ok(()) => self.dir.close(),
            Err(e) if exchange_unsupported(&e) => {
                let (parent, prefix) = staging_prefix(&self.target);
                let aside = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent)?.keep();
                std::fs::remove_dir(&aside)?;
                std::fs::rename(&self.target, &aside)?;
                std::fs::rename(&staged, &self.target)?;
                let _ = self.dir.keep();
                std::fs::remove_dir_all(&aside)
            }
            Err(e) => Err(e),
        }
    }
}

/// `target`'s parent and the name prefix of its staging directories.
fn staging_prefix(target: &Path) -> (&Path, String) {
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    (parent, format!(".{name}.tmp-"))
}

/// A new temporary file beside `target` (`.NAME.tmp-XXXXXX`), locked (`flock`) by this
/// process while it is open, after removing the ones killed runs left there.
pub fn locked_temp_beside(target: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    remove_abandoned_beside(target)?;
    let (parent, prefix) = staging_prefix(target);
    let tmp = tempfile::Builder::new().prefix(&prefix).tempfile_in(parent)?;
    if !try_lock(tmp.as_file())? {
        return Err(std::io::Error::other(format!("{} is locked by another process", tmp.path().display())));
    }
    Ok(tmp)
}

/// Removes the temporary files beside `target` that killed runs left there (those that no
/// process holds).
pub fn remove_abandoned_beside(target: &Path) -> std::io::Result<()> {
    let (parent, prefix) = staging_prefix(target);
    remove_abandoned(parent, &prefix)
}

/// Removes the staging directories and temporary files under `parent` named `prefix*` that
/// no process holds.
fn remove_abandoned(parent: &Path, prefix: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let is_dir = entry.file_type()?.is_dir();
        let path = entry.path();
        let Ok(held) = std::fs::File::open(&path) else { continue };
        if try_lock(&held)? {
            let removed = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// An exclusive `flock` on `file` without waiting: false when another holder has it.
/// (std's `File::try_lock` needs Rust 1.89; hyve builds with 1.88.)
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Swaps two paths atomically: Linux `renameat2(RENAME_EXCHANGE)` (3.15+), macOS
/// `renamex_np(RENAME_SWAP)` (10.12+). std has neither.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    #[cfg(target_os = "linux")]
    // SAFETY: two NUL-terminated paths that outlive the call. The raw syscall, as musl
    // before 1.2.5 has no renameat2 wrapper.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    #[cfg(target_os = "macos")]
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), libc::RENAME_SWAP) };
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let rc = {
        let _ = (a, b);
        return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The errors a filesystem or kernel without an atomic exchange gives.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse file hashes as the bytes it reads as: data at the start, in the middle and at
    /// the end, holes between and after, and a file that is all hole.
    #[test]
    fn a_sparse_file_hashes_as_its_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(9 << 20).unwrap();
        let hole = dir.path().join("hole");
        std::fs::File::create(&hole).unwrap().set_len(3 << 20).unwrap();
        assert_eq!(sha256_of_file(&hole).unwrap(), sha256_of(std::io::repeat(0).take(3 << 20)).unwrap());
        for (at, bytes) in [(0u64, &b"start"[..]), ((4 << 20) + 5, b"middle"), ((6 << 20) - 1, b"x")] {
            f.write_at(bytes, at).unwrap();
        }
        let whole = sha256_of(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(sha256_of_file(&p).unwrap(), whole);
        f.write_at(b"end", (9 << 20) - 3).unwrap();
        let whole = sha256_of(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(sha256_of_file(&p).unwrap(), whole);
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn staged(target: &Path, marker: &str) -> StagingDir {
        let stage = StagingDir::beside(target).unwrap();
        std::fs::write(stage.path().join("marker"), marker).unwrap();
        stage
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn commit_creates_then_replaces_and_leaves_nothing_beside() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        staged(&out, "one").commit().unwrap();
        assert_eq!(std::fs::read_to_string(out.join("marker")).unwrap(), "one");
        let stage = staged(&out, "two");
        std::fs::write(out.join("only-in-old"), "x").unwrap();
        stage.commit().unwrap();
        assert_eq!(names(&out), ["marker"]);
        assert_eq!(std::fs::read_to_string(out.join("marker")).unwrap(), "two");
        assert_eq!(names(dir.path()), ["out"]);
        // Dropped uncommitted: removed, the target untouched.
        drop(staged(&out, "three"));
        assert_eq!(names(dir.path()), ["out"]);
        assert_eq!(std::fs::read_to_string(out.join("marker")).unwrap(), "two");
    }

    /// A reader polling the target while it is replaced again and again always finds it
    /// (renaming the old one aside first, as hyve once did, leaves moments with none).
    #[test]
    fn the_target_never_goes_missing_while_replaced() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        staged(&out, "0").commit().unwrap();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let reader = {
            let (out, done) = (out.clone(), done.clone());
            std::thread::spawn(move || {
                let mut misses = 0;
                while !done.load(Ordering::Relaxed) {
                    if std::fs::read(out.join("marker")).is_err() {
                        misses += 1;
                    }
                }
                misses
            })
        };
        for i in 1..=300 {
            staged(&out, &i.to_string()).commit().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert_eq!(reader.join().unwrap(), 0, "the target was missing while being replaced");
        assert_eq!(std::fs::read_to_string(out.join("marker")).unwrap(), "300");
    }

    /// What a killed run left (an unlocked staging directory) goes with the next run; a
    /// staging directory that a live run holds stays.
    #[test]
    fn abandoned_staging_dirs_are_removed_held_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let abandoned = dir.path().join(".out.tmp-killed");
        std::fs::create_dir_all(abandoned.join("sub")).unwrap();
        std::fs::write(abandoned.join("sub/initrd.img"), "partial").unwrap();
        let other = dir.path().join(".other.tmp-keep");
        std::fs::create_dir(&other).unwrap();
        let live = StagingDir::beside(&out).unwrap();
        assert!(!abandoned.exists());
        assert!(other.exists(), "another target's staging directory was removed");
        let second = StagingDir::beside(&out).unwrap();
        assert!(live.path().exists(), "a live run's staging directory was removed");
        second.commit().unwrap();
        live.commit().unwrap();
        assert_eq!(names(dir.path()), [".other.tmp-keep", "out"]);
    }
}
