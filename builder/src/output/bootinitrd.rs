//! The boot initramfs of a guest whose root is a SquashFS image (`output.root =
//! "squashfs"`): the static busybox, the modules that reach the image (decompressed, so
//! busybox's `insmod` needs no codec), the image's superblock, and `/init` — overlay/base's
//! `usr/libexec/hyve/init-squashfs` — which finds the block device that starts with that
//! superblock, mounts it read-only under a tmpfs overlay and switches to it. Everything else
//! stays in the image, read from disk on demand instead of held in RAM.

use crate::kernel::{self, Kernel};
use crate::overlay::{self, Generated};
use crate::tree::{ContentStore, Tree};

/// What `/init` loads, in this order with their dependencies first, where the kernel has them
/// as modules: the PCI transport (built into Alpine's linux-virt), the disk, the image's file
/// system and the overlay.
pub const ROOT_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "squashfs", "overlay"];
/// Drivers for disks on other controllers than virtio-blk (UTM, or QEMU set up by hand, may
/// attach `disk.img` or the root image to NVMe, SATA or virtio-scsi), where the kernel has them
/// as modules: in Alpine's linux-virt (aports main/linux-lts/virt.x86_64.config and
/// virt.aarch64.config at 0130e7ac) `nvme`, `sd_mod` and `virtio_scsi` are modules on both
/// arches and `ahci` on aarch64 (built in on x86_64). `/init` loads a controller's drivers only
/// when the PCI bus has such a controller (by PCI class, or virtio device id, in INIT_SCRIPT)
/// and the root is not on the disks it already sees.
pub const STORAGE_MODULES: [(&str, &[&str]); 3] =
    [("nvme", &["nvme"]), ("ahci", &["ahci", "sd_mod"]), ("virtio-scsi", &["virtio_scsi", "sd_mod"])];
/// The stage-1 script in the full tree that becomes `/init`.
pub const INIT_SCRIPT: &str = "usr/libexec/hyve/init-squashfs";
/// Alpine's busybox-static: the boot initramfs has no libc.
pub const BUSYBOX_STATIC: &str = "bin/busybox.static";
/// Where `/init` reads the root image's superblock, its module list and, a line per controller,
/// the storage drivers to load when it finds that controller ("nvme nvme_core nvme").
const SUPERBLOCK_FILE: &str = "etc/hyve/root.superblock";
const MODULES_FILE: &str = "etc/hyve/root-modules";
const STORAGE_MODULES_FILE: &str = "etc/hyve/storage-modules";

/// Every module `STORAGE_MODULES` names, for `kernel::prepare` to include where it can.
pub fn storage_modules() -> Vec<String> {
    let mut all: Vec<String> = STORAGE_MODULES.iter().flat_map(|(_, m)| m.iter().map(|m| m.to_string())).collect();
    all.sort();
    all.dedup();
    all
}

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootInitrdError {
    /// The full tree lacks a file the boot initramfs is made of.
    #[error("output.root = \"squashfs\" needs /{path} in the guest ({why}); {fix}")]
    Missing { path: &'static str, why: &'static str, fix: &'static str },
    #[error(transparent)]
    #[serde(untagged)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    #[serde(untagged)]
    Overlay(#[from] overlay::OverlayError),
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

/// The boot initramfs for the root image whose first bytes are `superblock`, made from
/// `full` (the guest's tree) and its kernel's modules.
pub fn tree(
    full: &Tree,
    store: &mut ContentStore,
    kernel: &Kernel,
    superblock: &[u8],
    epoch: u64,
) -> Result<Tree, BootInitrdError> {
    let blob_of = |path: &'static str, why: &'static str, fix: &'static str| {
        full.file(path).ok_or(BootInitrdError::Missing { path, why, fix })
    };
    let init = blob_of(INIT_SCRIPT, "the boot initramfs's /init", "add overlay/base to the profile's overlays")?;
    let busybox =
        blob_of(BUSYBOX_STATIC, "the boot initramfs has no libc", "add the busybox-static package to the profile")?;
    let order = kernel.load_order(&ROOT_MODULES);
    // A controller's drivers and what they need, less what the root's own modules bring; none
    // for a controller whose own driver (the first) the kernel has neither as a module nor
    // built in.
    let storage: Vec<(&str, Vec<String>)> = STORAGE_MODULES
        .iter()
        .filter(|(_, names)| kernel.graph.contains_key(names[0]) || kernel.builtin.iter().any(|b| b == names[0]))
        .map(|(controller, names)| {
            (*controller, kernel.load_order(names).into_iter().filter(|m| !order.contains(m)).collect::<Vec<_>>())
        })
        .filter(|(_, modules)| !modules.is_empty())
        .collect();
    let included: std::collections::BTreeSet<&String> =
        order.iter().chain(storage.iter().flat_map(|(_, modules)| modules)).collect();
    let mut boot = Tree::new();
    let dirs = ["bin", "dev", "etc", "etc/hyve", "lib", "lib/modules", "proc", "sys"];
    for dir in dirs {
        let mode = if matches!(dir, "proc" | "sys") { 0o555 } else { 0o755 };
        overlay::put(&mut boot, store, dir, Generated::Dir, mode, epoch)?;
    }
    let release = kernel.release.as_deref().unwrap_or_default();
    for name in included {
        let path = format!("lib/modules/{release}/{}", kernel.graph[name].path);
        let blob = full.file(&path).expect("an included module is a file in the tree");
        let compressed = store.read_all(blob).map_err(crate::fsutil::at_named(&path))?;
        let elf = kernel::decompress_module(&compressed, &path)?;
        overlay::put(&mut boot, store, &format!("lib/modules/{name}.ko"), Generated::Bytes(elf), 0o644, epoch)?;
    }
    let files = [
        ("init", Generated::Blob(init), 0o755),
        ("bin/busybox", Generated::Blob(busybox), 0o755),
        ("dev/console", Generated::CharDevice(5, 1), 0o600),
        (MODULES_FILE, Generated::Text(order.iter().map(|m| format!("{m}\n")).collect()), 0o644),
        (
            STORAGE_MODULES_FILE,
            Generated::Text(storage.iter().map(|(c, modules)| format!("{c} {}\n", modules.join(" "))).collect()),
            0o644,
        ),
        (SUPERBLOCK_FILE, Generated::Bytes(superblock.to_vec()), 0o644),
    ];
    for (path, kind, mode) in files {
        overlay::put(&mut boot, store, path, kind, mode, epoch)?;
    }
    Ok(boot)
}
