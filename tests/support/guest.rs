//! A small guest to build in tests: a signed repository (served over loopback HTTP) with a
//! fake kernel, modules, busybox, a tool with users and links, an EFI stub; a profile and an
//! overlay using them; and `hyve build` under a chosen environment.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{stderr, Pkg, Server, TestRepo};

pub const KREL: &str = "6.6.1-0-virt";

pub fn bzimage() -> Vec<u8> {
    let mut k: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

pub fn arm64_image() -> Vec<u8> {
    let mut k: Vec<u8> = (0..60_000u32).map(|i| (i * 13 % 251) as u8).collect();
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    k
}

/// An EFI zboot wrapper (layout from shared/alpine/README.md) around `image`, gzip payload.
fn zboot(image: &[u8]) -> Vec<u8> {
    let payload = hyve::apk::archive::gzip_best(image);
    let mut pe = vec![0u8; 0x200];
    pe[0..2].copy_from_slice(b"MZ");
    pe[4..8].copy_from_slice(b"zimg");
    pe[8..12].copy_from_slice(&0x200u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    pe[0x18..0x1c].copy_from_slice(b"gzip");
    pe.extend_from_slice(&payload);
    pe
}

fn module(depends: &str) -> Vec<u8> {
    format!("\x7fELF fake module\0license=GPL\0depends={depends}\0vermagic={KREL}\0").into_bytes()
}

pub fn packages(arch: &str) -> Vec<Pkg> {
    let kernel = if arch == "aarch64" { zboot(&arm64_image()) } else { bzimage() };
    let kernel: &'static [u8] = Box::leak(kernel.into_boxed_slice());
    let (stub_path, machine) = if arch == "aarch64" {
        ("usr/lib/systemd/boot/efi/linuxaa64.efi.stub", 0xaa64)
    } else {
        ("usr/lib/systemd/boot/efi/linuxx64.efi.stub", 0x8664)
    };
    vec![
        Pkg::new("systemd-efistub", "257.9-r0").file(stub_path, &hyve::output::uki::test_stub(machine)),
        Pkg::new("alpine-baselayout-data", "3.6.8-r1")
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")
            .file("etc/group", b"root:x:0:root\nshadow:x:42:\nnogroup:x:65533:\n")
            .file("etc/shadow", b"root:*::0:::::\n")
            .mode("etc/shadow", 0o640)
            .owner("etc/shadow", 0, 42, "shadow"),
        Pkg::new("musl", "1.2.5-r10").provides("so:libc.musl-x86_64.so.1=1").file("lib/ld-musl-x86_64.so.1", b"\x7fELF musl"),
        Pkg::new("busybox", "1.37.0-r19")
            .depends("so:libc.musl-x86_64.so.1")
            .file("bin/busybox", b"\x7fELF busybox")
            .mode("bin/busybox", 0o755)
            .file("etc/busybox-paths.d/busybox", b"/bin/sh\n/bin/ls\n/sbin/modprobe\n/usr/bin/env\n")
            .script(".post-install", b"#!/bin/sh\n/bin/busybox --install -s\n"),
        Pkg::new("busybox-static", "1.37.0-r19").file("bin/busybox.static", b"\x7fELF static busybox").mode("bin/busybox.static", 0o755),
        Pkg::new("tool", "2.0-r0")
            .depends("busybox")
            .file("usr/bin/tool", b"#!/bin/sh\necho tool\n")
            .mode("usr/bin/tool", 0o4755)
            .hardlink("usr/bin/tool-alias", "usr/bin/tool")
            .symlink("usr/bin/t", "tool")
            .script(".pre-install", b"#!/bin/sh\naddgroup -S tool 2>/dev/null\nadduser -S -D -H -h /var/lib/tool -s /sbin/nologin -G tool tool 2>/dev/null\nexit 0\n"),
        Pkg::new("linux-virt", "6.6.1-r0")
            .file("boot/vmlinuz-virt", kernel)
            .file("boot/config-6.6.1-0-virt", b"CONFIG_X=y\n")
            .file("lib/modules/6.6.1-0-virt/kernel/drivers/net/virtio_net.ko", &module("net_failover"))
            .file("lib/modules/6.6.1-0-virt/kernel/drivers/net/net_failover.ko", &module("failover"))
            .file("lib/modules/6.6.1-0-virt/kernel/net/core/failover.ko", &module(""))
            .file("lib/modules/6.6.1-0-virt/kernel/drivers/block/virtio_blk.ko", &module(""))
            .file("lib/modules/6.6.1-0-virt/kernel/fs/squashfs/squashfs.ko.gz", &hyve::apk::archive::gzip_best(&module("")))
            .file("lib/modules/6.6.1-0-virt/kernel/fs/overlayfs/overlay.ko", &module(""))
            .file("lib/modules/6.6.1-0-virt/kernel/sound/unrelated.ko", &module(""))
            // Disk drivers the squashfs boot initramfs may load: SCSI as modules, NVMe built in.
            .file("lib/modules/6.6.1-0-virt/kernel/drivers/scsi/scsi_mod.ko", &module(""))
            .file("lib/modules/6.6.1-0-virt/kernel/drivers/scsi/sd_mod.ko", &module("scsi_mod"))
            .file("lib/modules/6.6.1-0-virt/kernel/drivers/scsi/virtio_scsi.ko", &module("scsi_mod"))
            .file(
                "lib/modules/6.6.1-0-virt/modules.builtin",
                b"kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/nvme/host/nvme.ko\n",
            )
            .file("lib/modules/6.6.1-0-virt/modules.alias", b"alias stale unrelated\n"),
    ]
}

pub struct Env {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub repo: TestRepo,
    pub server: Server,
    pub profile: PathBuf,
}

pub fn setup(arches: &[&str]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let repo = TestRepo::new(&root);
    for arch in arches {
        repo.publish("v3.24", "main", arch, &packages(arch));
    }
    let server = Server::start(&repo.root);
    let overlay = root.join("profiles/overlay-test");
    std::fs::create_dir_all(overlay.join("etc/init.d")).unwrap();
    std::fs::write(overlay.join("etc/init.d/hyve-marker"), b"#!/bin/sh\necho HYVE-MARKER\n").unwrap();
    std::fs::set_permissions(
        overlay.join("etc/init.d/hyve-marker"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let profile = root.join("profiles/guest.toml");
    let arch_list = arches.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        &profile,
        format!(
            "arches = [{arch_list}]\npackages = [\"alpine-baselayout-data\", \"busybox\", \"tool\"]\nhostname = \"testbox\"\ncmdline = \"panic=-1 quiet\"\noverlays = [\"overlay-test\"]\n[kernel]\nmodules = [\"virtio_net\", \"virtio-blk\", \"virtio_pci\"]\n[output]\ncompression = \"gzip\"\n"
        ),
    )
    .unwrap();
    Env { _dir: dir, root, repo, server, profile }
}

impl Env {
    /// The arguments of `hyve SUBCOMMAND` against this repository: profile, mirror, key,
    /// cache, then `extra`.
    pub fn args(&self, subcommand: &str, cache: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            subcommand,
            "--profile",
            self.profile.to_str().unwrap(),
            "--mirror",
            &self.server.url,
            "--key",
            self.repo.pub_path.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `hyve build` with `extra` args and environment `envs`, after the shell commands
    /// `prelude` (`umask 022;`), optionally inside `wrapper` (e.g. `unshare -r -u`).
    pub fn build_in(
        &self,
        wrapper: &[&str],
        prelude: &str,
        out: &Path,
        cache: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> std::process::Output {
        let mut extra = extra.to_vec();
        extra.extend(["--out", out.to_str().unwrap()]);
        let args = self.args("build", cache, &extra);
        let (program, before) = wrapper.split_first().map_or(("sh", &[][..]), |(p, rest)| (*p, rest));
        let mut cmd = Command::new(program);
        cmd.args(before);
        if !wrapper.is_empty() {
            cmd.arg("sh");
        }
        cmd.arg("-c").arg(format!("{prelude} exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_hyve")).args(&args);
        cmd.env_remove("SOURCE_DATE_EPOCH").env_remove("HYVE_MIRROR").env_remove("HYVE_CACHE_DIR");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// `hyve build` with `extra` args, environment `envs`, run under `umask`.
    pub fn build(
        &self,
        out: &Path,
        cache: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
        umask: &str,
    ) -> std::process::Output {
        self.build_in(&[], &format!("umask {umask};"), out, cache, extra, envs)
    }

    /// `hyve verify --against AGAINST` (plus `extra`) for this repository.
    pub fn verify(&self, against: &str, cache: &Path, extra: &[&str]) -> std::process::Output {
        let mut extra = extra.to_vec();
        extra.extend(["--against", against]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyve"));
        cmd.args(self.args("verify", cache, &extra));
        cmd.env_remove("SOURCE_DATE_EPOCH").env_remove("HYVE_MIRROR").env_remove("HYVE_CACHE_DIR");
        cmd.output().unwrap()
    }
}

pub fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "expected success:\n{}", stderr(o));
}
