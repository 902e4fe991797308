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

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VmmError {
    #[error("{dir}: not a hyve output directory ({detail}); run `hyve build` first")]
    NotAnOutput { dir: String, detail: String },
    #[error("{vmm} cannot boot {arch} guests; use {hint}")]
    WrongArch { vmm: &'static str, arch: Arch, hint: &'static str },
    #[error("--port {given:?}: expected HOST:GUEST, e.g. 2376:2376")]
    BadPort { given: String },
    #[error("{vmm} cannot boot the EFI disk image here; use qemu or vfkit")]
    NoEfi { vmm: &'static str },
    #[error("no UEFI firmware for {arch} guests in QEMU; install it (Debian: apt-get install ovmf qemu-efi-aarch64; macOS: brew install qemu) or pass --firmware")]
    NoFirmware { arch: Arch },
    #[error("--rosetta: {why}")]
    Rosetta { why: String },
    /// A path (the output, a disk image, the state directory) this VMM cannot take.
    #[error("{path}: {vmm} splits its options on commas, with no escape, and this path has one; move or rename it")]
    CommaInPath { path: String, vmm: &'static str },
    /// A folder share this VMM or boot path cannot carry.
    #[error("--share {share}: {why}")]
    Share { share: String, why: String },
    /// More disks than this VMM has PCI slots left for.
    #[error("{count} disks ({what}), but {vmm} has PCI slots for {max}; attach fewer with --disk")]
    TooManyDisks { vmm: &'static str, count: usize, what: &'static str, max: usize },
}

/// An output directory to boot.
#[derive(Debug, Clone)]
pub struct Guest {
    pub dir: PathBuf,
    pub arch: Arch,
    pub cmdline: String,
    /// `root.squashfs`, when the guest's root is that image: direct kernel boot attaches it as
    /// a read-only disk (disk.img carries it as a partition).
    pub root: Option<RootImage>,
}

/// The root image an output's manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootImage {
    pub path: PathBuf,
    /// Its size in the manifest.
    pub size: u64,
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
        let root = manifest["outputs"][crate::build::ROOT_IMAGE]["size"]
            .as_u64()
            .map(|size| RootImage { path: dir.join(crate::build::ROOT_IMAGE), size });
        Ok(Guest { dir: dir.to_path_buf(), arch, cmdline, root })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// For a direct kernel boot: the root image the manifest lists must be there, whole, or the
    /// guest would wait for its root and stop in its boot initramfs. (An EFI boot reads the
    /// root from disk.img's partition.)
    pub fn check_root(&self) -> Result<(), VmmError> {
        let Some(RootImage { path, size }) = &self.root else { return Ok(()) };
        let name = crate::build::ROOT_IMAGE;
        let found = std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len());
        let detail = match found {
            Some(len) if len == *size => return Ok(()),
            Some(len) => format!("{name} is {len} bytes, manifest.json says {size}: copy it again"),
            None => format!("no {name}, which manifest.json lists: copy it beside kernel and initrd.img"),
        };
        Err(VmmError::NotAnOutput { dir: self.dir.display().to_string(), detail })
    }
}

/// RAM a guest's own boot needs besides its root: the kernel, page tables, and the services
/// before anything the user runs.
pub const KERNEL_RESERVE_MIB: u64 = 128;

/// What a guest's initramfs costs in RAM while it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeeded {
    /// The unpacked initramfs: an initramfs root lives on a tmpfs for the life of the VM (a
    /// root image's boot initramfs is a few MiB).
    pub root_mib: u64,
    /// The compressed image, which the kernel holds while it unpacks it.
    pub initrd_mib: u64,
}

impl MemoryNeeded {
    pub fn total_mib(&self) -> u64 {
        self.root_mib + self.initrd_mib + KERNEL_RESERVE_MIB
    }
}

/// Reads `guest`'s initrd through to learn how much RAM its root takes.
pub fn memory_needed(guest: &Guest) -> Result<MemoryNeeded, VmmError> {
    let path = guest.dir.join("initrd.img");
    let bad = |e: std::io::Error| VmmError::NotAnOutput {
        dir: guest.dir.display().to_string(),
        detail: format!("initrd.img: {e}"),
    };
    let file = std::fs::File::open(&path).map_err(bad)?;
    let compressed = file.metadata().map_err(bad)?.len();
    let mut reader = crate::output::compress::decompressor(std::io::BufReader::new(file)).map_err(bad)?;
    let unpacked = std::io::copy(&mut reader, &mut std::io::sink()).map_err(bad)?;
    let mib = |b: u64| b.div_ceil(1 << 20);
    Ok(MemoryNeeded { root_mib: mib(unpacked), initrd_mib: mib(compressed) })
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
        let (h, g) = s.split_once(':').ok_or_else(|| VmmError::BadPort { given: s.into() })?;
        Ok(PortForward {
            host: h.parse().map_err(|_| VmmError::BadPort { given: s.into() })?,
            guest: g.parse().map_err(|_| VmmError::BadPort { given: s.into() })?,
        })
    }
}

/// A host folder the guest mounts at boot (`--share HOSTDIR[:GUESTDIR]`), over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// An absolute path to a directory on the host.
    pub host: PathBuf,
    /// Where the guest mounts it: GUESTDIR, else (empty until [`Share::resolve`]) the host's
    /// own path, so that `docker run -v "$PWD":/src` names the same folder on both sides (as
    /// Docker Desktop shares /Users).
    pub guest: String,
}

impl Share {
    /// The host folder made absolute (it must exist), and the guest's path filled in.
    pub fn resolve(self) -> Result<Share, VmmError> {
        let bad = |why: String| VmmError::Share { share: self.host.display().to_string(), why };
        let host = std::fs::canonicalize(&self.host).map_err(|e| bad(e.to_string()))?;
        if !host.is_dir() {
            return Err(bad("not a directory".into()));
        }
        let guest = if self.guest.is_empty() {
            host.to_str().ok_or_else(|| bad("the path is not UTF-8; give GUESTDIR".into()))?.to_string()
        } else {
            self.guest
        };
        Ok(Share { host, guest })
    }
}

impl std::str::FromStr for Share {
    type Err = VmmError;
    fn from_str(s: &str) -> Result<Self, VmmError> {
        let bad = |why: &str| VmmError::Share { share: s.into(), why: why.into() };
        let (host, guest) = s.split_once(':').unwrap_or((s, ""));
        if host.is_empty() || (!guest.is_empty() && (!guest.starts_with('/') || guest.split('/').any(|c| c == ".."))) {
            return Err(bad("expected HOSTDIR[:GUESTDIR], GUESTDIR absolute (default: HOSTDIR's own path)"));
        }
        Ok(Share { host: host.into(), guest: guest.into() })
    }
}

/// The virtio-fs tag of the `i`th share (the guest mounts by tag; at most 36 bytes).
pub fn share_tag(i: usize) -> String {
    format!("hyve{i}")
}

/// QEMU's virtio-fs back end at the path both kinds are installed to: the C virtiofsd QEMU
/// shipped up to 7.2 (Debian 12's qemu-system-common; qemu v7.2.0 docs/tools/virtiofsd.rst)
/// and the Rust virtiofsd that replaced it (its own `virtiofsd` package on Debian 13 and
/// Ubuntu 24.04, which also installs it here). The Rust one reads the C one's `-o source=`,
/// `sandbox=` and `cache=` options (virtiofsd v1.10.0 src/main.rs, `parse_compat`); with
/// `sandbox=chroot` both must run as root.
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

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
    pub efi: bool,
    /// QEMU's UEFI firmware (vfkit brings its own).
    pub firmware: Option<Firmware>,
    /// Where the printed macOS command lines keep what must outlive one run: vfkit's EFI
    /// variable store, the Docker API's unix sockets.
    pub state_dir: PathBuf,
    /// Host folders to share, in order (tags hyve0, hyve1, ...).
    pub shares: Vec<Share>,
    /// Where QEMU's virtio-fs sockets go (a temp dir of `hyve run`; the state dir printed).
    pub socket_dir: PathBuf,
    /// vfkit on Apple silicon: share Rosetta (virtio-fs tag `rosetta`), which the guest
    /// registers for x86_64 programs.
    pub rosetta: bool,
}

