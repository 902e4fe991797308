//! `hyve build`: lock → verified packages → tree → kernel + initramfs + cmdline + manifest,
//! written into a staging directory beside the output and swapped into place in one step
//! (`fsutil::StagingDir`), so a failed or killed build leaves the previous output untouched
//! and nothing half-written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::apk::Arch;
use crate::fsutil;
use crate::install::{installed_db, unpack, Installer, PackageFile, Unpacked};
use crate::kernel;
use crate::output::esp::{self, GuestFiles};
use crate::output::guestdisk::{self, ImageSpec};
use crate::output::manifest::{KernelSummary, LockSummary, Manifest, OutputEntry, PackageSummary};
use crate::output::{bootinitrd, initrd, osrelease, squashfs};
use crate::overlay::{self, Generated};
use crate::profile::{OutputFormat, Profile, RootFormat};
use crate::report::{Phase, PhaseTimes, Phases};
use crate::session::{LockPolicy, Session};
use crate::tree::{ContentStore, StoreWriter, Tree};

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
    #[error(transparent)]
    #[serde(untagged)]
    Squashfs(#[from] crate::output::squashfs::SquashfsError),
    #[error(transparent)]
    #[serde(untagged)]
    BootInitrd(#[from] crate::output::bootinitrd::BootInitrdError),
}

type Result<T> = std::result::Result<T, BuildError>;

/// What to do about a full disk.
fn space_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "; the output is staged beside --out and needs room for every output at once (disk.img is as large as its partitions or output.disk_size_mib, sparse) — free space there or build with --out elsewhere"
        }
        _ => "",
    }
}

/// The checksum file every build writes; it lists every other output.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// The read-only root image of a profile with `output.root = "squashfs"`.
pub const ROOT_IMAGE: &str = "root.squashfs";

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
    /// How long each phase took (not part of any output).
    pub phases: PhaseTimes,
    /// The root image's blocks, with a squashfs root (not part of any output).
    pub root_blocks: Option<RootBlocks>,
}

/// How many blocks the root image has, and how many came from the block cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootBlocks {
    pub total: usize,
    pub cached: usize,
    /// The block cache's pack (none for `hyve verify`, which compresses every block).
    pub cache: Option<PathBuf>,
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
    /// Take the root image's blocks that the last build of the profile held from the cache
    /// (`output::blockcache`) rather than compressing them again. `hyve verify` does not:
    /// its rebuild compresses every block, so it checks the compressor too.
    pub block_cache: bool,
}

/// The locked packages, fetched and installed into a new tree: each is unpacked by the fetch
/// worker that has it in the cache, once a writer of the content store is free, while the
/// rest download, and installed in install order. Cached copies are not hashed by the
/// fetcher: `install::unpack` checks each file's pin in the same pass that unpacks it.
fn fetch_and_install(
    session: &Session,
    arch: Arch,
    section: &crate::lock::ArchLock,
    opts: &BuildOptions,
) -> Result<Installed> {
    let (cancel, reqs) = (&opts.cancel, session.locked_requests(arch, section, true)?);
    let store_error = fsutil::at(Path::new("content store"));
    let mut store = ContentStore::new().map_err(store_error)?;
    // Unpacking is all CPU: one writer per compression thread, and a worker unpacks only
    // while it holds one, so the largest package (fetched first) gets a whole CPU instead
    // of a share among every fetch worker's.
    let slots = (opts.workers as usize).clamp(1, session.fetcher.workers(reqs.len()));
    let writers = WriterPool::new(store.writers(slots).map_err(store_error)?);
    let mut tree = Tree::new();
    let mut installer = Installer::new(&mut tree, &mut store);
    session.fetcher.packages_each(
        &reqs,
        |i, cached| -> Result<Unpacked> {
            if cancel.is_cancelled() {
                return Err(BuildError::Interrupted);
            }
            let locked = &section.packages[i];
            let pkg = PackageFile {
                path: cached.path.clone(),
                q1: cached.q1,
                sha256: locked.sha256.clone(),
                installed_size: locked.installed_size,
            };
            let mut writer = writers.take((std::cmp::Reverse(locked.size), i));
            if cancel.is_cancelled() {
                return Err(BuildError::Interrupted);
            }
            Ok(unpack(&pkg, arch, &mut writer)?)
        },
        |_, _, unpacked| Ok(installer.install(unpacked)?),
    )?;
    let (packages, warnings) = installer.finish()?;
    Ok(Installed { tree, store, packages, warnings })
}

