//! `hyve build` against a generated signed repository: the initrd read back with GNU cpio
//! (paths, modes, owners, link targets, hardlinks, /dev/console), the module subset, users
//! from install scripts, reproducibility across environments, the arm64 kernel, and
//! failures that leave nothing behind.

mod support;

use std::path::Path;
use std::process::Command;

use support::guest::{arm64_image, bzimage, ok, packages, setup, KREL};
use support::{hyve, stderr, unprivileged, Pkg};

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
    assert_eq!(files, ["SHA256SUMS", "cmdline", "initrd.img", "kernel", "manifest.json", "sbom.spdx.json"]);
    let check = Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&out).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert_eq!(std::fs::read(out.join("kernel")).unwrap(), bzimage(), "x86_64 uses the bzImage as is");
    assert_eq!(std::fs::read_to_string(out.join("cmdline")).unwrap(), "console=ttyS0 console=hvc0 panic=-1 quiet\n");

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
    let outputs = ["kernel", "initrd.img", "cmdline", "manifest.json", "sbom.spdx.json", "SHA256SUMS"];
    for f in outputs {
        let x = std::fs::read(a.join(f)).unwrap();
        assert_eq!(x, std::fs::read(b.join(f)).unwrap(), "{f} differs between builds a and b");
        assert_eq!(x, std::fs::read(c.join(f)).unwrap(), "{f} differs between builds a and c");
    }
    // SOURCE_DATE_EPOCH changes every output that carries a time: the initrd (mtimes), the
    // manifest, the SBOM and so SHA256SUMS. The kernel and cmdline carry none and stay.
    let d = env.root.join("d");
    ok(&env.build(&d, &env.root.join("cache-cold"), &[], &[("SOURCE_DATE_EPOCH", "1600000000")], "022"));
    let changed: Vec<&str> = outputs
        .into_iter()
        .filter(|f| std::fs::read(a.join(f)).unwrap() != std::fs::read(d.join(f)).unwrap())
        .collect();
    assert_eq!(changed, ["initrd.img", "manifest.json", "sbom.spdx.json", "SHA256SUMS"]);
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
    assert_eq!(std::fs::read_to_string(out.join("cmdline")).unwrap(), "console=ttyAMA0 console=hvc0 panic=-1 quiet\n");
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

/// sgdisk's own verdict on the GPT of `disk`: no problems.
fn sgdisk_verifies(disk: &Path) {
    let o = Command::new(tool("sgdisk", "gdisk")).arg("-v").arg(disk).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && said.contains("No problems found"), "sgdisk -v: {said}{}", stderr(&o));
}

