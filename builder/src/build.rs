//! `hyve build`: lock → verified packages → tree → kernel + initramfs + cmdline + manifest,
//! written into a staging directory beside the output and swapped into place in one step
//! (`fsutil::StagingDir`), so a failed or killed build leaves the previous output untouched
//! and nothing half-written.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::apk::Arch;
use crate::fsutil;
use crate::install::{installed_db, Installer, PackageFile};
use crate::kernel;
use crate::output::compress::Compressor;
use crate::output::cpio;
use crate::output::disk::{self, DiskSpec, EspFile};
use crate::output::manifest::{KernelSummary, LockSummary, Manifest, OutputEntry, PackageSummary};
use crate::output::uki::UkiLayout;
use crate::overlay::{self, Generated};
use crate::profile::OutputFormat;
use crate::session::{LockPolicy, Session};
use crate::tree::{ContentStore, NodeKind, Tree};

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildError {
    #[error("the lock for {arch} has no {package}, the profile's kernel package")]
    NoKernelPackage { arch: Arch, package: String },
    /// The disk image needs systemd's EFI stub and the package set has none.
    #[error("output.formats has \"disk\" but no package installs /{path} ({arch}); the profile's world gets {package} for it — is it in the repositories?")]
    NoEfiStub { arch: Arch, path: String, package: &'static str },
    /// `--out` names something that is not an earlier build: replacing it would delete it.
    #[error("{path} {what}, not a hyve output directory (none of manifest.json and SHA256SUMS); building there would replace it — pick an empty or new directory")]
    NotAnOutput { path: String, what: &'static str },
    /// SIGINT or SIGTERM.
    #[error("interrupted; the previous output (if any) is untouched and no temporary files were left")]
    Interrupted,
    #[error(transparent)]
    #[serde(untagged)]
    Session(#[from] crate::session::Error),
    #[error(transparent)]
    #[serde(untagged)]
    Install(#[from] crate::install::InstallError),
    #[error(transparent)]
    #[serde(untagged)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    #[serde(untagged)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    #[serde(untagged)]
    Overlay(#[from] crate::overlay::OverlayError),
    #[error("{0}{hint}", hint = space_hint(&.0.source))]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    #[serde(untagged)]
    Uki(#[from] crate::output::uki::UkiError),
    #[error(transparent)]
    #[serde(untagged)]
    Disk(#[from] crate::output::disk::DiskError),
}

type Result<T> = std::result::Result<T, BuildError>;

/// What to do about a full disk.
fn space_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "; the output is staged beside --out and needs room for every output at once (disk.img is as large as disk_size_mib, sparse) — free space there or build with --out elsewhere"
        }
        _ => "",
    }
}

/// The checksum file every build writes; it lists every other output.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// One written artifact.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildResult {
    pub dir: PathBuf,
    pub arch: Arch,
    pub source_date_epoch: u64,
    pub packages: usize,
    pub entries: u64,
    pub outputs: Vec<Artifact>,
    pub warnings: Vec<String>,
}

/// The kernel command line: the consoles for the arch first, then the profile's. The last
/// `console=` that exists becomes `/dev/console`: hvc0 goes last, so Virtualization.framework
/// and vfkit (virtio-console only) get userspace's output, while QEMU and hyperkit, which
/// offer no virtio-console, fall back to the UART. `hyve run` and its printed lines replace
/// these with the one console each VMM has; the UKI in disk.img keeps both.
pub fn cmdline(arch: Arch, profile_cmdline: &str) -> String {
    let console = format!("console={} console=hvc0", kernel::serial_console(arch));
    format!("{console} {}", profile_cmdline.trim()).trim().to_string()
}

fn write_artifact(dir: &Path, name: &str, bytes: &[u8]) -> Result<Artifact> {
    write_hashed_artifact(dir, name, bytes, hex::encode(Sha256::digest(bytes)))
}

/// `write_artifact` for bytes whose SHA-256 is already known (each output is hashed once).
fn write_hashed_artifact(dir: &Path, name: &str, bytes: &[u8], sha256: String) -> Result<Artifact> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(fsutil::at(&path))?;
    Ok(Artifact { name: name.into(), sha256, size: bytes.len() as u64 })
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub policy: LockPolicy,
    /// Compression threads.
    pub workers: u32,
    /// The one time source for every timestamp written; `None` means the newest package's
    /// build date.
    pub source_date_epoch: Option<u64>,
    /// Set (by SIGINT/SIGTERM) to stop: the build fails with `Interrupted`, leaving the
    /// previous output and no temporary files.
    pub cancel: crate::cancel::Cancel,
}

/// The locked packages, fetched and installed into a new tree, each unpacked as soon as it
/// is in the cache while later ones download. Cached copies are not hashed by the fetcher:
/// the installer checks each file's pin in the same pass that unpacks it.
fn fetch_and_install(
    session: &Session,
    arch: Arch,
    section: &crate::lock::ArchLock,
    cancel: &crate::cancel::Cancel,
) -> Result<Installed> {
    let reqs = session.locked_requests(arch, section, true)?;
    let mut store = ContentStore::new().map_err(fsutil::at(Path::new("content store")))?;
    let mut tree = Tree::new();
    let mut installer = Installer::new(&mut tree, &mut store, arch);
    session.fetcher.packages_each(&reqs, |i, cached| -> Result<()> {
        if cancel.is_cancelled() {
            return Err(BuildError::Interrupted);
        }
        let locked = &section.packages[i];
        installer.add(&PackageFile {
            path: cached.path.clone(),
            q1: cached.q1,
            sha256: locked.sha256.clone(),
            installed_size: locked.installed_size,
        })?;
        Ok(())
    })?;
    let (packages, warnings) = installer.finish()?;
    Ok(Installed { tree, store, packages, warnings })
}

/// A tree with the packages unpacked into it.
struct Installed {
    tree: Tree,
    store: ContentStore,
    packages: Vec<crate::install::InstalledPackage>,
    warnings: Vec<String>,
}

/// Builds `arch` of the session's profile into `out` (default `out/<profile>-<arch>`).
pub fn build(session: &Session, arch: Arch, opts: &BuildOptions, out: &Path) -> Result<BuildResult> {
    // Whatever failed once the build was cancelled, the cause is the interruption.
    build_steps(session, arch, opts, out)
        .map_err(|e| if opts.cancel.is_cancelled() { BuildError::Interrupted } else { e })
}

/// Refuses an `out` that a build would replace and that is not a hyve output: a file, or a
/// directory holding anything but an earlier build's outputs.
pub fn check_replaceable(out: &Path) -> Result<()> {
    let refuse = |what| Err(BuildError::NotAnOutput { path: out.display().to_string(), what });
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fsutil::at(out)(e).into()),
        Ok(m) if !m.is_dir() => refuse("is a file"),
        Ok(_) => {
            let empty = std::fs::read_dir(out).map_err(fsutil::at(out))?.next().is_none();
            if empty || (out.join("manifest.json").is_file() && out.join(SHA256SUMS).is_file()) {
                Ok(())
            } else {
                refuse("is a directory with other files")
            }
        }
    }
}

