//! Profiles: what a guest image is made of, in TOML, with `extends` inheritance.
//!
//! A profile file may name a parent with `extends = "<name>"` (a sibling file, else one found
//! by name like `--profile NAME`, built-in ones last) or a path. Overlays are directories
//! relative to the file, or built-in ones named `hyve:NAME`.
//! Lists merge (parent first, duplicates dropped), scalars and tables override field by
//! field. Unknown fields and type errors are reported with file, line and column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::apk::{Arch, Dep};

/// Default Alpine branch, mirror and repositories.
pub const DEFAULT_BRANCH: &str = "v3.24";
/// The package with `linux{x64,aa64}.efi.stub`, added to the world when a disk is built.
pub const EFI_STUB_PACKAGE: &str = "systemd-efistub";
pub const DEFAULT_MIRROR: &str = "https://dl-cdn.alpinelinux.org/alpine";

/// A profile as written in one file: every field optional so that `extends` can merge.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    extends: Option<String>,
    description: Option<String>,
    branch: Option<String>,
    repositories: Option<Vec<String>>,
    arches: Option<Vec<Arch>>,
    packages: Option<Vec<String>>,
    kernel: Option<RawKernel>,
    cmdline: Option<String>,
    overlays: Option<Vec<String>>,
    hostname: Option<String>,
    output: Option<RawOutput>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    package: Option<String>,
    modules: Option<Vec<String>>,
    optional_modules: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    formats: Option<Vec<OutputFormat>>,
    root: Option<RootFormat>,
    compression: Option<Compression>,
    level: Option<u32>,
    disk_size_mib: Option<u64>,
    data_partition_mib: Option<u64>,
}

/// Artifacts a build can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Kernel,
    Initrd,
    Disk,
    /// `lima.yaml`, a Lima template booting `disk.img` (`output::lima`); needs `disk`.
    Lima,
}

/// Where the guest's root file system lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RootFormat {
    /// The whole tree in the initramfs, moved onto a tmpfs at boot: one file, all in RAM.
    #[default]
    Initramfs,
    /// The tree in a read-only SquashFS image (`root.squashfs`, and a partition of
    /// `disk.img`) under a tmpfs overlay, mounted by a small boot initramfs.
    Squashfs,
}

/// initramfs compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Xz,
}

/// A fully merged profile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Profile {
    pub name: String,
    /// The file it was read from (the most derived one).
    #[serde(skip)]
    pub path: PathBuf,
    pub description: String,
    pub branch: String,
    pub repositories: Vec<String>,
    pub arches: Vec<Arch>,
    pub packages: Vec<String>,
    pub kernel_package: String,
    pub kernel_modules: Vec<String>,
    /// Modules included and loaded when the kernel has them, skipped when it does not (e.g.
    /// the ACPI `button` driver, which arm64 kernels lack).
    pub kernel_optional_modules: Vec<String>,
    pub cmdline: String,
    /// Overlay directories, resolved relative to the profile file that named them.
    pub overlays: Vec<PathBuf>,
    pub hostname: String,
    pub formats: Vec<OutputFormat>,
    pub root: RootFormat,
    pub compression: Compression,
    /// Compression level (gzip 1-9, zstd 1-22, xz 0-9); `None` = the codec's default here.
    pub level: Option<u32>,
    /// The disk image's size; `None`: the least that holds its partitions.
    pub disk_size_mib: Option<u64>,
    /// A `hyve-data` partition of this size at the end of the disk image (format-me header).
    pub data_partition_mib: Option<u64>,
}

/// Problems with a profile, each naming the file.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProfileError {
    /// The profile could not be found.
    #[error("profile {name:?} not found (looked for {tried}); pass --profile PATH or one of: {available}")]
    NotFound { name: String, tried: String, available: String },
    /// The profile file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        #[serde(serialize_with = "crate::serialize_display")]
        source: std::io::Error,
    },
    /// Syntax, type or unknown-field error.
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: String, line: usize, column: usize, message: String },
    /// `extends` loops.
    #[error("profile {path}: `extends` forms a cycle: {chain}")]
    Cycle { path: String, chain: String },
    /// A value is present but not acceptable.
    #[error("profile {path}: {field}: {message}")]
    Invalid { path: String, field: &'static str, message: String },
}

fn merge_list<T: Clone + PartialEq>(parent: Option<Vec<T>>, child: Option<Vec<T>>) -> Option<Vec<T>> {
    match (parent, child) {
        (Some(mut p), Some(c)) => {
            for item in c {
                if !p.contains(&item) {
                    p.push(item);
                }
            }
            Some(p)
        }
        (p, c) => c.or(p),
    }
}

