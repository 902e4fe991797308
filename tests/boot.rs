//! Boot tests: the real profiles built against a mirror — by default the test mirror
//! (Debian's binaries repackaged by `make mirror`, a TEST FIXTURE), or Alpine's own
//! (`HYVE_TEST_MIRROR`, see `TestMirror`; `make test-alpine`) — and booted with `hyve run`
//! under QEMU, x86_64 and aarch64. Nothing here may depend on what only the test mirror has:
//! packages are named as Alpine names them and fetched through hyve. `base` must reach
//! userspace, get a DHCP address and power off cleanly, and reach userspace again from its EFI disk image alone (OVMF / AAVMF, UKI); `minimal`
//! (the docker host) is driven from the host with the docker CLI over TLS or plain TCP,
//! across two boots with a data disk from `hyve disk create`. Console logs are kept in
//! target/boot-logs/.
//!
//! Skipped (with a message) when QEMU or the mirror is missing, unless
//! HYVE_REQUIRE_BOOT_TESTS=1, which turns a skip into a failure (CI sets it).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The mirror the boot tests build from, and the key its indexes are signed with.
///
/// `HYVE_TEST_MIRROR`: a mirror URL (default: `file://` the test mirror `make mirror` writes,
/// a TEST FIXTURE). `HYVE_TEST_MIRROR_KEY`: a public key file to trust besides Alpine's, or
/// `alpine` for Alpine's keys alone (default: the test mirror's key for a `file://` mirror,
/// `alpine` for any other). `HYVE_TEST_LOCKS`: a directory of `PROFILE.lock` files whose
/// versions each build starts from (the lock-update workflow tests its new locks so).
struct TestMirror {
    url: String,
    key: Option<PathBuf>,
}

impl TestMirror {
    fn from_env() -> TestMirror {
        let root = workspace();
        let url = std::env::var("HYVE_TEST_MIRROR")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| format!("file://{}", root.join("target/test-mirror").display()));
        let key = match std::env::var("HYVE_TEST_MIRROR_KEY").ok().filter(|k| !k.is_empty()) {
            Some(k) if k == "alpine" => None,
            Some(k) => Some(PathBuf::from(k)),
            None if url.starts_with("file://") => Some(root.join("tests/keys/hyve-test-mirror.rsa.pub")),
            None => None,
        };
        TestMirror { url, key }
    }

    /// `--mirror URL [--key FILE]`.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--mirror".to_string(), self.url.clone()];
        if let Some(key) = &self.key {
            args.extend(["--key".to_string(), s(key)]);
        }
        args
    }

    /// `Some(reason)` when a local mirror lacks `arch` (a remote one is found out by the build).
    fn missing(&self, arch: &str) -> Option<String> {
        let dir = Path::new(self.url.strip_prefix("file://")?);
        let index = dir.join(format!("{}/main/{arch}/APKINDEX.tar.gz", stock_branch()));
        (!index.is_file()).then(|| format!("no {arch} repository at {} (run `make mirror`)", dir.display()))
    }
}

/// The Alpine branch the stock profiles pin.
fn stock_branch() -> String {
    let base: toml::Value =
        toml::from_str(&std::fs::read_to_string(workspace().join("profiles/base.toml")).unwrap()).unwrap();
    base["branch"].as_str().unwrap().to_string()
}

/// `Some(reason)` when this test cannot run here.
fn missing(qemu: &str, arch: &str) -> Option<String> {
    let has_qemu = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(qemu).is_file()));
    if !has_qemu {
        return Some(format!("{qemu} is not installed (apt-get install qemu-system-x86 qemu-system-arm)"));
    }
    TestMirror::from_env().missing(arch)
}

fn hyve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hyve"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("HYVE_MIRROR")
        .output()
        .unwrap()
}