/// The content store's writers not in use.
struct WriterPool {
    state: Mutex<PoolState>,
    returned: Condvar,
}

/// Which package waits first for a writer: the largest (then the first in the lock).
type Priority = (std::cmp::Reverse<u64>, usize);

struct PoolState {
    free: Vec<StoreWriter>,
    waiting: BTreeSet<Priority>,
}

impl WriterPool {
    fn new(writers: Vec<StoreWriter>) -> Self {
        WriterPool {
            state: Mutex::new(PoolState { free: writers, waiting: BTreeSet::new() }),
            returned: Condvar::new(),
        }
    }

    /// A writer, once one is free and no larger package waits for one: the fetch workers
    /// outnumber the writers, and the order a writer went to the waiting workers in was the
    /// scheduler's, so a large package could start last and finish alone on one CPU.
    /// It goes back when dropped (also in a panic, so that no worker waits for it forever).
    fn take(&self, priority: Priority) -> PooledWriter<'_> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting.insert(priority);
        let mut state = (self.returned)
            .wait_while(state, |s| s.free.is_empty() || s.waiting.first() != Some(&priority))
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting.remove(&priority);
        let writer = state.free.pop();
        // The next in line may find another free writer.
        self.returned.notify_all();
        PooledWriter { pool: self, writer }
    }
}

struct PooledWriter<'a> {
    pool: &'a WriterPool,
    writer: Option<StoreWriter>,
}

impl std::ops::Deref for PooledWriter<'_> {
    type Target = StoreWriter;
    fn deref(&self) -> &StoreWriter {
        self.writer.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for PooledWriter<'_> {
    fn deref_mut(&mut self) -> &mut StoreWriter {
        self.writer.as_mut().expect("held until dropped")
    }
}

impl Drop for PooledWriter<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.free.extend(self.writer.take());
        self.pool.returned.notify_all();
    }
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
    let mut phases = Phases::new(session.fetcher.reporter());
    let (section, _) = session.ensure_lock(arch, opts.policy)?;
    let Installed { mut tree, mut store, packages: installed, mut warnings } =
        phases.run(Phase::Packages, 0, || install_locked(session, arch, &section, opts))?;
    let epoch =
        opts.source_date_epoch.unwrap_or_else(|| installed.iter().map(|p| p.info.build_date).max().unwrap_or(0));
    // A squashfs root needs the modules its boot initramfs loads, and may load the drivers of
    // other disk controllers the kernel has.
    let mut modules = profile.kernel_modules.clone();
    let mut optional = profile.kernel_optional_modules.clone();
    if profile.root == RootFormat::Squashfs {
        let missing = bootinitrd::ROOT_MODULES.iter().filter(|m| !modules.iter().any(|n| n == *m)).collect::<Vec<_>>();
        modules.extend(missing.into_iter().map(|m| m.to_string()));
        for m in bootinitrd::storage_modules() {
            if !optional.iter().any(|o| kernel::module_name(o) == m) {
                optional.push(m);
            }
        }
    }
    let kernel = phases.run(Phase::Modules, 0, || {
        kernel::prepare(&mut tree, &mut store, arch, &profile.kernel_package, &modules, &optional)
    })?;
    for m in kernel.builtin.iter().filter(|m| profile.kernel_modules.contains(m)) {
        warnings.push(format!("kernel module {m} is built into {}; nothing to include", profile.kernel_package));
    }
    let overlays = profile
        .overlays
        .iter()
        .map(|dir| overlay::apply_dir(&mut tree, &mut store, dir, epoch))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let guest = Guest {
        manifest: describe(session, arch, &section, &installed, &kernel, overlays, epoch)?,
        os_release: osrelease::os_release(&profile.name, &section.branch, epoch),
        kernel,
        epoch,
    };
    lay_generated_files(&mut tree, &mut store, profile, &guest, &installed)?;
    // Write everything beside the target, then swap it in.
    let staging = fsutil::StagingDir::beside(out).map_err(fsutil::at(out))?;
    let mut writer = OutputWriter { session, arch, opts, phases: &mut phases };
    let written = writer.write_all(staging.path(), &section, &guest, tree, store)?;
    warnings.extend(written.warnings);
    if profile.formats.contains(&OutputFormat::Lima) {
        write_lima_template(staging.path(), out, profile, arch, &written.outputs)?;
    }
    staging.commit().map_err(fsutil::at(out))?;
    let _ = written.freeing.join();
    Ok(BuildResult {
        dir: out.to_path_buf(),
        arch,
        source_date_epoch: epoch,
        packages: installed.len(),
        entries: written.entries,
        outputs: written.outputs,
        warnings,
        phases: phases.into_times(),
        root_blocks: written.root_blocks,
    })
}