impl RawProfile {
    /// `self` is the parent; `child` overrides and extends it.
    fn merge(self, child: RawProfile) -> RawProfile {
        let kernel = match (self.kernel, child.kernel) {
            (Some(p), Some(c)) => Some(RawKernel {
                package: c.package.or(p.package),
                modules: merge_list(p.modules, c.modules),
                optional_modules: merge_list(p.optional_modules, c.optional_modules),
            }),
            (p, c) => c.or(p),
        };
        let output = match (self.output, child.output) {
            (Some(p), Some(c)) => Some(RawOutput {
                formats: c.formats.or(p.formats),
                root: c.root.or(p.root),
                compression: c.compression.or(p.compression),
                level: if c.compression.is_some() { c.level } else { c.level.or(p.level) },
                disk_size_mib: c.disk_size_mib.or(p.disk_size_mib),
                data_partition_mib: c.data_partition_mib.or(p.data_partition_mib),
            }),
            (p, c) => c.or(p),
        };
        RawProfile {
            extends: None,
            description: child.description.or(self.description),
            branch: child.branch.or(self.branch),
            repositories: merge_list(self.repositories, child.repositories),
            arches: child.arches.or(self.arches),
            packages: merge_list(self.packages, child.packages),
            kernel,
            cmdline: child.cmdline.or(self.cmdline),
            overlays: merge_list(self.overlays, child.overlays),
            hostname: child.hostname.or(self.hostname),
            output,
        }
    }
}

/// Where profiles named by name are found: directories in order, then the built-in tree
/// (`builtin::materialize`: `profiles/` and `overlay/`), which also serves `hyve:NAME`
/// overlays.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub dirs: Vec<PathBuf>,
    pub builtin: Option<PathBuf>,
}

impl Lookup {
    fn search(&self) -> Vec<PathBuf> {
        self.dirs.iter().cloned().chain(self.builtin.iter().map(|b| b.join("profiles"))).collect()
    }

    /// Whether `path` is one of the built-in profiles.
    pub fn is_builtin(&self, path: &Path) -> bool {
        self.builtin.as_ref().is_some_and(|b| path.starts_with(b))
    }

    /// Where a profile found by this lookup comes from, for people: its path, or built in.
    pub fn describe(&self, path: &Path) -> String {
        if self.is_builtin(path) {
            format!("built into hyve {}", env!("CARGO_PKG_VERSION"))
        } else {
            path.display().to_string()
        }
    }

    /// The same lookup, with `dir` searched first.
    fn beside(&self, dir: &Path) -> Lookup {
        Lookup { dirs: std::iter::once(dir.to_path_buf()).chain(self.dirs.iter().cloned()).collect(), ..self.clone() }
    }
}

/// Where `--profile X` points: a path if it looks like one, else `<dir>/X.toml` for each
/// directory of `lookup`, the built-in profiles last.
pub fn locate(name_or_path: &str, lookup: &Lookup) -> Result<PathBuf, ProfileError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        return Ok(as_path.to_path_buf());
    }
    let search = lookup.search();
    let candidates: Vec<PathBuf> = search.iter().map(|d| d.join(format!("{name_or_path}.toml"))).collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let available: BTreeSet<String> = available(lookup).into_iter().map(|(name, _)| name).collect();
    Err(ProfileError::NotFound {
        name: name_or_path.to_string(),
        tried: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        available: if available.is_empty() {
            "(none)".into()
        } else {
            available.into_iter().collect::<Vec<_>>().join(", ")
        },
    })
}

/// Every profile `lookup` finds by name, with the file that wins for it, sorted by name.
pub fn available(lookup: &Lookup) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for dir in lookup.search() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut here: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        here.sort();
        for p in here {
            let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, p));
            }
        }
    }
    found.sort();
    found
}

