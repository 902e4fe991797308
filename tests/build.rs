//! `hyve build` against a generated signed repository: the initrd read back with GNU cpio
//! (paths, modes, owners, link targets, hardlinks, /dev/console), the module subset, users
//! from install scripts, reproducibility across environments, the arm64 kernel, and
//! failures that leave nothing behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{hyve, stderr, Pkg, Server, TestRepo};

const KREL: &str = "6.6.1-0-virt";

fn bzimage() -> Vec<u8> {
    let mut k: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

fn arm64_image() -> Vec<u8> {
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

fn packages(arch: &str) -> Vec<Pkg> {
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
            .file("lib/modules/6.6.1-0-virt/kernel/sound/unrelated.ko", &module(""))
            .file("lib/modules/6.6.1-0-virt/modules.builtin", b"kernel/drivers/virtio/virtio_pci.ko\n")
            .file("lib/modules/6.6.1-0-virt/modules.alias", b"alias stale unrelated\n"),
    ]
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: TestRepo,
    server: Server,
    profile: PathBuf,
}

fn setup(arches: &[&str]) -> Env {
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
    /// `hyve build` with `extra` args, environment `envs`, run under `umask`.
    fn build(
        &self,
        out: &Path,
        cache: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
        umask: &str,
    ) -> std::process::Output {
        let mut args: Vec<String> = [
            "build",
            "--profile",
            self.profile.to_str().unwrap(),
            "--mirror",
            &self.server.url,
            "--key",
            self.repo.pub_path.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_hyve")).args(&args);
        cmd.env_remove("SOURCE_DATE_EPOCH").env_remove("HYVE_MIRROR").env_remove("HYVE_CACHE_DIR");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "expected success:\n{}", stderr(o));
}

/// One line of `cpio -itv`: (mode string, links, uid, gid, size, link target).
type Listed = (String, u32, u32, u32, u64, Option<String>);

/// `cpio -itv --numeric-uid-gid` on the decompressed initrd, by name.
fn gnu_cpio_listing(initrd: &Path) -> std::collections::BTreeMap<String, Listed> {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -itv --numeric-uid-gid --quiet", initrd.display()))
        .output()
        .expect("gzip and cpio");
    assert!(o.status.success(), "cpio: {}", String::from_utf8_lossy(&o.stderr));
    let mut out = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        // -rwxr-xr-x   2 0        0              19 Nov 14  2023 usr/bin/tool
        let f: Vec<&str> = line.split_whitespace().collect();
        let mode = f[0].to_string();
        let (links, uid, gid) = (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
        let (size, rest) = if mode.starts_with('c') || mode.starts_with('b') {
            (0, &f[9..])
        } else {
            (f[4].parse().unwrap(), &f[8..])
        };
        let rest = rest.join(" ");
        let (name, target) = match rest.split_once(" -> ") {
            Some((n, t)) => (n.to_string(), Some(t.to_string())),
            None => (rest, None),
        };
        out.insert(name, (mode, links, uid, gid, size, target));
    }
    out
}

fn cpio_extract(initrd: &Path, member: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -i --to-stdout --quiet '{member}'", initrd.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn build_writes_a_complete_guest_that_gnu_cpio_reads() {
    let env = setup(&["x86_64"]);
    let out = env.root.join("out/guest-x86_64");
    let o = env.build(&out, &env.root.join("cache"), &["--arch", "x86_64"], &[], "022");
    ok(&o);
    let mut files: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["SHA256SUMS", "cmdline", "initrd.img", "kernel", "manifest.json"]);
    let check = Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&out).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert_eq!(std::fs::read(out.join("kernel")).unwrap(), bzimage(), "x86_64 uses the bzImage as is");
    assert_eq!(std::fs::read_to_string(out.join("cmdline")).unwrap(), "console=hvc0 console=ttyS0 panic=-1 quiet\n");

    let initrd = out.join("initrd.img");
    let l = gnu_cpio_listing(&initrd);
    let get = |p: &str| {
        l.get(p).unwrap_or_else(|| panic!("{p} missing from the initrd; have {:?}", l.keys().collect::<Vec<_>>()))
    };
    assert_eq!(get("bin/busybox").0, "-rwxr-xr-x");
    assert_eq!(get("bin/sh").5.as_deref(), Some("/bin/busybox"), "busybox applet link");
    assert_eq!(get("sbin/modprobe").5.as_deref(), Some("/bin/busybox"));
    assert_eq!(get("usr/bin/t").5.as_deref(), Some("tool"));
    assert_eq!(get("usr/bin/tool").0, "-rwsr-xr-x", "setuid kept");
    assert_eq!((get("usr/bin/tool").1, get("usr/bin/tool-alias").1), (2, 2), "a real newc hardlink");
    assert_eq!(get("etc/shadow").0, "-rw-r-----");
    assert_eq!((get("etc/shadow").2, get("etc/shadow").3), (0, 42), "owner from the package, group shadow");
    let console = get("dev/console");
    assert!(console.0.starts_with("crw-------"), "{console:?}");
    assert_eq!(get("tmp").0, "drwxrwxrwt");
    assert_eq!(get("etc/init.d/hyve-marker").0, "-rwxr-xr-x", "overlay file with its mode");
    assert!(l.keys().all(|k| !k.starts_with("boot/")), "the kernel is not duplicated into the initrd");
    // Only the listed modules and their dependencies, with a matching modules.dep.
    let mods: Vec<&String> = l.keys().filter(|k| k.ends_with(".ko")).collect();
    assert_eq!(
        mods,
        [
            &format!("lib/modules/{KREL}/kernel/drivers/block/virtio_blk.ko"),
            &format!("lib/modules/{KREL}/kernel/drivers/net/net_failover.ko"),
            &format!("lib/modules/{KREL}/kernel/drivers/net/virtio_net.ko"),
            &format!("lib/modules/{KREL}/kernel/net/core/failover.ko")
        ]
    );
    assert!(!l.contains_key(&format!("lib/modules/{KREL}/modules.alias")), "stale module indexes are dropped");
    let dep = cpio_extract(&initrd, &format!("lib/modules/{KREL}/modules.dep"));
    assert_eq!(
        dep,
        "kernel/drivers/block/virtio_blk.ko:\nkernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n"
    );
    // Users and groups from tool's .pre-install; hostname; os-release; apk's database.
    assert!(cpio_extract(&initrd, "etc/group").contains("tool:x:100:"));
    assert!(cpio_extract(&initrd, "etc/passwd").contains("tool:x:100:100:Linux User,,,:/var/lib/tool:/sbin/nologin"));
    assert_eq!(cpio_extract(&initrd, "etc/hostname"), "testbox\n");
    assert!(cpio_extract(&initrd, "etc/os-release").contains("VARIANT_ID=guest"));
    let db = cpio_extract(&initrd, "lib/apk/db/installed");
    assert!(db.contains("P:busybox\nV:1.37.0-r19\n") && db.contains("R:busybox\nZ:Q1"), "{db}");
    // mtimes clamped to the newest package build date.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["source_date_epoch"], 1_700_000_000u64);
    assert_eq!(manifest["kernel"]["release"], KREL);
    assert_eq!(manifest["packages"].as_array().unwrap().len(), 5);
    assert!(stderr(&o).contains("virtio_pci is built into linux-virt"), "{}", stderr(&o));
    // hyve inspect reads its own initrd.
    let o = hyve(&["inspect", "--json", initrd.to_str().unwrap()], &[]);
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["count"].as_u64().unwrap() as usize, l.len());
}

