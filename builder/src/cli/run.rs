//! `hyve run DIR`: boot an output directory in QEMU with the serial console on stdout, or
//! `--print` the command line any supported VMM needs.
//!
//! SIGTERM or SIGINT asks the guest to power off and waits `--stop-timeout` seconds before
//! killing QEMU; a second signal kills it at once. The request goes two ways: `poweroff` on
//! the guest's virtio-serial control port (needs only virtio_console, so it works on every
//! arch and kernel), and QEMU's power button through its monitor (ACPI on x86; on arm64
//! `virt` a device-tree GPIO key that Alpine's virt kernel has no driver for).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyve::vmm::{self, Accel, Guest, PortForward, RunOptions, Share, Vmm};

use super::Outcome;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Output directory of `hyve build` (out/<profile>-<arch>)
    dir: PathBuf,
    /// qemu (started here), or vfkit / hyperkit / xhyve (with --print)
    #[arg(long, default_value = "qemu")]
    vmm: Vmm,
    /// kvm, tcg, hvf, or auto: KVM only when it really works, else TCG
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// A raw disk for the guest (virtio-blk); `hyve disk create` makes a data disk. Repeatable
    #[arg(long = "disk", value_name = "FILE")]
    disks: Vec<PathBuf>,
    /// Share a host folder with the guest over virtio-fs (vfkit, QEMU on Linux): mounted at
    /// GUESTDIR, by default at the host's own path. Repeatable
    #[arg(long = "share", value_name = "HOSTDIR[:GUESTDIR]")]
    shares: Vec<Share>,
    /// vfkit on Apple silicon: share Rosetta with an arm64 guest, which runs x86_64 programs
    /// (`docker run --platform linux/amd64`) through it
    #[arg(long)]
    rosetta: bool,
    /// Forward 127.0.0.1:HOST to the guest's GUEST port (TCP). Repeatable
    #[arg(long = "port", value_name = "HOST:GUEST")]
    ports: Vec<PortForward>,
    #[arg(long, default_value_t = 1024, value_name = "MiB")]
    memory: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Extra kernel command line arguments
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
    /// Boot disk.img through UEFI firmware (OVMF / AAVMF; vfkit's EFI loader) instead of
    /// the kernel directly
    #[arg(long)]
    efi: bool,
    /// The UEFI firmware's code image (default: the distribution's OVMF / AAVMF)
    #[arg(long, value_name = "FILE", requires = "efi")]
    firmware: Option<PathBuf>,
    /// One more argument for QEMU, appended to its command line (e.g. `--qemu-arg=-rtc
    /// --qemu-arg=base=2001-01-01`). Repeatable
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// Where printed macOS command lines keep what must outlive a run (vfkit's EFI variable
    /// store, the Docker API's unix sockets) [default: DIR.vm beside the output directory]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print the command line instead of running it
    #[arg(long)]
    print: bool,
    /// Stop the VM after this many seconds (exit status 124)
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// After SIGTERM/SIGINT, how long the guest gets to power off before QEMU is killed
    #[arg(long, default_value_t = 90, value_name = "SECS")]
    stop_timeout: u64,
}