/// Fetches and installs the locked packages; a cache entry that went bad since it was
/// verified has been removed by then, so it is fetched again and the tree started over
/// (once — a second failure is reported).
fn install_locked(
    session: &Session,
    arch: Arch,
    section: &crate::lock::ArchLock,
    opts: &BuildOptions,
) -> Result<Installed> {
    match fetch_and_install(session, arch, section, opts) {
        Err(BuildError::Install(crate::install::InstallError::CacheCorrupt { path, .. })) => {
            let mut again = fetch_and_install(session, arch, section, opts)?;
            again.warnings.insert(0, format!("discarded corrupt cache entry {path} and fetched it again"));
            Ok(again)
        }
        other => other,
    }
}

/// Where the block cache of the profile's root image for `arch` is kept: one pack per
/// profile and arch, so that building one does not discard another's blocks.
fn block_cache_path(session: &Session, arch: Arch) -> PathBuf {
    let name: String = (session.profile.name.chars())
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    session.fetcher.cache_dir().join("root-blocks").join(format!("{name}-{arch}.pack"))
}

/// The guest as it is described inside and beside itself.
struct Guest {
    manifest: Manifest,
    os_release: String,
    kernel: kernel::Kernel,
    epoch: u64,
}

/// The guest's manifest: profile, lock, kernel, packages and overlays (its outputs are
/// added once they are written).
fn describe(
    session: &Session,
    arch: Arch,
    section: &crate::lock::ArchLock,
    installed: &[crate::install::InstalledPackage],
    kernel: &kernel::Kernel,
    overlays: Vec<overlay::OverlaySummary>,
    epoch: u64,
) -> Result<Manifest> {
    let profile = &session.profile;
    let kernel_pkg = installed
        .iter()
        .find(|p| p.info.name == profile.kernel_package)
        .ok_or_else(|| BuildError::NoKernelPackage { arch, package: profile.kernel_package.clone() })?;
    let packages = section
        .packages
        .iter()
        .zip(installed)
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
    let lock_json = serde_json::to_vec(section).expect("a lock serializes");
    Ok(Manifest {
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
            modules: kernel.modules(),
            // The profile's own; the boot initramfs's storage drivers are the kernel's to have.
            optional_modules_missing: kernel
                .skipped
                .iter()
                .filter(|m| profile.kernel_optional_modules.iter().any(|o| kernel::module_name(o) == **m))
                .cloned()
                .collect(),
        },
        cmdline: cmdline(arch, &profile.cmdline),
        packages,
        overlays,
        outputs: Default::default(),
    })
}