/// `output.root = "squashfs"`: the tree goes into root.squashfs — read back by squashfs-tools,
/// the same files as the initramfs of the same profile — and the initrd is only what finds
/// and mounts it; disk.img carries it in a partition; a rebuild gives the same bytes.
#[test]
fn a_squashfs_root_holds_the_guest_and_the_initrd_only_finds_it() {
    let env = setup(&["x86_64"]);
    let text = std::fs::read_to_string(&env.profile)
        .unwrap()
        .replace("\"tool\"]", "\"tool\", \"busybox-static\"]")
        .replace("overlays = [\"overlay-test\"]", "overlays = [\"hyve:base\", \"overlay-test\"]")
        .replace("[output]\n", "[output]\nformats = [\"kernel\", \"initrd\", \"disk\"]\n");
    std::fs::write(&env.profile, &text).unwrap();
    let ramfs = env.root.join("initramfs");
    ok(&env.build(&ramfs, &env.root.join("cache"), &["--arch", "x86_64"], &[], "022"));
    std::fs::write(&env.profile, text.replace("[output]\n", "[output]\nroot = \"squashfs\"\n")).unwrap();
    let (a, b) = (env.root.join("a"), env.root.join("b"));
    ok(&env.build(&a, &env.root.join("cache"), &["--arch", "x86_64"], &[], "022"));
    ok(&env.build(&b, &env.root.join("cache-b"), &["--arch", "x86_64", "--jobs", "1"], &[("TZ", "Asia/Tokyo")], "077"));
    let sums = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    assert_eq!(sums, std::fs::read_to_string(b.join("SHA256SUMS")).unwrap(), "byte-identical rebuild");
    assert!(sums.contains("  root.squashfs\n"), "{sums}");
    let check = Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&a).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    // A rebuild with a's cache takes every block of root.squashfs from the block cache, and
    // gives the same bytes; so does one after a record in the cache was damaged, which
    // compresses that block again.
    let warm = env.root.join("warm");
    let blocks = |o: &std::process::Output| {
        ok(o);
        assert_eq!(std::fs::read_to_string(warm.join("SHA256SUMS")).unwrap(), sums, "rebuilt from the block cache");
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let b = &doc["root_blocks"];
        (b["total"].as_u64().unwrap(), b["cached"].as_u64().unwrap(), b["cache"].as_str().unwrap().to_string())
    };
    let (total, cached, pack) =
        blocks(&env.build(&warm, &env.root.join("cache"), &["--arch", "x86_64", "--json"], &[], "022"));
    assert!(total > 0 && cached == total, "{cached} of {total} blocks from the cache");
    let mut bytes = std::fs::read(&pack).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    let (total, cached, _) =
        blocks(&env.build(&warm, &env.root.join("cache"), &["--arch", "x86_64", "--json"], &[], "022"));
    assert!(0 < cached && cached < total, "all but the damaged block from the cache: {cached} of {total}");
    // A block cache that cannot be used is a warning, not a failure.
    let other = env.root.join("cache-b");
    std::fs::remove_dir_all(other.join("root-blocks")).unwrap();
    std::fs::write(other.join("root-blocks"), "not a directory").unwrap();
    let o = env.build(&warm, &other, &["--arch", "x86_64", "--json"], &[], "022");
    ok(&o);
    assert_eq!(std::fs::read_to_string(warm.join("SHA256SUMS")).unwrap(), sums);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(doc["root_blocks"]["cache"].is_null() && doc["root_blocks"]["cached"] == 0, "{doc}");
    let warned = doc["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("cannot be used"));
    assert!(warned, "{doc}");

    // squashfs-tools reads every entry hyve's own reader does, with the same modes and sizes.
    let root = a.join("root.squashfs");
    let o = Command::new("unsquashfs")
        .args(["-lln", "-d", ""])
        .arg(&root)
        .output()
        .expect("unsquashfs (apt-get install squashfs-tools)");
    assert!(o.status.success(), "unsquashfs: {}", String::from_utf8_lossy(&o.stderr));
    let listed: std::collections::BTreeMap<String, (String, String, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // -rwsr-xr-x 0/0                19 2023-11-14 22:13 /usr/bin/tool
            // crw------- 0/0             5,  1 2023-11-14 22:13 /dev/console
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = if l.starts_with('c') || l.starts_with('b') { 6 } else { 5 };
            let name = f.get(at)?.trim_start_matches('/').to_string();
            (!name.is_empty()).then(|| (name, (f[0].to_string(), f[1].to_string(), f[2].to_string())))
        })
        .collect();
    let o = hyve(&["inspect", "--json", root.to_str().unwrap()], &[]);
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), listed.len());
    assert_eq!(listed["usr/bin/tool"].0, "-rwsr-xr-x", "setuid kept");
    assert_eq!(listed["etc/shadow"].1, "0/42", "owner from the package");
    assert!(listed["dev/console"].0.starts_with("crw-------"), "{:?}", listed["dev/console"]);
    assert_eq!(listed["tmp"].0, "drwxrwxrwt");
    for e in entries {
        let (mode, owner, size) = &listed[e["name"].as_str().unwrap()];
        let is_file = mode.starts_with('-');
        assert_eq!(owner, &format!("{}/{}", e["uid"], e["gid"]), "{e}");
        if is_file {
            assert_eq!(size, &e["size"].to_string(), "{e}");
        }
    }
    let cat = |path: &str| {
        let o = Command::new("unsquashfs").args(["-cat"]).arg(&root).arg(path).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(cat("etc/hostname"), "testbox\n");
    assert_eq!(cat("usr/bin/tool-alias"), cat("usr/bin/tool"), "a hardlink keeps its bytes");

    // The same files as the initramfs build, but for the modules the boot initramfs needs.
    let o = hyve(&["diff", "--json", ramfs.to_str().unwrap(), a.to_str().unwrap()], &[]);
    let diff: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let changed: Vec<String> = ["added", "removed", "changed"]
        .iter()
        .flat_map(|k| diff["files"][k].as_array().cloned().unwrap_or_default())
        .map(|f| f["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!changed.is_empty(), "{diff}");
    assert!(
        changed.iter().all(|p| p.starts_with(&format!("/lib/modules/{KREL}/")) || p == "/etc/hyve/manifest.json"),
        "{changed:?}"
    );

    // The initrd: busybox.static as /bin/busybox, base's stage 1 as /init, the modules
    // decompressed in load order, the drivers of other disk controllers the kernel has as
    // modules (NVMe is built in here, AHCI absent), and the root image's superblock.
    let initrd = a.join("initrd.img");
    let names: Vec<String> = gnu_cpio_listing(&initrd).into_keys().collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/busybox",
            "dev",
            "dev/console",
            "etc",
            "etc/hyve",
            "etc/hyve/root-modules",
            "etc/hyve/root.superblock",
            "etc/hyve/storage-modules",
            "init",
            "lib",
            "lib/modules",
            "lib/modules/overlay.ko",
            "lib/modules/scsi_mod.ko",
            "lib/modules/sd_mod.ko",
            "lib/modules/squashfs.ko",
            "lib/modules/virtio_blk.ko",
            "lib/modules/virtio_scsi.ko",
            "proc",
            "sys"
        ]
    );
    assert_eq!(cpio_extract(&initrd, "bin/busybox"), "\x7fELF static busybox");
    let stage1 = std::fs::read_to_string(
        env!("CARGO_MANIFEST_DIR").to_string() + "/../overlay/base/usr/libexec/hyve/init-squashfs",
    )
    .unwrap();
    assert_eq!(cpio_extract(&initrd, "init"), stage1);
    assert_eq!(cpio_extract(&initrd, "etc/hyve/root-modules"), "virtio_blk\nsquashfs\noverlay\n");
    assert_eq!(
        cpio_extract(&initrd, "etc/hyve/storage-modules"),
        "virtio-scsi scsi_mod virtio_scsi sd_mod\n",
        "no ahci line: the kernel has no ahci at all"
    );
    assert!(cpio_extract(&initrd, "lib/modules/squashfs.ko").starts_with("\x7fELF fake module"), "decompressed");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -i --to-stdout --quiet etc/hyve/root.superblock", initrd.display()))
        .output()
        .unwrap();
    assert_eq!(o.stdout, std::fs::read(&root).unwrap()[..96]);

    // disk.img: the same image in the hyve-root partition, which hyve diff reads.
    let o = hyve(&["inspect", "--json", a.join("disk.img").to_str().unwrap()], &[]);
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let part = doc["partitions"].as_array().unwrap().iter().find(|p| p["name"] == "hyve-root").unwrap().clone();
    assert_eq!(part["type"], hyve::output::disk::ROOT_X86_64_TYPE);
    let bytes = std::fs::read(a.join("disk.img")).unwrap();
    let image = std::fs::read(&root).unwrap();
    let at = part["first_lba"].as_u64().unwrap() as usize * 512;
    assert!(bytes[at..at + image.len()] == image[..]);
    // No disk_size_mib: the disk is as large as its partitions need, the ESP at FAT32's least
    // (33 MiB) for the stand-in's small files, the root in whole MiB, and a MiB at each end
    // for the GPT; sgdisk finds nothing wrong with it.
    assert_eq!(bytes.len(), (33 + image.len().div_ceil(1 << 20) + 2) << 20);
    sgdisk_verifies(&a.join("disk.img"));
    let o = hyve(&["diff", a.join("disk.img").to_str().unwrap(), root.to_str().unwrap()], &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("files: 0 added, 0 removed, 0 changed"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
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
    // Another SOURCE_DATE_EPOCH: other FAT times and initrd mtimes, so another disk.
    let c = env.root.join("c");
    ok(&env.build(&c, &env.root.join("cache-a"), &["--arch", "x86_64"], &[("SOURCE_DATE_EPOCH", "1600000000")], "022"));
    assert!(bytes != std::fs::read(c.join("disk.img")).unwrap(), "SOURCE_DATE_EPOCH reaches disk.img");
    // hyve verify accepts the build and names disk.img when one byte of it changes.
    ok(&env.verify(a.to_str().unwrap(), &env.root.join("cache-v"), &["--arch", "x86_64"]));
    let mut flipped = bytes.clone();
    flipped[100 << 20] ^= 0x80;
    std::fs::write(b.join("disk.img"), &flipped).unwrap();
    let o = env.verify(b.to_str().unwrap(), &env.root.join("cache-v"), &["--arch", "x86_64"]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{report}");
    let line = report.lines().find(|l| l.contains("disk.img")).unwrap();
    assert!(line.contains("DIFFERS") && line.contains(&format!("byte {}", 100 << 20)), "{report}");
    assert!(std::fs::read_to_string(a.join("SHA256SUMS")).unwrap().contains("  disk.img\n"));

    sgdisk_verifies(&disk);
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
    // inspect and diff only read a disk image: one its reader may not write is read all
    // the same, and stays as it was.
    let ro_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(ro_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ro = ro_dir.path().join("disk.img");
    std::fs::copy(&disk, &ro).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let ro_arg = ro.to_str().unwrap();
    for args in [vec!["inspect", ro_arg], vec!["diff", ro_arg, ro_arg]] {
        let o = unprivileged(Command::new(env!("CARGO_BIN_EXE_hyve")).args(&args)).output().unwrap();
        assert!(o.status.success(), "hyve {args:?} on a read-only disk.img: {}", stderr(&o));
    }
    assert!(std::fs::read(&ro).unwrap() == bytes, "reading changed the disk image");
}

#[test]
fn a_corrupt_cache_entry_is_caught_while_unpacking_and_fetched_again() {
    let env = setup(&["x86_64"]);
    let (a, b, cache) = (env.root.join("a"), env.root.join("b"), env.root.join("cache"));
    ok(&env.build(&a, &cache, &[], &[], "022"));
    // A warm build reads each cached package once: the pin is checked while unpacking.
    let blobs: Vec<_> = std::fs::read_dir(cache.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()).collect();
    let victim = blobs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(victim, &bytes).unwrap();
    let o = env.build(&b, &cache, &[], &[], "022");
    ok(&o);
    assert!(stderr(&o).contains("discarded corrupt cache entry"), "{}", stderr(&o));
    assert_eq!(std::fs::read(a.join("initrd.img")).unwrap(), std::fs::read(b.join("initrd.img")).unwrap());
    assert_ne!(std::fs::read(victim).unwrap(), bytes, "the cache holds the good file again");
}

#[test]
fn an_interrupted_build_leaves_the_previous_output_and_no_temporary_files() {
    let env = setup(&["x86_64"]);
    let (out, cache) = (env.root.join("out/guest"), env.root.join("cache"));
    ok(&env.build(&out, &cache, &[], &[], "022"));
    let before = std::fs::read(out.join("initrd.img")).unwrap();
    // 24 MiB of random letters, and xz: the compression takes seconds.
    let mut noise = vec![0u8; 24 << 20];
    let mut x = 0x2545_f491_u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b'a' + ((x >> 32) % 16) as u8;
    }
    let mut pkgs = packages("x86_64");
    pkgs.push(Pkg::new("noise", "1-r0").file("var/lib/noise.dat", &noise));
    env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let text = std::fs::read_to_string(&env.profile)
        .unwrap()
        .replace("\"tool\"]", "\"tool\", \"noise\"]")
        .replace("compression = \"gzip\"", "compression = \"xz\"");
    std::fs::write(&env.profile, text).unwrap();
    let mut args = env.args("build", &cache, &["--out", out.to_str().unwrap()]);
    args.retain(|a| !a.is_empty());
    let parent = env.root.join("out");
    let beside = || -> Vec<String> {
        std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "guest")
            .collect()
    };
    // Starts a build and sends `signal` while its outputs are being written into the
    // staging directory (the initrd's compression is most of that time).
    let interrupted = |signal: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hyve"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let compressing = || {
            std::fs::read_dir(&parent).unwrap().filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().starts_with(".guest.tmp-") && e.path().join("initrd.img").exists()
            })
        };
        while !compressing() {
            if child.try_wait().unwrap().is_some() {
                let o = child.wait_with_output().unwrap();
                panic!(
                    "the build ended ({:?}, after {:?}) before it could be interrupted: {}",
                    o.status,
                    start.elapsed(),
                    stderr(&o)
                );
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(120), "no compression started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success(), "{signal}");
        assert_eq!(std::fs::read(out.join("initrd.img")).unwrap(), before, "{signal}: the previous build is intact");
        o
    };
    // Ctrl-C and a service manager's stop alike.
    for signal in ["-INT", "-TERM"] {
        let o = interrupted(signal);
        assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
        assert!(beside().is_empty(), "left behind: {:?}", beside());
        assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0, "no partial downloads in the cache");
    }
    // SIGKILL (or a crash, or power loss) cleans nothing up: the staging directory stays
    // until the next build into the same place finds nobody holding it and removes it.
    interrupted("-KILL");
    let left = beside();
    assert!(left.len() == 1 && left[0].starts_with(".guest.tmp-"), "after SIGKILL: {left:?}");
    ok(&Command::new(env!("CARGO_BIN_EXE_hyve")).args(&args).output().unwrap());
    assert_ne!(std::fs::read(out.join("initrd.img")).unwrap(), before, "the new build is in place");
    assert!(beside().is_empty(), "left behind after the next build: {:?}", beside());
}

