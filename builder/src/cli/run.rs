//! `hyve run DIR`: boot an output directory in QEMU with the serial console on stdout, or
//! `--print` the command line any supported VMM needs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyve::vmm::{self, Accel, Guest, PortForward, RunOptions, Vmm};

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
    /// A raw disk for the guest (virtio-blk)
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
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
    /// Print the command line instead of running it
    #[arg(long)]
    print: bool,
    /// Stop the VM after this many seconds (exit status 124)
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

pub fn run(a: RunArgs) -> Outcome {
    let guest = Guest::open(&a.dir)?;
    let opts = RunOptions {
        memory_mib: a.memory,
        cpus: a.cpus,
        accel: if a.vmm == Vmm::Qemu { vmm::resolve_accel(a.accel, guest.arch) } else { a.accel },
        ports: a.ports,
        disk: a.disk,
        append: a.append,
    };
    let argv = vmm::command(a.vmm, &guest, &opts)?;
    if a.print {
        println!("{}", vmm::shell_line(&argv));
        return Ok(true);
    }
    anyhow::ensure!(
        a.vmm == Vmm::Qemu,
        "hyve starts only QEMU itself; use --print for {:?} and run the printed command on the Mac",
        a.vmm
    );
    eprintln!("hyve: booting {} ({}, {} accel)", guest.dir.display(), guest.arch, opts.accel);
    let mut child = std::process::Command::new(&argv[0]).args(&argv[1..]).spawn().with_context(|| {
        format!("starting {} (install QEMU: apt-get install qemu-system-x86 qemu-system-arm)", argv[0])
    })?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if a.timeout.is_some_and(|t| started.elapsed() > Duration::from_secs(t)) {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("hyve: the guest did not finish within {} s; stopped it", a.timeout.unwrap_or_default());
            std::process::exit(124);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