/// The files hyve itself puts in the guest: mount points, hostname, os-release, the
/// manifest, apk's database and world, and the modules init loads.
fn lay_generated_files(
    tree: &mut Tree,
    store: &mut ContentStore,
    profile: &crate::profile::Profile,
    guest: &Guest,
    installed: &[crate::install::InstalledPackage],
) -> Result<()> {
    // What init modprobes: the profile's modules that are not built in (modprobe follows
    // modules.dep for the rest).
    let modules_to_load: String = profile
        .kernel_modules
        .iter()
        .chain(&profile.kernel_optional_modules)
        .map(|m| m.replace('-', "_"))
        .filter(|m| guest.kernel.graph.contains_key(m))
        .map(|m| m + "\n")
        .collect();
    let generated = [
        ("dev", Generated::Dir, 0o755),
        ("dev/console", Generated::CharDevice(5, 1), 0o600),
        ("proc", Generated::Dir, 0o555),
        ("sys", Generated::Dir, 0o555),
        ("run", Generated::Dir, 0o755),
        ("tmp", Generated::Dir, 0o1777),
        ("root", Generated::Dir, 0o700),
        ("etc/hostname", Generated::Text(format!("{}\n", profile.hostname)), 0o644),
        ("etc/os-release", Generated::Text(guest.os_release.clone()), 0o644),
        ("etc/hyve/manifest.json", Generated::Text(guest.manifest.to_json()), 0o644),
        ("lib/apk/db/installed", Generated::Text(installed_db(installed)), 0o644),
        ("etc/apk/world", Generated::Text(profile.world().join("\n") + "\n"), 0o644),
        ("etc/hyve/modules", Generated::Text(modules_to_load), 0o644),
    ];
    for (path, g, mode) in generated {
        overlay::put(tree, store, path, g, mode, guest.epoch)?;
    }
    Ok(())
}

/// `lima.yaml` into `dir` (the staging directory), naming `disk.img` where it will be once
/// `dir` becomes `out`. Outside `SHA256SUMS`: it holds this machine's path (`output::lima`).
fn write_lima_template(dir: &Path, out: &Path, profile: &Profile, arch: Arch, outputs: &[Artifact]) -> Result<()> {
    let disk = outputs.iter().find(|a| a.name == "disk.img").expect("formats with lima have disk (profile check)");
    let location = std::path::absolute(out).map_err(fsutil::at(out))?.join(&disk.name);
    let path = dir.join(crate::output::lima::LIMA_TEMPLATE);
    let text = crate::output::lima::template(&profile.name, arch, &location, &disk.sha256);
    std::fs::write(&path, text).map_err(fsutil::at(&path))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(fsutil::at(&path))?;
    Ok(())
}

/// What `OutputWriter::write_all` wrote.
struct Written {
    outputs: Vec<Artifact>,
    /// Initramfs entries (0 without one).
    entries: u64,
    root_blocks: Option<RootBlocks>,
    /// About the outputs (the block cache's), for `BuildResult::warnings`.
    warnings: Vec<String>,
    /// The thread freeing the tree and the content store.
    freeing: std::thread::JoinHandle<()>,
}

/// Writes the outputs of one build, timing its phases.
struct OutputWriter<'a, 'r> {
    session: &'a Session<'a>,
    arch: Arch,
    opts: &'a BuildOptions,
    phases: &'a mut Phases<'r>,
}