#[test]
fn a_full_disk_is_named_and_leaves_nothing_behind() {
    let env = setup(&["x86_64"]);
    let cache = env.root.join("cache");
    ok(&env.build(&env.root.join("warm"), &cache, &[], &[], "022"));
    // A 48 KiB tmpfs (in a private mount namespace) cannot hold the kernel and the initrd.
    let small = env.root.join("small");
    std::fs::create_dir(&small).unwrap();
    let out = small.join("out");
    let args = env.args("build", &cache, &["--out", out.to_str().unwrap()]);
    let o = Command::new("unshare")
        .args(["-r", "-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=48k none '{d}' || exit 99; \"$0\" \"$@\"; rc=$?; echo \"left: $(ls -A '{d}')\" >&2; exit $rc",
            d = small.display()
        ))
        .arg(env!("CARGO_BIN_EXE_hyve"))
        .args(&args)
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(99), "this test needs `unshare -r -m` and tmpfs mounts: {e}");
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("No space left on device") && e.contains("free space there"), "{e}");
    assert!(e.lines().any(|l| l == "left: "), "the staging directory was not removed: {e}");
}

/// The argv the VMM gets when a shell runs the script `hyve run --print` wrote (the VMM and
/// the setup commands are stubs on PATH).
fn printed_argv(script: &str) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let stubs = tempfile::tempdir().unwrap();
    for (names, body) in [
        (
            &["vfkit", "hyperkit", "xhyve", "qemu-system-x86_64", "qemu-system-aarch64"][..],
            "printf '%s\\0' \"${0##*/}\" \"$@\"",
        ),
        (&["mkdir", "rm", "cp", "truncate", "touch"][..], "true"),
    ] {
        for name in names {
            let path = stubs.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env("PATH", format!("{}:/usr/bin:/bin", stubs.path().display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap().split_terminator('\0').map(str::to_string).collect()
}

fn last_console(cmdline: &str) -> &str {
    cmdline.split_whitespace().rev().find_map(|w| w.strip_prefix("console=")).unwrap_or("")
}

#[test]
fn printed_vmm_lines_are_right_for_every_vmm_and_arch() {
    let env = setup(&["x86_64", "aarch64"]);
    let text = std::fs::read_to_string(&env.profile).unwrap();
    std::fs::write(
        &env.profile,
        text.replace("[output]\n", "[output]\nformats = [\"kernel\", \"initrd\", \"disk\"]\ndisk_size_mib = 160\n"),
    )
    .unwrap();
    for arch in ["x86_64", "aarch64"] {
        let out = env.root.join(format!("out-{arch}"));
        ok(&env.build(&out, &env.root.join("cache"), &["--arch", arch], &[], "022"));
        let print = |vmm: &str, extra: &[&str]| {
            let mut args = vec!["run", out.to_str().unwrap(), "--print", "--vmm", vmm, "--port", "2376:2376"];
            args.extend(extra);
            hyve(&args, &[])
        };
        let serial = if arch == "x86_64" { "ttyS0" } else { "ttyAMA0" };
        // QEMU: the UART last.
        let o = print("qemu", &["--disk", "/data.img"]);
        ok(&o);
        let argv = printed_argv(&String::from_utf8_lossy(&o.stdout));
        let append = &argv[argv.iter().position(|a| a == "-append").unwrap() + 1];
        assert_eq!(last_console(append), serial, "{append}");
        // vfkit: virtio-console only; the host's time filled in by the shell.
        let o = print("vfkit", &[]);
        ok(&o);
        let script = String::from_utf8_lossy(&o.stdout);
        let argv = printed_argv(&script);
        let loader = &argv[argv.iter().position(|a| a == "--bootloader").unwrap() + 1];
        let cmdline = loader.split_once("cmdline=\"").unwrap().1.trim_end_matches('"');
        assert_eq!(last_console(cmdline), "hvc0", "{loader}");
        assert!(cmdline
            .split_whitespace()
            .any(|w| w.strip_prefix("hyve.time=").is_some_and(|t| t.parse::<u64>().is_ok())));
        assert!(script.contains("vfkit forwards no ports"), "{script}");
        // hyperkit and xhyve: x86_64 only; the command line exactly as the kernel must see it.
        for vmm in ["hyperkit", "xhyve"] {
            let o = print(vmm, &[]);
            if arch == "aarch64" {
                assert!(!o.status.success() && stderr(&o).contains("cannot boot aarch64"), "{}", stderr(&o));
                continue;
            }
            ok(&o);
            let script = String::from_utf8_lossy(&o.stdout);
            let argv = printed_argv(&script);
            let kexec = &argv[argv.iter().position(|a| a == "-f").unwrap() + 1];
            let cmdline = kexec.splitn(4, ',').nth(3).unwrap();
            assert!(!cmdline.contains('"'), "{kexec}");
            assert_eq!(last_console(cmdline), "ttyS0", "{kexec}");
            assert_eq!(argv.iter().any(|a| a.contains("virtio-sock")), vmm == "hyperkit", "{script}");
            assert!(script.contains("as root (sudo)"), "{script}");
        }
        // A VM too small for its own root is refused with the numbers.
        let o = print("qemu", &["--memory", "64"]);
        assert!(!o.status.success() && stderr(&o).contains("--memory 64 MiB cannot hold this guest"), "{}", stderr(&o));
        // vfkit's EFI needs no firmware file (OVMF and AAVMF hidden here), and keeps its
        // variable store beside the output.
        let o = Command::new("unshare")
            .args(["-r", "-m", "sh", "-c"])
            .arg("for d in /usr/share/OVMF /usr/share/AAVMF /usr/share/qemu; do [ -d $d ] && mount -t tmpfs none $d; done; exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_hyve"))
            .args(["run", out.to_str().unwrap(), "--print", "--vmm", "vfkit", "--efi"])
            .output()
            .unwrap();
        ok(&o);
        let argv = printed_argv(&String::from_utf8_lossy(&o.stdout));
        let store = format!("efi,variable-store={}.vm/efi-variable-store,create", out.display());
        assert!(argv.contains(&store), "{argv:?}");
    }
}

/// On a terminal each build phase gets a progress bar and a line when it ends; in a log
/// (stderr not a terminal) plain lines; both end with the time each phase took.
#[test]
fn a_terminal_gets_a_bar_per_phase_and_a_log_plain_lines() {
    let env = setup(&["x86_64"]);
    let text = std::fs::read_to_string(&env.profile)
        .unwrap()
        .replace("[output]\n", "[output]\nformats = [\"kernel\", \"initrd\", \"disk\"]\ndisk_size_mib = 100\n");
    std::fs::write(&env.profile, text).unwrap();
    let phases = ["packages", "modules", "initramfs", "disk image"];
    // Under a pseudo-terminal (Python's pty), as a person at a shell sees it.
    let cache = env.root.join("cache-tty");
    let mut args = env.args("build", &cache, &["--out", env.root.join("tty").to_str().unwrap()]);
    args.retain(|a| !a.is_empty());
    let o = Command::new("python3")
        .args(["-c", "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))"])
        .arg(env!("CARGO_BIN_EXE_hyve"))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{screen}");
    assert!(screen.contains('\u{1b}'), "no terminal drawing: {screen}");
    for phase in phases {
        assert!(screen.contains(&format!("{phase:>10} done in ")), "{phase}: no end line: {screen}");
    }
    for phase in ["packages", "initramfs", "disk image"] {
        assert!(screen.contains(&format!("{phase:>10} [")), "{phase}: no bar drawn: {screen}");
    }
    assert!(screen.contains("took packages "), "{screen}");
    // In a log: lines, no terminal codes.
    let o = env.build(&env.root.join("log"), &env.root.join("cache-log"), &[], &[], "022");
    ok(&o);
    let log = stderr(&o);
    assert!(!log.contains('\u{1b}'), "{log}");
    for phase in phases {
        assert!(log.contains(&format!("{phase}...\n")) && log.contains(&format!("{phase} done in ")), "{log}");
    }
}