fn build_steps(session: &Session, arch: Arch, opts: &BuildOptions, out: &Path) -> Result<BuildResult> {
    check_replaceable(out)?;
    let profile = &session.profile;
    let workers = opts.workers;
    let (section, _) = session.ensure_lock(arch, opts.policy)?;
    let Installed { mut tree, mut store, packages: installed, mut warnings } =
        match fetch_and_install(session, arch, &section, &opts.cancel) {
            // A cache entry that went bad since it was verified: it has been removed; fetch it
            // again and start over with a fresh tree (once — a second failure is reported).
            Err(BuildError::Install(crate::install::InstallError::CacheCorrupt { path, .. })) => {
                let mut again = fetch_and_install(session, arch, &section, &opts.cancel)?;
                again.warnings.insert(0, format!("discarded corrupt cache entry {path} and fetched it again"));
                again
            }
            other => other?,
        };
    let epoch =
        opts.source_date_epoch.unwrap_or_else(|| installed.iter().map(|p| p.info.build_date).max().unwrap_or(0));
    let kernel_pkg = installed
        .iter()
        .find(|p| p.info.name == profile.kernel_package)
        .ok_or_else(|| BuildError::NoKernelPackage { arch, package: profile.kernel_package.clone() })?;
    let kernel = kernel::prepare(
        &mut tree,
        &mut store,
        arch,
        &profile.kernel_package,
        &profile.kernel_modules,
        &profile.kernel_optional_modules,
    )?;
    for m in &kernel.builtin {
        warnings.push(format!("kernel module {m} is built into {}; nothing to include", profile.kernel_package));
    }
    let overlays = profile
        .overlays
        .iter()
        .map(|dir| overlay::apply_dir(&mut tree, &mut store, dir, epoch))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let cmdline = cmdline(arch, &profile.cmdline);
    // What init modprobes: the profile's modules that are not built in (modprobe follows
    // modules.dep for the rest).
    let modules_to_load: String = profile
        .kernel_modules
        .iter()
        .chain(&profile.kernel_optional_modules)
        .map(|m| m.replace('-', "_"))
        .filter(|m| kernel.modules.contains(m))
        .map(|m| m + "\n")
        .collect();
    let packages = section
        .packages
        .iter()
        .zip(&installed)
        .map(|(l, i)| PackageSummary {
            name: l.name.clone(),
            version: l.version.clone(),
            repository: l.repository.clone(),
            sha256: l.sha256.clone(),
            checksum: l.checksum.clone(),
            datahash: l.datahash.clone(),
            origin: i.info.origin.clone(),
            license: i.info.license.clone(),
            maintainer: i.info.maintainer.clone(),
            url: i.info.url.clone(),
            description: i.info.description.clone(),
            build_date: i.info.build_date,
        })
        .collect();
    let lock_json = serde_json::to_vec(&section).expect("a lock serializes");
    let mut manifest = Manifest {
        hyve_version: env!("CARGO_PKG_VERSION").into(),
        profile: profile.name.clone(),
        arch: arch.to_string(),
        branch: section.branch.clone(),
        source_date_epoch: epoch,
        lock: LockSummary { inputs_hash: section.inputs_hash.clone(), sha256: hex::encode(Sha256::digest(&lock_json)) },
        kernel: KernelSummary {
            package: kernel_pkg.info.name.clone(),
            version: kernel_pkg.info.version.to_string(),
            release: kernel.release.clone(),
            modules: kernel.modules.clone(),
            optional_modules_missing: kernel.skipped.clone(),
        },
        cmdline: cmdline.clone(),
        packages,
        overlays,
        outputs: Default::default(),
    };
    let os_release = format!(
        "NAME=\"hyve\"\nID=hyve\nID_LIKE=alpine\nVERSION_ID={branch}\nVARIANT_ID={name}\nPRETTY_NAME=\"hyve {name} (Alpine {branch})\"\nHOME_URL=\"https://github.com/hyve\"\nBUILD_ID={epoch}\n",
        branch = section.branch.trim_start_matches('v'),
        name = profile.name,
    );
    let generated = [
        ("dev", Generated::Dir, 0o755),
        ("dev/console", Generated::CharDevice(5, 1), 0o600),
        ("proc", Generated::Dir, 0o555),
        ("sys", Generated::Dir, 0o555),
        ("run", Generated::Dir, 0o755),
        ("tmp", Generated::Dir, 0o1777),
        ("root", Generated::Dir, 0o700),
        ("etc/hostname", Generated::Text(format!("{}\n", profile.hostname)), 0o644),
        ("etc/os-release", Generated::Text(os_release.clone()), 0o644),
        ("etc/hyve/manifest.json", Generated::Text(manifest.to_json()), 0o644),
        ("lib/apk/db/installed", Generated::Text(installed_db(&installed)), 0o644),
        ("etc/apk/world", Generated::Text(profile.world().join("\n") + "\n"), 0o644),
        ("etc/hyve/modules", Generated::Text(modules_to_load), 0o644),
    ];
    for (path, g, mode) in generated {
        overlay::put(&mut tree, &mut store, path, g, mode, epoch)?;
    }

    // Write everything beside the target, then swap it in.
    let tmp = crate::fsutil::StagingDir::beside(out).map_err(fsutil::at(out))?;
    let mut outputs = Vec::new();
    let kernel_sha256 = hex::encode(Sha256::digest(&kernel.image));
    if profile.formats.contains(&OutputFormat::Kernel) {
        outputs.push(write_hashed_artifact(tmp.path(), "kernel", &kernel.image, kernel_sha256.clone())?);
    }
    let mut entries = 0;
    let wants_disk = profile.formats.contains(&OutputFormat::Disk);
    if profile.formats.contains(&OutputFormat::Initrd) || wants_disk {
        let (artifact, n) = write_initrd(tmp.path(), &tree, &store, profile, epoch, workers, &opts.cancel)?;
        entries = n;
        if wants_disk {
            let guest = GuestFiles {
                kernel: &kernel.image,
                kernel_version: &kernel_pkg.info.version.to_string(),
                initrd: &tmp.path().join("initrd.img"),
                kernel_sha256: &kernel_sha256,
                initrd_sha256: &artifact.sha256,
                cmdline: &cmdline,
                os_release: &os_release,
                cancel: &opts.cancel,
            };
            outputs.push(write_disk_image(
                tmp.path(),
                &tree,
                &store,
                arch,
                profile,
                &section.inputs_hash,
                &guest,
                epoch,
            )?);
        }
        if profile.formats.contains(&OutputFormat::Initrd) {
            outputs.push(artifact);
        } else {
            let path = tmp.path().join("initrd.img");
            std::fs::remove_file(&path).map_err(fsutil::at(&path))?;
        }
    }
    outputs.push(write_artifact(tmp.path(), "cmdline", format!("{cmdline}\n").as_bytes())?);
    // The output manifest is the guest's plus the outputs' hashes; the SBOM and SHA256SUMS
    // are derived from it.
    manifest.outputs =
        outputs.iter().map(|a| (a.name.clone(), OutputEntry { sha256: a.sha256.clone(), size: a.size })).collect();
    outputs.push(write_artifact(tmp.path(), "manifest.json", manifest.to_json().as_bytes())?);
    let kernel_sha = outputs.iter().find(|a| a.name == "kernel").map(|a| a.sha256.clone());
    let sbom = crate::output::spdx::spdx(&manifest, kernel_sha.as_deref());
    outputs.push(write_artifact(
        tmp.path(),
        "sbom.spdx.json",
        (serde_json::to_string_pretty(&sbom).expect("json") + "\n").as_bytes(),
    )?);
    let sums = crate::output::sums::sha256sums(outputs.iter().map(|a| (a.name.as_str(), a.sha256.as_str())));
    let sums_path = tmp.path().join(SHA256SUMS);
    std::fs::write(&sums_path, sums).map_err(fsutil::at(&sums_path))?;
    for entry in std::fs::read_dir(tmp.path()).map_err(fsutil::at(tmp.path()))? {
        let p = entry.map_err(fsutil::at(tmp.path()))?.path();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(fsutil::at(&p))?;
    }
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(fsutil::at(tmp.path()))?;
    tmp.commit().map_err(fsutil::at(out))?;
    Ok(BuildResult {
        dir: out.to_path_buf(),
        arch,
        source_date_epoch: epoch,
        packages: installed.len(),
        entries,
        outputs,
        warnings,
    })
}