/// The name of the guest's virtio-serial port for host requests (overlay/base's
/// `03-host-control` service reads `poweroff` there).
pub const CONTROL_PORT: &str = "org.hyve.control";
/// The guest's vsock port for the Docker API (overlay/docker's docker.conf).
pub const DOCKER_VSOCK_PORT: u32 = 2375;
/// The guest's vsock port for the host's time (overlay/base's time.conf), which vfkit's
/// `--timesync vsockPort=` sends as qemu-guest-agent's `guest-set-time` when the Mac wakes
/// (crc-org/vfkit cmd/vfkit/timesync.go).
pub const TIMESYNC_VSOCK_PORT: u32 = 1234;
/// The guest's context id on hyperkit (any value above 2, the host's).
const HYPERKIT_GUEST_CID: u32 = 3;
/// Replaced by the host's clock (seconds) when the printed line runs in a shell.
pub const HOST_TIME: &str = "$(date +%s)";
/// `,create` when vfkit's EFI variable store does not exist yet (set by a setup line).
const EFI_CREATE: &str = "${create}";
/// The only shell expansions a printed argument may carry; everything else stays literal.
const EXPANSIONS: [&str; 2] = [HOST_TIME, EFI_CREATE];

/// UEFI firmware for QEMU: the read-only code and a writable copy of the variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Where the firmware is: Debian's `ovmf` / `qemu-efi-aarch64`, Fedora's edk2, and the files
/// QEMU itself installs (`pc-bios/meson.build`: edk2-*-code.fd with the edk2-i386-vars.fd /
/// edk2-arm-vars.fd templates its descriptors name) under the prefix of the
/// `qemu-system-*` found on PATH — Homebrew's `$(brew --prefix)/share/qemu`, as Lima finds
/// it (lima-vm/lima 183a60d, pkg/driver/qemu/qemu.go `getFirmware`): (code, vars template).
pub fn firmware_candidates(arch: Arch) -> Vec<(PathBuf, PathBuf)> {
    let fixed: &[(&str, &str)] = match arch {
        Arch::X86_64 => &[
            ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
            ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
            ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ],
        Arch::Aarch64 => &[
            ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
            ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"),
        ],
    };
    let (code, vars) = match arch {
        Arch::X86_64 => ("edk2-x86_64-code.fd", "edk2-i386-vars.fd"),
        Arch::Aarch64 => ("edk2-aarch64-code.fd", "edk2-arm-vars.fd"),
    };
    let qemu_prefix = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(qemu_binary(arch))).find(|q| q.is_file()))
        .and_then(|q| q.canonicalize().ok())
        .and_then(|q| q.parent()?.parent().map(|p| p.join("share/qemu")));
    fixed
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .chain(qemu_prefix.map(|share| (share.join(code), share.join(vars))))
        .collect()
}

fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
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

/// The one console each VMM gives the guest. QEMU: the machine's UART; vfkit: only
/// virtio-console (`virtio-serial`, Linux's hvc0; vfkit v0.6.4 pkg/vf/virtio.go configures no
/// UART); hyperkit and xhyve: only the LPC com1 (ttyS0; neither has a virtio-console device
/// in src/lib or src).
fn console(vmm: Vmm, arch: Arch) -> &'static str {
    match vmm {
        Vmm::Qemu => crate::kernel::serial_console(arch),
        Vmm::Hyperkit | Vmm::Xhyve => crate::kernel::serial_console(Arch::X86_64),
        Vmm::Vfkit => "hvc0",
    }
}

/// The guest's command line for `vmm`: the built image's `console=` words (one per VMM kind)
/// replaced by the one console `vmm` has, so it is `/dev/console`; `hyve.emulated` when QEMU
/// emulates the CPU (TCG); then `--append`.
///
/// `hyve.emulated` tells overlay/base's `rc.boot` that starting a process is dear: QEMU's
/// TCG finds the code it translated by guest virtual address, so a process whose loader and
/// libraries land at new random addresses has them translated again (measured in the guest:
/// `/bin/true` 64 ms with address-space randomization, 16 ms without). The guest then runs its
/// boot steps and dockerd (whose ~110 `iptables` runs are most of its start) without it, and
/// everything that outlives the boot with it (overlay/README.md, "Emulated CPU").
fn cmdline(vmm: Vmm, guest: &Guest, opts: &RunOptions) -> String {
    let own = guest.cmdline.split_whitespace().filter(|w| !w.starts_with("console="));
    let console = format!("console={}", console(vmm, guest.arch));
    let emulated = (vmm == Vmm::Qemu && opts.accel == Accel::Tcg).then_some("hyve.emulated");
    let extra = opts.append.as_deref().unwrap_or("").split_whitespace();
    let shares = shares_param(&opts.shares);
    std::iter::once(console.as_str())
        .chain(own)
        .chain(shares.as_deref())
        .chain(emulated)
        .chain(extra)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `hyve.shares=TAG:GUESTDIR,...` for overlay/base's `22-shares.sh`: GUESTDIR with every byte
/// outside `[A-Za-z0-9/._~+@-]` as `%XX`, so that one kernel command line word carries any path.
fn shares_param(shares: &[Share]) -> Option<String> {
    let encode = |path: &str| {
        path.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"/._~+@-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let list: Vec<String> =
        shares.iter().enumerate().map(|(i, s)| format!("{}:{}", share_tag(i), encode(&s.guest))).collect();
    (!list.is_empty()).then(|| format!("hyve.shares={}", list.join(",")))
}

/// A process the VMM needs running first (QEMU's virtiofsd), serving `socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub argv: Vec<String>,
    pub socket: PathBuf,
}

/// What `hyve run --print` shows for one VMM: notes (printed as shell comments), shell lines
/// to run first, and the VMM's own argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub notes: Vec<String>,
    pub setup: Vec<String>,
    /// Started (in the background) after the setup, each waited for until its socket exists.
    pub daemons: Vec<Daemon>,
    pub argv: Vec<String>,
}

impl Invocation {
    fn new(argv: Vec<String>) -> Invocation {
        Invocation { notes: vec![], setup: vec![], daemons: vec![], argv }
    }

    /// A shell script: the notes as comments, the setup lines, the daemons, then the VMM's
    /// command.
    pub fn script(&self) -> String {
        let notes = self.notes.iter().map(|n| format!("# {n}"));
        let daemons = self.daemons.iter().flat_map(|d| {
            let socket = sh(&[&d.socket.display().to_string()]);
            [format!("{} &", shell_line(&d.argv)), format!("while [ ! -S {socket} ]; do sleep 0.1; done")]
        });
        let lines: Vec<String> =
            notes.chain(self.setup.iter().cloned()).chain(daemons).chain([shell_line(&self.argv)]).collect();
        lines.join("\n") + "\n"
    }
}

