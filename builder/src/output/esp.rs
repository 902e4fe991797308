//! What goes on a guest disk's EFI system partition, and where: the Unified Kernel Image at
//! the removable-media boot path firmware looks for (`\EFI\BOOT\BOOTX64.EFI`,
//! `\EFI\BOOT\BOOTAA64.EFI`; UEFI 2.10 §3.5.1.1), and for systemd-boot the kernel, the
//! initrd and a Boot Loader Specification entry. `disk` and `fat` write these files; this
//! module only names them.

use std::io::Write;

use super::uki::UkiLayout;
use crate::apk::Arch;

/// Writes one file's bytes (exactly its announced size).
pub type WriteContent<'a> = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + 'a>;

/// A file for the ESP: its path (`/`-separated), size, and how to write its bytes.
pub struct EspFile<'a> {
    pub path: String,
    pub size: u64,
    pub write: WriteContent<'a>,
}

/// The systemd EFI stub a UKI for `arch` is built on, as its package installs it.
pub fn stub_path(arch: Arch) -> String {
    let stub = match arch {
        Arch::X86_64 => "linuxx64.efi.stub",
        Arch::Aarch64 => "linuxaa64.efi.stub",
    };
    format!("usr/lib/systemd/boot/efi/{stub}")
}

/// The removable-media boot path firmware starts without any boot entry.
pub fn boot_path(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
        Arch::Aarch64 => "EFI/BOOT/BOOTAA64.EFI",
    }
}

/// What the disk image carries of the guest.
pub struct GuestFiles<'a> {
    pub profile: &'a str,
    pub arch: Arch,
    pub kernel: &'a [u8],
    pub kernel_version: &'a str,
    pub cmdline: &'a str,
    pub os_release: &'a str,
    /// Opens the initrd (read twice: into the UKI and as a file of its own).
    pub open_initrd: &'a dyn Fn() -> std::io::Result<Box<dyn std::io::Read + 'a>>,
    pub initrd_len: u64,
}

impl GuestFiles<'_> {
    /// The UKI's sections in the order systemd's ukify writes them, with their lengths.
    pub fn uki_sections(&self) -> [(&'static str, u64); 4] {
        [
            (".osrel", self.os_release.len() as u64),
            (".cmdline", self.cmdline.len() as u64),
            (".initrd", self.initrd_len),
            (".linux", self.kernel.len() as u64),
        ]
    }

    /// The Boot Loader Specification entry (type 1) for systemd-boot.
    pub fn bls_entry(&self) -> String {
        format!(
            "title hyve {name} ({arch})\nversion {version}\nlinux /hyve/kernel\ninitrd /hyve/initrd.img\noptions {cmdline}\n",
            name = self.profile,
            arch = self.arch,
            version = self.kernel_version,
            cmdline = self.cmdline,
        )
    }

    /// The ESP's files: the UKI (laid out by `uki`), the kernel, the initrd, the entry.
    pub fn esp_files<'a>(&'a self, uki: &'a UkiLayout) -> Vec<EspFile<'a>> {
        let entry = self.bls_entry();
        vec![
            EspFile {
                path: boot_path(self.arch).into(),
                size: uki.size(),
                write: Box::new(move |w: &mut dyn Write| {
                    let mut initrd = (self.open_initrd)()?;
                    let (mut osrel, mut cmdline, mut linux) =
                        (self.os_release.as_bytes(), self.cmdline.as_bytes(), self.kernel);
                    let mut w = w;
                    uki.write(
                        &mut w,
                        vec![
                            (".osrel", &mut osrel),
                            (".cmdline", &mut cmdline),
                            (".initrd", &mut initrd),
                            (".linux", &mut linux),
                        ],
                    )
                    .map_err(std::io::Error::other)
                }),
            },
            EspFile {
                path: "hyve/kernel".into(),
                size: self.kernel.len() as u64,
                write: Box::new(|w: &mut dyn Write| w.write_all(self.kernel)),
            },
            EspFile {
                path: "hyve/initrd.img".into(),
                size: self.initrd_len,
                write: Box::new(|w: &mut dyn Write| std::io::copy(&mut (self.open_initrd)()?, w).map(|_| ())),
            },
            EspFile {
                path: "loader/entries/hyve.conf".into(),
                size: entry.len() as u64,
                write: Box::new(move |w: &mut dyn Write| w.write_all(entry.as_bytes())),
            },
        ]
    }
}