#[test]
fn builds_are_byte_identical_whatever_the_environment() {
    let env = setup(&["x86_64"]);
    let a = env.root.join("a/out");
    let b = env.root.join("elsewhere/deeper/out");
    ok(&env.build(&a, &env.root.join("cache-cold"), &["--jobs", "1"], &[("TZ", "UTC"), ("LANG", "C")], "022"));
    // Warm cache the second time, other time zone, locale, umask and thread count.
    ok(&env.build(
        &b,
        &env.root.join("cache-cold"),
        &["--jobs", "8"],
        &[("TZ", "Pacific/Kiritimati"), ("LANG", "de_DE.UTF-8")],
        "077",
    ));
    // And once more from a different cold cache.
    let c = env.root.join("c");
    ok(&env.build(&c, &env.root.join("cache-other"), &[], &[("TZ", "America/St_Johns")], "002"));
    for f in ["kernel", "initrd.img", "cmdline", "manifest.json", "SHA256SUMS"] {
        let x = std::fs::read(a.join(f)).unwrap();
        assert_eq!(x, std::fs::read(b.join(f)).unwrap(), "{f} differs between builds a and b");
        assert_eq!(x, std::fs::read(c.join(f)).unwrap(), "{f} differs between builds a and c");
    }
    // SOURCE_DATE_EPOCH changes the mtimes, so the initrd changes.
    let d = env.root.join("d");
    ok(&env.build(&d, &env.root.join("cache-cold"), &[], &[("SOURCE_DATE_EPOCH", "1600000000")], "022"));
    assert_ne!(std::fs::read(a.join("initrd.img")).unwrap(), std::fs::read(d.join("initrd.img")).unwrap());
}

