//! Boot tests: the real `base` profile built against the test mirror (Debian's binaries
//! repackaged by `make mirror` — a TEST FIXTURE) and booted with `hyve run` under QEMU,
//! x86_64 and aarch64. Each checks that init reached userspace, DHCP gave eth0 an address
//! and the guest powered off cleanly. The console log is kept in target/boot-logs/.
//!
//! Skipped (with a message) when QEMU or the mirror is missing, unless
//! HYVE_REQUIRE_BOOT_TESTS=1, which turns a skip into a failure (CI sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `Some(reason)` when this test cannot run here.
fn missing(qemu: &str, mirror: &Path, arch: &str) -> Option<String> {
    let has_qemu = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(qemu).is_file()));
    if !has_qemu {
        return Some(format!("{qemu} is not installed (apt-get install qemu-system-x86 qemu-system-arm)"));
    }
    if !mirror.join(format!("v3.24/main/{arch}/APKINDEX.tar.gz")).is_file() {
        return Some(format!("no test mirror for {arch} at {} (run `make mirror`)", mirror.display()));
    }
    None
}

fn hyve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hyve"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("HYVE_MIRROR")
        .output()
        .unwrap()
}

fn boot_base(arch: &str, qemu: &str) {
    let root = workspace();
    let mirror = root.join("target/test-mirror");
    if let Some(reason) = missing(qemu, &mirror, arch) {
        if std::env::var("HYVE_REQUIRE_BOOT_TESTS").as_deref() == Ok("1") {
            panic!("boot test {arch} cannot run and HYVE_REQUIRE_BOOT_TESTS=1: {reason}");
        }
        eprintln!("SKIPPED boot test {arch}: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mirror_url = format!("file://{}", mirror.display());
    let key = root.join("tests/keys/hyve-test-mirror.rsa.pub");
    let o = hyve(&[
        "build",
        "--profile",
        &s(&root.join("profiles/base.toml")),
        "--arch",
        arch,
        "--mirror",
        &mirror_url,
        "--key",
        &s(&key),
        "--lockfile",
        &s(&tmp.path().join("base.lock")),
        "--cache-dir",
        &s(&tmp.path().join("cache")),
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "build failed:\n{}", String::from_utf8_lossy(&o.stderr));

    let started = std::time::Instant::now();
    let o = hyve(&["run", &s(&out), "--accel", "auto", "--append", "hyve.poweroff", "--timeout", "180"]);
    let elapsed = started.elapsed();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let logs = root.join("target/boot-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log_path = logs.join(format!("base-{arch}.log"));
    std::fs::write(&log_path, &log).unwrap();
    let clean = log.replace('\r', "");
    let check = |what: &str, needle: &str| {
        assert!(clean.contains(needle), "{arch}: {what}: {needle:?} not on the console (log: {})", log_path.display());
    };
    check("init reached userspace", "hyve: init reached userspace (HYVE-BOOT-OK)");
    check("DHCP from QEMU", "hyve: eth0 10.0.2.15/24 (DHCP)");
    check("clean power-off", "reboot: Power down");
    assert!(o.status.success(), "{arch}: QEMU exited with {:?} (log: {})", o.status, log_path.display());
    eprintln!("boot test {arch}: powered off cleanly after {:.1} s", elapsed.as_secs_f64());
}

#[test]
fn base_boots_on_x86_64() {
    boot_base("x86_64", "qemu-system-x86_64");
}

#[test]
fn base_boots_on_aarch64() {
    boot_base("aarch64", "qemu-system-aarch64");
}
