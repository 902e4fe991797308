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

/// The text of the guest's shell function `name() { ... }` in the built-in file `path`, for
/// tests that run it with the host's shell.
#[cfg(test)]
pub fn shell_function(path: &str, name: &str) -> String {
    let text = String::from_utf8(file(path).unwrap_or_else(|| panic!("no {path}")).to_vec()).unwrap();
    let start = text.find(&format!("\n{name}() {{\n")).unwrap_or_else(|| panic!("no {name} in {path}")) + 1;
    text[start..start + text[start..].find("\n}\n").unwrap() + 2].to_string()
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

    /// The output of `call` (a shell command, with `args` as `$1`...) after lib.sh's
    /// `function` is defined, run by the host's shell on `cmdline` in place of /proc/cmdline.
    fn guest_lib_on_cmdline(function: &str, call: &str, args: &[&str], cmdline: &str) -> String {
        let function = shell_function("overlay/base/usr/libexec/hyve/lib.sh", function);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cmdline");
        std::fs::write(&path, format!("{cmdline}\n")).unwrap();
        assert!(function.contains("</proc/cmdline"), "{function}");
        let function = function.replace("</proc/cmdline", &format!("<'{}'", path.display()));
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{function}\n{call}"))
            .arg("sh")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success() && o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim_end_matches('\n').to_string()
    }

    /// The guest's `cmdline_value NAME DEFAULT` on `cmdline`.
    fn guest_cmdline_value(cmdline: &str, name: &str) -> String {
        guest_lib_on_cmdline("cmdline_value", "cmdline_value \"$1\" default", &[name], cmdline)
    }

    #[test]
    fn the_guest_finds_a_command_line_word_only_whole() {
        let has = |cmdline: &str| {
            guest_lib_on_cmdline(
                "cmdline_has",
                "cmdline_has \"$1\" && echo yes || echo no",
                &["hyve.emulated"],
                cmdline,
            ) == "yes"
        };
        assert!(has("hyve.emulated"));
        assert!(has("console=ttyS0 quiet hyve.emulated hyve.poweroff"));
        for cmdline in ["", "quiet", "xhyve.emulated", "hyve.emulated=0", "hyve.emulatedx", "hyve-emulated"] {
            assert!(!has(cmdline), "{cmdline:?}");
        }
    }

    #[test]
    fn the_guest_reads_the_last_value_of_a_command_line_word() {
        for (cmdline, expected) in [
            ("console=ttyS0 hyve.time=5 quiet", "5"),
            ("hyve.time=5 hyve.poweroff hyve.time=7", "7"),
            ("xhyve.time=9 hyve.time=5 hyve.timex=3 myhyve.time=8", "5"),
            ("hyve.time=5 hyve.time=", "default"),
            ("hyve.timeless quiet", "default"),
            ("hyveXtime=9", "default"),
            ("hyve.shares=a:/x,b:/y", "default"),
        ] {
            assert_eq!(guest_cmdline_value(cmdline, "hyve.time"), expected, "{cmdline}");
        }
        assert_eq!(guest_cmdline_value("quiet hyve.shares=a:/x,b:/y", "hyve.shares"), "a:/x,b:/y");
        assert_eq!(guest_cmdline_value("hyve.ntp=[::1]:123,pool.example", "hyve.ntp"), "[::1]:123,pool.example");
    }
}