/// One command as a shell line.
pub fn sh(argv: &[&str]) -> String {
    shell_line(&strings(argv))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// How `vmm` boots `guest` (`opts.accel` must be resolved for QEMU).
pub fn invocation(vmm: Vmm, guest: &Guest, opts: &RunOptions) -> Result<Invocation, VmmError> {
    if opts.rosetta && vmm != Vmm::Vfkit {
        return Err(VmmError::Rosetta {
            why: "only vfkit (Virtualization.framework) offers Rosetta; elsewhere install qemu-x86_64 in the profile"
                .into(),
        });
    }
    match vmm {
        Vmm::Qemu => qemu(guest, opts),
        Vmm::Vfkit => vfkit(guest, opts),
        Vmm::Hyperkit | Vmm::Xhyve => hyperkit_or_xhyve(vmm, guest, opts),
    }
}

/// QEMU (started by `hyve run`, or printed): direct kernel boot or UEFI firmware.
fn qemu(guest: &Guest, opts: &RunOptions) -> Result<Invocation, VmmError> {
    // x86_64: q35, the machine Lima passes under every accelerator (lima-vm/lima 183a60d,
    // pkg/driver/qemu/qemu.go `Cmdline`, its "Machine" block). Under `pc` (i440fx) and TCG
    // the guest's first probe of each virtio device took about 300 ms (initcall_debug:
    // virtio_pci's init 1.6 s for five devices, the root found ~2 s later than under q35);
    // under q35, 6 ms each.
    let machine = match guest.arch {
        Arch::X86_64 => "q35",
        Arch::Aarch64 => "virt",
    };
    let cpu = match (guest.arch, opts.accel) {
        (Arch::X86_64, Accel::Tcg) => "qemu64",
        // Intel Macs: QEMU 8's firmware crashes on 1 GiB pages and AVX-512 under hvf (Lima
        // passes the same, lima-vm/lima#1485; pkg/driver/qemu/qemu.go `defaultCPUType`).
        (Arch::X86_64, Accel::Hvf) => "host,-avx512vl,-pdpe1gb",
        // cortex-a57 under TCG: `-cpu max` is about 4x slower to boot.
        (Arch::Aarch64, Accel::Tcg) => "cortex-a57",
        _ => "host",
    };
    let nic = std::iter::once("user,model=virtio-net-pci".to_string())
        .chain(opts.ports.iter().map(|p| format!("hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest)))
        .collect::<Vec<_>>()
        .join(",");
    let mut a = strings(&[qemu_binary(guest.arch), "-M", machine, "-accel", &opts.accel.to_string(), "-cpu", cpu]);
    a.extend(strings(&["-m", &opts.memory_mib.to_string(), "-smp", &opts.cpus.to_string()]));
    if opts.efi {
        let fw = opts.firmware.as_ref().ok_or(VmmError::NoFirmware { arch: guest.arch })?;
        a.extend(strings(&["-drive", &format!("if=pflash,format=raw,readonly=on,file={}", qemu_file(&fw.code))]));
        a.extend(strings(&["-drive", &format!("if=pflash,format=raw,file={}", qemu_file(&fw.vars))]));
        let disk = guest.dir.join("disk.img");
        a.extend(strings(&["-drive", &format!("file={},format=raw,if=virtio", qemu_file(&disk))]));
    } else {
        let cmd = cmdline(Vmm::Qemu, guest, opts);
        a.extend(strings(&["-kernel", &guest.file("kernel"), "-initrd", &guest.file("initrd.img"), "-append", &cmd]));
    }
    a.extend(strings(&["-nographic", "-no-reboot", "-nic", &nic, "-device", "virtio-rng-pci"]));
    for d in &opts.disks {
        a.extend(strings(&["-drive", &format!("file={},format=raw,if=virtio", qemu_file(d))]));
    }
    // The root image after the user's disks, which keep their names (vda, ...).
    if let (Some(root), false) = (&guest.root, opts.efi) {
        a.extend(strings(&["-drive", &format!("file={},format=raw,if=virtio,readonly=on", qemu_file(&root.path))]));
    }
    // The memory balloon with free page reporting: the pages the guest frees go back to the
    // host (QEMU v5.1.0+ hw/virtio/virtio-balloon.c, property `free-page-reporting`:
    // VIRTIO_BALLOON_F_REPORTING). After the disks, so their names do not move.
    a.extend(strings(&["-device", "virtio-balloon-pci,free-page-reporting=on"]));
    let mut daemons = Vec::new();
    if !opts.shares.is_empty() {
        check_shares(opts, "QEMU")?;
        if opts.socket_dir.to_string_lossy().contains(',') {
            let why = format!("QEMU splits its device options on commas, and {} has one", opts.socket_dir.display());
            return Err(share_error(&opts.shares[0], &why));
        }
        if cfg!(target_os = "macos") {
            return Err(share_error(
                &opts.shares[0],
                "QEMU on macOS has no virtio-fs back end (virtiofsd is Linux-only); use vfkit",
            ));
        }
        // vhost-user: virtiofsd maps the guest's RAM, so it must be shareable memory
        // (qemu v7.2.0 docs/tools/virtiofsd.rst, Examples).
        let mem = format!("memory-backend-memfd,id=hyve-mem,size={}M,share=on", opts.memory_mib);
        a.extend(strings(&["-object", &mem, "-numa", "node,memdev=hyve-mem"]));
        for (i, share) in opts.shares.iter().enumerate() {
            let tag = share_tag(i);
            let socket = opts.socket_dir.join(format!("{tag}.sock"));
            a.extend(strings(&["-chardev", &format!("socket,id=hyve-fs{i},path={}", socket.display())]));
            a.extend(strings(&["-device", &format!("vhost-user-fs-pci,chardev=hyve-fs{i},tag={tag}")]));
            // chroot: its namespace sandbox needs more than a container's root may have.
            let argv = strings(&[
                VIRTIOFSD,
                &format!("--socket-path={}", socket.display()),
                "-o",
                &format!("source={}", share.host.display()),
                "-o",
                "sandbox=chroot",
                "-o",
                "cache=auto",
            ]);
            daemons.push(Daemon { argv, socket });
        }
    }
    if let Some(m) = &opts.monitor {
        a.extend(strings(&["-monitor", &format!("unix:{},server=on,wait=off", m.display())]));
    }
    if let Some(c) = &opts.control {
        a.extend(strings(&["-device", "virtio-serial-pci,id=hyve-serial"]));
        a.extend(strings(&["-chardev", &format!("socket,id=hyve-control,path={}", c.display())]));
        let port = format!("virtserialport,bus=hyve-serial.0,chardev=hyve-control,name={CONTROL_PORT}");
        a.extend(strings(&["-device", &port]));
    }
    let mut inv = Invocation { daemons, ..Invocation::new(a) };
    if !inv.daemons.is_empty() {
        inv.notes
            .push(format!("--share: {VIRTIOFSD} serves each folder and must run as root: run this script as root"));
    }
    Ok(inv)
}

fn share_error(share: &Share, why: &str) -> VmmError {
    VmmError::Share { share: share.host.display().to_string(), why: why.into() }
}

/// A path inside a QEMU option string (`-drive file=...`): its commas doubled, QEMU's escape
/// (qemu v7.2.0 qemu-options.hx, `-drive` `file=`: "If the filename contains comma, you must
/// double it").
fn qemu_file(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The paths a VMM that splits its device and boot options on commas, with no escape (vfkit,
/// hyperkit, xhyve), is given (the output's files, disk images, sockets in the state
/// directory): refused when one has a comma, which would cut it short.
fn check_option_paths<'a>(paths: impl IntoIterator<Item = &'a Path>, vmm: &'static str) -> Result<(), VmmError> {
    match paths.into_iter().find(|p| p.to_string_lossy().contains(',')) {
        Some(p) => Err(VmmError::CommaInPath { path: p.display().to_string(), vmm }),
        None => Ok(()),
    }
}

/// Shares reach the guest on the kernel command line, which an EFI boot takes from the UKI;
/// and every VMM's option list splits on commas.
fn check_shares(opts: &RunOptions, vmm: &str) -> Result<(), VmmError> {
    for share in &opts.shares {
        if opts.efi {
            return Err(share_error(
                share,
                "shares need direct kernel boot (an EFI boot's command line is the UKI's own); drop --efi",
            ));
        }
        if share.host.to_string_lossy().contains(',') {
            let why = format!("{vmm} splits its device options on commas, and {} has one", share.host.display());
            return Err(share_error(share, &why));
        }
    }
    Ok(())
}

/// vfkit (crc-org/vfkit v0.6.4, doc/usage.md and pkg/cmdline, pkg/config): Virtualization.framework.
fn vfkit(guest: &Guest, opts: &RunOptions) -> Result<Invocation, VmmError> {
    let dirs = [guest.dir.as_path(), opts.state_dir.as_path()];
    check_option_paths(dirs.into_iter().chain(opts.disks.iter().map(PathBuf::as_path)), "vfkit")?;
    let state = &opts.state_dir;
    let socket = state.join("docker.sock");
    let mut inv = Invocation::new(strings(&[
        "vfkit",
        "--cpus",
        &opts.cpus.to_string(),
        "--memory",
        &opts.memory_mib.to_string(),
    ]));
    if opts.efi {
        // Virtualization.framework's own EFI: no firmware file. The variable store must
        // outlive the run; `create` overwrites an existing one (Code-Hex/vz v3.7.1
        // VZEFIVariableStoreInitializationOptionAllowOverwrite), so only for a new store.
        // The shell running the line decides, so a saved script can run again.
        let store = state.join("efi-variable-store");
        inv.setup.push(format!("create=; [ -e {} ] || create=,create", shell_line(&[store.display().to_string()])));
        inv.argv.extend(strings(&["--bootloader", &format!("efi,variable-store={}{EFI_CREATE}", store.display())]));
        inv.argv.extend(strings(&["--device", &format!("virtio-blk,path={}", guest.file("disk.img"))]));
    } else {
        // vfkit splits --bootloader's options on commas outside double quotes and strips the
        // quotes around a value (pkg/cmdline/string_slice.go, util.TrimQuotes), so the
        // command line is quoted. Direct kernel boot has no RTC (lima-vm/lima#2905): the
        // host's time goes on the command line, filled in by the shell that runs the line.
        let cmd = format!("{} hyve.time={HOST_TIME}", cmdline(Vmm::Vfkit, guest, opts));
        let loader =
            format!("linux,kernel={},initrd={},cmdline=\"{cmd}\"", guest.file("kernel"), guest.file("initrd.img"));
        inv.argv.extend(strings(&["--bootloader", &loader]));
    }
    inv.argv.extend(strings(&[
        "--device",
        "virtio-serial,stdio",
        "--device",
        "virtio-net,nat",
        "--device",
        "virtio-rng",
    ]));
    // `connect`: the host connects, vfkit listens on the unix socket (pkg/vf/vsock.go). A
    // socket left from an earlier run makes vfkit skip the device with only a warning, so
    // it is removed first.
    let vsock = format!("virtio-vsock,port={DOCKER_VSOCK_PORT},socketURL={},connect", socket.display());
    inv.argv.extend(strings(&["--device", &vsock]));
    for d in &opts.disks {
        inv.argv.extend(strings(&["--device", &format!("virtio-blk,path={}", d.display())]));
    }
    // The root image after the user's disks; `readonly` is a bare flag (v0.6.4
    // pkg/config/virtio.go `DiskStorageConfig.FromOptions` rejects a value; since v0.6.0).
    if let (Some(root), false) = (&guest.root, opts.efi) {
        inv.argv.extend(strings(&["--device", &format!("virtio-blk,path={},readonly", root.path.display())]));
    }
    // virtio-fs shares by tag (pkg/config/virtio.go `VirtioFs`: sharedDir, mountTag).
    check_shares(opts, "vfkit")?;
    for (i, share) in opts.shares.iter().enumerate() {
        let fs = format!("virtio-fs,sharedDir={},mountTag={}", share.host.display(), share_tag(i));
        inv.argv.extend(strings(&["--device", &fs]));
    }
    // Rosetta for x86_64 programs, installed on the Mac if missing (doc/usage.md, Rosetta;
    // the guest mounts the tag and registers it, boot.d/23-binfmt.sh).
    if opts.rosetta {
        if guest.arch != Arch::Aarch64 {
            return Err(VmmError::Rosetta {
                why: format!("Rosetta runs x86_64 programs on arm64 guests; this one is {}", guest.arch),
            });
        }
        inv.argv.extend(strings(&["--device", "rosetta,mountTag=rosetta,install"]));
    }
    // Virtualization.framework's traditional memory balloon (v0.6.1+ pkg/vf/virtio.go
    // `VirtioBalloon`; no options). Apple documents no free page reporting for it: the guest
    // logs whether the device offers it.
    inv.argv.extend(strings(&["--device", "virtio-balloon"]));
    // The clock stands still while the Mac sleeps; vfkit sets it again on wake.
    inv.argv.extend(strings(&["--timesync", &format!("vsockPort={TIMESYNC_VSOCK_PORT}")]));
    inv.setup.push(sh(&["mkdir", "-p", &state.display().to_string()]));
    inv.setup.push(sh(&["rm", "-f", &socket.display().to_string()]));
    inv.notes.push(format!(
        "vfkit on a Mac with {} guests; the Docker API: DOCKER_HOST=unix://{}",
        macos_host(guest.arch),
        socket.display()
    ));
    if !opts.ports.is_empty() {
        inv.notes.push(
            "vfkit forwards no ports (--port is not used): connect to the guest's own address on vfkit's NAT, \
             which the guest prints as `hyve: eth0 ADDRESS (DHCP)`"
                .into(),
        );
    }
    Ok(inv)
}

/// Which Macs run `arch` guests under Hypervisor.framework VMMs.
fn macos_host(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "Intel (x86_64)",
        Arch::Aarch64 => "Apple silicon (aarch64)",
    }
}

/// hyperkit (moby/hyperkit 3cb0d54, src/hyperkit.c usage and `firmware_parse`,
/// src/lib/pci_virtio_sock.c) and xhyve (machyve/xhyve dfbe09b, src/xhyve.c): x86_64 only.
fn hyperkit_or_xhyve(vmm: Vmm, guest: &Guest, opts: &RunOptions) -> Result<Invocation, VmmError> {
    let name = if vmm == Vmm::Hyperkit { "hyperkit" } else { "xhyve" };
    if guest.arch != Arch::X86_64 {
        return Err(VmmError::WrongArch { vmm: name, arch: guest.arch, hint: "vfkit or qemu" });
    }
    if opts.efi {
        return Err(VmmError::NoEfi { vmm: name });
    }
    // hyperkit's vsock socket is in the state directory; xhyve has none.
    let state = (vmm == Vmm::Hyperkit).then_some(opts.state_dir.as_path());
    let dirs = std::iter::once(guest.dir.as_path()).chain(state);
    check_option_paths(dirs.chain(opts.disks.iter().map(PathBuf::as_path)), name)?;
    if let Some(share) = opts.shares.first() {
        return Err(share_error(
            share,
            "hyperkit's virtio-9p only carries 9P to a server of your own (3cb0d54 src/lib/pci_virtio_9p.c: path= or port= of a server socket) and xhyve has no shared folders (dfbe09b src/pci_*.c); use vfkit or qemu",
        ));
    }
    let mut inv =
        Invocation::new(strings(&[name, "-A", "-m", &format!("{}M", opts.memory_mib), "-c", &opts.cpus.to_string()]));
    inv.argv.extend(strings(&["-s", "0:0,hostbridge", "-s", "31,lpc", "-l", "com1,stdio"]));
    inv.argv.extend(strings(&["-s", "2:0,virtio-net", "-s", "3:0,virtio-rnd"]));
    inv.notes.push(format!(
        "{name} on an Intel Mac, as root (sudo): its virtio-net uses vmnet, which needs root without Apple's entitlement"
    ));
    if vmm == Vmm::Hyperkit {
        // `guest_forwards`: hyperkit listens on DIR/<guest cid>.<port> (both %08x) and forwards
        // to the guest's vsock port; DIR must exist (hyperkit does not create it).
        let dir = opts.state_dir.join("vsock");
        let sock = format!(
            "virtio-sock,guest_cid={HYPERKIT_GUEST_CID},path={},guest_forwards={DOCKER_VSOCK_PORT}",
            dir.display()
        );
        inv.argv.extend(strings(&["-s", &format!("4:0,{sock}")]));
        inv.setup.push(sh(&["mkdir", "-p", &dir.display().to_string()]));
        inv.notes.push(format!(
            "the Docker API: DOCKER_HOST=unix://{}/{HYPERKIT_GUEST_CID:08x}.{DOCKER_VSOCK_PORT:08x}",
            dir.display()
        ));
    } else {
        inv.notes.push(
            "xhyve has no vsock device: reach the Docker API over TLS at the guest's address \
             (`hyve: eth0 ADDRESS (DHCP)` on its console), port 2376, with the certificates of \
             `hyve disk create --docker-certs DIR`"
                .into(),
        );
    }
    // The root image read-only, after the user's disks: `ro` after the path (hyperkit
    // src/lib/block_if.c and xhyve src/block_if.c `blockif_open`: the host opens it
    // O_RDONLY; the guest is not told, and mounts it read-only anyway).
    let root = guest.root.iter().map(|r| format!("{},ro", r.path.display()));
    let disks: Vec<String> = opts.disks.iter().map(|d| d.display().to_string()).chain(root).collect();
    // One device per slot; slots are 0..=31 (hyperkit 156a12f src/lib/pci_emul.c and xhyve
    // 0871fe9 src/pci_emul.c, `pci_parse_slot`), 31 is the LPC bridge above, so the disks
    // have 5..=30.
    const DISK_SLOTS: std::ops::RangeInclusive<usize> = 5..=30;
    if disks.len() > DISK_SLOTS.clone().count() {
        let what = if guest.root.is_some() { "the --disk images and the root image" } else { "the --disk images" };
        return Err(VmmError::TooManyDisks { vmm: name, count: disks.len(), what, max: DISK_SLOTS.count() });
    }
    for (slot, d) in DISK_SLOTS.zip(disks) {
        inv.argv.extend(strings(&["-s", &format!("{slot}:0,virtio-blk,{d}")]));
    }
    if !opts.ports.is_empty() {
        inv.notes
            .push(format!("{name} forwards no ports (--port is not used): connect to the guest's address on vmnet"));
    }
    // Neither emulates a balloon (hyperkit 3cb0d54 src/lib/pci_virtio_*.c: block, net, rnd,
    // sock, 9p; xhyve dfbe09b src/pci_virtio_*.c: block, net, rnd).
    inv.notes.push(format!("{name} has no memory balloon: memory the guest once used stays with it until it stops"));
    // kexec,KERNEL,INITRD,CMDLINE: the command line is the rest of the argument, copied as is
    // (src/lib/firmware/kexec.c): no quotes, or the kernel sees them.
    let cmd = cmdline(vmm, guest, opts);
    inv.argv.extend(strings(&["-f", &format!("kexec,{},{},{cmd}", guest.file("kernel"), guest.file("initrd.img"))]));
    Ok(inv)
}

/// Quotes an argv for a POSIX shell. An argument carrying one of [`EXPANSIONS`] is
/// double-quoted so that the shell fills it in; everything else in it stays literal.
fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
                a.clone()
            } else if EXPANSIONS.iter().any(|e| a.contains(e)) {
                format!("\"{}\"", double_quoted(a))
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` for the inside of double quotes: [`EXPANSIONS`] kept, any other `$`, `` ` ``, `"`
/// and `\` escaped.
fn double_quoted(text: &str) -> String {
    match EXPANSIONS.iter().filter_map(|e| text.find(e).map(|i| (i, e))).min() {
        Some((i, e)) => format!("{}{e}{}", double_quoted(&text[..i]), double_quoted(&text[i + e.len()..])),
        None => text.chars().flat_map(|c| if "\"\\$`".contains(c) { vec!['\\', c] } else { vec![c] }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(arch: Arch) -> Guest {
        Guest { dir: PathBuf::from("/o"), arch, cmdline: "console=ttyS0 console=hvc0 quiet".into(), root: None }
    }

    /// An output whose manifest lists root.squashfs boots directly only with that file, whole;
    /// one that does not list it ignores a stray file of that name.
    #[test]
    fn the_root_image_the_manifest_lists_must_be_there_whole() {
        let d = tempfile::tempdir().unwrap();
        for f in ["kernel", "initrd.img", "cmdline"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let manifest = |outputs: &str| {
            std::fs::write(d.path().join("manifest.json"), format!(r#"{{"arch":"x86_64","outputs":{{{outputs}}}}}"#))
                .unwrap()
        };
        let root = d.path().join("root.squashfs");
        manifest(r#""root.squashfs":{"size":4096}"#);
        let guest = Guest::open(d.path()).unwrap();
        assert_eq!(guest.root, Some(RootImage { path: root.clone(), size: 4096 }));
        let e = guest.check_root().unwrap_err().to_string();
        assert!(e.contains("no root.squashfs, which manifest.json lists"), "{e}");
        std::fs::write(&root, [0u8; 100]).unwrap();
        let e = guest.check_root().unwrap_err().to_string();
        assert!(e.contains("root.squashfs is 100 bytes, manifest.json says 4096"), "{e}");
        std::fs::write(&root, [0u8; 4096]).unwrap();
        guest.check_root().unwrap();
        manifest(r#""kernel":{"size":1}"#);
        assert_eq!(Guest::open(d.path()).unwrap().root, None);
    }

    fn opts() -> RunOptions {
        RunOptions {
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            ports: vec!["2376:2376".parse().unwrap()],
            disks: vec!["/d/data.img".into()],
            append: Some("hyve.poweroff".into()),
            monitor: None,
            control: None,
            efi: false,
            firmware: None,
            state_dir: "/o.vm".into(),
            shares: vec![],
            socket_dir: "/o.vm".into(),
            rosetta: false,
        }
    }

    /// The argv a POSIX shell makes of `line` after the `setup` lines (how a user runs a
    /// printed script), with the setup's commands not run.
    fn as_the_shell_parses(setup: &[String], line: &str) -> Vec<String> {
        let stubbed = "mkdir() { :; }; rm() { :; }";
        let script = format!("{stubbed}\n{}\nprintf '%s\\0' {line}", setup.join("\n"));
        let o = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(o.status.success(), "{script}");
        String::from_utf8(o.stdout).unwrap().split_terminator('\0').map(str::to_string).collect()
    }

    /// The console that becomes /dev/console: the last `console=` on the command line.
    fn last_console(cmdline: &str) -> &str {
        cmdline.split_whitespace().rev().find_map(|w| w.strip_prefix("console=")).unwrap_or("")
    }

    /// The value following `flag` in `argv`, each time it occurs.
    fn values<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    // What each VMM accepts, written from its source, apart from the builder above, so that a
    // builder mistake fails here.

    /// hyperkit (moby/hyperkit 3cb0d54): the options of usage() in src/hyperkit.c that take
    /// a value; the `pe_emu` names of src/lib/pci_*.c; pci_virtio_sock.c's options.
    const HYPERKIT_VALUE_FLAGS: &[&str] = &["-c", "-m", "-s", "-l", "-f", "-U", "-g", "-F"];
    const HYPERKIT_EMULATIONS: &[&str] = &[
        "hostbridge",
        "amd_hostbridge",
        "lpc",
        "uart",
        "ahci-hd",
        "ahci-cd",
        "virtio-blk",
        "virtio-rnd",
        "virtio-9p",
        "virtio-net",
        "virtio-tap",
        "virtio-vpnkit",
        "virtio-sock",
    ];
    /// xhyve (machyve/xhyve dfbe09b): src/pci_*.c — no virtio-sock, no virtio-9p.
    const XHYVE_EMULATIONS: &[&str] = &[
        "hostbridge",
        "amd_hostbridge",
        "lpc",
        "uart",
        "ahci-hd",
        "ahci-cd",
        "e1000",
        "fbuf",
        "virtio-blk",
        "virtio-net",
        "virtio-tap",
        "virtio-rnd",
    ];

    /// Checks a hyperkit/xhyve argv the way their option parsers read it.
    fn check_hyperkit_like(argv: &[String], emulations: &[&str]) {
        let mut i = 1;
        while i < argv.len() {
            let flag = argv[i].as_str();
            assert!(flag.starts_with('-') && flag.len() == 2, "not an option: {flag}");
            if HYPERKIT_VALUE_FLAGS.contains(&flag) {
                let value = &argv[i + 1];
                match flag {
                    // -s SLOT[:FUNC],EMULATION[,CONFIG]
                    "-s" => {
                        let mut parts = value.splitn(3, ',');
                        let slot = parts.next().unwrap();
                        assert!(slot.split(':').all(|n| n.parse::<u8>().is_ok()), "slot {slot}");
                        let emulation = parts.next().unwrap();
                        assert!(emulations.contains(&emulation), "{} has no {emulation:?} device", argv[0]);
                        if emulation == "virtio-sock" {
                            // pci_vtsock_init: guest_cid (> 2) and path are required.
                            let config = parts.next().unwrap_or("");
                            let keys: Vec<(&str, &str)> =
                                config.split(',').map(|o| o.split_once('=').unwrap()).collect();
                            assert!(
                                keys.iter().all(|(k, _)| ["guest_cid", "path", "guest_forwards"].contains(k)),
                                "{config}"
                            );
                            assert!(
                                keys.iter().any(|(k, v)| *k == "guest_cid" && v.parse::<u32>().unwrap() > 2),
                                "{config}"
                            );
                            assert!(keys.iter().any(|(k, _)| *k == "path"), "{config}");
                        }
                        if emulation == "virtio-blk" {
                            // blockif_open: the path, then options; `ro` opens it read-only.
                            let config = parts.next().unwrap_or("");
                            let mut options = config.split(',');
                            assert!(options.next().is_some_and(|p| p.starts_with('/')), "{config}");
                            assert!(options.all(|o| ["ro", "sync", "direct"].contains(&o)), "{config}");
                        }
                    }
                    // firmware_parse: kexec, then kernel and initrd up to the next commas; the
                    // command line is the rest, copied byte for byte by kexec.c.
                    "-f" => {
                        let mut parts = value.splitn(4, ',');
                        assert_eq!(parts.next(), Some("kexec"));
                        let (kernel, initrd, cmdline) =
                            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
                        assert!(!kernel.is_empty() && !initrd.is_empty());
                        assert!(
                            !cmdline.contains('"') && !cmdline.contains('\''),
                            "quotes reach the kernel: {cmdline}"
                        );
                        assert_eq!(last_console(cmdline), "ttyS0", "only com1 is a console there: {cmdline}");
                    }
                    "-l" => assert_eq!(value, "com1,stdio"),
                    _ => {}
                }
                i += 2;
            } else {
                assert!(["-A", "-u", "-H", "-P", "-W", "-x", "-e", "-w"].contains(&flag), "unknown {flag}");
                i += 1;
            }
        }
    }

    /// vfkit v0.6.4 (pkg/config/virtio.go, pkg/config/bootloader.go, pkg/cmdline): flags,
    /// device types and each device's options.
    const VFKIT_DEVICES: &[(&str, &[&str])] = &[
        ("virtio-serial", &["stdio", "logFilePath", "pty"]),
        ("virtio-net", &["nat", "mac", "fd", "unixSocketPath", "type", "path"]),
        ("virtio-rng", &[]),
        ("virtio-vsock", &["port", "socketURL", "listen", "connect"]),
        ("virtio-blk", &["path", "type", "deviceId", "readonly"]),
        ("virtio-fs", &["sharedDir", "mountTag"]),
        ("rosetta", &["mountTag", "install", "ignore-if-missing"]),
        ("virtio-balloon", &[]),
    ];

    /// vfkit's `--bootloader` option parser: commas split options except inside double
    /// quotes, the quotes stay until the value's surrounding pair is trimmed.
    fn vfkit_options(value: &str) -> Vec<(String, String)> {
        let (mut out, mut current, mut quoted) = (vec![], String::new(), false);
        for c in value.chars().chain([',']) {
            match c {
                '"' => {
                    quoted = !quoted;
                    current.push(c);
                }
                ',' if !quoted => out.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        out.into_iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) => {
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                    (k.to_string(), v.to_string())
                }
                None => (o, String::new()),
            })
            .collect()
    }

    fn check_vfkit(argv: &[String]) {
        assert_eq!(argv[0], "vfkit");
        let mut i = 1;
        while i < argv.len() {
            let (flag, value) = (argv[i].as_str(), argv[i + 1].as_str());
            match flag {
                "--cpus" | "--memory" => assert!(value.parse::<u32>().is_ok(), "{flag} {value}"),
                "--bootloader" => {
                    let opts = vfkit_options(value);
                    match opts[0].0.as_str() {
                        "linux" => {
                            let keys: Vec<&str> = opts[1..].iter().map(|(k, _)| k.as_str()).collect();
                            assert_eq!(keys, ["kernel", "initrd", "cmdline"], "{value}");
                            let cmdline = &opts[3].1;
                            assert_eq!(last_console(cmdline), "hvc0", "vfkit has only virtio-console: {cmdline}");
                            assert!(!cmdline.contains('"'), "{cmdline}");
                        }
                        "efi" => {
                            assert!(opts[1].0 == "variable-store" && opts[1].1.starts_with('/'), "{value}");
                            assert!(opts[2..].iter().all(|(k, _)| k == "create"), "{value}");
                        }
                        other => panic!("vfkit has no {other:?} bootloader"),
                    }
                }
                "--device" => {
                    // Device options split on every comma (strings.Split): no quoting at all.
                    let mut parts = value.split(',');
                    let kind = parts.next().unwrap();
                    let (_, allowed) =
                        VFKIT_DEVICES.iter().find(|(k, _)| *k == kind).unwrap_or_else(|| panic!("vfkit has no {kind}"));
                    for o in parts {
                        let key = o.split_once('=').map_or(o, |(k, _)| k);
                        assert!(allowed.contains(&key), "{kind} takes no {key:?}");
                    }
                }
                "--timesync" => assert!(value.starts_with("vsockPort=")),
                _ => panic!("vfkit has no {flag}"),
            }
            i += 2;
        }
    }

    #[test]
    fn qemu_lines() {
        let a = invocation(Vmm::Qemu, &guest(Arch::X86_64), &opts()).unwrap().argv;
        assert_eq!(shell_line(&a), "qemu-system-x86_64 -M q35 -accel tcg -cpu qemu64 -m 1024 -smp 2 -kernel /o/kernel -initrd /o/initrd.img -append 'console=ttyS0 quiet hyve.emulated hyve.poweroff' -nographic -no-reboot -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2376-:2376 -device virtio-rng-pci -drive file=/d/data.img,format=raw,if=virtio -device virtio-balloon-pci,free-page-reporting=on");
        let a = invocation(Vmm::Qemu, &guest(Arch::Aarch64), &opts()).unwrap().argv;
        assert!(shell_line(&a).starts_with("qemu-system-aarch64 -M virt -accel tcg -cpu cortex-a57"), "{a:?}");
        // virt's UART is the PL011.
        assert_eq!(last_console(values(&a, "-append")[0]), "ttyAMA0");
        assert!(!a.iter().any(|w| w.contains("virtserialport")), "no control port unless hyve run listens");
        let with_control = RunOptions { control: Some("/run/c.sock".into()), ..opts() };
        let a = shell_line(&invocation(Vmm::Qemu, &guest(Arch::Aarch64), &with_control).unwrap().argv);
        assert!(a.ends_with("-device virtio-serial-pci,id=hyve-serial -chardev socket,id=hyve-control,path=/run/c.sock -device virtserialport,bus=hyve-serial.0,chardev=hyve-control,name=org.hyve.control"), "{a}");
        // Intel Macs (lima-vm/lima#1485).
        let hvf = RunOptions { accel: Accel::Hvf, ..opts() };
        let a = invocation(Vmm::Qemu, &guest(Arch::X86_64), &hvf).unwrap().argv;
        assert_eq!(values(&a, "-cpu"), ["host,-avx512vl,-pdpe1gb"]);
        let a = invocation(Vmm::Qemu, &guest(Arch::Aarch64), &hvf).unwrap().argv;
        assert_eq!(values(&a, "-cpu"), ["host"]);
        // Only an emulated CPU makes the guest boot without address-space randomization.
        for accel in [Accel::Hvf, Accel::Kvm] {
            let a = invocation(Vmm::Qemu, &guest(Arch::X86_64), &RunOptions { accel, ..opts() }).unwrap().argv;
            assert_eq!(values(&a, "-append"), ["console=ttyS0 quiet hyve.poweroff"], "{accel}");
        }
    }

    /// A comma in a path inside a VMM's option string: QEMU takes it doubled; vfkit, hyperkit
    /// and xhyve have no escape, so hyve refuses rather than cut the path short.
    #[test]
    fn commas_in_paths_are_escaped_or_refused() {
        let in_comma_dir = Guest {
            dir: "/o,1".into(),
            root: Some(RootImage { path: "/o,1/root.squashfs".into(), size: 1 }),
            ..guest(Arch::X86_64)
        };
        let comma = RunOptions { disks: vec!["/d/a,b.img".into()], ..opts() };
        let a = invocation(Vmm::Qemu, &in_comma_dir, &comma).unwrap().argv;
        let drives = values(&a, "-drive");
        assert_eq!(
            drives,
            ["file=/d/a,,b.img,format=raw,if=virtio", "file=/o,,1/root.squashfs,format=raw,if=virtio,readonly=on"]
        );
        assert_eq!(values(&a, "-kernel"), ["/o,1/kernel"], "its own argument: no escape");
        let refused = |vmm, g: &Guest, o: &RunOptions| {
            let e = invocation(vmm, g, o).unwrap_err().to_string();
            assert!(e.contains("splits its options on commas, with no escape"), "{vmm:?}: {e}");
            e
        };
        for vmm in [Vmm::Vfkit, Vmm::Hyperkit, Vmm::Xhyve] {
            assert!(refused(vmm, &in_comma_dir, &opts()).starts_with("/o,1: "));
            assert!(refused(vmm, &guest(Arch::X86_64), &comma).starts_with("/d/a,b.img: "));
        }
        // The state directory holds vfkit's and hyperkit's sockets; xhyve has none.
        let comma_state = RunOptions { state_dir: "/s,1".into(), ..opts() };
        refused(Vmm::Vfkit, &guest(Arch::X86_64), &comma_state);
        refused(Vmm::Hyperkit, &guest(Arch::X86_64), &comma_state);
        assert!(invocation(Vmm::Xhyve, &guest(Arch::X86_64), &comma_state).is_ok());
    }

    #[test]
    fn hyperkit_lines_follow_hyperkit() {
        let inv = invocation(Vmm::Hyperkit, &guest(Arch::X86_64), &opts()).unwrap();
        check_hyperkit_like(&inv.argv, HYPERKIT_EMULATIONS);
        let f = values(&inv.argv, "-f")[0];
        assert_eq!(f, "kexec,/o/kernel,/o/initrd.img,console=ttyS0 quiet hyve.poweroff");
        // The socket directory is made first; guest_forwards' socket is DIR/<cid>.<port> in %08x.
        assert_eq!(inv.setup, ["mkdir -p /o.vm/vsock"]);
        assert!(values(&inv.argv, "-s").contains(&"4:0,virtio-sock,guest_cid=3,path=/o.vm/vsock,guest_forwards=2375"));
        let script = inv.script();
        assert!(script.contains("DOCKER_HOST=unix:///o.vm/vsock/00000003.00000947"), "{script}");
        assert!(script.contains("as root (sudo)") && script.contains("vmnet"), "{script}");
        assert!(
            script.lines().all(|l| l.starts_with("# ") || l.contains("hyperkit") || l.starts_with("mkdir")),
            "{script}"
        );
        // The printed script, run by a shell, gives hyperkit the same argv.
        let line = script.lines().last().unwrap();
        assert_eq!(as_the_shell_parses(&inv.setup, line), inv.argv);
        assert!(invocation(Vmm::Hyperkit, &guest(Arch::Aarch64), &opts()).unwrap_err().to_string().contains("vfkit"));
        assert!(invocation(Vmm::Hyperkit, &guest(Arch::X86_64), &RunOptions { efi: true, ..opts() }).is_err());
    }

    #[test]
    fn xhyve_lines_follow_xhyve() {
        let inv = invocation(Vmm::Xhyve, &guest(Arch::X86_64), &opts()).unwrap();
        check_hyperkit_like(&inv.argv, XHYVE_EMULATIONS);
        assert!(!inv.argv.iter().any(|a| a.contains("virtio-sock")));
        assert!(inv.script().contains("xhyve has no vsock device"), "{}", inv.script());
        assert!(invocation(Vmm::Xhyve, &guest(Arch::Aarch64), &opts()).unwrap_err().to_string().contains("vfkit"));
    }

    #[test]
    fn vfkit_lines_follow_vfkit() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let inv = invocation(Vmm::Vfkit, &guest(arch), &opts()).unwrap();
            check_vfkit(&inv.argv);
            // What the shell hands vfkit: the host's time filled in, the rest literal.
            let line = shell_line(&inv.argv);
            let argv = as_the_shell_parses(&inv.setup, &line);
            let loader = values(&argv, "--bootloader")[0];
            let cmdline = &vfkit_options(loader)[3].1;
            let time = cmdline.split_whitespace().find_map(|w| w.strip_prefix("hyve.time=")).unwrap();
            assert!(time.len() >= 10 && time.bytes().all(|b| b.is_ascii_digit()), "{cmdline}");
            assert!(cmdline.starts_with("console=hvc0 quiet hyve.poweroff"), "{cmdline}");
            // A stale socket would make vfkit skip the vsock device: removed first.
            assert_eq!(inv.setup[1], "rm -f /o.vm/docker.sock");
            assert!(
                values(&inv.argv, "--device").contains(&"virtio-vsock,port=2375,socketURL=/o.vm/docker.sock,connect")
            );
            let script = inv.script();
            assert!(script.contains("vfkit forwards no ports"), "--port must be explained: {script}");
        }
        // EFI: no firmware file, a lasting variable store made on first use only.
        let state = tempfile::tempdir().unwrap();
        let efi = RunOptions { efi: true, state_dir: state.path().to_path_buf(), ..opts() };
        let inv = invocation(Vmm::Vfkit, &guest(Arch::Aarch64), &efi).unwrap();
        check_vfkit(&inv.argv);
        // `create` (which overwrites a store) only while there is none, decided by the shell
        // each time the script runs.
        let store = state.path().join("efi-variable-store");
        let loader = || {
            let argv = as_the_shell_parses(&inv.setup, &shell_line(&inv.argv));
            values(&argv, "--bootloader")[0].to_string()
        };
        assert_eq!(loader(), format!("efi,variable-store={},create", store.display()));
        std::fs::write(&store, b"vars").unwrap();
        assert_eq!(loader(), format!("efi,variable-store={}", store.display()));
    }

    #[test]
    fn ports_and_names_match_the_overlay() {
        let text = |path: &str| String::from_utf8_lossy(crate::builtin::file(path).unwrap()).into_owned();
        let docker = text("overlay/docker/etc/hyve/docker.conf");
        assert!(docker.lines().any(|l| l == format!("DOCKER_VSOCK_PORT={DOCKER_VSOCK_PORT}")), "{docker}");
        let time = text("overlay/base/etc/hyve/time.conf");
        assert!(time.lines().any(|l| l == format!("TIMESYNC_VSOCK_PORT={TIMESYNC_VSOCK_PORT}")), "{time}");
        assert!(text("overlay/base/etc/hyve/services/03-host-control").contains(&format!("= {CONTROL_PORT} ]")));
    }

    #[test]
    fn only_the_known_expansions_reach_the_shell() {
        let arg = format!("a $HOME `id` \"q\" \\ {HOST_TIME} b");
        let argv = as_the_shell_parses(&[], &shell_line(&[arg]));
        let expanded = &argv[0];
        assert!(expanded.starts_with("a $HOME `id` \"q\" \\ ") && expanded.ends_with(" b"), "{expanded}");
        assert!(expanded.split(' ').nth(5).unwrap().parse::<u64>().is_ok(), "the time is filled in: {expanded}");
    }

    #[test]
    fn the_table_checks_catch_wrong_lines() {
        // The old hyperkit line: the command line in literal quotes.
        let quoted = strings(&["hyperkit", "-f", "kexec,/k,/i,\"console=ttyS0 quiet\""]);
        assert!(std::panic::catch_unwind(|| check_hyperkit_like(&quoted, HYPERKIT_EMULATIONS)).is_err());
        let sock = strings(&["xhyve", "-s", "4:0,virtio-sock,guest_cid=3,path=/v"]);
        assert!(std::panic::catch_unwind(|| check_hyperkit_like(&sock, XHYVE_EMULATIONS)).is_err());
        let serial_last =
            strings(&["vfkit", "--bootloader", "linux,kernel=/k,initrd=/i,cmdline=\"console=hvc0 console=ttyS0\""]);
        assert!(std::panic::catch_unwind(|| check_vfkit(&serial_last)).is_err());
    }

    /// A squashfs root's image goes to every VMM read-only after the user's disks, and not
    /// when disk.img (which carries it) boots.
    #[test]
    fn root_image_is_attached_read_only() {
        let with_root =
            Guest { root: Some(RootImage { path: "/o/root.squashfs".into(), size: 1 }), ..guest(Arch::X86_64) };
        let a = invocation(Vmm::Qemu, &with_root, &opts()).unwrap().argv;
        assert_eq!(
            values(&a, "-drive"),
            ["file=/d/data.img,format=raw,if=virtio", "file=/o/root.squashfs,format=raw,if=virtio,readonly=on"]
        );
        let inv = invocation(Vmm::Vfkit, &with_root, &opts()).unwrap();
        check_vfkit(&inv.argv);
        let devices = values(&inv.argv, "--device");
        let disks: Vec<&&str> = devices.iter().filter(|d| d.starts_with("virtio-blk")).collect();
        assert_eq!(disks, [&"virtio-blk,path=/d/data.img", &"virtio-blk,path=/o/root.squashfs,readonly"]);
        for (vmm, emulations) in [(Vmm::Hyperkit, HYPERKIT_EMULATIONS), (Vmm::Xhyve, XHYVE_EMULATIONS)] {
            let inv = invocation(vmm, &with_root, &opts()).unwrap();
            check_hyperkit_like(&inv.argv, emulations);
            let slots = values(&inv.argv, "-s");
            assert!(
                slots.ends_with(&["5:0,virtio-blk,/d/data.img", "6:0,virtio-blk,/o/root.squashfs,ro"]),
                "{slots:?}"
            );
        }
        let fw = Firmware { code: "/fw/CODE.fd".into(), vars: "/run/VARS.fd".into() };
        let efi = RunOptions { efi: true, firmware: Some(fw), ..opts() };
        let a = invocation(Vmm::Qemu, &with_root, &efi).unwrap().argv;
        assert!(!a.iter().any(|w| w.contains("root.squashfs")), "{a:?}");
    }

    /// hyperkit and xhyve give each disk a PCI slot of its own, from 5 to 30: 26 disks with
    /// the root image fill them, one more is refused rather than put on the LPC bridge's slot.
    #[test]
    fn hyperkit_disks_fit_their_pci_slots() {
        let with_root =
            Guest { root: Some(RootImage { path: "/o/root.squashfs".into(), size: 1 }), ..guest(Arch::X86_64) };
        let disks = |n: usize| RunOptions { disks: (0..n).map(|i| format!("/d/{i}.img").into()).collect(), ..opts() };
        for vmm in [Vmm::Hyperkit, Vmm::Xhyve] {
            let argv = invocation(vmm, &with_root, &disks(25)).unwrap().argv;
            let slots = values(&argv, "-s");
            assert_eq!(slots.iter().filter(|s| s.contains("virtio-blk")).count(), 26);
            assert!(slots.contains(&"30:0,virtio-blk,/o/root.squashfs,ro") && slots.contains(&"31,lpc"), "{slots:?}");
            let e = invocation(vmm, &with_root, &disks(26)).unwrap_err().to_string();
            assert!(e.contains("27 disks") && e.contains("slots for 26"), "{e}");
            assert!(invocation(vmm, &guest(Arch::X86_64), &disks(26)).is_ok());
        }
    }

    /// `--share`: vfkit's virtio-fs device and QEMU's vhost-user-fs with virtiofsd serving
    /// its socket first, one tag each, the guest's mount list on the command line with any
    /// path spelled in one word; refused where it cannot work.
    #[test]
    fn shares_reach_every_vmm_that_can_carry_them() {
        let shares = vec![
            Share { host: "/Users/me/src".into(), guest: "/Users/me/src".into() },
            Share { host: "/Users/me/My Project".into(), guest: "/work/a,b%".into() },
        ];
        let with = RunOptions { shares: shares.clone(), socket_dir: "/run/h".into(), ..opts() };
        let param = "hyve.shares=hyve0:/Users/me/src,hyve1:/work/a%2Cb%25";
        let inv = invocation(Vmm::Vfkit, &guest(Arch::Aarch64), &with).unwrap();
        check_vfkit(&inv.argv);
        let devices = values(&inv.argv, "--device");
        let fs: Vec<&&str> = devices.iter().filter(|d| d.starts_with("virtio-fs")).collect();
        assert_eq!(
            fs,
            [
                &"virtio-fs,sharedDir=/Users/me/src,mountTag=hyve0",
                &"virtio-fs,sharedDir=/Users/me/My Project,mountTag=hyve1"
            ]
        );
        let loader = values(&inv.argv, "--bootloader")[0];
        assert!(vfkit_options(loader)[3].1.split(' ').any(|w| w == param), "{loader}");
        if !cfg!(target_os = "macos") {
            let inv = invocation(Vmm::Qemu, &guest(Arch::X86_64), &with).unwrap();
            let line = shell_line(&inv.argv);
            assert!(line.contains("-object memory-backend-memfd,id=hyve-mem,size=1024M,share=on -numa node,memdev=hyve-mem -chardev socket,id=hyve-fs0,path=/run/h/hyve0.sock -device vhost-user-fs-pci,chardev=hyve-fs0,tag=hyve0 -chardev socket,id=hyve-fs1,path=/run/h/hyve1.sock"), "{line}");
            assert!(values(&inv.argv, "-append")[0].split(' ').any(|w| w == param));
            assert_eq!(inv.daemons.len(), 2);
            assert_eq!(
                inv.daemons[1].argv,
                strings(&[
                    VIRTIOFSD,
                    "--socket-path=/run/h/hyve1.sock",
                    "-o",
                    "source=/Users/me/My Project",
                    "-o",
                    "sandbox=chroot",
                    "-o",
                    "cache=auto"
                ])
            );
            // The printed script starts each and waits for its socket before QEMU.
            let script = inv.script();
            let qemu_at = script.find("qemu-system-x86_64").unwrap();
            assert!(script.find("while [ ! -S /run/h/hyve1.sock ]").unwrap() < qemu_at, "{script}");
        }
        for vmm in [Vmm::Hyperkit, Vmm::Xhyve] {
            let e = invocation(vmm, &guest(Arch::X86_64), &with).unwrap_err().to_string();
            assert!(e.contains("use vfkit or qemu"), "{e}");
        }
        let comma = RunOptions { shares: vec![Share { host: "/a,b".into(), guest: "/x".into() }], ..with.clone() };
        assert!(invocation(Vmm::Vfkit, &guest(Arch::Aarch64), &comma).unwrap_err().to_string().contains("commas"));
        let efi = RunOptions { efi: true, ..with };
        assert!(invocation(Vmm::Vfkit, &guest(Arch::Aarch64), &efi).unwrap_err().to_string().contains("drop --efi"));
        // HOSTDIR[:GUESTDIR]: GUESTDIR absolute, no `..`; without it, the host's own path.
        assert_eq!("/h:/g".parse::<Share>().unwrap(), Share { host: "/h".into(), guest: "/g".into() });
        assert_eq!("src".parse::<Share>().unwrap().guest, "");
        for bad in ["/h:g", "/h:/a/../b", ":/g"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let resolved = Share { host: dir.path().join("."), guest: String::new() }.resolve().unwrap();
        assert_eq!(resolved.guest, std::fs::canonicalize(dir.path()).unwrap().to_str().unwrap());
    }

    /// `--rosetta`: vfkit's Rosetta share on arm64 guests only, under the tag the guest mounts.
    #[test]
    fn rosetta_is_vfkits_and_arm64s() {
        let with = RunOptions { rosetta: true, ..opts() };
        let inv = invocation(Vmm::Vfkit, &guest(Arch::Aarch64), &with).unwrap();
        check_vfkit(&inv.argv);
        assert!(values(&inv.argv, "--device").contains(&"rosetta,mountTag=rosetta,install"));
        let step = String::from_utf8_lossy(crate::builtin::file("overlay/base/etc/hyve/boot.d/23-binfmt.sh").unwrap())
            .into_owned();
        assert!(step.contains("mount -t virtiofs -o ro rosetta /media/rosetta"), "{step}");
        assert!(invocation(Vmm::Vfkit, &guest(Arch::X86_64), &with).unwrap_err().to_string().contains("arm64"));
        for vmm in [Vmm::Qemu, Vmm::Hyperkit] {
            assert!(invocation(vmm, &guest(Arch::Aarch64), &with).unwrap_err().to_string().contains("only vfkit"));
        }
    }

    #[test]
    fn efi_boot_lines() {
        let fw = Firmware { code: "/fw/CODE.fd".into(), vars: "/run/VARS.fd".into() };
        let efi = RunOptions { efi: true, firmware: Some(fw), ..opts() };
        let a = shell_line(&invocation(Vmm::Qemu, &guest(Arch::X86_64), &efi).unwrap().argv);
        assert!(a.contains("-drive if=pflash,format=raw,readonly=on,file=/fw/CODE.fd -drive if=pflash,format=raw,file=/run/VARS.fd -drive file=/o/disk.img,format=raw,if=virtio"), "{a}");
        assert!(!a.contains("-kernel"), "{a}");
        let no_firmware = RunOptions { efi: true, ..opts() };
        assert!(invocation(Vmm::Qemu, &guest(Arch::X86_64), &no_firmware).is_err());
    }

    #[test]
    fn accel_resolution() {
        assert_eq!(resolve_accel(Accel::Tcg, Arch::X86_64), Accel::Tcg);
        let other = if Arch::host() == Some(Arch::X86_64) { Arch::Aarch64 } else { Arch::X86_64 };
        assert_eq!(resolve_accel(Accel::Auto, other), Accel::Tcg, "a foreign arch is always emulated");
        assert!("2376".parse::<PortForward>().is_err());
    }
}