/// 1-based line and column of a TOML error in `text`.
pub(crate) fn toml_position(text: &str, e: &toml::de::Error) -> (usize, usize) {
    let offset = e.span().map_or(0, |s| s.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn read_raw(path: &Path, lookup: &Lookup) -> Result<RawProfile, ProfileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read { path: shown.clone(), source })?;
    let mut raw: RawProfile = toml::from_str(&text).map_err(|e| {
        let (line, column) = toml_position(&text, &e);
        // serde's message names the expected type, not the key: show the line it is about.
        let at = text.lines().nth(line - 1).map(str::trim).filter(|l| !l.is_empty());
        let message = match at {
            Some(l) => format!("{} (in `{l}`)", e.message()),
            None => e.message().to_string(),
        };
        ProfileError::Parse { path: shown.clone(), line, column, message }
    })?;
    // Overlay directories are relative to the file that names them; `hyve:NAME` is built in.
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(overlays) = raw.overlays.as_mut() {
        for o in overlays.iter_mut() {
            if let Some(name) = o.strip_prefix(crate::builtin::OVERLAY_PREFIX) {
                let known = lookup.builtin.as_ref().map(|b| b.join("overlay").join(name)).filter(|d| d.is_dir());
                *o = known
                    .ok_or_else(|| ProfileError::Invalid {
                        path: shown.clone(),
                        field: "overlays",
                        message: format!(
                            "{o:?}: no such built-in overlay (hyve has {})",
                            crate::builtin::overlay_names().join(", ")
                        ),
                    })?
                    .display()
                    .to_string();
            } else if !Path::new(o).is_absolute() {
                *o = dir.join(&*o).display().to_string();
            }
        }
    }
    Ok(raw)
}

/// Reads a profile file and everything it extends.
pub fn load(path: &Path, lookup: &Lookup) -> Result<Profile, ProfileError> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut raws = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        let canonical = current.canonicalize().unwrap_or_else(|_| current.clone());
        if chain.contains(&canonical) {
            let names: Vec<String> = chain.iter().chain([&canonical]).map(|p| p.display().to_string()).collect();
            return Err(ProfileError::Cycle { path: path.display().to_string(), chain: names.join(" -> ") });
        }
        chain.push(canonical);
        let raw = read_raw(&current, lookup)?;
        let parent = raw.extends.clone();
        raws.push(raw);
        match parent {
            Some(p) => {
                // A parent is found beside the file that names it, else by name.
                let dir = current.parent().unwrap_or(Path::new("."));
                current = if p.contains('/') || p.ends_with(".toml") {
                    dir.join(&p)
                } else {
                    locate(&p, &lookup.beside(dir))?
                };
            }
            None => break,
        }
    }
    let merged = raws.into_iter().rev().reduce(RawProfile::merge).expect("at least one file");
    finish(path, merged)
}

fn finish(path: &Path, raw: RawProfile) -> Result<Profile, ProfileError> {
    let shown = path.display().to_string();
    let invalid = |field: &'static str, message: String| ProfileError::Invalid { path: shown.clone(), field, message };
    let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let branch = raw.branch.unwrap_or_else(|| DEFAULT_BRANCH.to_string());
    if branch != "edge" && !branch.strip_prefix('v').is_some_and(|v| v.split('.').all(|p| p.parse::<u32>().is_ok())) {
        return Err(invalid("branch", format!("expected vX.Y or edge, found {branch:?}")));
    }
    let packages = raw.packages.unwrap_or_default();
    for p in &packages {
        Dep::parse(p).map_err(|e| invalid("packages", e.to_string()))?;
    }
    let kernel = raw.kernel.unwrap_or_default();
    let kernel_package = kernel.package.unwrap_or_else(|| "linux-virt".to_string());
    let repositories = raw.repositories.unwrap_or_else(|| vec!["main".to_string()]);
    if repositories.is_empty() {
        return Err(invalid("repositories", "at least one repository is needed (e.g. [\"main\"])".into()));
    }
    let arches = raw.arches.unwrap_or_else(|| vec![Arch::X86_64, Arch::Aarch64]);
    if arches.is_empty() {
        return Err(invalid("arches", "at least one architecture is needed".into()));
    }
    let hostname = raw.hostname.unwrap_or_else(|| "hyve".to_string());
    if hostname.is_empty() || hostname.len() > 63 || !hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid("hostname", format!("{hostname:?} is not a valid host name")));
    }
    let output = raw.output.unwrap_or_default();
    let disk_size_mib = output.disk_size_mib;
    if let Some(level) = output.level {
        let max = match output.compression.unwrap_or_default() {
            Compression::Gzip | Compression::Xz => 9,
            Compression::Zstd => 22,
        };
        if level > max || (level == 0 && output.compression != Some(Compression::Xz)) {
            return Err(invalid(
                "output.level",
                format!("{level} is out of range for {:?} (1..={max})", output.compression.unwrap_or_default()),
            ));
        }
    }
    if let Some(size) = disk_size_mib.filter(|&size| size < 64) {
        return Err(invalid("output.disk_size_mib", format!("{size} MiB is too small for an ESP (minimum 64)")));
    }
    let formats = output.formats.unwrap_or_else(|| vec![OutputFormat::Kernel, OutputFormat::Initrd]);
    if formats.contains(&OutputFormat::Lima) && !formats.contains(&OutputFormat::Disk) {
        return Err(invalid(
            "output.formats",
            "\"lima\" needs \"disk\": the Lima template boots disk.img; add \"disk\" to the list".to_string(),
        ));
    }
    if let Some(data) = output.data_partition_mib {
        if data < 64 {
            return Err(invalid("output.data_partition_mib", format!("{data} MiB: expected at least 64")));
        }
        if let Some(size) = disk_size_mib.filter(|&size| data + 64 > size) {
            return Err(invalid(
                "output.data_partition_mib",
                format!("{data} MiB: expected to leave at least 64 MiB of the {size} MiB disk (output.disk_size_mib) for the ESP"),
            ));
        }
    }
    Ok(Profile {
        name,
        path: path.to_path_buf(),
        description: raw.description.unwrap_or_default(),
        branch,
        repositories,
        arches,
        packages,
        kernel_package,
        kernel_modules: kernel.modules.unwrap_or_default(),
        kernel_optional_modules: kernel.optional_modules.unwrap_or_default(),
        cmdline: raw.cmdline.unwrap_or_default(),
        overlays: raw.overlays.unwrap_or_default().into_iter().map(PathBuf::from).collect(),
        hostname,
        formats,
        root: output.root.unwrap_or_default(),
        compression: output.compression.unwrap_or_default(),
        level: output.level,
        disk_size_mib,
        data_partition_mib: output.data_partition_mib,
    })
}