/// Skips (or, with HYVE_REQUIRE_BOOT_TESTS=1, fails) when this test cannot run here.
fn can_run(arch: &str, qemu: &str) -> bool {
    match missing(qemu, arch) {
        None => true,
        Some(reason) if std::env::var("HYVE_REQUIRE_BOOT_TESTS").as_deref() == Ok("1") => {
            panic!("boot test {arch} cannot run and HYVE_REQUIRE_BOOT_TESTS=1: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIPPED boot test {arch}: {reason}");
            false
        }
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `hyve build` of `profile` (the stock profile `stock`, or one extending it) against the
/// mirror into `out`, with a private lock (started from `HYVE_TEST_LOCKS/stock.lock`
/// when given) and a private cache, `tmp/cache`.
fn build(profile: &Path, stock: &str, arch: &str, tmp: &Path, out: &Path) {
    let lock = tmp.join(format!("{arch}.lock"));
    if let Some(locks) = std::env::var_os("HYVE_TEST_LOCKS").filter(|l| !l.is_empty()) {
        let seed = Path::new(&locks).join(format!("{stock}.lock"));
        if !lock.exists() {
            std::fs::copy(&seed, &lock).unwrap_or_else(|e| panic!("HYVE_TEST_LOCKS: {}: {e}", seed.display()));
        }
    }
    let o = hyve_on_mirror("build", profile, arch, &lock, &tmp.join("cache"), &["--out", &s(out)]);
    assert!(o.status.success(), "build failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// `hyve COMMAND --profile PROFILE --arch ARCH` against the mirror with `lock` and `cache`,
/// then `extra`.
fn hyve_on_mirror(
    command: &str,
    profile: &Path,
    arch: &str,
    lock: &Path,
    cache: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args =
        vec![command.to_string(), "--profile".to_string(), s(profile), "--arch".to_string(), arch.to_string()];
    args.extend(TestMirror::from_env().args());
    args.extend(["--lockfile".to_string(), s(lock), "--cache-dir".to_string(), s(cache)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    hyve(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The named packages for `arch` from the mirror, fetched and verified by `hyve fetch`
/// into the cache `tmp/cache`: each package's file in the cache.
fn fetch_packages(packages: &[&str], arch: &str, tmp: &Path) -> BTreeMap<String, PathBuf> {
    let dir = tmp.join(format!("fetch-{arch}"));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("packages.toml");
    let names: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &profile,
        format!(
            // (The kernel a profile boots is part of its world: here, one of the packages.)
            "branch = {:?}\nrepositories = [\"main\", \"community\"]\narches = [{arch:?}]\npackages = [{}]\n\
             [kernel]\npackage = {}\n",
            stock_branch(),
            names.join(", "),
            names[0]
        ),
    )
    .unwrap();
    let cache = tmp.join("cache");
    let lock = dir.join("packages.lock");
    let o = hyve_on_mirror("fetch", &profile, arch, &lock, &cache, &[]);
    assert!(o.status.success(), "hyve fetch {packages:?} for {arch}: {}", String::from_utf8_lossy(&o.stderr));
    let lock = hyve::lock::LockFile::read(&lock).unwrap().unwrap();
    lock.arch[arch]
        .packages
        .iter()
        .filter(|p| packages.contains(&p.name.as_str()))
        .map(|p| (p.name.clone(), cache.join("blobs/sha256").join(&p.sha256)))
        .collect()
}

fn log_path(name: &str) -> PathBuf {
    let logs = workspace().join("target/boot-logs");
    std::fs::create_dir_all(&logs).unwrap();
    logs.join(format!("{name}.log"))
}

fn boot_base(arch: &str, qemu: &str) {
    if !can_run(arch, qemu) {
        return;
    }
    let root = workspace();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    build(&root.join("profiles/base.toml"), "base", arch, tmp.path(), &out);

    // An RTC from before the image was built, and the host's time on the command line (what
    // a VMM without an RTC gets): the guest takes the latter.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let append = format!("hyve.poweroff hyve.time={now}");
    let started = std::time::Instant::now();
    let o = hyve(&[
        "run",
        &s(&out),
        "--accel",
        "auto",
        "--append",
        &append,
        "--qemu-arg=-rtc",
        "--qemu-arg=base=2001-01-01T00:00:00",
        "--timeout",
        "180",
    ]);
    let elapsed = started.elapsed();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let log_path = log_path(&format!("base-{arch}"));
    std::fs::write(&log_path, &log).unwrap();
    let clean = log.replace('\r', "");
    if !o.status.success() {
        note_guest_stall(&clean, &log_path);
    }
    let check = |what: &str, needle: &str| {
        assert!(clean.contains(needle), "{arch}: {what}: {needle:?} not on the console (log: {})", log_path.display());
    };
    check("init reached userspace", "hyve: init reached userspace (HYVE-BOOT-OK)");
    check("root moved to a tmpfs", "hyve: root on tmpfs");
    check("clock from the command line", "hyve: clock from the kernel command line (hyve.time)");
    check("DHCP from QEMU", "hyve: eth0 10.0.2.15/24 (DHCP)");
    check("balloon bound with free page reporting", "hyve: memory balloon: free page reporting on");
    check("shutdown ran", "hyve: shutdown complete");
    check("clean power-off", "reboot: Power down");
    // Under TCG (`hyve run` adds `hyve.emulated`) an initramfs root boots without
    // address-space randomization too (overlay/README.md, "Emulated CPU").
    let unrandomized = "hyve: emulated CPU: booting without address-space randomization";
    let emulated = clean.contains(", tcg accel)");
    assert_eq!(clean.contains(unrandomized), emulated, "{arch}: {unrandomized:?} on the console under TCG only");
    assert!(o.status.success(), "{arch}: QEMU exited with {:?} (log: {})", o.status, log_path.display());
    eprintln!("boot test {arch}: powered off cleanly after {:.1} s", elapsed.as_secs_f64());
    // --timeout ends the run with timeout(1)'s status 124, and like every other exit it
    // leaves nothing in TMPDIR.
    let run_tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_hyve"))
        .args(["run", &s(&out), "--accel", "auto", "--timeout", "2"])
        .env("TMPDIR", run_tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(124), "{arch}: --timeout: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not finish within 2 s; stopped it"));
    let left: Vec<_> = std::fs::read_dir(run_tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{arch}: hyve run left {left:?} in TMPDIR");

    // The same guest with a squashfs root, from disk.img alone, through UEFI firmware and the
    // UKI on its ESP: the small initrd inside the UKI finds the image in disk.img's hyve-root
    // partition (the UKI's command line is fixed, so the VM is stopped once the marker and
    // DHCP are seen).
    let profile = tmp.path().join("base-squashfs.toml");
    let base = root.join("profiles/base.toml");
    std::fs::write(&profile, format!("extends = \"{}\"\n[output]\nroot = \"squashfs\"\n", base.display())).unwrap();
    let squashfs_out = tmp.path().join("out-squashfs");
    build(&profile, "base", arch, tmp.path(), &squashfs_out);
    let started = std::time::Instant::now();
    let mut vm = Vm::start(&squashfs_out, &format!("base-{arch}-efi"), &["--efi".to_string()]);
    vm.wait_for("hyve: root /dev/vda2 (squashfs, read-only) under a tmpfs overlay", 600);
    vm.wait_for("hyve: init reached userspace (HYVE-BOOT-OK)", 120);
    vm.wait_for("hyve: root: squashfs image", 60);
    vm.wait_for("hyve: eth0 10.0.2.15/24 (DHCP)", 120);
    // The UKI's command line is its own: no `hyve.emulated`, whatever the accelerator.
    assert!(!vm.console().contains("hyve: emulated CPU"), "{arch}: the UKI boot heard of an emulated CPU");
    eprintln!("boot test {arch}: EFI disk boot reached userspace after {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn base_boots_on_x86_64() {
    retry_on_guest_stall(|| boot_base("x86_64", "qemu-system-x86_64"));
}

#[test]
fn base_boots_on_aarch64() {
    retry_on_guest_stall(|| boot_base("aarch64", "qemu-system-aarch64"));
}

/// A free TCP port on 127.0.0.1 (for QEMU's host forwards).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The package unpacked (an .apk is a gzip'ed tar stream) into `dir/.unpack-NAME`.
fn unpack_apk(apk: &Path, dir: &Path) -> PathBuf {
    let unpack = dir.join(format!(".unpack-{}", apk.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&unpack).unwrap();
    let o = Command::new("tar")
        .args(["--warning=no-unknown-keyword", "-xzif"])
        .arg(apk)
        .arg("-C")
        .arg(&unpack)
        .output()
        .unwrap();
    assert!(o.status.success(), "tar -x {}: {}", apk.display(), String::from_utf8_lossy(&o.stderr));
    unpack
}

/// Where `path` (relative, as the guest names it) is in an unpacked package: at `path`, or
/// at `usr/path` in a package built for a merged /usr (Alpine from 3.23 on), following
/// symlinks inside the package (an absolute target is the package's own).
fn file_in_package(unpacked: &Path, path: &str) -> PathBuf {
    for start in [path.to_string(), format!("usr/{path}")] {
        let mut at = PathBuf::from(start);
        for _ in 0..16 {
            let Ok(target) = std::fs::read_link(unpacked.join(&at)) else { break };
            at = match target.strip_prefix("/") {
                Ok(absolute) => absolute.to_path_buf(),
                Err(_) => at.parent().unwrap().join(target),
            };
        }
        if unpacked.join(&at).is_file() {
            return unpacked.join(at);
        }
    }
    panic!("no {path} (nor usr/{path}) in {}", unpacked.display())
}

/// The file `path` of a package, copied to `dest`.
fn file_from_apk(apk: &Path, path: &str, dest: &Path) {
    let unpacked = unpack_apk(apk, dest.parent().unwrap());
    std::fs::copy(file_in_package(&unpacked, path), dest).unwrap();
}

/// The docker CLI for the host's arch, from the mirror's docker-cli, as `tmp/docker`. A CLI
/// whose program interpreter the host lacks (Alpine's is linked against musl) runs through
/// the one in the mirror's musl package, from a wrapper script.
fn host_docker_cli(tmp: &Path) -> PathBuf {
    let host_arch = if cfg!(target_arch = "aarch64") { "aarch64" } else { "x86_64" };
    let apks = fetch_packages(&["docker-cli", "musl"], host_arch, tmp);
    let binary = tmp.join("docker-cli");
    file_from_apk(&apks["docker-cli"], "usr/bin/docker", &binary);
    let cli = tmp.join("docker");
    match interpreter(&std::fs::read(&binary).unwrap()) {
        Some(loader) if !Path::new(&loader).exists() => {
            let musl = unpack_apk(&apks["musl"], tmp);
            let loader = file_in_package(&musl, loader.trim_start_matches('/'));
            // musl's loader runs a program named on its command line, and is its libc too.
            let script = format!("#!/bin/sh\nexec '{}' '{}' \"$@\"\n", loader.display(), binary.display());
            std::fs::write(&cli, script).unwrap();
            std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        _ => std::fs::rename(&binary, &cli).unwrap(),
    }
    cli
}

/// `bin/busybox.static` of the mirror's busybox-static for `arch`, as `dest`.
fn static_busybox(arch: &str, tmp: &Path, dest: &Path) {
    file_from_apk(&fetch_packages(&["busybox-static"], arch, tmp)["busybox-static"], "bin/busybox.static", dest);
}

/// The program interpreter an ELF file asks for (`None`: it is linked statically).
fn interpreter(elf: &[u8]) -> Option<String> {
    assert!(elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1, "not a 64-bit little-endian ELF");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, size, count) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count)
        .map(|i| phoff + i * size)
        .find(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == PT_INTERP)
        .map(|h| {
            let path = &elf[u64_at(h + 8)..][..u64_at(h + 32)];
            String::from_utf8_lossy(path).trim_end_matches('\0').to_string()
        })
}

/// The mirror is Alpine where the guest depends on it (for the test mirror, see
/// tests/mirror/README.md; for Alpine's, a check that it still is what the guest expects):
/// busybox linked dynamically beside a static busybox with the applets the test images use,
/// iptables on the nftables backend.
#[test]
fn mirror_is_alpine_where_the_guest_depends_on_it() {
    for (arch, qemu) in [("x86_64", "qemu-system-x86_64"), ("aarch64", "qemu-system-aarch64")] {
        if !can_run(arch, qemu) {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let apks = fetch_packages(&["busybox", "busybox-static", "iptables"], arch, t);
        file_from_apk(&apks["busybox"], "bin/busybox", &t.join("busybox"));
        assert!(interpreter(&std::fs::read(t.join("busybox")).unwrap()).is_some(), "{arch}: busybox must be dynamic");
        file_from_apk(&apks["busybox-static"], "bin/busybox.static", &t.join("busybox.static"));
        assert_eq!(interpreter(&std::fs::read(t.join("busybox.static")).unwrap()), None, "{arch}: busybox.static");
        if cfg!(target_arch = "x86_64") == (arch == "x86_64") {
            // The test images' busybox (the host runs it here) has every applet they use.
            let o = Command::new(t.join("busybox.static")).arg("--list").output().unwrap();
            let listed = String::from_utf8_lossy(&o.stdout);
            for applet in TEST_IMAGE_APPLETS {
                assert!(listed.lines().any(|l| l == applet), "{arch}: busybox-static has no {applet}: {listed}");
            }
        }
        let iptables = unpack_apk(&apks["iptables"], t);
        for tool in ["iptables", "ip6tables"] {
            let target = std::fs::read_link(iptables.join("usr/sbin").join(tool)).unwrap();
            assert_eq!(target, Path::new("xtables-nft-multi"), "{arch}: {tool}");
        }
    }
}

/// An SNTP server on the host's loopback, answering with the host's time (RFC 4330, mode 4,
/// stratum 1) once `answering` and until it is dropped; the guest reaches it as 10.0.2.2
/// through QEMU's network.
struct NtpServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answering: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NtpServer {
    fn start(answering: bool) -> NtpServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let (stop, answering) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(answering)));
        let (stopped, answers) = (stop.clone(), answering.clone());
        std::thread::spawn(move || {
            let mut request = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut request) else { continue };
                if n < 48 || request[0] & 7 != 3 || !answers.load(Ordering::Relaxed) {
                    continue; // not a client request, or not answering yet
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                let ntp = |d: std::time::Duration| {
                    let secs = d.as_secs() + 2_208_988_800; // 1900 to 1970
                    ((secs << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)).to_be_bytes()
                };
                let mut reply = [0u8; 48];
                reply[0] = (4 << 3) | 4; // no leap warning, version 4, server
                reply[1] = 1; // stratum 1
                reply[2] = request[2];
                reply[3] = (-20i8) as u8; // precision, about a microsecond
                reply[12..16].copy_from_slice(b"HYVE");
                reply[16..24].copy_from_slice(&ntp(now - std::time::Duration::from_secs(1)));
                reply[24..32].copy_from_slice(&request[40..48]); // origin: the client's transmit time
                reply[32..40].copy_from_slice(&ntp(now));
                reply[40..48].copy_from_slice(&ntp(now));
                let _ = socket.send_to(&reply, peer);
            }
        });
        NtpServer { port, stop, answering }
    }

    fn answer(&self) {
        self.answering.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A running `hyve run` whose console goes to a log file.
struct Vm {
    child: std::process::Child,
    log: PathBuf,
    name: String,
    /// Set when the VM is dropped: its stall watcher ends.
    gone: Arc<AtomicBool>,
    /// `hyve run` as a pidfd, which no signal sent through it can miss for another process
    /// once this one has been reaped (None where the kernel has no pidfd_open).
    pidfd: Option<Arc<std::os::fd::OwnedFd>>,
}

/// The guest kernel's words for CPUs that stopped making progress (RCU's stall detector in
/// its three reports, and the soft-lockup watchdog). Under QEMU's multi-threaded TCG on a small
/// host a vCPU now and then misses an interrupt (a timer during the kernel's start, an IPI
/// while runc starts a container) and the guest never recovers (tests/mirror/README.md,
/// "Hangs under TCG"). Only stalls under TCG are retried.
const GUEST_STALLS: [&str; 4] = [
    "detected stalls on CPUs/tasks",
    "detected expedited stalls on CPUs/tasks",
    "self-detected stall on CPU",
    "BUG: soft lockup",
];

/// How many stall reports `console` holds. A stall the guest recovers from is reported once;
/// one it does not is reported again every 20-60 s.
fn stall_reports(console: &str) -> usize {
    GUEST_STALLS.iter().map(|m| console.matches(m).count()).sum()
}

/// The markers match what stalled guest kernels printed on this host (Debian's 6.1, x86_64
/// under TCG) and RCU's other reports, and nothing a healthy boot prints.
#[test]
fn guest_stall_markers_match_real_stalls() {
    for line in [
        "[   22.938945] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
        "[   64.662119] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [exe:533]",
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {",
    ] {
        assert!(stall_reports(line) >= 1, "{line}");
    }
    for line in [
        "hyve: init reached userspace (HYVE-BOOT-OK)",
        "rcu: Hierarchical SRCU implementation.",
        "hyve: stopped 30-dockerd",
    ] {
        assert_eq!(stall_reports(line), 0, "{line}");
    }
}

thread_local! {
    /// Set by `retry_on_guest_stall` around a test: raised when one of its guests stalled.
    static STALLED: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
}

/// A line on the test's stderr that libtest does not capture, so a retried test that passes
/// still shows in the CI log.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs a boot test once more, from the start, when it failed and one of its guests' kernels
/// had stalled under TCG (`GUEST_STALLS`): that is QEMU's TCG on this host, not the image. A
/// second failure fails the test, stall or not. The stalled console stays in
/// target/boot-logs as NAME.stalled.log.
fn retry_on_guest_stall(test: impl Fn()) {
    let stalled = Arc::new(AtomicBool::new(false));
    STALLED.with(|s| *s.borrow_mut() = Some(stalled.clone()));
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&test));
    match first {
        Ok(()) => {}
        Err(_) if stalled.load(Ordering::SeqCst) => {
            say("boot test: a guest kernel stalled under TCG (see the .stalled.log); running the test once more");
            STALLED.with(|s| *s.borrow_mut() = Some(Arc::new(AtomicBool::new(false))));
            test();
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether `console` shows a guest kernel that stalled under TCG (`hyve run`'s first line
/// names the accelerator); if so, keeps it as NAME.stalled.log beside `log` and raises the
/// running test's flag.
fn note_guest_stall(console: &str, log: &Path) -> bool {
    if stall_reports(console) == 0 || !console.contains(", tcg accel)") {
        return false;
    }
    let kept = log.with_extension("stalled.log");
    let _ = std::fs::write(&kept, console);
    say(&format!("boot test: the guest kernel stalled under TCG (log: {})", kept.display()));
    STALLED.with(|s| s.borrow().as_ref().map(|flag| flag.store(true, Ordering::SeqCst)));
    true
}

/// Stops `hyve run` at once, as a user would: SIGTERM asks the guest to power off, a second
/// one makes hyve stop QEMU now and remove its runtime directory (SIGKILL would leave that in
/// TMPDIR).
fn stop_at_once(pidfd: &std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    for _ in 0..2 {
        // SAFETY: a pidfd, a signal number, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGTERM,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// A console log as text, whatever bytes firmware or the serial line put in it.
fn read_console(log: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).replace('\r', "")
}

impl Vm {
    fn start(out: &Path, name: &str, args: &[String]) -> Vm {
        let mut run = Command::new(env!("CARGO_BIN_EXE_hyve"));
        run.arg("run").arg(out).args(["--accel", "auto", "--memory", "2048", "--timeout", "900"]).args(args);
        Self::start_command(run, name)
    }

    /// `command` (a VMM with its console on stdout) as the VM.
    fn start_command(mut command: Command, name: &str) -> Vm {
        let log = log_path(name);
        let file = std::fs::File::create(&log).unwrap();
        let child =
            command.stdin(std::process::Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
        let pidfd = (fd >= 0).then(|| Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }));
        let gone = Arc::new(AtomicBool::new(false));
        Self::watch_for_stalls(pidfd.clone(), log.clone(), gone.clone());
        Vm { child, log, name: name.to_string(), gone, pidfd }
    }

    /// Stops the VM when its kernel stalls under TCG for good (`GUEST_STALLS`, reported twice),
    /// so that a test waiting on it (a docker command has no time limit) fails then, not at its
    /// timeouts.
    fn watch_for_stalls(pidfd: Option<Arc<std::os::fd::OwnedFd>>, log: PathBuf, gone: Arc<AtomicBool>) {
        let flag = STALLED.with(|s| s.borrow().clone());
        std::thread::spawn(move || {
            while !gone.load(Ordering::SeqCst) {
                let console = read_console(&log);
                if stall_reports(&console) >= 2 {
                    STALLED.with(|s| *s.borrow_mut() = flag);
                    if note_guest_stall(&console, &log) {
                        if let Some(pidfd) = &pidfd {
                            stop_at_once(pidfd);
                        }
                    }
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
    }

    fn console(&self) -> String {
        read_console(&self.log)
    }

    /// Waits up to `secs` for `needle` on the console.
    fn wait_for(&mut self, needle: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if self.console().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{}: the VM exited ({status}) before {needle:?} (log: {})", self.name, self.log.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = self.child.kill();
        panic!("{}: {needle:?} not on the console within {secs} s (log: {})", self.name, self.log.display());
    }

    fn assert_console(&self, what: &str, needle: &str) {
        assert!(
            self.console().contains(needle),
            "{}: {what}: {needle:?} not on the console (log: {})",
            self.name,
            self.log.display()
        );
    }

    /// Waits for QEMU to exit after `power_off` and checks the whole console: no private key
    /// on it, the host's request read, the data disk unmounted before the power-off, `hyve run` done
    /// well inside its stop timeout (else it exits 124).
    fn wait_powered_off(&mut self, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{}: did not power off within {secs} s (log: {})", self.name, self.log.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        };
        let console = self.console();
        assert!(
            !console.contains("PRIVATE KEY"),
            "{}: a private key was printed on the console (log: {})",
            self.name,
            self.log.display()
        );
        assert!(
            console.contains("hyve: power-off requested by the host"),
            "{}: the guest did not read the stop request on its control port (log: {})",
            self.name,
            self.log.display()
        );
        let unmounted = console.find("hyve: data disk /dev/vd").filter(|&i| console[i..].contains("unmounted"));
        let off = console.rfind("reboot: Power down");
        assert!(
            unmounted.is_some() && off.is_some() && unmounted < off,
            "{}: the data disk was not unmounted before power-off (log: {})",
            self.name,
            self.log.display()
        );
        assert!(status.success(), "{}: hyve run exited with {status} (log: {})", self.name, self.log.display());
    }
}

/// A failed test must not leave its VM running.
impl Drop for Vm {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::SeqCst);
        // A test that failed before the watcher saw a stall for good: whether its guest had
        // stalled decides a retry.
        if std::thread::panicking() {
            note_guest_stall(&self.console(), &self.log);
        }
        if let (Ok(None), Some(pidfd)) = (self.child.try_wait(), &self.pidfd) {
            stop_at_once(pidfd);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The docker CLI (the host arch's, from the mirror's docker-cli), pointed at one guest.
struct Docker {
    cli: PathBuf,
    env: Vec<(String, String)>,
    config: PathBuf,
}

impl Docker {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.cli)
            .args(args)
            .env("DOCKER_CONFIG", &self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "docker {}: {}\n{}", args.join(" "), o.status, String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `docker run --rm --network none FLAGS hyve-test:1 /bin/busybox ARGS`: `run` is
    /// `Docker::run` or `Docker::ok`.
    fn busybox<T>(&self, run: fn(&Self, &[&str]) -> T, flags: &[&str], args: &[&str]) -> T {
        let head = ["run", "--rm", "--network", "none"];
        run(self, &[&head[..], flags, &["hyve-test:1", "/bin/busybox"], args].concat())
    }

    /// Polls `docker version` until the daemon answers.
    fn wait_ready(&self, vm: &mut Vm, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let o = self.run(&["version", "--format", "{{.Server.Version}}"]);
            if o.status.success() && !o.stdout.is_empty() {
                return;
            }
            if let Some(status) = vm.child.try_wait().unwrap() {
                panic!(
                    "{}: the VM exited ({status}) before the Docker API answered (log: {})",
                    vm.name,
                    vm.log.display()
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = vm.child.kill();
                panic!(
                    "{}: the Docker API did not answer within {secs} s: {} (log: {})",
                    vm.name,
                    String::from_utf8_lossy(&o.stderr),
                    vm.log.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }
}

/// The docker host (`minimal`) under QEMU with a data disk, driven from the host:
///
/// boot 1 — a foreign disk carrying the format-me text at its start (F2FS on x86_64, LUKS2
/// on aarch64, found by blkid -p through a signature elsewhere on the disk) as vda must be
/// left alone; a fresh `hyve disk create` disk as vdb (on aarch64:
/// the same user data in the first partition of a GPT disk) is formatted and gets the user
/// data and the host's Docker CA; the API answers the client certificates `hyve disk create
/// --docker-certs` made (or plain TCP where the test profile asks for it), a connection
/// without a client certificate is refused, no private key is ever on the console, `docker
/// import` + `docker run` work; a container and a file are created; clean power-off.
/// boot 2 — the data disk alone, enlarged: not reformatted, its partition and file system
/// grown to the new end, the container and the file are there.
fn boot_docker_host(arch: &str, qemu: &str, plain_tcp: bool, partitioned: bool, time_server_late: bool) {
    if !can_run(arch, qemu) {
        return;
    }
    let root = workspace();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // A test profile: minimal, faster compression, and (aarch64) plain TCP asked for.
    let overlay = t.join("overlay/etc/hyve");
    std::fs::create_dir_all(&overlay).unwrap();
    let mut conf = std::fs::read_to_string(root.join("overlay/docker/etc/hyve/docker.conf")).unwrap();
    if plain_tcp {
        conf = conf.replace("DOCKER_PLAIN_TCP_PORT=\n", "DOCKER_PLAIN_TCP_PORT=2375\n");
    }
    std::fs::write(overlay.join("docker.conf"), conf).unwrap();
    let profile = t.join("docker-test.toml");
    // arm64: x86_64 programs through QEMU's user-mode emulator (boot.d/23-binfmt.sh).
    let packages = if arch == "aarch64" { "packages = [\"qemu-x86_64\"]\n" } else { "" };
    std::fs::write(
        &profile,
        format!(
            "extends = \"{}\"\n{packages}overlays = [\"overlay\"]\n[output]\ncompression = \"zstd\"\nlevel = 3\n",
            root.join("profiles/minimal.toml").display()
        ),
    )
    .unwrap();
    let out = t.join("out");
    build(&profile, "minimal", arch, t, &out);

    // The disks.
    std::fs::write(t.join("hostname"), "hyve-test\n").unwrap();
    std::fs::write(
        t.join("id.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHyveTestKeyOnlyForBootTests0000000000000 test\n",
    )
    .unwrap();
    let data = t.join("data.img");
    let certs = t.join("certs");
    let o = hyve(&[
        "disk",
        "create",
        &s(&data),
        "--size",
        "2G",
        "--ssh-key",
        &s(&t.join("id.pub")),
        "--file",
        &format!("{}:hostname", t.join("hostname").display()),
        "--docker-certs",
        &s(&certs),
    ]);
    assert!(o.status.success(), "disk create: {}", String::from_utf8_lossy(&o.stderr));
    if partitioned {
        // The same user data in the first partition of a GPT disk (like a disk image's
        // hyve-data partition): the guest formats the partition in place.
        let header = std::fs::read(&data).unwrap()[..hyve::datadisk::USER_DATA_MAX].to_vec();
        std::fs::remove_file(&data).unwrap();
        std::fs::File::create(&data).unwrap().set_len(2 << 30).unwrap();
        let o = Command::new("sgdisk")
            .args(["-n", "1:2048:0", "-t", "1:8300", "-c", "1:hyve-data"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "sgdisk (apt-get install gdisk): {}", String::from_utf8_lossy(&o.stderr));
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&data).unwrap().write_all_at(&header, 1 << 20).unwrap();
    }
    // A disk someone made something else of after `hyve disk create` (or whose first bytes
    // were overwritten): the format-me text is there, and so is a signature blkid knows
    // further in — F2FS's superblock at 1 KiB, LUKS2's secondary header at 16 KiB. (XFS has
    // its only superblock at byte 0, so an XFS disk cannot start with the text.)
    let foreign = t.join("foreign.img");
    std::fs::File::create(&foreign).unwrap().set_len(64 << 20).unwrap();
    let (foreign_type, mut make) = if arch == "x86_64" {
        let mut mkfs = Command::new("mkfs.f2fs");
        mkfs.args(["-q", "-f", "-l", "not-hyve"]).arg(&foreign);
        ("f2fs", mkfs)
    } else {
        let mut luks = Command::new("cryptsetup");
        luks.args(["luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
            .args(["--key-file", "-"])
            .arg(&foreign)
            .stdin(std::fs::File::open(root.join("Cargo.toml")).unwrap());
        ("crypto_LUKS", luks)
    };
    let o = make.output().unwrap();
    assert!(
        o.status.success(),
        "{make:?} (apt-get install f2fs-tools cryptsetup-bin): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&foreign).unwrap();
        f.write_all_at(b"hyve, please format-me", 0).unwrap();
    }
    let foreign_before = std::fs::read(&foreign).unwrap();

    // The host's docker CLI, and an image made of the guest arch's static busybox.
    let cli = host_docker_cli(t);
    // (busybox-static: the guest's own busybox is linked dynamically, like Alpine's.)
    let busybox = t.join("busybox");
    static_busybox(arch, t, &busybox);
    let image = t.join("image.tar");
    std::fs::write(&image, busybox_rootfs(&busybox)).unwrap();

    let (tls_port, plain_port, web_port) = (free_port(), free_port(), free_port());
    let mut args = vec![
        "--port".to_string(),
        format!("{tls_port}:2376"),
        "--port".to_string(),
        format!("{plain_port}:2375"),
        "--port".to_string(),
        format!("{web_port}:8080"),
    ];
    let docker = |use_plain: bool| Docker {
        cli: cli.clone(),
        config: t.join("docker-config"),
        env: if use_plain {
            vec![("DOCKER_HOST".into(), format!("tcp://127.0.0.1:{plain_port}"))]
        } else {
            vec![
                ("DOCKER_HOST".into(), format!("tcp://127.0.0.1:{tls_port}")),
                ("DOCKER_TLS_VERIFY".into(), "1".into()),
                ("DOCKER_CERT_PATH".into(), s(&certs)),
            ]
        },
    };

    // Boot 1, with the RTC at 1970 (as a VMM without one leaves the clock) and a time
    // server on the host: the guest must set its clock before it issues its certificate.
    // `time_server_late`: the server stays silent through the boot's wait for it, so the
    // certificate waits for chronyd's first sync in the background.
    let ntp = NtpServer::start(!time_server_late);
    let started = std::time::Instant::now();
    let mut vm1_args = args.clone();
    vm1_args.extend(["--disk".to_string(), s(&foreign), "--disk".to_string(), s(&data)]);
    // A host folder (virtio-fs), mounted at its own path in the guest.
    let shared = t.join("shared folder");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("from-host.txt"), "from-host\n").unwrap();
    std::fs::set_permissions(shared.join("from-host.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    vm1_args.extend(["--share".to_string(), s(&shared)]);
    vm1_args.extend([
        "--qemu-arg=-rtc".to_string(),
        "--qemu-arg=base=1970-01-01T00:00:00".to_string(),
        "--append".to_string(),
        format!("hyve.ntp=10.0.2.2:{}", ntp.port),
    ]);
    let mut vm = Vm::start(&out, &format!("docker-{arch}-boot1"), &vm1_args);
    if time_server_late {
        vm.wait_for("hyve: clock: no time server answered", 600);
        vm.wait_for("hyve: TLS: the clock is not set yet", 60);
        ntp.answer();
        vm.wait_for("hyve: clock set by a time server: ", 300);
    }
    vm.wait_for("hyve: dockerd ", 600);
    vm.assert_console(
        "foreign disk left alone",
        &format!("/dev/vda starts with \"hyve, please format-me\" but blkid -p finds TYPE={foreign_type}"),
    );
    let formatted = if partitioned {
        "hyve: /dev/vdb1: formatting for data in place"
    } else {
        "hyve: /dev/vdb: formatting for data (GPT"
    };
    vm.assert_console("data disk formatted", formatted);
    vm.assert_console("user data unpacked", ".ssh/authorized_keys");
    vm.assert_console("data disk mounted", "hyve: data disk /dev/vdb1 mounted at /var/lib/hyve");
    // minimal's root: root.squashfs, attached after the data disks, under a tmpfs overlay.
    vm.assert_console("root image found", "hyve: root /dev/vdc (squashfs, read-only) under a tmpfs overlay");
    vm.assert_console("root is the image", "hyve: root: squashfs image");
    vm.assert_console("the host's CAs used", "hyve: TLS: the host's CA and this disk's server CA from the user data");
    vm.wait_for("Docker API on vsock port 2375 (checked", 60);
    vm.assert_console("memory reported", "hyve: memory after boot: ");
    vm.assert_console("balloon bound", "hyve: memory balloon: free page reporting on");
    let tls = docker(false);
    tls.wait_ready(&mut vm, 300);
    eprintln!("docker test {arch}: API up {:.1} s after start", started.elapsed().as_secs_f64());
    // TLS: the bundle works; a client without a certificate (or without TLS) is refused.
    let version = tls.ok(&["version", "--format", "{{.Server.Version}} {{.Server.Os}}/{{.Server.Arch}}"]);
    assert!(version.contains("linux/"), "{version}");
    let no_cert = Docker {
        cli: cli.clone(),
        config: t.join("docker-config"),
        env: vec![
            ("DOCKER_HOST".into(), format!("tcp://127.0.0.1:{tls_port}")),
            ("DOCKER_TLS".into(), "1".into()),
            ("DOCKER_CERT_PATH".into(), s(&t.join("no-certs"))),
        ],
    };
    std::fs::create_dir_all(t.join("no-certs")).unwrap();
    std::fs::copy(certs.join("ca.pem"), t.join("no-certs/ca.pem")).unwrap();
    let refused = no_cert.run(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        !refused.status.success() || refused.stdout.is_empty(),
        "a client without a certificate got an answer: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let plain = docker(true);
    let plain_version = plain.run(&["version", "--format", "{{.Server.Version}}"]);
    if plain_tcp {
        assert!(plain_version.status.success(), "plain TCP asked for but not answering: {plain_version:?}");
        vm.assert_console("plain TCP announced", "WITHOUT TLS (the profile asks for it)");
    } else {
        assert!(
            !plain_version.status.success() || plain_version.stdout.is_empty(),
            "plain TCP answered although the profile did not ask for it"
        );
    }
    let api = if plain_tcp { &plain } else { &tls };
    api.ok(&["import", &s(&image), "hyve-test:1"]);
    let said = api.busybox(Docker::ok, &[], &["echo", "hyve-container-ok"]);
    assert_eq!(said.trim(), "hyve-container-ok");
    if arch == "aarch64" {
        // An amd64 image (x86_64's static busybox, as `docker save` writes it) runs through
        // the emulator binfmt_misc hands x86_64 programs to.
        vm.assert_console("x86_64 translator", "hyve: x86_64 programs run through /usr/bin/qemu-x86_64 (binfmt_misc)");
        let x86_busybox = t.join("busybox-x86_64");
        static_busybox("x86_64", t, &x86_busybox);
        let amd64 = t.join("amd64.tar");
        std::fs::write(&amd64, saved_image("hyve-amd64:1", "amd64", &busybox_rootfs(&x86_busybox))).unwrap();
        api.ok(&["load", "-i", &s(&amd64)]);
        let run = ["run", "--rm", "--network", "none", "--platform", "linux/amd64", "hyve-amd64:1", "/bin/busybox"];
        let said = api.ok(&[&run[..], &["uname", "-m"]].concat());
        assert_eq!(said.trim(), "x86_64", "{arch}: an amd64 container");
    }
    // `docker run -v "$PWD":/src` on the shared folder: the container reads what the host
    // wrote, with its owner and mode, and writes a file the host then reads.
    vm.assert_console("folder shared", &format!("hyve: share hyve0 mounted at {} (virtio-fs)", s(&shared)));
    let mount = format!("{}:/src", s(&shared));
    let script = "cat /src/from-host.txt && stat -c '%a %u' /src/from-host.txt && echo from-guest >/src/from-guest.txt";
    let seen = api.busybox(Docker::ok, &["-v", &mount], &["sh", "-c", script]);
    let owner = std::fs::metadata(shared.join("from-host.txt")).unwrap().uid();
    assert_eq!(seen, format!("from-host\n640 {owner}\n"), "{arch}: the host's file through the share");
    let written = shared.join("from-guest.txt");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "from-guest\n", "{arch}: the guest's file on the host");
    let meta = std::fs::metadata(&written).unwrap();
    // The container's root is virtiofsd's user (root, as QEMU's virtiofsd must run).
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0), "{arch}: the guest's file's mode and owner");
    if !time_server_late {
        let set = format!("hyve: clock set by a time server (10.0.2.2:{})", ntp.port);
        vm.assert_console("clock from the time server", &set);
    }
    let guest_now: i64 = api.busybox(Docker::ok, &[], &["date", "+%s"]).trim().parse().unwrap();
    let host_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((guest_now - host_now).abs() < 10, "{arch}: guest clock {guest_now}, host {host_now}");
    // The host's time over vsock as vfkit's --timesync sends it on wake (qemu-guest-agent's
    // guest-set-time), tried from inside over vsock loopback.
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let request = format!("echo '{{\"execute\": \"guest-set-time\", \"arguments\":{{\"time\": {now_ns}}}}}' | nsenter -t 1 -m -n -- socat -t 60 - VSOCK-CONNECT:1:1234");
    let reply = api.busybox(Docker::ok, &["--privileged", "--pid", "host"], &["sh", "-c", &request]);
    assert_eq!(reply, "{\"return\": {}}\n", "{arch}: guest-set-time");
    vm.wait_for("hyve: clock set by the host (guest-set-time)", 30);
    // A DHCP renewal keeps the address in place (flushing it would take it away, for a
    // moment, from every connection): an extra address on eth0 outlives udhcpc's renewal.
    let in_guest = |command: &str| {
        let nsenter = format!("nsenter -t 1 -m -n -- sh -c '{command}'");
        api.busybox(Docker::ok, &["--privileged", "--pid", "host"], &["sh", "-c", &nsenter])
    };
    in_guest("ip addr add 10.0.2.99/24 dev eth0 && kill -USR1 $(cat /run/udhcpc.eth0.pid)");
    vm.wait_for("hyve: eth0 10.0.2.15/24 renewed (DHCP; address kept)", 120);
    let addresses = in_guest("ip -4 addr show dev eth0");
    assert!(addresses.contains(" 10.0.2.99/24 ") && addresses.contains(" 10.0.2.15/24 "), "{arch}: {addresses}");
    // ... and the default route through QEMU's gateway, in place (`ip route replace`).
    // (busybox's `ip route show` lists every route; the default ones are the lines so named.)
    let routes = in_guest("ip route show");
    let defaults: Vec<&str> = routes.lines().filter(|l| l.starts_with("default ")).collect();
    assert!(defaults.len() == 1 && defaults[0].starts_with("default via 10.0.2.2 dev eth0"), "{arch}: {routes}");
    in_guest("ip addr del 10.0.2.99/24 dev eth0");
    // Under TCG (`hyve run` adds `hyve.emulated`) the boot ran without address-space
    // randomization, and dockerd still does; the services, udhcpc and containers have it.
    // With KVM, all of them have it. (A service's `.child` is its daemon: the service script
    // and setarch exec it.)
    let emulated = vm.console().contains(", tcg accel)");
    let said = "hyve: emulated CPU: booting without address-space randomization";
    assert_eq!(vm.console().contains(said), emulated, "{arch}: {said:?} on the console under TCG only");
    let personalities = in_guest(
        "for f in /run/hyve/services/30-dockerd.child /run/hyve/services/20-containerd.child \
         /run/hyve/services/00-syslogd.child /run/udhcpc.eth0.pid; do cat /proc/$(cat $f)/personality; done",
    );
    let dockerd = if emulated { "00040000" } else { "00000000" };
    assert_eq!(
        personalities,
        format!("{dockerd}\n00000000\n00000000\n00000000\n"),
        "{arch}: dockerd, containerd, syslogd, udhcpc"
    );
    let container = api.busybox(Docker::ok, &[], &["cat", "/proc/self/personality"]);
    assert_eq!(container, "00000000\n", "{arch}: a container's personality");
    // containerd runs without its CRI plugins (overlay/docker's /etc/containerd/config.toml).
    // It logs every plugin it loads, the id in the message (1.x) or in an `id` field (2.x);
    // a disabled plugin is not named at all (one that failed to load is).
    let named = in_guest("grep -o \"io\\.containerd\\.[a-z0-9.-]*\" /var/log/20-containerd.log | sort -u");
    let named: Vec<&str> = named.lines().collect();
    let cri = ["grpc.v1.cri", "cri.v1.images", "cri.v1.runtime", "podsandbox.controller.v1.podsandbox"]
        .map(|p| format!("io.containerd.{p}"));
    assert!(
        named.contains(&"io.containerd.grpc.v1.tasks") && !named.iter().any(|id| cri.iter().any(|c| c == id)),
        "{arch}: containerd's plugins, expected tasks and none of {cri:?}: {named:?}"
    );
    container_networking(arch, &vm, api, web_port);
    api.ok(&["create", "--name", "keeper", "hyve-test:1", "/bin/busybox", "true"]);
    api.busybox(Docker::ok, &["-v", "/var/lib/hyve:/data"], &["sh", "-c", "echo persisted >/data/marker"]);
    // The guest's own hostname came from the user data.
    let host = api.ok(&["info", "--format", "{{.Name}}"]);
    assert_eq!(host.trim(), "hyve-test");
    power_off(&vm);
    vm.wait_powered_off(180);
    assert!(std::fs::read(&foreign).unwrap() == foreign_before, "the foreign disk was written to");

    // Boot 2: the same data disk alone, enlarged by 1 GiB as a user would (truncate, qemu-img
    // resize): its partition and file system grow to the new end.
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(3 << 30).unwrap();
    args.extend(["--disk".to_string(), s(&data)]);
    let mut vm = Vm::start(&out, &format!("docker-{arch}-boot2"), &args);
    vm.wait_for("hyve: dockerd ", 600);
    vm.assert_console("partition grown", "hyve: /dev/vda1: partition grown to the end of /dev/vda (3070 MiB)");
    vm.assert_console("file system grown", "hyve: data file system grown from ");
    vm.assert_console("data disk mounted again", "hyve: data disk /dev/vda1 mounted at /var/lib/hyve");
    assert!(!vm.console().contains("formatting for data"), "{}: the data disk was formatted again", vm.name);
    let api = if plain_tcp { docker(true) } else { docker(false) };
    api.wait_ready(&mut vm, 300);
    let names = api.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(names.lines().any(|n| n == "keeper"), "the container did not survive the reboot: {names:?}");
    let marker = api.busybox(Docker::ok, &["-v", "/var/lib/hyve:/data"], &["cat", "/data/marker"]);
    assert_eq!(marker.trim(), "persisted");
    // Supervision: dockerd killed from inside comes back by itself.
    let _ = api.busybox(Docker::run, &["--privileged", "--pid", "host"], &["killall", "-KILL", "dockerd"]);
    vm.wait_for("hyve: 30-dockerd exited", 60);
    api.wait_ready(&mut vm, 180);
    power_off(&vm);
    vm.wait_powered_off(180);
    eprintln!("docker test {arch}: both boots done after {:.1} s", started.elapsed().as_secs_f64());
}

/// The applets the test images run by name (Alpine's busybox has no standalone shell: `sh -c
/// "cat …"` finds `cat` only as a link on PATH, as `busybox --install` makes them) or as
/// `/bin/busybox APPLET`. Alpine's busybox has no `httpd` (it is in busybox-extras).
const TEST_IMAGE_APPLETS: [&str; 11] =
    ["sh", "cat", "stat", "nc", "nsenter", "echo", "date", "killall", "uname", "true", "wget"];

/// Answers one HTTP request on stdin/stdout (`nc -l -e`): reads the header, then replies.
const HTTP_REPLY: &str =
    "#!/bin/sh\nwhile read -r line; do case $line in \"$(printf '\\r')\"|'') break ;; esac; done\n\
                          printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 18\\r\\n\\r\\nhyve-published-ok\\n'\n";

/// Appends a regular file to a tar.
fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    tar.append_data(&mut h, path, bytes).unwrap();
}

/// A root file system of `busybox` as `bin/busybox`, `TEST_IMAGE_APPLETS` linked to it, and
/// `bin/http-reply` (`HTTP_REPLY`), as a tar.
fn busybox_rootfs(busybox: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    append_file(&mut tar, "bin/busybox", 0o755, &std::fs::read(busybox).unwrap());
    append_file(&mut tar, "bin/http-reply", 0o755, HTTP_REPLY.as_bytes());
    for applet in TEST_IMAGE_APPLETS {
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        l.set_mode(0o777);
        tar.append_link(&mut l, format!("bin/{applet}"), "busybox").unwrap();
    }
    tar.into_inner().unwrap()
}

/// An image of one `layer` for `architecture`, in the archive `docker save` writes and
/// `docker load` reads (manifest.json, the image config, the layer tar).
fn saved_image(name: &str, architecture: &str, layer: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(layer)));
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}]);
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in [
        ("config.json", serde_json::to_vec(&config).unwrap()),
        ("layer.tar", layer.to_vec()),
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ] {
        append_file(&mut tar, path, 0o644, &bytes);
    }
    tar.into_inner().unwrap()
}

/// Docker's networking on the guest's iptables, which is the nftables backend as on Alpine:
/// a published port answers from the host through QEMU's forward (DNAT on the way in), and
/// a container on the default bridge reaches a server on the host's loopback through QEMU's
/// 10.0.2.2 (MASQUERADE on the way out).
fn container_networking(arch: &str, vm: &Vm, api: &Docker, web_port: u16) {
    use std::io::{Read, Write};
    let backend = api.busybox(
        Docker::ok,
        &["--privileged", "--pid", "host"],
        &["nsenter", "-t", "1", "-m", "--", "/usr/sbin/iptables", "-V"],
    );
    assert!(backend.contains("nf_tables"), "{arch}: the guest's iptables is not the nftables backend: {backend}");
    let nat = api.busybox(
        Docker::ok,
        &["--privileged", "--pid", "host"],
        &["nsenter", "-t", "1", "-m", "-n", "--", "/usr/sbin/iptables", "-t", "nat", "-S"],
    );
    assert!(nat.contains("MASQUERADE"), "{arch}: dockerd set up no MASQUERADE rule: {nat}");

    // Outbound: a one-shot HTTP server on the host's loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request);
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 17\r\n\r\nhyve-outbound-ok\n").unwrap();
        peer
    });
    let url = format!("http://10.0.2.2:{host_port}/");
    let fetched = api.ok(&["run", "--rm", "hyve-test:1", "/bin/busybox", "wget", "-q", "-O", "-", &url]);
    assert_eq!(fetched.trim(), "hyve-outbound-ok", "{arch}: a container could not reach the host through NAT");
    server.join().unwrap();

    // Inbound: a published port.
    api.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "hyve-test:1",
        "/bin/busybox",
        "sh",
        "-c",
        "while :; do nc -l -p 80 -e /bin/http-reply; done",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let page = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", web_port)).and_then(|mut c| {
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            c.read_to_string(&mut body)?;
            Ok(body)
        });
        match got {
            Ok(body) if body.contains("hyve-published-ok") => break body,
            other if std::time::Instant::now() > deadline => {
                panic!("{arch}: the published port did not answer: {other:?} (log: {})", vm.log.display())
            }
            _ => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
    };
    assert!(page.starts_with("HTTP/1."), "{page}");
    api.ok(&["rm", "-f", "web"]);
}

/// A clean shutdown from outside: SIGTERM to `hyve run`, which writes `poweroff` on the
/// guest's control port (and presses QEMU's power button, which only x86 can hear: Alpine's
/// arm64 virt kernel has no gpio-keys). The data disk must be unmounted before power-off.
fn power_off(vm: &Vm) {
    assert!(Command::new("kill").args(["-TERM", &vm.child.id().to_string()]).status().unwrap().success());
}

#[test]
fn docker_host_on_x86_64_with_tls() {
    retry_on_guest_stall(|| boot_docker_host("x86_64", "qemu-system-x86_64", false, false, false));
}

#[test]
fn docker_host_on_aarch64_with_plain_tcp_a_data_partition_and_a_late_time_server() {
    retry_on_guest_stall(|| boot_docker_host("aarch64", "qemu-system-aarch64", true, true, true));
}

/// The guest as built: no account with a usable password, sshd with public keys only, and
/// dockerd's plain TCP port off unless a profile sets it.
fn no_way_in_without_a_key(out: &Path) {
    let wanted = ["etc/shadow", "etc/passwd", "etc/hyve/sshd_config", "etc/hyve/docker.conf"];
    // The guest's files: its root image, or its initramfs.
    let root = out.join("root.squashfs");
    let (_, kept) = if root.exists() {
        let file = std::io::BufReader::new(std::fs::File::open(&root).unwrap());
        hyve::output::squashfs::read_image(file, 0, "root.squashfs", |n| wanted.contains(&n)).unwrap()
    } else {
        let file = std::io::BufReader::new(std::fs::File::open(out.join("initrd.img")).unwrap());
        hyve::output::cpio::read_archive(
            std::io::BufReader::new(hyve::output::compress::decompressor(file).unwrap()),
            |n| wanted.contains(&n),
        )
        .unwrap()
    };
    let text = |n: &str| String::from_utf8(kept.get(n).unwrap_or_else(|| panic!("/{n} missing")).clone()).unwrap();
    for line in text("etc/shadow").lines().filter(|l| !l.is_empty()) {
        let password = line.split(':').nth(1).unwrap();
        assert!(password.starts_with('!') || password == "*", "/etc/shadow gives a usable password: {line}");
    }
    for line in text("etc/passwd").lines().filter(|l| !l.is_empty()) {
        assert!(!line.split(':').nth(1).unwrap().is_empty(), "/etc/passwd has an empty password: {line}");
    }
    let sshd = text("etc/hyve/sshd_config");
    for must in ["PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password"] {
        assert!(sshd.lines().any(|l| l.trim() == must), "sshd_config lacks {must:?}");
    }
    assert!(text("etc/hyve/docker.conf").lines().any(|l| l == "DOCKER_PLAIN_TCP_PORT="), "plain TCP must be off");
}

/// The `dev` additions, on both arches: sshd takes root's key from the user data and keeps its
/// host keys on the data disk, so the second boot presents the same host key; the in-guest
/// docker CLI and curl work; then two more boots find the root on a virtio-scsi disk and on an NVMe one. (The real `dev` profile also has docker-cli-compose, which the test
/// mirror cannot provide from Debian; this test profile is `dev` without it, on either mirror.
/// `make test-alpine` builds the real `dev` too.)
#[test]
fn dev_ssh_on_x86_64() {
    retry_on_guest_stall(|| boot_dev_ssh("x86_64", "qemu-system-x86_64"));
}

#[test]
fn dev_ssh_on_aarch64() {
    retry_on_guest_stall(|| boot_dev_ssh("aarch64", "qemu-system-aarch64"));
}

fn boot_dev_ssh(arch: &str, qemu: &str) {
    if !can_run(arch, qemu) {
        return;
    }
    let root = workspace();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let profile = t.join("dev-test.toml");
    std::fs::write(
        &profile,
        format!(
            "extends = \"{}\"\noverlays = [\"{}\"]\npackages = [\"openssh\", \"docker-cli\", \"curl\", \"strace\", \"tcpdump\"]\n[output]\nlevel = 3\n",
            root.join("profiles/minimal.toml").display(),
            root.join("overlay/dev").display()
        ),
    )
    .unwrap();
    let out = t.join("out");
    build(&profile, "dev", arch, t, &out);
    no_way_in_without_a_key(&out);
    let key = t.join("id");
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
    assert!(o.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&o.stderr));
    let data = t.join("data.img");
    let o = hyve(&["disk", "create", &s(&data), "--size", "1G", "--ssh-key", &s(&t.join("id.pub"))]);
    assert!(o.status.success(), "disk create: {}", String::from_utf8_lossy(&o.stderr));
    let ssh_port = free_port();
    let args = vec!["--port".to_string(), format!("{ssh_port}:22"), "--disk".to_string(), s(&data)];
    let known = t.join("known_hosts");
    let ssh = |strict: &str, command: &str| {
        Command::new("ssh")
            .args(["-i", &s(&key), "-p", &ssh_port.to_string(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args([
                "-o",
                &format!("StrictHostKeyChecking={strict}"),
                "-o",
                &format!("UserKnownHostsFile={}", s(&known)),
            ])
            .args(["root@127.0.0.1", command])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    for (boot, strict) in [(1, "accept-new"), (2, "yes")] {
        let mut vm = Vm::start(&out, &format!("dev-{arch}-boot{boot}"), &args);
        vm.wait_for("hyve: dockerd ", 600);
        vm.assert_console("the user's key", "hyve: ssh: root login with the 1 key(s) from the user data");
        // sshd starts with the services and may listen a moment after dockerd is ready (without
        // TLS, dockerd does not wait for the network): retry while the connection itself fails,
        // as a host would; a refused key or host key fails at once.
        let command = "docker version --format '{{.Server.Version}}' && curl --version >/dev/null && strace -V >/dev/null && echo dev-tools-ok";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut o = ssh(strict, command);
        while o.status.code() == Some(255)
            && ["kex_exchange_identification", "Connection reset", "Connection refused", "Connection closed"]
                .iter()
                .any(|e| String::from_utf8_lossy(&o.stderr).contains(e))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_secs(2));
            o = ssh(strict, command);
        }
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && said.contains("dev-tools-ok"),
            "boot {boot}: ssh (host key check {strict}) failed: {}\n{said} (log: {})",
            String::from_utf8_lossy(&o.stderr),
            vm.log.display()
        );
        // Without the key there is no way in: sshd offers public keys only.
        let o = Command::new("ssh")
            .args(["-p", &ssh_port.to_string(), "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("Permission denied (publickey)"), "boot {boot}: {e}");
        power_off(&vm);
        vm.wait_powered_off(180);
    }
    for controller in [RootController::VirtioScsi, RootController::Nvme] {
        root_on_another_controller(&out, arch, controller);
    }
}

/// A disk controller other than virtio-blk that the root image may sit on.
#[derive(Clone, Copy)]
enum RootController {
    /// Its drivers (virtio_scsi, sd_mod, scsi_mod) are modules in Alpine's linux-virt and in
    /// the test mirror's kernel alike: the boot initramfs must find the controller and load
    /// them itself.
    VirtioScsi,
    /// A module in Alpine's linux-virt (loaded the same way), but built into the test
    /// mirror's kernel: this boot checks that stage 1 finds the root on an NVMe namespace,
    /// not the module's loading (tests/mirror/README.md).
    Nvme,
}

impl RootController {
    fn name(self) -> &'static str {
        match self {
            RootController::VirtioScsi => "virtio-scsi",
            RootController::Nvme => "nvme",
        }
    }

    /// QEMU's options for the root image on this controller.
    fn qemu_options(self, root: &str) -> String {
        let drive = format!("-drive file={root},format=raw,if=none,id=root,readonly=on");
        match self {
            RootController::VirtioScsi => {
                format!("-device virtio-scsi-pci,id=scsi0 {drive} -device scsi-hd,drive=root,bus=scsi0.0")
            }
            RootController::Nvme => format!("{drive} -device nvme,drive=root,serial=hyve-root"),
        }
    }

    /// The block device the guest sees the root as.
    fn guest_device(self) -> &'static str {
        match self {
            RootController::VirtioScsi => "/dev/sda",
            RootController::Nvme => "/dev/nvme0n1",
        }
    }
}

/// The root image on another disk controller than virtio-blk, as UTM or QEMU set up by hand
/// may attach it ([`RootController`]). QEMU runs the line `hyve run --print` gives, with the
/// root image's virtio-blk drive swapped for a disk on `controller`; the guest powers off once
/// booted.
fn root_on_another_controller(out: &Path, arch: &str, controller: RootController) {
    let o = hyve(&["run", &s(out), "--print", "--accel", "auto", "--memory", "1024", "--append", "hyve.poweroff"]);
    assert!(o.status.success(), "hyve run --print: {}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8(o.stdout).unwrap();
    let root = s(&out.join("root.squashfs"));
    let virtio_blk = format!("-drive file={root},format=raw,if=virtio,readonly=on");
    assert!(line.contains(&virtio_blk), "the root image is not a virtio-blk drive: {line}");
    let mut qemu = Command::new("sh");
    qemu.arg("-c").arg(format!("exec {}", line.trim().replace(&virtio_blk, &controller.qemu_options(&root))));
    let mut vm = Vm::start_command(qemu, &format!("dev-{arch}-root-on-{}", controller.name()));
    // Stage 1 that finds no root says so after 30 s and waits in a shell: fail then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        // Whether QEMU had exited before the console is read: then the console is complete.
        let exited = vm.child.try_wait().unwrap().is_some();
        let console = vm.console();
        if console.contains("reboot: Power down") {
            break;
        }
        assert!(
            !console.contains("hyve: stage 1:") && !exited && std::time::Instant::now() < deadline,
            "{}: the guest did not boot from the root on {} (log: {})",
            vm.name,
            controller.name(),
            vm.log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let found = format!("hyve: root {} (squashfs, read-only) under a tmpfs overlay", controller.guest_device());
    vm.assert_console(&format!("root found on the {} disk", controller.name()), &found);
    vm.assert_console("booted", "HYVE-BOOT-OK");
}

/// The files of a Lima cidata volume for one boot, as lima v2.2.0 renders its templates
/// (pkg/cidata/cidata.TEMPLATE.d) for a Linux guest under QEMU with passwordless sudo, one ssh
/// key and one virtiofs mount — except `boot.sh` and `lima-guestagent`, TEST STAND-INS: the
/// real ones come with Lima. The stand-in boot.sh reads lima.env as Lima's does, leaves a
/// marker and writes the two files `limactl start` waits for; the stand-in agent reports how it
/// was started on its virtio port and stays up.
fn lima_cidata(dir: &Path, iid: &str, key: &str, share_tag: &str) {
    let user_data = format!(
        "#cloud-config\n# vim:syntax=yaml\n\ngrowpart:\n  mode: auto\n  devices: ['/']\nmounts:\n\
         - [{share_tag}, /mnt/lima-test share, virtiofs, \"ro,nofail\", \"0\", \"0\"]\n\n\
         users:\n  - name: \"limauser\"\n    uid: \"501\"\n    gecos: \"Lima Test\"\n    homedir: \"/home/limauser.guest\"\n    shell: /bin/bash\n\
         \x20   sudo: ALL=(ALL) NOPASSWD:ALL\n    lock_passwd: true\n    ssh-authorized-keys:\n      - \"{key}\"\n\
         write_files:\n - content: |\n      #!/bin/sh\n      exec \"${{LIMA_CIDATA_MNT}}\"/boot.sh\n   owner: root:root\n\
         \x20  path: /var/lib/cloud/scripts/per-boot/00-lima.boot.sh\n   permissions: '0755'\n"
    );
    let lima_env = format!(
        "LIMA_CIDATA_DEBUG=false\nLIMA_CIDATA_IID={iid}\nLIMA_CIDATA_NAME=hyve-test\nLIMA_CIDATA_USER=limauser\n\
         LIMA_CIDATA_UID=501\nLIMA_CIDATA_COMMENT=Lima Test\nLIMA_CIDATA_HOME=/home/limauser.guest\nLIMA_CIDATA_SHELL=/bin/bash\n\
         LIMA_CIDATA_HOSTHOME_MOUNTPOINT=\nLIMA_CIDATA_MOUNTS=1\nLIMA_CIDATA_MOUNTS_0_MOUNTPOINT=/mnt/lima-test share\n\
         LIMA_CIDATA_MOUNTTYPE=virtiofs\nLIMA_CIDATA_DISKS=0\nLIMA_CIDATA_GUEST_INSTALL_PREFIX=/usr/local\n\
         LIMA_CIDATA_UPGRADE_PACKAGES=\nLIMA_CIDATA_CONTAINERD_USER=\nLIMA_CIDATA_CONTAINERD_SYSTEM=\n\
         LIMA_CIDATA_SLIRP_DNS=10.0.2.3\nLIMA_CIDATA_SLIRP_GATEWAY=10.0.2.2\nLIMA_CIDATA_SLIRP_IP_ADDRESS=10.0.2.15\n\
         LIMA_CIDATA_UDP_DNS_LOCAL_PORT=0\nLIMA_CIDATA_TCP_DNS_LOCAL_PORT=0\nLIMA_CIDATA_ROSETTA_ENABLED=false\n\
         LIMA_CIDATA_ROSETTA_BINFMT=false\nLIMA_CIDATA_SKIP_DEFAULT_DEPENDENCY_RESOLUTION=\nLIMA_CIDATA_VMTYPE=qemu\n\
         LIMA_CIDATA_VSOCK_PORT=0\nLIMA_CIDATA_VIRTIO_PORT=io.lima-vm.guest_agent.0\nLIMA_CIDATA_PLAIN=\n\
         LIMA_CIDATA_NO_CLOUD_INIT=\nLIMA_CIDATA_PASSWORDLESS_SUDO=1\n"
    );
    let boot_sh = "#!/bin/sh\n# TEST STAND-IN for Lima's boot.sh.\nset -eu\n\
         while read -r line; do [ -n \"$line\" ] && export \"$line\"; done <\"${LIMA_CIDATA_MNT}\"/lima.env\n\
         echo \"boot.sh ran as uid $(id -u) for ${LIMA_CIDATA_USER}\" >/var/log/lima-test-marker\n\
         echo \"${LIMA_CIDATA_IID}\" >/run/lima-ssh-ready\n\
         echo \"${LIMA_CIDATA_IID}\" >/run/lima-boot-done\n";
    let agent = "#!/bin/sh\n# TEST STAND-IN for lima-guestagent.\nargs=\"$*\"\nport=\n\
         while [ $# -gt 0 ]; do [ \"$1\" = --virtio-port ] && port=$2; shift; done\n\
         echo \"stand-in agent uid=$(id -u) args: $args\" >\"/dev/virtio-ports/$port\"\n\
         while :; do sleep 3600; done\n";
    let files: [(&str, &str); 9] = [
        ("meta-data", &format!("instance-id: {iid}\nlocal-hostname: lima-hyve-test\n")),
        ("user-data", &user_data),
        ("network-config", "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: '52:55:55:12:34:56'\n    dhcp4: true\n    set-name: eth0\n"),
        ("lima.env", &lima_env),
        ("param.env", ""),
        ("etc_environment", "#LIMA-START\n#LIMA-END\n"),
        ("boot.sh", boot_sh),
        ("lima-guestagent", agent),
        ("util/.keep", ""),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The `lima` profile as Lima runs it, without Lima (which needs a Mac or its own host agent):
/// its `lima.yaml` is valid YAML naming `disk.img` with its digest; `disk.img`, enlarged as
/// Lima enlarges its instance disk, boots through UEFI with a cidata ISO on a virtio-scsi
/// CD-ROM, the guest agent's virtio-serial port and a virtiofs mount, as Lima's QEMU driver
/// attaches them (lima v2.2.0 pkg/driver/qemu/qemu.go). Then, over ssh as Lima's user with
/// its key: `sudo` without a password, bash, boot.sh's marker and the two ready files holding
/// the instance id, the mount, the agent running (it also wrote to its port as root with
/// lima.env's arguments), the data partition grown to the enlarged disk and mounted, and the
/// Docker API through the socket forwarded over ssh as Lima forwards it.
fn boot_lima(arch: &str, qemu: &str) {
    if !can_run(arch, qemu) {
        return;
    }
    let root = workspace();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let profile = t.join("lima-test.toml");
    std::fs::write(
        &profile,
        format!("extends = \"{}\"\n[output]\nlevel = 3\n", root.join("profiles/lima.toml").display()),
    )
    .unwrap();
    let out = t.join("out");
    build(&profile, "lima", arch, t, &out);

    // lima.yaml: YAML (read by PyYAML) naming this disk.img by its absolute path and digest.
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    let disk_sha = sums.lines().find(|l| l.ends_with(" disk.img")).unwrap().split(' ').next().unwrap().to_string();
    assert!(!sums.contains("lima.yaml"), "lima.yaml is machine-local, not in SHA256SUMS");
    let check = "import sys, yaml\nt = yaml.safe_load(open(sys.argv[1]))\ni = t['images'][0]\n\
                 print(t['arch'], i['arch'], i['location'], i['digest'], t['containerd']['system'], t['containerd']['user'], t['portForwards'][0]['guestSocket'])";
    let o = Command::new("python3").args(["-c", check]).arg(out.join("lima.yaml")).output().unwrap();
    assert!(o.status.success(), "lima.yaml (python3-yaml): {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{arch} {arch} {} sha256:{disk_sha} False False /var/run/docker.sock", out.join("disk.img").display())
    );

    // Lima's instance: its disk is disk.img enlarged (to `disk:`, here 2 GiB more).
    let instance = t.join("instance");
    std::fs::create_dir(&instance).unwrap();
    for f in ["kernel", "initrd.img", "cmdline", "manifest.json"] {
        std::fs::copy(out.join(f), instance.join(f)).unwrap();
    }
    let o = Command::new("cp").arg("--sparse=always").arg(out.join("disk.img")).arg(&instance).output().unwrap();
    assert!(o.status.success());
    let disk = std::fs::OpenOptions::new().write(true).open(instance.join("disk.img")).unwrap();
    disk.set_len(disk.metadata().unwrap().len() + (2 << 30)).unwrap();

    let key = t.join("id");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "lima", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&o.stderr));
    let public = std::fs::read_to_string(t.join("id.pub")).unwrap();
    let cidata = t.join("cidata");
    let iid = "iid-1764547200";
    lima_cidata(&cidata, iid, public.trim(), "lima-share0");
    let iso = t.join("cidata.iso");
    let o = Command::new("genisoimage")
        .args(["-quiet", "-V", "cidata", "-R", "-o"])
        .arg(&iso)
        .arg(&cidata)
        .output()
        .unwrap();
    assert!(o.status.success(), "genisoimage (apt-get install genisoimage): {}", String::from_utf8_lossy(&o.stderr));

    // The mount: QEMU's virtiofsd on a host folder (as Lima's QEMU driver runs it on Linux).
    let shared = t.join("home");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
    let socket = t.join("fs.sock");
    let mut virtiofsd = Command::new(hyve::vmm::VIRTIOFSD)
        .arg(format!("--socket-path={}", socket.display()))
        .args(["-o", &format!("source={}", shared.display()), "-o", "sandbox=chroot", "-o", "cache=auto"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log_path(&format!("lima-{arch}-virtiofsd"))).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "virtiofsd made no socket (run as root)");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let agent_out = t.join("agent.out");
    let ssh_port = free_port();
    let qemu_args = [
        "-object",
        "memory-backend-memfd,id=lima-mem,size=2048M,share=on",
        "-numa",
        "node,memdev=lima-mem",
        "-chardev",
        &format!("socket,id=lima-fs0,path={}", socket.display()),
        "-device",
        "vhost-user-fs-pci,chardev=lima-fs0,tag=lima-share0",
        "-drive",
        &format!("id=cdrom0,if=none,format=raw,readonly=on,file={}", iso.display()),
        "-device",
        "virtio-scsi,id=scsi0",
        "-device",
        "scsi-cd,bus=scsi0.0,drive=cdrom0",
        "-chardev",
        &format!("file,id=qga0,path={}", agent_out.display()),
        "-device",
        "virtserialport,chardev=qga0,name=io.lima-vm.guest_agent.0",
    ];
    let mut args = vec!["--efi".to_string(), "--port".to_string(), format!("{ssh_port}:22")];
    args.extend(qemu_args.iter().map(|a| format!("--qemu-arg={a}")));
    let mut vm = Vm::start(&instance, &format!("lima-{arch}"), &args);
    vm.wait_for("hyve: lima: boot.sh exited with status 0", 900);
    vm.assert_console(
        "cidata mounted",
        "hyve: lima: cidata /dev/sr0 mounted at /mnt/lima-cidata (instance iid-1764547200)",
    );
    vm.assert_console(
        "Lima's user",
        "hyve: lima: user limauser (uid 501, home /home/limauser.guest) with 1 ssh key(s)",
    );
    vm.assert_console("the data partition grown", "partition grown to the end of /dev/vda");
    vm.assert_console("and mounted", "hyve: data disk /dev/vda3 mounted at /var/lib/hyve");

    let ssh = |extra: &[&str], command: &str| {
        Command::new("ssh")
            .args(["-i", &s(&key), "-p", &ssh_port.to_string(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(extra)
            .args(["limauser@127.0.0.1", command])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // sshd starts with the services, after boot.sh: retry as Lima's host agent does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !ssh(&[], "true").status.success() {
        assert!(std::time::Instant::now() < deadline, "no ssh login within 180 s (log: {})", vm.log.display());
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    // The guest agent is the service after sshd (55-lima-guestagent, 50-sshd): Lima's host
    // agent waits for it to come up, and so does this (the checks below still require it).
    let agent = "ps | grep -v grep | grep -q 'lima-guestagent daemon'";
    while !ssh(&[], agent).status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // What Lima's host agent runs: `#!/bin/bash` scripts with sudo, the ready files.
    let checks = "set -o pipefail; echo shell=\\$BASH_VERSION; sudo -n true && echo sudo-ok; \
                  sudo cat /run/lima-ssh-ready /run/lima-boot-done /var/log/lima-test-marker; \
                  cat '/mnt/lima-test share/hello.txt'; ps | grep -v grep | grep -q 'lima-guestagent daemon' && echo agent-running; id -nG";
    let o = ssh(&[], &format!("bash -c \"{checks}\""));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "ssh as Lima's user: {}\n{said} (log: {})",
        String::from_utf8_lossy(&o.stderr),
        vm.log.display()
    );
    for want in [
        "shell=5.",
        "sudo-ok",
        &format!("{iid}\n{iid}\nboot.sh ran as uid 0 for limauser"),
        "hello from the host",
        "agent-running",
        "docker",
    ] {
        assert!(
            said.contains(want),
            "{want:?} not in what the guest said:\n{said}\n{} (log: {})",
            String::from_utf8_lossy(&o.stderr),
            vm.log.display()
        );
    }
    let reported = std::fs::read_to_string(&agent_out).unwrap_or_default();
    assert!(
        reported.contains(
            "stand-in agent uid=0 args: daemon --debug=false --vsock-port 0 --virtio-port io.lima-vm.guest_agent.0 --socket-owner 501"
        ),
        "the guest agent's port said: {reported:?}"
    );

    // The Docker socket, forwarded over ssh as Lima's portForwards do (`ssh -L`).
    let cli = host_docker_cli(t);
    let forwarded = t.join("docker.sock");
    let mut tunnel = Command::new("ssh")
        .args(["-i", &s(&key), "-p", &ssh_port.to_string(), "-o", "BatchMode=yes", "-N"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
        ])
        .arg("-L")
        .arg(format!("{}:/var/run/docker.sock", forwarded.display()))
        .arg("limauser@127.0.0.1")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let api = Docker {
        cli,
        config: t.join("docker-config"),
        env: vec![("DOCKER_HOST".into(), format!("unix://{}", forwarded.display()))],
    };
    api.wait_ready(&mut vm, 300);
    let version = api.ok(&["version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"]);
    assert!(version.starts_with("linux/"), "{version}");
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    power_off(&vm);
    vm.wait_powered_off(180);
    let _ = virtiofsd.kill();
    let _ = virtiofsd.wait();
}

#[test]
fn lima_on_x86_64() {
    retry_on_guest_stall(|| boot_lima("x86_64", "qemu-system-x86_64"));
}

#[test]
fn lima_on_aarch64() {
    retry_on_guest_stall(|| boot_lima("aarch64", "qemu-system-aarch64"));
}
