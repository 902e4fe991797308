//! Command lines that boot an output directory in each VMM hyve targets, and the choice of
//! accelerator. Only QEMU is started by hyve itself; vfkit, hyperkit and xhyve command lines
//! are printed for macOS hosts.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::apk::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    Vfkit,
    Hyperkit,
    Xhyve,
}

impl std::str::FromStr for Vmm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "qemu" => Vmm::Qemu,
            "vfkit" => Vmm::Vfkit,
            "hyperkit" => Vmm::Hyperkit,
            "xhyve" => Vmm::Xhyve,
            _ => return Err(format!("unknown VMM {s:?}: expected qemu, vfkit, hyperkit or xhyve")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
    Hvf,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Accel::Auto,
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            "hvf" => Accel::Hvf,
            _ => return Err(format!("unknown accelerator {s:?}: expected auto, kvm, tcg or hvf")),
        })
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Hvf => "hvf",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{dir}: not a hyve output directory ({detail}); run `hyve build` first")]
    NotAnOutput { dir: String, detail: String },
    #[error("{vmm} cannot boot {arch} guests; use {hint}")]
    WrongArch { vmm: &'static str, arch: Arch, hint: &'static str },
    #[error("--port {0:?}: expected HOST:GUEST, e.g. 2376:2376")]
    BadPort(String),
    #[error("{vmm} cannot boot the EFI disk image here; use qemu or vfkit")]
    NoEfi { vmm: &'static str },
}

/// An output directory to boot.
#[derive(Debug, Clone)]
pub struct Guest {
    pub dir: PathBuf,
    pub arch: Arch,
    pub cmdline: String,
}