/// The compressed newc initramfs of `tree`, streamed to `dir/initrd.img` while hashing.
fn write_initrd(
    dir: &Path,
    tree: &Tree,
    store: &ContentStore,
    profile: &crate::profile::Profile,
    epoch: u64,
    workers: u32,
    cancel: &crate::cancel::Cancel,
) -> Result<(Artifact, u64)> {
    let initrd_path = dir.join("initrd.img");
    let file = std::fs::File::create(&initrd_path).map_err(fsutil::at(&initrd_path))?;
    let hashing = crate::fsutil::Hashing::<_, Sha256>::new(file);
    let mut compressor = Compressor::new(
        profile.compression,
        profile.level,
        std::io::BufWriter::with_capacity(1 << 20, hashing),
        workers,
    )
    .map_err(fsutil::at(&initrd_path))?;
    let entries =
        cpio::write_tree(tree, store, epoch, &mut cancel.wrap(&mut compressor)).map_err(fsutil::at(&initrd_path))?;
    let hashing = compressor
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(fsutil::at(&initrd_path))?;
    let (file, sha256, size) = hashing.finish();
    file.sync_all().map_err(fsutil::at(&initrd_path))?;
    Ok((Artifact { name: "initrd.img".into(), sha256: hex::encode(sha256), size }, entries))
}