impl OutputWriter<'_, '_> {
    /// Every output the profile asks for, into `dir`: kernel, initrd.img, disk.img, cmdline,
    /// then manifest.json with their hashes, the SBOM and SHA256SUMS derived from it.
    fn write_all(
        &mut self,
        dir: &Path,
        section: &crate::lock::ArchLock,
        guest: &Guest,
        tree: Tree,
        mut store: ContentStore,
    ) -> Result<Written> {
        let (profile, arch, opts, reporter) = (&self.session.profile, self.arch, self.opts, self.phases.reporter());
        let cmdline = &guest.manifest.cmdline;
        let mut outputs = Vec::new();
        let kernel_sha256 = hex::encode(Sha256::digest(&guest.kernel.image));
        if profile.formats.contains(&OutputFormat::Kernel) {
            outputs.push(write_hashed_artifact(dir, "kernel", &guest.kernel.image, kernel_sha256.clone())?);
        }
        let (mut entries, mut root_blocks, mut warnings) = (0, None, Vec::new());
        let wants_disk = profile.formats.contains(&OutputFormat::Disk);
        let wants_initrd = profile.formats.contains(&OutputFormat::Initrd);
        let root_path = dir.join(ROOT_IMAGE);
        // The images made from the tree: root image, initramfs, and the disk's EFI stub.
        let mut images = None;
        if wants_initrd || wants_disk {
            // A squashfs root: the tree goes into the image, the initramfs only finds it.
            let boot_tree;
            let (initrd_tree, root_size) = if profile.root == RootFormat::Squashfs {
                let block_cache = opts.block_cache.then(|| block_cache_path(self.session, arch));
                let written = self.phases.run(Phase::Root, squashfs::input_bytes(&tree), || {
                    let settings = squashfs::Settings {
                        level: squashfs::DEFAULT_LEVEL,
                        epoch: guest.epoch,
                        cache: block_cache.as_deref(),
                    };
                    squashfs::write(&root_path, &tree, &store, settings, &opts.cancel, reporter)
                })?;
                boot_tree = bootinitrd::tree(&tree, &mut store, &guest.kernel, &written.superblock, guest.epoch)?;
                warnings.extend(written.warnings);
                root_blocks =
                    Some(RootBlocks { total: written.blocks, cached: written.blocks_cached, cache: written.cache });
                (&boot_tree, Some(written.size))
            } else {
                (&tree, None)
            };
            let initrd_path = dir.join("initrd.img");
            let settings = initrd::Settings {
                compression: profile.compression,
                level: profile.level,
                workers: opts.workers,
                epoch: guest.epoch,
            };
            // The root image is hashed while the initramfs is compressed (each on one CPU).
            let (written, root) = std::thread::scope(|s| -> Result<_> {
                let root_hash = root_size.map(|size| (size, s.spawn(|| fsutil::sha256_of_file(&root_path))));
                let written = self.phases.run(Phase::Initramfs, initrd::archive_bytes(initrd_tree), || {
                    initrd::write(&initrd_path, initrd_tree, &store, &settings, &opts.cancel, reporter)
                });
                let root = root_hash
                    .map(|(size, hashing)| {
                        let (sha256, _) = hashing.join().expect("hashing does not panic")?;
                        Ok::<_, BuildError>(Artifact { name: ROOT_IMAGE.into(), sha256, size })
                    })
                    .transpose()?;
                Ok((written?, root))
            })?;
            entries = written.entries;
            let initrd = Artifact { name: "initrd.img".into(), sha256: written.sha256, size: written.size };
            let stub = if wants_disk { Some(efi_stub(&tree, &store, arch)?) } else { None };
            images = Some((root, initrd, stub));
        }
        // Nothing below reads the tree or the store: they (files of hundreds of MB in the page
        // cache) are freed on a thread while the disk image is written and hashed.
        let freeing = std::thread::spawn(move || drop((tree, store)));
        if let Some((root, initrd, stub)) = images {
            if let Some(stub) = stub {
                let arch_name = arch.to_string();
                let mut seed: Vec<&str> =
                    vec![&section.inputs_hash, &arch_name, &profile.name, &kernel_sha256, &initrd.sha256, cmdline];
                seed.extend(root.as_ref().map(|r| r.sha256.as_str()));
                let root_file = root.as_ref().map(|r| (root_path.as_path(), r.size));
                outputs.push(self.write_disk_image(dir, guest, &stub, &initrd, root_file, &seed)?);
            }
            if wants_initrd {
                outputs.extend(root);
                outputs.push(initrd);
            } else {
                for artifact in root.iter().chain([&initrd]) {
                    let path = dir.join(&artifact.name);
                    std::fs::remove_file(&path).map_err(fsutil::at(&path))?;
                }
            }
        }
        outputs.push(write_artifact(dir, "cmdline", format!("{cmdline}\n").as_bytes())?);
        // The output manifest is the guest's plus the outputs' hashes; the SBOM and SHA256SUMS
        // are derived from it.
        let mut manifest = guest.manifest.clone();
        manifest.outputs =
            outputs.iter().map(|a| (a.name.clone(), OutputEntry { sha256: a.sha256.clone(), size: a.size })).collect();
        outputs.push(write_artifact(dir, "manifest.json", manifest.to_json().as_bytes())?);
        let kernel_sha = outputs.iter().find(|a| a.name == "kernel").map(|a| a.sha256.clone());
        let sbom = crate::output::spdx::spdx(&manifest, kernel_sha.as_deref());
        let sbom_text = serde_json::to_string_pretty(&sbom).expect("json") + "\n";
        outputs.push(write_artifact(dir, "sbom.spdx.json", sbom_text.as_bytes())?);
        let sums = crate::output::sums::sha256sums(outputs.iter().map(|a| (a.name.as_str(), a.sha256.as_str())));
        let sums_path = dir.join(SHA256SUMS);
        std::fs::write(&sums_path, sums).map_err(fsutil::at(&sums_path))?;
        for entry in std::fs::read_dir(dir).map_err(fsutil::at(dir))? {
            let p = entry.map_err(fsutil::at(dir))?.path();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(fsutil::at(&p))?;
        }
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(fsutil::at(dir))?;
        Ok(Written { outputs, entries, root_blocks, warnings, freeing })
    }