impl Guest {
    pub fn open(dir: &Path) -> Result<Guest, VmmError> {
        let bad = |detail: String| VmmError::NotAnOutput { dir: dir.display().to_string(), detail };
        for f in ["kernel", "initrd.img", "cmdline", "manifest.json"] {
            if !dir.join(f).is_file() {
                return Err(bad(format!("no {f}")));
            }
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(format!("manifest.json: {e}")))?;
        let arch = manifest["arch"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad("manifest.json has no arch".into()))?;
        let cmdline = std::fs::read_to_string(dir.join("cmdline")).map_err(|e| bad(e.to_string()))?.trim().to_string();
        Ok(Guest { dir: dir.to_path_buf(), arch, cmdline })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A host port forwarded to a guest port (TCP, bound to 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for PortForward {
    type Err = VmmError;
    fn from_str(s: &str) -> Result<Self, VmmError> {
        let (h, g) = s.split_once(':').ok_or_else(|| VmmError::BadPort(s.into()))?;
        Ok(PortForward {
            host: h.parse().map_err(|_| VmmError::BadPort(s.into()))?,
            guest: g.parse().map_err(|_| VmmError::BadPort(s.into()))?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub ports: Vec<PortForward>,
    /// Raw disks, in order (vda, vdb, ...).
    pub disks: Vec<PathBuf>,
    /// Appended to the output's cmdline.
    pub append: Option<String>,
    /// QEMU's human monitor on this unix socket (how `hyve run` presses the power button).
    pub monitor: Option<PathBuf>,
    /// A unix socket `hyve run` listens on, which QEMU connects to the guest's
    /// virtio-serial port `org.hyve.control` (how `hyve run` asks any guest to power off).
    pub control: Option<PathBuf>,
    /// Boot `disk.img` through UEFI firmware instead of the kernel directly.
    pub efi: Option<Firmware>,
}

/// The name of the guest's virtio-serial port for host requests (overlay/base's
/// `03-host-control` service reads `poweroff` there).
pub const CONTROL_PORT: &str = "org.hyve.control";

/// UEFI firmware for QEMU: the read-only code and a writable copy of the variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Where Debian's `ovmf` / `qemu-efi-aarch64` (and Fedora's edk2) put the firmware:
/// (code, variable-store template).
pub fn firmware_candidates(arch: Arch) -> &'static [(&'static str, &'static str)] {
    match arch {
        Arch::X86_64 => &[
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
            ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
            ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ],
        Arch::Aarch64 => &[
            ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
            ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
        ],
    }
}

/// Whether KVM can really run a guest here: `/dev/kvm` must open read-write, and on x86 the
/// CPU must offer vmx or svm. (Some machines expose `/dev/kvm` from a paravirtual nested
/// hypervisor that cannot run stock kernels; they have neither flag.)
pub fn kvm_usable(arch: Arch) -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    match arch {
        Arch::X86_64 => std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| {
                c.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(false),
        Arch::Aarch64 => true,
    }
}

/// `Auto` becomes hvf on macOS, KVM where it works for a same-arch guest, TCG otherwise.
pub fn resolve_accel(requested: Accel, guest: Arch) -> Accel {
    if requested != Accel::Auto {
        return requested;
    }
    if Arch::host() != Some(guest) {
        return Accel::Tcg;
    }
    if cfg!(target_os = "macos") {
        Accel::Hvf
    } else if kvm_usable(guest) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

fn cmdline(guest: &Guest, opts: &RunOptions) -> String {
    match &opts.append {
        Some(extra) if !extra.trim().is_empty() => format!("{} {}", guest.cmdline, extra.trim()),
        _ => guest.cmdline.clone(),
    }
}

/// The argv that boots `guest` in `vmm` (`opts.accel` must be resolved for QEMU).
pub fn command(vmm: Vmm, guest: &Guest, opts: &RunOptions) -> Result<Vec<String>, VmmError> {
    let cmd = cmdline(guest, opts);
    let (kernel, initrd, disk) = (guest.file("kernel"), guest.file("initrd.img"), guest.file("disk.img"));
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    match vmm {
        Vmm::Qemu => {
            let (binary, machine, cpu) = match (guest.arch, opts.accel) {
                (Arch::X86_64, Accel::Tcg) => ("qemu-system-x86_64", "pc", "qemu64"),
                (Arch::X86_64, _) => ("qemu-system-x86_64", "pc", "host"),
                // cortex-a57 under TCG: `-cpu max` is about 4x slower to boot.
                (Arch::Aarch64, Accel::Tcg) => ("qemu-system-aarch64", "virt", "cortex-a57"),
                (Arch::Aarch64, _) => ("qemu-system-aarch64", "virt", "host"),
            };
            let nic = std::iter::once("user,model=virtio-net-pci".to_string())
                .chain(opts.ports.iter().map(|p| format!("hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest)))
                .collect::<Vec<_>>()
                .join(",");
            push(&[binary, "-M", machine, "-accel", &opts.accel.to_string(), "-cpu", cpu]);
            push(&["-m", &opts.memory_mib.to_string(), "-smp", &opts.cpus.to_string()]);
            match &opts.efi {
                Some(fw) => {
                    push(&["-drive", &format!("if=pflash,format=raw,readonly=on,file={}", fw.code.display())]);
                    push(&["-drive", &format!("if=pflash,format=raw,file={}", fw.vars.display())]);
                    push(&["-drive", &format!("file={disk},format=raw,if=virtio")]);
                }
                None => push(&["-kernel", &kernel, "-initrd", &initrd, "-append", &cmd]),
            }
            push(&["-nographic", "-no-reboot", "-nic", &nic, "-device", "virtio-rng-pci"]);
            for d in &opts.disks {
                push(&["-drive", &format!("file={},format=raw,if=virtio", d.display())]);
            }
            if let Some(m) = &opts.monitor {
                push(&["-monitor", &format!("unix:{},server=on,wait=off", m.display())]);
            }
            if let Some(c) = &opts.control {
                push(&["-device", "virtio-serial-pci,id=hyve-serial"]);
                push(&["-chardev", &format!("socket,id=hyve-control,path={}", c.display())]);
                push(&[
                    "-device",
                    &format!("virtserialport,bus=hyve-serial.0,chardev=hyve-control,name={CONTROL_PORT}"),
                ]);
            }
        }
        Vmm::Vfkit => {
            push(&["vfkit", "--cpus", &opts.cpus.to_string(), "--memory", &opts.memory_mib.to_string()]);
            match &opts.efi {
                Some(fw) => {
                    push(&["--bootloader", &format!("efi,variable-store={},create", fw.vars.display())]);
                    push(&["--device", &format!("virtio-blk,path={disk}")]);
                }
                None => push(&["--bootloader", &format!("linux,kernel={kernel},initrd={initrd},cmdline=\"{cmd}\"")]),
            }
            push(&["--device", "virtio-serial,stdio", "--device", "virtio-net,nat", "--device", "virtio-rng"]);
            push(&["--device", "virtio-vsock,port=2375,socketURL=/tmp/hyve-docker.sock,connect"]);
            for d in &opts.disks {
                push(&["--device", &format!("virtio-blk,path={}", d.display())]);
            }
        }
        Vmm::Hyperkit | Vmm::Xhyve => {
            let name = if vmm == Vmm::Hyperkit { "hyperkit" } else { "xhyve" };
            if guest.arch != Arch::X86_64 {
                return Err(VmmError::WrongArch { vmm: name, arch: guest.arch, hint: "vfkit or qemu" });
            }
            if opts.efi.is_some() {
                return Err(VmmError::NoEfi { vmm: name });
            }
            push(&[name, "-A", "-m", &format!("{}M", opts.memory_mib), "-c", &opts.cpus.to_string()]);
            push(&[
                "-s",
                "0:0,hostbridge",
                "-s",
                "31,lpc",
                "-l",
                "com1,stdio",
                "-s",
                "2:0,virtio-net",
                "-s",
                "3:0,virtio-rnd",
            ]);
            // The Docker API's vsock port is reached through hyperkit's socket directory.
            push(&["-s", "4:0,virtio-sock,guest_cid=3,path=/tmp/hyve-vsock"]);
            for (slot, d) in (5..).zip(&opts.disks) {
                push(&["-s", &format!("{slot}:0,virtio-blk,{}", d.display())]);
            }
            push(&["-f", &format!("kexec,{kernel},{initrd},\"{cmd}\"")]);
        }
    }
    Ok(a)
}

/// Quotes an argv for a POSIX shell.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(arch: Arch) -> Guest {
        Guest { dir: PathBuf::from("/o"), arch, cmdline: "console=hvc0 console=ttyS0 quiet".into() }
    }

    fn opts() -> RunOptions {
        RunOptions {
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            ports: vec!["2376:2376".parse().unwrap()],
            disks: vec![],
            append: Some("hyve.poweroff".into()),
            monitor: None,
            control: None,
            efi: None,
        }
    }

    #[test]
    fn qemu_lines() {
        let a = shell_line(&command(Vmm::Qemu, &guest(Arch::X86_64), &opts()).unwrap());
        assert_eq!(a, "qemu-system-x86_64 -M pc -accel tcg -cpu qemu64 -m 1024 -smp 2 -kernel /o/kernel -initrd /o/initrd.img -append 'console=hvc0 console=ttyS0 quiet hyve.poweroff' -nographic -no-reboot -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2376-:2376 -device virtio-rng-pci");
        let a = shell_line(&command(Vmm::Qemu, &guest(Arch::Aarch64), &opts()).unwrap());
        assert!(a.starts_with("qemu-system-aarch64 -M virt -accel tcg -cpu cortex-a57"), "{a}");
        assert!(!a.contains("virtserialport"), "no control port unless hyve run listens: {a}");
        let with_control = RunOptions { control: Some("/run/c.sock".into()), ..opts() };
        let a = shell_line(&command(Vmm::Qemu, &guest(Arch::Aarch64), &with_control).unwrap());
        assert!(a.ends_with("-device virtio-serial-pci,id=hyve-serial -chardev socket,id=hyve-control,path=/run/c.sock -device virtserialport,bus=hyve-serial.0,chardev=hyve-control,name=org.hyve.control"), "{a}");
    }

    #[test]
    fn macos_vmms() {
        let a = shell_line(&command(Vmm::Vfkit, &guest(Arch::Aarch64), &opts()).unwrap());
        assert!(a.contains("--bootloader 'linux,kernel=/o/kernel,initrd=/o/initrd.img,cmdline=\"console=hvc0"), "{a}");
        let a = shell_line(&command(Vmm::Hyperkit, &guest(Arch::X86_64), &opts()).unwrap());
        assert!(a.starts_with("hyperkit -A -m 1024M -c 2") && a.contains("kexec,/o/kernel,/o/initrd.img"), "{a}");
        assert!(command(Vmm::Xhyve, &guest(Arch::Aarch64), &opts()).unwrap_err().to_string().contains("vfkit"));
        assert!("2376".parse::<PortForward>().is_err());
    }

    #[test]
    fn efi_boot_lines() {
        let fw = Firmware { code: "/fw/CODE.fd".into(), vars: "/run/VARS.fd".into() };
        let efi = RunOptions { efi: Some(fw), ..opts() };
        let a = shell_line(&command(Vmm::Qemu, &guest(Arch::X86_64), &efi).unwrap());
        assert!(a.contains("-drive if=pflash,format=raw,readonly=on,file=/fw/CODE.fd -drive if=pflash,format=raw,file=/run/VARS.fd -drive file=/o/disk.img,format=raw,if=virtio"), "{a}");
        assert!(!a.contains("-kernel"), "{a}");
        let a = shell_line(&command(Vmm::Vfkit, &guest(Arch::Aarch64), &efi).unwrap());
        assert!(
            a.contains("--bootloader efi,variable-store=/run/VARS.fd,create --device virtio-blk,path=/o/disk.img"),
            "{a}"
        );
        assert!(command(Vmm::Hyperkit, &guest(Arch::X86_64), &efi).is_err());
    }

    #[test]
    fn accel_resolution() {
        assert_eq!(resolve_accel(Accel::Tcg, Arch::X86_64), Accel::Tcg);
        let other = if Arch::host() == Some(Arch::X86_64) { Arch::Aarch64 } else { Arch::X86_64 };
        assert_eq!(resolve_accel(Accel::Auto, other), Accel::Tcg, "a foreign arch is always emulated");
    }
}