impl Profile {
    /// What the resolver is asked for: the packages plus the kernel package.
    pub fn world(&self) -> Vec<String> {
        let mut world = self.packages.clone();
        if !world.iter().any(|p| Dep::parse(p).is_ok_and(|d| d.name == self.kernel_package)) {
            world.push(self.kernel_package.clone());
        }
        // The disk image's Unified Kernel Image is built on systemd's EFI stub.
        if self.formats.contains(&OutputFormat::Disk) && !world.iter().any(|p| p == EFI_STUB_PACKAGE) {
            world.push(EFI_STUB_PACKAGE.to_string());
        }
        world
    }

    /// Hash of everything that decides the package set (branch, repositories, world), so a
    /// lock knows when it is stale. Changing the cmdline or overlays does not stale a lock.
    pub fn inputs_hash(&self) -> String {
        let canonical = serde_json::json!({
            "branch": self.branch,
            "repositories": self.repositories,
            "world": self.world(),
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn extends_merges_lists_and_overrides_scalars() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "base.toml", "branch = \"v3.22\"\npackages = [\"busybox\", \"musl\"]\ncmdline = \"console=ttyS0\"\n[kernel]\npackage = \"linux-virt\"\nmodules = [\"virtio_net\"]\n");
        let child = write(d.path(), "child.toml", "extends = \"base\"\npackages = [\"docker-engine\", \"musl\"]\ncmdline = \"quiet\"\n[kernel]\nmodules = [\"overlay\"]\n[output]\ncompression = \"zstd\"\n");
        let p = load(&child, &Lookup::default()).unwrap();
        assert_eq!(p.name, "child");
        assert_eq!(p.branch, "v3.22");
        assert_eq!(p.packages, ["busybox", "musl", "docker-engine"]);
        assert_eq!(p.cmdline, "quiet");
        assert_eq!(p.kernel_package, "linux-virt");
        assert_eq!(p.kernel_modules, ["virtio_net", "overlay"]);
        assert_eq!(p.compression, Compression::Zstd);
        assert_eq!(p.world(), ["busybox", "musl", "docker-engine", "linux-virt"]);
    }

    #[test]
    fn errors_carry_file_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "bad.toml", "branch = \"v3.24\"\npackagez = [\"x\"]\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("bad.toml:2:1") && e.contains("packagez"), "{e}");
        let p = write(d.path(), "type.toml", "branch = \"v3.24\"\npackages = \"busybox\"\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("type.toml:2:12") && e.contains("sequence"), "{e}");
        let p = write(d.path(), "disk.toml", "[output]\ndisk_size_mib = 128\ndata_partition_mib = 100\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("disk.toml") && e.contains("output.data_partition_mib"), "{e}");
        let p = write(d.path(), "fit.toml", "[output]\ndata_partition_mib = 100\n");
        let fitted = load(&p, &Lookup::default()).unwrap();
        assert_eq!((fitted.disk_size_mib, fitted.data_partition_mib), (None, Some(100)), "sized to fit");
        let p = write(d.path(), "tiny.toml", "[output]\ndisk_size_mib = 32\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("tiny.toml") && e.contains("output.disk_size_mib") && e.contains("minimum 64"), "{e}");
        let p = write(d.path(), "stub.toml", "[output]\nformats = [\"kernel\", \"disk\"]\n");
        assert!(load(&p, &Lookup::default()).unwrap().world().contains(&EFI_STUB_PACKAGE.to_string()));
        let p = write(d.path(), "lima.toml", "[output]\nformats = [\"kernel\", \"lima\"]\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("lima.toml") && e.contains("output.formats") && e.contains("needs \"disk\""), "{e}");
        let p = write(d.path(), "arch.toml", "arches = [\"riscv64\"]\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("arch.toml:1:") && e.contains("riscv64"), "{e}");
    }

    #[test]
    fn cycles_and_missing_parents_are_named() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.toml", "extends = \"b\"\n");
        write(d.path(), "b.toml", "extends = \"a\"\n");
        let e = load(&d.path().join("a.toml"), &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("a.toml") && e.contains("b.toml"), "{e}");
        let p = write(d.path(), "orphan.toml", "extends = \"nosuch\"\n");
        let e = load(&p, &Lookup::default()).unwrap_err().to_string();
        assert!(e.contains("nosuch") && e.contains("a, b, orphan"), "{e}");
    }

    #[test]
    fn inputs_hash_ignores_presentation() {
        let d = tempfile::tempdir().unwrap();
        let a = load(&write(d.path(), "a.toml", "packages = [\"busybox\"]\ncmdline = \"x\"\n"), &Lookup::default())
            .unwrap();
        let b = load(&write(d.path(), "b.toml", "packages = [\"busybox\"]\ncmdline = \"y\"\n"), &Lookup::default())
            .unwrap();
        let c = load(&write(d.path(), "c.toml", "packages = [\"busybox\", \"musl\"]\n"), &Lookup::default()).unwrap();
        assert_eq!(a.inputs_hash(), b.inputs_hash());
        assert_ne!(a.inputs_hash(), c.inputs_hash());
    }

    #[test]
    fn a_user_profile_extends_and_names_built_in_ones() {
        let d = tempfile::tempdir().unwrap();
        let builtin = crate::builtin::materialize(&d.path().join("cache")).unwrap();
        let lookup = Lookup { dirs: vec![d.path().join("nothing-here")], builtin: Some(builtin.clone()) };
        let mine = write(d.path(), "mine.toml", "extends = \"minimal\"\noverlays = [\"hyve:dev\", \"own\"]\n");
        let p = load(&mine, &lookup).unwrap();
        assert_eq!(p.name, "mine");
        assert!(p.packages.iter().any(|x| x == "docker-engine"), "minimal's packages came along");
        let names: Vec<String> =
            p.overlays.iter().map(|o| o.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["base", "docker", "dev", "own"]);
        assert!(p.overlays[2].starts_with(&builtin) && p.overlays[3].starts_with(d.path()));
        assert!(lookup.is_builtin(&locate("minimal", &lookup).unwrap()));
        assert_eq!(
            available(&lookup).into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["base", "dev", "lima", "minimal"]
        );
        let bad = write(d.path(), "bad.toml", "overlays = [\"hyve:nope\"]\n");
        let e = load(&bad, &lookup).unwrap_err().to_string();
        assert!(e.contains("\"hyve:nope\": no such built-in overlay (hyve has base, dev, docker, lima)"), "{e}");
    }

    #[test]
    fn shipped_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        for name in ["base", "minimal", "dev"] {
            let p =
                load(&locate(name, &Lookup { dirs: vec![dir.clone()], builtin: None }).unwrap(), &Lookup::default())
                    .unwrap();
            assert_eq!(p.branch, "v3.24", "{name}");
            assert!(p.packages.iter().any(|x| x == "busybox"), "{name}");
            assert_eq!(p.arches, [Arch::X86_64, Arch::Aarch64]);
        }
        let minimal = load(&dir.join("minimal.toml"), &Lookup::default()).unwrap();
        for pkg in
            ["docker-engine", "containerd", "runc", "iptables", "e2fsprogs", "ca-certificates", "openssl", "socat"]
        {
            assert!(minimal.packages.iter().any(|x| x == pkg), "minimal lacks {pkg}");
        }
    }
}
