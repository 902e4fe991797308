//! The stock profiles (`base`, `minimal`, `dev`, `lima`) and their overlays, built into the binary by
//! `build.rs`. They are written out once into the cache (content-addressed, atomically), and
//! from there read like any profile on disk: `extends` and relative overlay paths work the
//! same, and an overlay's digest in the manifest is the same as from a checkout.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// How a profile or overlay names a built-in overlay: `hyve:docker`.
pub const OVERLAY_PREFIX: &str = "hyve:";

/// The names of the built-in profiles.
pub fn profile_names() -> Vec<&'static str> {
    FILES.iter().filter_map(|(p, _, _)| p.strip_prefix("profiles/")?.strip_suffix(".toml")).collect()
}

/// The names of the built-in overlays (`hyve:NAME` in a profile's `overlays`).
pub fn overlay_names() -> Vec<&'static str> {
    let mut names: Vec<&str> =
        FILES.iter().filter_map(|(p, _, _)| p.strip_prefix("overlay/")?.split('/').next()).collect();
    names.dedup();
    names
}

/// The text of a built-in file, by path (`profiles/minimal.toml`).
pub fn file(path: &str) -> Option<&'static [u8]> {
    FILES.iter().find(|(p, _, _)| *p == path).map(|(_, _, b)| *b)
}

/// The built-in tree under `cache_root/builtin/<digest>/` (`profiles/`, `overlay/`), written
/// on first use: beside its place, then renamed in, so a reader never sees half of it.
pub fn materialize(cache_root: &Path) -> io::Result<PathBuf> {
    let mut digest = Sha256::new();
    for (path, mode, bytes) in FILES {
        digest.update(format!("{path}\0{mode:o}\0{}\0", bytes.len()).as_bytes());
        digest.update(bytes);
    }
    let parent = cache_root.join("builtin");
    let dir = parent.join(&hex::encode(digest.finalize())[..16]);
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new().prefix(".builtin-").tempdir_in(&parent)?;
    export_to(tmp.path())?;
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok(dir)
        }
        // Another hyve wrote the same tree meanwhile.
        Err(_) if dir.is_dir() => Ok(dir),
        Err(e) => Err(e),
    }
}

/// Writes every built-in file under `dir` with its mode; an existing file is never replaced.
pub fn export_to(dir: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    for (path, mode, bytes) in FILES {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap_or(dir))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", target.display())))?;
        io::Write::write_all(&mut f, bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_profiles_and_overlays_are_built_in() {
        assert_eq!(profile_names(), ["base", "dev", "lima", "minimal"]);
        assert_eq!(overlay_names(), ["base", "dev", "docker", "lima"]);
        let init = FILES.iter().find(|(p, _, _)| *p == "overlay/base/init").unwrap();
        assert_eq!(init.1, 0o755, "the guest's scripts stay executable");
        assert!(file("overlay/docker/etc/hyve/docker.conf").is_some());
        assert!(file("overlay/README.md").is_none() && file("profiles/minimal.lock").is_none());
        let d = tempfile::tempdir().unwrap();
        let a = materialize(d.path()).unwrap();
        assert_eq!(materialize(d.path()).unwrap(), a, "written once");
        assert_eq!(std::fs::read(a.join("profiles/minimal.toml")).unwrap(), file("profiles/minimal.toml").unwrap());
        let e = export_to(&a).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
    }
}