/// What the disk image carries of the guest.
struct GuestFiles<'a> {
    kernel: &'a [u8],
    kernel_version: &'a str,
    initrd: &'a Path,
    kernel_sha256: &'a str,
    initrd_sha256: &'a str,
    cmdline: &'a str,
    os_release: &'a str,
    /// Copying the initrd (twice: UKI and file) is most of the disk's time.
    cancel: &'a crate::cancel::Cancel,
}

/// `disk.img`: a GPT disk whose ESP holds the Unified Kernel Image as the removable-media
/// boot path (`\EFI\BOOT\BOOT{X64,AA64}.EFI`), plus the kernel, the initrd and a Boot Loader
/// Specification entry for systemd-boot. GUIDs and the FAT serial come from a hash of the
/// inputs, FAT times from SOURCE_DATE_EPOCH.
#[allow(clippy::too_many_arguments)]
fn write_disk_image(
    dir: &Path,
    tree: &Tree,
    store: &ContentStore,
    arch: Arch,
    profile: &crate::profile::Profile,
    inputs_hash: &str,
    guest: &GuestFiles,
    epoch: u64,
) -> Result<Artifact> {
    let (stub_name, boot_name) = match arch {
        Arch::X86_64 => ("linuxx64.efi.stub", "BOOTX64.EFI"),
        Arch::Aarch64 => ("linuxaa64.efi.stub", "BOOTAA64.EFI"),
    };
    let stub_path = format!("usr/lib/systemd/boot/efi/{stub_name}");
    let stub = match tree.get(&stub_path).map(|n| &n.kind) {
        Some(NodeKind::File(blob)) => store.read_all(*blob).map_err(fsutil::at(Path::new(&stub_path)))?,
        _ => return Err(BuildError::NoEfiStub { arch, path: stub_path, package: crate::profile::EFI_STUB_PACKAGE }),
    };
    let initrd_len = std::fs::metadata(guest.initrd).map_err(fsutil::at(guest.initrd))?.len();
    let uki = UkiLayout::new(
        &stub,
        &stub_path,
        &[
            (".osrel", guest.os_release.len() as u64),
            (".cmdline", guest.cmdline.len() as u64),
            (".initrd", initrd_len),
            (".linux", guest.kernel.len() as u64),
        ],
    )?;
    let open_initrd = || std::fs::File::open(guest.initrd).map(|f| guest.cancel.wrap(std::io::BufReader::new(f)));
    let entry = format!(
        "title hyve {name} ({arch})\nversion {version}\nlinux /hyve/kernel\ninitrd /hyve/initrd.img\noptions {cmdline}\n",
        name = profile.name,
        version = guest.kernel_version,
        cmdline = guest.cmdline,
    );
    let uki_size = uki.size();
    let files = vec![
        EspFile {
            path: format!("EFI/BOOT/{boot_name}"),
            size: uki_size,
            write: Box::new(|w: &mut dyn Write| {
                let mut initrd = open_initrd()?;
                let (mut osrel, mut cmd, mut linux) =
                    (guest.os_release.as_bytes(), guest.cmdline.as_bytes(), guest.kernel);
                let mut w = w;
                uki.write(
                    &mut w,
                    vec![
                        (".osrel", &mut osrel),
                        (".cmdline", &mut cmd),
                        (".initrd", &mut initrd),
                        (".linux", &mut linux),
                    ],
                )
                .map_err(std::io::Error::other)
            }),
        },
        EspFile {
            path: "hyve/kernel".into(),
            size: guest.kernel.len() as u64,
            write: Box::new(|w: &mut dyn Write| w.write_all(guest.kernel)),
        },
        EspFile {
            path: "hyve/initrd.img".into(),
            size: initrd_len,
            write: Box::new(|w: &mut dyn Write| std::io::copy(&mut open_initrd()?, w).map(|_| ())),
        },
        EspFile {
            path: "loader/entries/hyve.conf".into(),
            size: entry.len() as u64,
            write: Box::new(|w: &mut dyn Write| w.write_all(entry.as_bytes())),
        },
    ];
    let seed = Sha256::new()
        .chain_update(inputs_hash.as_bytes())
        .chain_update(arch.to_string().as_bytes())
        .chain_update(profile.name.as_bytes())
        .chain_update(guest.kernel_sha256.as_bytes())
        .chain_update(guest.initrd_sha256.as_bytes())
        .chain_update(guest.cmdline.as_bytes())
        .finalize();
    let spec =
        DiskSpec { size: profile.disk_size_mib * disk::MIB, data_mib: profile.data_partition_mib, seed: &seed, epoch };
    let path = dir.join("disk.img");
    disk::write_disk(&path, &spec, files)?;
    let (sha256, size) = std::fs::File::open(&path).and_then(crate::fsutil::sha256_of).map_err(fsutil::at(&path))?;
    Ok(Artifact { name: "disk.img".into(), sha256, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_per_arch() {
        assert_eq!(cmdline(Arch::X86_64, "panic=-1 quiet"), "console=ttyS0 console=hvc0 panic=-1 quiet");
        assert_eq!(cmdline(Arch::Aarch64, ""), "console=ttyAMA0 console=hvc0");
    }
}