pub fn run(a: RunArgs) -> Outcome {
    let guest = Guest::open(&a.dir)?;
    if !a.efi {
        guest.check_root()?;
    }
    anyhow::ensure!(
        !(a.efi && a.append.is_some()),
        "--append does not reach an EFI boot: the command line is the UKI's .cmdline section (change `cmdline` in the profile and build again)"
    );
    anyhow::ensure!(a.qemu_args.is_empty() || a.vmm == Vmm::Qemu, "--qemu-arg is for QEMU, not {:?}", a.vmm);
    let monitor_dir = tempfile::Builder::new().prefix("hyve-run-").tempdir().context("creating a temp dir")?;
    let monitor = monitor_dir.path().join("monitor.sock");
    let control_path = monitor_dir.path().join("control.sock");
    let starts_qemu = a.vmm == Vmm::Qemu && !a.print;
    // Hypervisor.framework runs guests of the Mac's own arch only (vfkit checks nothing itself).
    anyhow::ensure!(
        a.vmm == Vmm::Qemu || !cfg!(target_os = "macos") || hyve::apk::Arch::host() == Some(guest.arch),
        "{:?} on this Mac cannot run {} guests: build for this Mac's arch (hyve build --arch {}) or use qemu",
        a.vmm,
        guest.arch,
        hyve::apk::Arch::host().map_or("?".to_string(), |h| h.to_string())
    );
    let needed = vmm::memory_needed(&guest)?;
    // A root image stays on disk; only the boot initramfs unpacks into RAM.
    let unpacked = if guest.root.is_some() { "its boot initramfs (the root image stays on disk)" } else { "its root" };
    anyhow::ensure!(
        u64::from(a.memory) >= needed.total_mib(),
        "--memory {} MiB cannot hold this guest: {unpacked} unpacks to {} MiB of RAM, the {} MiB initrd is held while it unpacks, and the kernel and services need about {} MiB; give --memory {} or more",
        a.memory,
        needed.root_mib,
        needed.initrd_mib,
        vmm::KERNEL_RESERVE_MIB,
        needed.total_mib()
    );
    let state_dir = a.state_dir.clone().unwrap_or_else(|| {
        let mut name = guest.dir.file_name().unwrap_or_default().to_os_string();
        name.push(".vm");
        guest.dir.with_file_name(name)
    });
    let mut setup = Vec::new();
    let firmware = if a.efi && a.vmm == Vmm::Qemu {
        let vars = if a.print { state_dir.join("efi-vars.fd") } else { monitor_dir.path().join("VARS.fd") };
        Some(firmware(&guest, a.firmware.as_deref(), vars, a.print, &mut setup)?)
    } else {
        None
    };
    let opts = RunOptions {
        memory_mib: a.memory,
        cpus: a.cpus,
        accel: if a.vmm == Vmm::Qemu { vmm::resolve_accel(a.accel, guest.arch) } else { a.accel },
        ports: a.ports,
        disks: a.disks,
        append: a.append,
        monitor: starts_qemu.then(|| monitor.clone()),
        control: starts_qemu.then(|| control_path.clone()),
        efi: a.efi,
        firmware,
        socket_dir: if a.print { state_dir.clone() } else { monitor_dir.path().to_path_buf() },
        state_dir,
        shares: a.shares.into_iter().map(Share::resolve).collect::<Result<_, _>>()?,
        rosetta: a.rosetta,
    };
    let mut invocation = vmm::invocation(a.vmm, &guest, &opts)?;
    invocation.argv.extend(a.qemu_args);
    invocation.setup.splice(0..0, setup);
    if a.print {
        print!("{}", invocation.script());
        return Ok(true);
    }
    let argv = invocation.argv;
    anyhow::ensure!(
        a.vmm == Vmm::Qemu,
        "hyve starts only QEMU itself; use --print for {:?} and run the printed command on the Mac",
        a.vmm
    );
    // QEMU connects to it as it starts; accepted in the loop below.
    let control = std::os::unix::net::UnixListener::bind(&control_path)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("listening on {}", control_path.display()))?;
    let mut control_stream = None;
    let signals = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_usize(sig, Arc::clone(&signals), 1).context("installing signal handlers")?;
    }
    eprintln!("hyve: booting {} ({}, {} accel)", guest.dir.display(), guest.arch, opts.accel);
    let _daemons = start_daemons(&invocation.daemons, monitor_dir.path())?;
    let mut child = child_command(&argv).spawn().with_context(|| {
        format!("starting {} (install QEMU: apt-get install qemu-system-x86 qemu-system-arm)", argv[0])
    })?;
    let started = Instant::now();
    // When the first SIGTERM/SIGINT asked the guest to power off; a second one kills QEMU.
    let mut stop_requested: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if control_stream.is_none() {
            control_stream = control.accept().ok().map(|(stream, _)| stream);
        }
        if signals.swap(0, Ordering::SeqCst) > 0 {
            if stop_requested.is_none() {
                eprintln!("hyve: asking the guest to power off; signal again to stop it at once");
                request_poweroff(control_stream.as_mut());
                press_power_button(&monitor);
                stop_requested = Some(Instant::now());
            } else {
                eprintln!("hyve: stopping QEMU now");
                let _ = child.kill();
            }
        }
        let overdue = if stop_requested.is_some_and(|t| t.elapsed() > Duration::from_secs(a.stop_timeout)) {
            Some(format!("the guest did not power off within {} s", a.stop_timeout))
        } else if a.timeout.is_some_and(|t| started.elapsed() > Duration::from_secs(t)) {
            Some(format!("the guest did not finish within {} s", a.timeout.unwrap_or_default()))
        } else {
            None
        };
        if let Some(why) = overdue {
            let _ = child.kill();
            let _ = child.wait();
            return Err(super::ExitWith { code: 124, message: format!("{why}; stopped it") }.into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(status.success())
}

/// `argv` as a child that must not outlive `hyve run`, however it ends (even SIGKILL).
fn child_command(argv: &[String]) -> std::process::Command {
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// QEMU's virtiofsd processes, each serving its socket before QEMU starts (their output in
/// `logs`); killed when dropped.
struct Daemons(Vec<std::process::Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_daemons(daemons: &[vmm::Daemon], logs: &Path) -> anyhow::Result<Daemons> {
    if !daemons.is_empty() {
        let program = Path::new(vmm::VIRTIOFSD);
        anyhow::ensure!(
            program.is_file(),
            "--share under QEMU needs {} (QEMU's virtiofsd; Debian 12: apt-get install qemu-system-common; Debian 13, Ubuntu 24.04: apt-get install virtiofsd)",
            program.display()
        );
        // SAFETY: geteuid has no preconditions.
        anyhow::ensure!(
            unsafe { libc::geteuid() } == 0,
            "--share under QEMU runs {}, which must run as root: run hyve as root, or use --print and run the script as root",
            program.display()
        );
    }
    let mut started = Daemons(Vec::new());
    for (i, d) in daemons.iter().enumerate() {
        let program = Path::new(&d.argv[0]);
        let log = logs.join(format!("virtiofsd-{i}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = child_command(&d.argv);
        cmd.stdout(file.try_clone()?).stderr(file);
        started.0.push(cmd.spawn().with_context(|| format!("starting {}", program.display()))?);
        let since = Instant::now();
        while !d.socket.exists() {
            let exited = started.0.last_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || since.elapsed() > Duration::from_secs(10) {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                anyhow::bail!("{} did not serve {}: {}", program.display(), d.socket.display(), said.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(started)
}

/// QEMU's firmware to boot `guest`'s disk with, and its variable store at `vars`, a copy of
/// the firmware's template (firmware writes to it; the template must stay pristine). Running:
/// copied now. Printing: the copy is a command of `setup`, so printing writes nothing.
/// aarch64's `virt` needs both flash images the same size (64 MiB for QEMU's own edk2
/// builds, roms/edk2-build.config), so a smaller store is padded to the code's size.
fn firmware(
    guest: &Guest,
    code: Option<&Path>,
    vars: PathBuf,
    print: bool,
    setup: &mut Vec<String>,
) -> anyhow::Result<vmm::Firmware> {
    let disk = guest.dir.join("disk.img");
    anyhow::ensure!(
        disk.is_file(),
        "{}: no disk.img; add \"disk\" to output.formats in the profile and build again",
        guest.dir.display()
    );
    let candidates = vmm::firmware_candidates(guest.arch);
    let (code, template) = match code {
        Some(c) => (c.to_path_buf(), candidates.iter().map(|(_, v)| v.clone()).find(|v| v.is_file())),
        None => {
            let Some((c, v)) = candidates.iter().find(|(c, v)| c.is_file() && v.is_file()) else {
                let looked = candidates.iter().map(|(c, _)| c.display().to_string()).collect::<Vec<_>>();
                anyhow::bail!("{} (looked for {})", vmm::VmmError::NoFirmware { arch: guest.arch }, looked.join(", "));
            };
            (c.clone(), Some(v.clone()))
        }
    };
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).with_context(|| format!("reading {}", p.display()));
    let code_len = len(&code)?;
    let template_len = template.as_deref().map(len).transpose()?.unwrap_or(0);
    let padded = guest.arch == hyve::apk::Arch::Aarch64 || template.is_none();
    let shown = |p: &Path| p.display().to_string();
    if print {
        // Kept across runs of the printed script: copied only while there is none.
        if let Some(dir) = vars.parent() {
            setup.push(vmm::sh(&["mkdir", "-p", &shown(dir)]));
        }
        let create = match &template {
            Some(t) => vmm::sh(&["cp", &shown(t), &shown(&vars)]),
            None => vmm::sh(&["touch", &shown(&vars)]),
        };
        setup.push(format!("[ -e {} ] || {create}", vmm::sh(&[&shown(&vars)])));
        if padded && template_len < code_len {
            setup.push(vmm::sh(&["truncate", "-s", &code_len.to_string(), &shown(&vars)]));
        }
    } else {
        let made = match &template {
            Some(t) => std::fs::copy(t, &vars).map(drop),
            None => std::fs::File::create(&vars).map(drop),
        };
        made.with_context(|| format!("writing the variable store {}", vars.display()))?;
        if padded && template_len < code_len {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&vars)
                .and_then(|f| f.set_len(code_len))
                .with_context(|| format!("padding the variable store {} to {code_len} bytes", vars.display()))?;
        }
    }
    Ok(vmm::Firmware { code, vars })
}

/// `poweroff` on the guest's control port (read by overlay/base's `03-host-control`).
fn request_poweroff(control: Option<&mut std::os::unix::net::UnixStream>) {
    match control {
        Some(stream) => {
            if let Err(e) = stream.set_nonblocking(false).and_then(|()| stream.write_all(b"poweroff\n")) {
                eprintln!("hyve: cannot write to the guest's control port: {e}");
            }
        }
        None => eprintln!("hyve: QEMU never connected the guest's control port"),
    }
}

/// QEMU's `system_powerdown`: the ACPI power button (x86), the GPIO power key (arm64 virt).
fn press_power_button(monitor: &Path) {
    match std::os::unix::net::UnixStream::connect(monitor) {
        Ok(mut s) => {
            let _ = s.write_all(b"system_powerdown\n");
            // Give QEMU a moment to read the command before the connection closes.
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(e) => eprintln!("hyve: cannot reach QEMU's monitor at {}: {e}", monitor.display()),
    }
}