#[test]
fn zstd_and_xz_initrds() {
    let env = setup(&["x86_64"]);
    for (comp, magic) in [("zstd", &[0x28u8, 0xb5, 0x2f, 0xfd][..]), ("xz", &[0xfd, b'7', b'z', b'X', b'Z', 0][..])] {
        let text = std::fs::read_to_string(&env.profile)
            .unwrap()
            .replace("compression = \"gzip\"", &format!("compression = \"{comp}\""))
            .replace("compression = \"zstd\"", &format!("compression = \"{comp}\""));
        std::fs::write(&env.profile, text).unwrap();
        let out = env.root.join(format!("out-{comp}"));
        ok(&env.build(&out, &env.root.join("cache"), &[], &[], "022"));
        let initrd = std::fs::read(out.join("initrd.img")).unwrap();
        assert!(initrd.starts_with(magic), "{comp}");
        let o = hyve(&["inspect", out.join("initrd.img").to_str().unwrap()], &[]);
        ok(&o);
        assert!(String::from_utf8_lossy(&o.stdout).contains("dev/console"));
    }
}

#[test]
fn aarch64_kernel_is_unwrapped_from_zboot() {
    let env = setup(&["aarch64"]);
    let out = env.root.join("out-arm");
    ok(&env.build(&out, &env.root.join("cache"), &["--arch", "aarch64"], &[], "022"));
    assert_eq!(std::fs::read(out.join("kernel")).unwrap(), arm64_image(), "the raw Image, byte for byte");
    assert_eq!(std::fs::read_to_string(out.join("cmdline")).unwrap(), "console=hvc0 console=ttyAMA0 panic=-1 quiet\n");
}

#[test]
fn a_failed_build_leaves_the_previous_output_and_no_debris() {
    let env = setup(&["x86_64"]);
    let out = env.root.join("out/guest");
    ok(&env.build(&out, &env.root.join("cache"), &[], &[], "022"));
    let before = std::fs::read(out.join("initrd.img")).unwrap();
    let text = std::fs::read_to_string(&env.profile).unwrap().replace("\"virtio-blk\"", "\"no_such_module\"");
    std::fs::write(&env.profile, text).unwrap();
    let o = env.build(&out, &env.root.join("cache"), &[], &[], "022");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("no_such_module") && e.contains("linux-virt"), "{e}");
    assert_eq!(std::fs::read(out.join("initrd.img")).unwrap(), before, "the previous build must stay intact");
    let debris: Vec<String> = std::fs::read_dir(env.root.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "guest")
        .collect();
    assert!(debris.is_empty(), "left behind: {debris:?}");
    // A missing overlay directory is named.
    let text = std::fs::read_to_string(&env.profile)
        .unwrap()
        .replace("\"no_such_module\"", "\"virtio_blk\"")
        .replace("overlay-test", "overlay-missing");
    std::fs::write(&env.profile, text).unwrap();
    let o = env.build(&env.root.join("out/other"), &env.root.join("cache"), &[], &[], "022");
    assert!(stderr(&o).contains("overlay-missing") && !env.root.join("out/other").exists(), "{}", stderr(&o));
}