    /// `disk.img` in `dir`, on the systemd EFI stub the packages installed (`output::guestdisk`),
    /// with `initrd` already written in `dir`.
    fn write_disk_image(
        &mut self,
        dir: &Path,
        guest: &Guest,
        stub: &[u8],
        initrd: &Artifact,
        root: Option<(&Path, u64)>,
        seed: &[&str],
    ) -> Result<Artifact> {
        let (profile, arch, reporter) = (&self.session.profile, self.arch, self.phases.reporter());
        let initrd_path = dir.join(&initrd.name);
        let open_initrd = || -> std::io::Result<Box<dyn std::io::Read>> {
            let file = std::fs::File::open(&initrd_path)?;
            Ok(Box::new(self.opts.cancel.wrap(std::io::BufReader::new(file))))
        };
        let files = GuestFiles {
            profile: &profile.name,
            arch,
            kernel: &guest.kernel.image,
            kernel_version: &guest.manifest.kernel.version,
            cmdline: &guest.manifest.cmdline,
            os_release: &guest.os_release,
            open_initrd: &open_initrd,
            initrd_len: initrd.size,
        };
        let spec = ImageSpec {
            size_mib: profile.disk_size_mib,
            root,
            data_mib: profile.data_partition_mib,
            stub,
            seed_parts: seed,
            epoch: guest.epoch,
        };
        let image = guestdisk::Plan::new(&files, &spec)?;
        let path = dir.join("disk.img");
        self.phases.run(Phase::Disk, image.esp_bytes(), || image.write(&path, reporter))?;
        let (sha256, size) = fsutil::sha256_of_file(&path)?;
        Ok(Artifact { name: "disk.img".into(), sha256, size })
    }
}

/// The systemd EFI stub the packages installed, which the disk image's UKI is built on.
fn efi_stub(tree: &Tree, store: &ContentStore, arch: Arch) -> Result<Vec<u8>> {
    let stub_path = esp::stub_path(arch);
    match tree.file(&stub_path) {
        Some(blob) => Ok(store.read_all(blob).map_err(fsutil::at(Path::new(&stub_path)))?),
        None => Err(BuildError::NoEfiStub { arch, path: stub_path, package: crate::profile::EFI_STUB_PACKAGE }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers go to the largest package waiting, not to whichever thread wakes first.
    #[test]
    fn a_returned_writer_goes_to_the_largest_package_waiting() {
        let mut store = ContentStore::new().unwrap();
        let pool = WriterPool::new(store.writers(1).unwrap());
        let held = pool.take((std::cmp::Reverse(0), 0));
        let order = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (i, size) in [(1, 10u64), (2, 30), (3, 20), (4, 30)] {
                let (pool, order) = (&pool, &order);
                s.spawn(move || {
                    let _writer = pool.take((std::cmp::Reverse(size), i));
                    order.lock().unwrap().push(i);
                });
            }
            while pool.state.lock().unwrap().waiting.len() < 4 {
                std::thread::yield_now();
            }
            drop(held);
        });
        // The largest first; of two the same size, the first in the lock.
        assert_eq!(*order.lock().unwrap(), [2, 4, 3, 1]);
    }

    #[test]
    fn console_per_arch() {
        assert_eq!(cmdline(Arch::X86_64, "panic=-1 quiet"), "console=ttyS0 console=hvc0 panic=-1 quiet");
        assert_eq!(cmdline(Arch::Aarch64, ""), "console=ttyAMA0 console=hvc0");
    }
}