#[test]
fn conflicting_packages_are_refused() {
    let env = setup(&["x86_64"]);
    let mut pkgs = packages("x86_64");
    pkgs.push(Pkg::new("clash", "1-r0").file("usr/bin/tool", b"another tool\n"));
    env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let text = std::fs::read_to_string(&env.profile).unwrap().replace("\"tool\"]", "\"tool\", \"clash\"]");
    std::fs::write(&env.profile, text).unwrap();
    let o = env.build(&env.root.join("out/x"), &env.root.join("cache"), &[], &[], "022");
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("usr/bin/tool: both")
            && e.contains("clash")
            && e.contains("different contents"),
        "{e}"
    );
    assert_eq!(e.matches("different contents").count(), 1, "said once: {e}");
}

#[test]
fn optional_modules_are_included_when_present_and_listed_when_not() {
    let env = setup(&["x86_64"]);
    let text = std::fs::read_to_string(&env.profile).unwrap();
    let text = text.replace("[kernel]\n", "[kernel]\noptional_modules = [\"failover\", \"no_such_button\"]\n");
    std::fs::write(&env.profile, text).unwrap();
    let out = env.root.join("out");
    ok(&env.build(&out, &env.root.join("cache"), &["--arch", "x86_64"], &[], "022"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kernel"]["optional_modules_missing"], serde_json::json!(["no_such_button"]));
    assert!(cpio_extract(&out.join("initrd.img"), "etc/hyve/modules").lines().any(|m| m == "failover"));
}

#[test]
fn disk_create_checks_its_input_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let hyve =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_hyve")).args(args).current_dir(dir.path()).output().unwrap();
    std::fs::write(dir.path().join("name"), "box\n").unwrap();
    ok(&hyve(&["disk", "create", "d.img", "--size", "64M", "--file", "name:hostname"]));
    let bytes = std::fs::read(dir.path().join("d.img")).unwrap();
    assert_eq!(bytes.len(), 64 << 20);
    assert!(bytes.starts_with(b"hyve, please format-me"));
    let cases: [(&[&str], &str); 5] = [
        (&["disk", "create", "d.img", "--size", "64M"], "already exists"),
        (&["disk", "create", "e.img", "--size", "1M"], "at least 64M"),
        (&["disk", "create", "e.img", "--size", "64M", "--file", "name"], "expected SRC:DEST"),
        (&["disk", "create", "e.img", "--size", "64M", "--file", "name:../etc/passwd"], "`..` components"),
        (&["disk", "create", "e.img", "--size", "64M", "--ssh-key", "name"], "OpenSSH public keys"),
    ];
    for (args, expected) in cases {
        let o = hyve(args);
        assert!(!o.status.success() && stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
    assert!(!dir.path().join("e.img").exists(), "nothing half-written");
    assert_eq!(std::fs::read(dir.path().join("d.img")).unwrap(), bytes, "the existing disk is untouched");
}

/// A host tool the disk checks need (CI installs gdisk, dosfstools and mtools).
fn tool(name: &str, package: &str) -> String {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    assert!(found, "{name} is needed to check the disk image independently: apt-get install {package}");
    name.to_string()
}

#[test]
fn disk_image_is_a_clean_gpt_with_a_fat32_esp_and_a_uki() {
    let env = setup(&["x86_64"]);
    let text = std::fs::read_to_string(&env.profile).unwrap();
    let text = text.replace(
        "[output]\n",
        "[output]\nformats = [\"kernel\", \"initrd\", \"disk\"]\ndisk_size_mib = 160\ndata_partition_mib = 64\n",
    );
    std::fs::write(&env.profile, text).unwrap();
    let (a, b) = (env.root.join("a"), env.root.join("b"));
    ok(&env.build(&a, &env.root.join("cache-a"), &["--arch", "x86_64"], &[], "022"));
    ok(&env.build(&b, &env.root.join("cache-b"), &["--arch", "x86_64"], &[("TZ", "Asia/Tokyo")], "077"));
    let disk = a.join("disk.img");
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(bytes.len(), 160 << 20);
    assert!(bytes == std::fs::read(b.join("disk.img")).unwrap(), "two builds give the same disk.img bytes");
    assert!(std::fs::read_to_string(a.join("SHA256SUMS")).unwrap().contains("  disk.img\n"));

    // sgdisk's own verdict on the GPT.
    let o = Command::new(tool("sgdisk", "gdisk")).arg("-v").arg(&disk).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && said.contains("No problems found"), "sgdisk -v: {said}{}", stderr(&o));
    let o = Command::new("sgdisk").arg("-p").arg(&disk).output().unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("EF00") && table.contains("EFI System Partition") && table.contains("hyve-data"), "{table}");

    // fsck.vfat on the ESP alone, and mtools' listing.
    let esp = env.root.join("esp.img");
    let esp_bytes = &bytes[1 << 20..(160 - 64 - 1) << 20];
    std::fs::write(&esp, esp_bytes).unwrap();
    let o = Command::new(tool("fsck.vfat", "dosfstools")).arg("-n").arg(&esp).output().unwrap();
    assert!(o.status.success(), "fsck.vfat -n: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let o = Command::new(tool("mdir", "mtools"))
        .args(["-/", "-b", "-i", &format!("{}@@1M", disk.display()), "::"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    for f in ["::/EFI/BOOT/BOOTX64.EFI", "::/hyve/kernel", "::/hyve/initrd.img", "::/loader/entries/hyve.conf"] {
        assert!(listing.lines().any(|l| l == f), "{f} not on the ESP: {listing}{}", stderr(&o));
    }
    assert!(
        esp_bytes[0x47..0x52] == *b"HYVE-EFI   " && esp_bytes[0x52..0x5a] == *b"FAT32   ",
        "FAT32 labelled HYVE-EFI"
    );

    // The UKI's sections hold exactly the build's pieces; inspect shows them.
    let o = hyve(&["inspect", "--json", disk.to_str().unwrap()], &[]);
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sections = doc["uki"]["sections"].as_array().unwrap();
    let names: Vec<&str> = sections.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, [".text", ".osrel", ".cmdline", ".initrd", ".linux"]);
    let o = Command::new("mcopy")
        .args(["-n", "-i", &format!("{}@@1M", disk.display()), "::/EFI/BOOT/BOOTX64.EFI", "-"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "mcopy: {}", stderr(&o));
    let section = |name: &str| {
        let s = sections.iter().find(|s| s["name"] == name).unwrap();
        let (at, len) = (s["raw_offset"].as_u64().unwrap() as usize, s["virtual_size"].as_u64().unwrap() as usize);
        o.stdout[at..at + len].to_vec()
    };
    assert_eq!(section(".linux"), std::fs::read(a.join("kernel")).unwrap());
    assert_eq!(section(".initrd"), std::fs::read(a.join("initrd.img")).unwrap());
    assert_eq!(section(".cmdline"), std::fs::read_to_string(a.join("cmdline")).unwrap().trim_end().as_bytes());
    assert!(String::from_utf8(section(".osrel")).unwrap().contains("ID=hyve"));
    // The data partition waits for the guest with the format-me header.
    let data = doc["partitions"][1]["first_lba"].as_u64().unwrap() as usize * 512;
    assert!(bytes[data..].starts_with(b"hyve, please format-me"));
}
