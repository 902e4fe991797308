//! Reproducible releases: `hyve verify` against a directory, a SHA256SUMS file and a URL (and
//! a byte changed in any output makes it fail and name the file), `hyve diff` between builds
//! from two locks, the SBOM checked against SPDX 2.3, the manifest's fields, and builds that
//! ignore the user, the hostname and the order overlay files were created in.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::guest::{ok, packages, setup};
use support::{stderr, Pkg, Server};

const OUTPUTS: [&str; 6] = ["kernel", "initrd.img", "cmdline", "manifest.json", "sbom.spdx.json", "SHA256SUMS"];

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn verify_accepts_a_rebuild_and_names_any_changed_byte() {
    let env = setup(&["x86_64"]);
    let published = env.root.join("published");
    ok(&env.build(&published, &env.root.join("cache"), &[], &[("SOURCE_DATE_EPOCH", "1712345678")], "022"));

    // Rebuilt from a cold cache, with the SOURCE_DATE_EPOCH taken from the published manifest.
    let o = env.verify(published.to_str().unwrap(), &env.root.join("cache-verify"), &[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("SOURCE_DATE_EPOCH=1712345678"), "{}", stdout(&o));
    for f in OUTPUTS {
        assert!(stdout(&o).lines().any(|l| l.contains("identical") && l.contains(f)), "{f}: {}", stdout(&o));
    }

    // Against the SHA256SUMS file and against a URL of the directory.
    let sums = published.join("SHA256SUMS");
    ok(&env.verify(sums.to_str().unwrap(), &env.root.join("cache"), &[]));
    let site = Server::start(&env.root);
    ok(&env.verify(&format!("{}/published/SHA256SUMS", site.url), &env.root.join("cache"), &["--json"]));

    // One byte changed in any output: verify fails, names the file and the offset.
    for name in OUTPUTS {
        let tampered = env.root.join(format!("tampered-{name}"));
        std::fs::create_dir(&tampered).unwrap();
        for f in OUTPUTS {
            std::fs::copy(published.join(f), tampered.join(f)).unwrap();
        }
        let mut bytes = std::fs::read(tampered.join(name)).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(tampered.join(name), &bytes).unwrap();
        let o = env.verify(tampered.to_str().unwrap(), &env.root.join("cache"), &["--json"]);
        assert!(!o.status.success(), "{name} changed but verify passed: {}", stdout(&o));
        let report: Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
        let bad: Vec<&Value> =
            report["files"].as_array().unwrap().iter().filter(|f| f["verdict"] != "identical").collect();
        assert_eq!(bad.len(), 1, "exactly {name} differs: {bad:?}");
        assert_eq!(bad[0]["name"], name);
        assert_eq!(bad[0]["first_difference"], at as u64, "{name}");
        // The text report names it for people.
        let o = env.verify(tampered.to_str().unwrap(), &env.root.join("cache"), &[]);
        assert!(
            stdout(&o).lines().any(|l| l.contains("DIFFERS") && l.contains(name) && l.contains(&format!("byte {at}"))),
            "{}",
            stdout(&o)
        );
        assert!(stderr(&o).contains("1 of 6 files do not match"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("made by hyve"), "the same hyve made both: {}", stderr(&o));
    }
    // Made by another hyve (the manifest says so): a failure names both versions.
    let other = env.root.join("other-hyve");
    std::fs::create_dir(&other).unwrap();
    for f in OUTPUTS {
        std::fs::copy(published.join(f), other.join(f)).unwrap();
    }
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(other.join("manifest.json")).unwrap()).unwrap();
    manifest["hyve_version"] = "0.0.1-old".into();
    std::fs::write(other.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let o = env.verify(other.to_str().unwrap(), &env.root.join("cache"), &[]);
    assert!(!o.status.success() && stderr(&o).contains("made by hyve 0.0.1-old"), "{}", stderr(&o));
    let o = env.verify(other.to_str().unwrap(), &env.root.join("cache"), &["--json"]);
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["published_hyve_version"], "0.0.1-old");
    // Served over HTTP with its (untouched) SHA256SUMS: the bytes are still compared, unless
    // the listed checksums are trusted with --checksums-only.
    let url = format!("{}/tampered-kernel/SHA256SUMS", site.url);
    let o = env.verify(&url, &env.root.join("cache"), &["--json"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let kernel = report["files"].as_array().unwrap().iter().find(|f| f["name"] == "kernel").unwrap().clone();
    assert_eq!(kernel["verdict"], "differs");
    assert!(kernel["first_difference"].is_u64(), "{kernel}");
    ok(&env.verify(&url, &env.root.join("cache"), &["--checksums-only"]));
    // The same from a local SHA256SUMS with the changed file beside it.
    let local = env.root.join("tampered-kernel/SHA256SUMS");
    assert!(!env.verify(local.to_str().unwrap(), &env.root.join("cache"), &[]).status.success());

    // A published SHA256SUMS whose listed hash is wrong (files not beside it): by checksum.
    let lone = env.root.join("lone");
    std::fs::create_dir(&lone).unwrap();
    let text = std::fs::read_to_string(&sums).unwrap();
    let kernel_line = text.lines().find(|l| l.ends_with("  kernel")).unwrap();
    let forged = text.replace(kernel_line, &format!("{}  kernel", "0".repeat(64)));
    std::fs::write(lone.join("SHA256SUMS"), forged).unwrap();
    let o = env.verify(lone.join("SHA256SUMS").to_str().unwrap(), &env.root.join("cache"), &[]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("only its checksum was published"), "{}", stdout(&o));
    // A missing output is named too, and so is a file hyve does not write.
    let partial = env.root.join("partial");
    std::fs::create_dir(&partial).unwrap();
    for f in OUTPUTS.iter().filter(|f| **f != "kernel") {
        std::fs::copy(published.join(f), partial.join(f)).unwrap();
    }
    std::fs::write(partial.join("notes.txt"), "hello").unwrap();
    let o = env.verify(partial.to_str().unwrap(), &env.root.join("cache"), &[]);
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(out.contains("NOT PUBLISHED") && out.contains("kernel"), "{out}");
    assert!(out.contains("NOT REBUILT") && out.contains("notes.txt"), "{out}");
    // Nothing is left behind in TMPDIR's stead: --keep keeps the rebuild where asked.
    let kept = env.root.join("kept");
    ok(&env.verify(published.to_str().unwrap(), &env.root.join("cache"), &["--keep", kept.to_str().unwrap()]));
    assert_eq!(std::fs::read(kept.join("initrd.img")).unwrap(), std::fs::read(published.join("initrd.img")).unwrap());
    let stray: Vec<_> = std::fs::read_dir(&env.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".hyve-verify-"))
        .collect();
    assert!(stray.is_empty(), "scratch left behind: {stray:?}");
    // --keep again replaces the earlier rebuild; a directory holding anything else is
    // refused before the rebuild and left as it was (so is a build's --out).
    ok(&env.verify(published.to_str().unwrap(), &env.root.join("cache"), &["--keep", kept.to_str().unwrap()]));
    let precious = env.root.join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("thesis.tex"), "years of work").unwrap();
    let o = env.verify(published.to_str().unwrap(), &env.root.join("cache"), &["--keep", precious.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("precious") && e.contains("not a hyve output directory"), "{e}");
    let o = env.build(&precious, &env.root.join("cache"), &[], &[], "022");
    assert!(!o.status.success() && stderr(&o).contains("not a hyve output directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(precious.join("thesis.tex")).unwrap(), "years of work");
    assert_eq!(std::fs::read_dir(&precious).unwrap().count(), 1);
}

#[test]
fn diff_between_two_locks_lists_exactly_the_changed_packages() {
    let env = setup(&["x86_64"]);
    let a = env.root.join("a");
    ok(&env.build(&a, &env.root.join("cache"), &[], &[], "022"));
    // The repository moves on: tool gets a new version that pulls in a new library.
    let mut pkgs: Vec<Pkg> = packages("x86_64").into_iter().filter(|p| p.name != "tool").collect();
    pkgs.push(
        Pkg::new("tool", "2.1-r0")
            .depends("busybox libnew")
            .file("usr/bin/tool", b"#!/bin/sh\necho tool 2.1\n")
            .mode("usr/bin/tool", 0o755),
    );
    pkgs.push(Pkg::new("libnew", "1.0-r0").file("usr/lib/libnew.so.1", b"\x7fELF new"));
    env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let lock_b = env.root.join("b.lock");
    let b = env.root.join("b");
    ok(&env.build(&b, &env.root.join("cache"), &["--lockfile", lock_b.to_str().unwrap()], &[], "022"));

    let o = support::hyve(&["diff", "--json", a.to_str().unwrap(), b.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "differences exit 1: {}", stderr(&o));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["packages"]["changed"], serde_json::json!([{"name": "tool", "from": "2.0-r0", "to": "2.1-r0"}]));
    assert_eq!(d["packages"]["added"], serde_json::json!([["libnew", "1.0-r0"]]));
    assert_eq!(d["packages"]["removed"], serde_json::json!([]));
    assert_eq!(d["packages"]["rebuilt"], serde_json::json!([]));
    let added: Vec<&str> =
        d["files"]["added"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(added.contains(&"/usr/lib/libnew.so.1"), "{added:?}");
    let changed: Vec<&str> =
        d["files"]["changed"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(changed.contains(&"/usr/bin/tool"), "{changed:?}");
    // tool's hardlink and setuid bit went away with 2.0.
    let removed: Vec<&str> =
        d["files"]["removed"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(removed.contains(&"/usr/bin/tool-alias"), "{removed:?}");
    assert!(d["kernel"].is_null() && d["cmdline"].is_null(), "kernel and cmdline unchanged: {d}");
    assert_eq!(d["build"][0]["name"], "lock");

    // The text form says the same for people; two initrds compare the same way.
    let o = support::hyve(&["diff", a.to_str().unwrap(), b.to_str().unwrap()], &[]);
    let text = stdout(&o);
    assert!(text.contains("~ tool 2.0-r0 -> 2.1-r0") && text.contains("+ libnew 1.0-r0"), "{text}");
    let (ia, ib) = (a.join("initrd.img"), b.join("initrd.img"));
    let o = support::hyve(&["diff", "--json", ia.to_str().unwrap(), ib.to_str().unwrap()], &[]);
    let d2: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d2["packages"], d["packages"], "the guest's own manifest gives the same package diff");
    // A build compared with itself: nothing, exit 0.
    let o = support::hyve(&["diff", a.to_str().unwrap(), a.to_str().unwrap()], &[]);
    assert!(o.status.success() && stdout(&o).contains("no differences"), "{}", stdout(&o));
    let o = support::hyve(&["diff", a.to_str().unwrap(), env.profile.to_str().unwrap()], &[]);
    assert!(!o.status.success() && stderr(&o).contains("guest.toml"), "{}", stderr(&o));
    // A manifest someone edited: a short or non-hex hash is named, never a panic (exit 1).
    let mut m: Value = serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
    for bad in ["ab", "éééééééééééééééé", &"A".repeat(64)] {
        m["packages"][0]["sha256"] = Value::from(bad);
        std::fs::write(b.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let o = support::hyve(&["diff", a.to_str().unwrap(), b.to_str().unwrap()], &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{bad:?}: {e}");
        assert!(e.contains("packages[0]") && e.contains("64 lower-case hex digits"), "{e}");
    }
}

#[test]
fn manifest_and_sbom_describe_the_build() {
    let env = setup(&["x86_64"]);
    let out = env.root.join("out");
    ok(&env.build(&out, &env.root.join("cache"), &[], &[], "022"));
    let m = json_of(&out.join("manifest.json"));
    for field in ["hyve_version", "profile", "arch", "branch", "source_date_epoch", "cmdline"] {
        assert!(!m[field].is_null(), "manifest.{field} missing: {m}");
    }
    assert_eq!(m["lock"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["overlays"][0]["name"], "overlay-test");
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for (name, o) in m["outputs"].as_object().unwrap() {
        assert!(sums.contains(&format!("{}  {name}\n", o["sha256"].as_str().unwrap())), "{name}");
    }
    let tool = m["packages"].as_array().unwrap().iter().find(|p| p["name"] == "tool").unwrap();
    for field in ["version", "sha256", "checksum", "datahash", "origin", "license", "repository"] {
        assert!(!tool[field].is_null(), "package field {field} missing: {tool}");
    }
    // sha256sum itself agrees with SHA256SUMS.
    let o = Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&out).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    let sbom = out.join("sbom.spdx.json");
    check_spdx(&sbom);
    let doc = json_of(&sbom);
    let pkgs = doc["packages"].as_array().unwrap();
    let apk = pkgs.iter().find(|p| p["name"] == "tool").unwrap();
    assert_eq!(apk["versionInfo"], "2.0-r0");
    assert_eq!(apk["checksums"][0]["checksumValue"], tool["sha256"]);
    assert!(apk["downloadLocation"].as_str().unwrap().ends_with("/v3.24/main/x86_64/tool-2.0-r0.apk"));
    assert!(apk["externalRefs"][0]["referenceLocator"].as_str().unwrap().starts_with("pkg:apk/alpine/tool@2.0-r0"));
    let kernel = pkgs.iter().find(|p| p["SPDXID"] == "SPDXRef-Kernel").unwrap();
    assert_eq!(kernel["checksums"][0]["checksumValue"], m["outputs"]["kernel"]["sha256"]);
    assert!(pkgs.iter().any(|p| p["name"] == "overlay/overlay-test"));
    assert_eq!(pkgs.len(), m["packages"].as_array().unwrap().len() + 3, "image + apks + kernel + overlay");
}

/// The SPDX 2.3 checks in tests/spdx/check_spdx.py (JSON Schema + cross references).
fn check_spdx(path: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/spdx/check_spdx.py");
    let o = Command::new("python3").arg(&script).arg(path).output().expect("python3");
    assert!(o.status.success(), "{} says:\n{}{}", script.display(), stdout(&o), stderr(&o));
}

#[test]
fn the_spdx_check_rejects_broken_documents() {
    let env = setup(&["x86_64"]);
    let out = env.root.join("out");
    ok(&env.build(&out, &env.root.join("cache"), &[], &[], "022"));
    let good = json_of(&out.join("sbom.spdx.json"));
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 4] = [
        ("no spdxVersion", |d| {
            d.as_object_mut().unwrap().remove("spdxVersion");
        }),
        ("bad checksum", |d| d["packages"][1]["checksums"][0]["checksumValue"] = "xyz".into()),
        ("dangling relationship", |d| d["relationships"][1]["relatedSpdxElement"] = "SPDXRef-Nothing".into()),
        ("undeclared LicenseRef", |d| d["packages"][1]["licenseDeclared"] = "LicenseRef-mystery".into()),
    ];
    for (what, breakage) in breakages {
        let mut doc = good.clone();
        breakage(&mut doc);
        let p = env.root.join("broken.json");
        std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/spdx/check_spdx.py");
        let o = Command::new("python3").arg(&script).arg(&p).output().unwrap();
        assert!(!o.status.success(), "{what} was accepted");
    }
}

/// Runs `hyve build` as another user id, under another hostname, and with the overlay's files
/// created in the opposite order with the modes a `umask 077` checkout gives them; every
/// output must stay the same. `unshare` (util-linux)
/// gives a user namespace for the user id and a UTS namespace for the hostname.
#[test]
fn builds_ignore_the_user_the_hostname_and_overlay_creation_order() {
    let env = setup(&["x86_64"]);
    let cache = env.root.join("cache");
    let a = env.root.join("a");
    ok(&env.build(&a, &cache, &[], &[], "022"));
    let unshare_works = Command::new("unshare").args(["-r", "-u", "true"]).status().is_ok_and(|s| s.success());
    assert!(unshare_works, "this test needs `unshare -r -u` (util-linux, user namespaces enabled)");
    let b = env.root.join("b");
    ok(&env.build_in(
        &["unshare", "--user", "--map-user=4242", "--map-group=4242"],
        "umask 022;",
        &b,
        &cache,
        &[],
        &[],
    ));
    let c = env.root.join("c");
    ok(&env.build_in(&["unshare", "-r", "-u"], "hostname other-builder && umask 022;", &c, &cache, &[], &[]));
    // Recreate the overlay in reverse order, with other times.
    let overlay = env.root.join("profiles/overlay-test");
    let files = [
        ("etc/init.d/hyve-marker", "#!/bin/sh\necho HYVE-MARKER\n", 0o755),
        ("etc/zz-late", "late\n", 0o644),
        ("aa-first", "first\n", 0o600),
    ];
    // As a checkout under `umask` would write it (git applies the cloner's umask).
    let write_overlay = |order: &mut dyn Iterator<Item = &(&str, &str, u32)>, umask: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::remove_dir_all(&overlay).unwrap();
        for (path, text, mode) in order {
            let p = overlay.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, PermissionsExt::from_mode(mode & !umask)).unwrap();
        }
        for dir in ["", "etc", "etc/init.d"] {
            std::fs::set_permissions(overlay.join(dir), PermissionsExt::from_mode(0o777 & !umask)).unwrap();
        }
    };
    write_overlay(&mut files.iter(), 0o022);
    let d = env.root.join("d");
    ok(&env.build(&d, &cache, &[], &[], "022"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_overlay(&mut files.iter().rev(), 0o077);
    let e = env.root.join("e");
    ok(&env.build(&e, &cache, &[], &[], "077"));
    let same = |x: &Path, y: &Path| {
        for f in OUTPUTS {
            assert!(
                std::fs::read(x.join(f)).unwrap() == std::fs::read(y.join(f)).unwrap(),
                "{f}: {} vs {}",
                x.display(),
                y.display()
            );
        }
    };
    same(&a, &b);
    same(&a, &c);
    same(&d, &e);
    assert_ne!(
        std::fs::read(a.join("initrd.img")).unwrap(),
        std::fs::read(d.join("initrd.img")).unwrap(),
        "the overlay did change"
    );
}

#[test]
fn make_reproducible_script_fails_on_a_difference() {
    // tests/reproducible.sh is what `make reproducible` runs; it must notice a changed byte.
    let env = setup(&["x86_64"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reproducible.sh");
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new("sh");
        cmd.arg(&script)
            .env("HYVE", env!("CARGO_BIN_EXE_hyve"))
            .env("PROFILE", &env.profile)
            .env("MIRROR", &env.server.url)
            .env("KEY", &env.repo.pub_path)
            .env("WORK", env.root.join("repro"))
            .env_remove("SOURCE_DATE_EPOCH");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("verified"), "{}", stdout(&o));
    // The hook corrupts the second build before it is verified.
    let o = run(&[("REPRO_TAMPER", "initrd.img")]);
    assert!(!o.status.success(), "a tampered build passed: {}", stdout(&o));
    assert!(stdout(&o).contains("DIFFERS") && stdout(&o).contains("initrd.img"), "{}", stdout(&o));
}

/// Every package of Alpine's real, signed v3.22 main index (license fields, maintainers, odd
/// names and all) described in one SBOM that passes the SPDX 2.3 checks.
#[test]
fn an_sbom_of_every_real_alpine_package_is_valid_spdx() {
    use hyve::apk::index::read_verified_index;
    use hyve::apk::{Arch, Keyring};
    use hyve::output::manifest::{KernelSummary, LockSummary, Manifest, PackageSummary};
    use hyve::output::spdx::spdx;
    let name = "v3.22-main-x86_64_v3.22.2-204.APKINDEX.tar.gz";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/alpine/apkindex").join(name);
    let index = read_verified_index(&std::fs::read(path).unwrap(), name, &Keyring::alpine(Some(Arch::X86_64))).unwrap();
    let packages: Vec<PackageSummary> = index
        .records
        .iter()
        .map(|r| PackageSummary {
            name: r.name.clone(),
            version: r.version.to_string(),
            repository: "main".into(),
            sha256: "0".repeat(64),
            checksum: r.checksum.to_string(),
            datahash: "0".repeat(64),
            origin: r.origin.clone().unwrap_or_default(),
            license: r.license.clone(),
            maintainer: r.maintainer.clone().unwrap_or_default(),
            url: r.url.clone(),
            description: r.description.clone(),
            build_date: r.build_time.unwrap_or(0),
        })
        .collect();
    assert!(packages.len() > 1000, "{}", packages.len());
    let m = Manifest {
        hyve_version: "0.1.0".into(),
        profile: "everything".into(),
        arch: "x86_64".into(),
        branch: "v3.22".into(),
        source_date_epoch: 1_700_000_000,
        lock: LockSummary { inputs_hash: "x".into(), sha256: "0".repeat(64) },
        kernel: KernelSummary {
            package: "linux-virt".into(),
            version: "6.12.1-r0".into(),
            release: None,
            modules: vec![],
            optional_modules_missing: vec![],
        },
        cmdline: String::new(),
        packages,
        overlays: vec![],
        outputs: Default::default(),
    };
    let doc = spdx(&m, Some(&"1".repeat(64)));
    let refs = doc["hasExtractedLicensingInfos"].as_array().map_or(0, |a| a.len());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("everything.spdx.json");
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    check_spdx(&p);
    // Most of Alpine's license fields are SPDX expressions already.
    assert!(refs < 40, "{refs} license fields needed a LicenseRef");
}

/// The release workflow builds every profile for both arches on a tag, runs the same
/// reproducibility script as `make reproducible` with the committed lock, and publishes
/// SHA256SUMS. (GitHub runs it; here its shape is checked against the repository.)
#[test]
fn the_release_workflow_covers_every_profile_and_arch() {
    let script = r#"
import json, sys, yaml
w = yaml.safe_load(open(sys.argv[1]))
on = w.get("on", w.get(True))
build = w["jobs"]["build"]
runs = [s.get("run", "") for s in build["steps"]]
release_runs = [s.get("run", "") for s in w["jobs"]["release"]["steps"]]
envs = [s.get("env", {}) for s in build["steps"]]
print(json.dumps({
    "tags": on["push"]["tags"],
    "profiles": build["strategy"]["matrix"]["profile"],
    "arches": build["strategy"]["matrix"]["arch"],
    "reproducible": any("tests/reproducible.sh" in r for r in runs),
    "locked": any(e.get("LOCKED") == "1" and "profiles/" in e.get("LOCKFILE", "") for e in envs),
    "sums": any("SHA256SUMS" in r for r in release_runs),
    "binaries": sorted(i["target"] for i in w["jobs"]["binaries"]["strategy"]["matrix"]["include"]),
    "mac_smoke": any("build --profile base" in s.get("run", "") and "macOS" in s.get("if", "") for s in w["jobs"]["binaries"]["steps"]),
    "released": sorted(w["jobs"]["release"]["needs"]),
}))
"#;
    let w = workflow_facts(script, &["release.yml"]);
    let mut listed: Vec<String> = serde_json::from_value(w["profiles"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, stock_profiles(), "every profile is released");
    assert_eq!(w["arches"], serde_json::json!(["x86_64", "aarch64"]));
    assert_eq!(w["tags"], serde_json::json!(["v*"]));
    assert_eq!(
        (w["reproducible"].as_bool(), w["locked"].as_bool(), w["sums"].as_bool()),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(
        w["binaries"],
        serde_json::json!([
            "aarch64-apple-darwin",
            "aarch64-unknown-linux-musl",
            "x86_64-apple-darwin",
            "x86_64-unknown-linux-musl"
        ])
    );
    assert_eq!(w["mac_smoke"].as_bool(), Some(true), "the macOS builds are smoke-tested");
    assert_eq!(w["released"], serde_json::json!(["binaries", "build"]));
}

/// What `script` (Python with PyYAML) prints as JSON about the named workflows, given their
/// paths as arguments.
fn workflow_facts(script: &str, workflows: &[&str]) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/workflows");
    let o = Command::new("python3")
        .args(["-c", script])
        .args(workflows.iter().map(|w| dir.join(w)))
        .output()
        .expect("python3 (with python3-yaml)");
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The stock profiles' names (profiles/*.toml), sorted.
fn stock_profiles() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut profiles: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".toml").map(String::from))
        .collect();
    profiles.sort();
    profiles
}

/// Runs tests/workflows/check.py (PyYAML) over `workflows`, with `root` as the repository.
fn check_workflows(root: &Path, workflows: &[PathBuf]) -> std::process::Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workflows/check.py"))
        .arg(root)
        .args(workflows)
        .output()
        .expect("python3 (with python3-yaml)")
}

/// Every workflow in .github/workflows is valid and runs only what the repository has: make
/// targets, scripts, test targets, profiles, called workflows and their inputs.
#[test]
fn every_workflow_runs_what_the_repository_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut workflows: Vec<PathBuf> = std::fs::read_dir(root.join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    workflows.sort();
    let names: Vec<_> = workflows.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["alpine.yml", "locks.yml", "release.yml"]);
    let o = check_workflows(&root, &workflows);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

/// The workflow check fails, naming each, on what a workflow references but the repository
/// lacks.
#[test]
fn the_workflow_check_names_what_is_missing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "name: bad\non: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: nope\n    strategy:\n      matrix:\n        profile: [base, nosuch]\n    steps:\n\
         \x20     - uses: actions/checkout\n      - run: make lint no-such-target V=1 && sh tests/nope.sh\n\
         \x20     - run: |\n          cargo test --release --test nope -- x\n          ./.ci/missing --flag ${{ matrix.profile }} ${{ inputs.lock }}\n          make -C elsewhere other-target\n\
         \x20 b:\n    uses: ./.github/workflows/missing.yml\n  c:\n    uses: ./.github/workflows/alpine.yml\n    with:\n      lock: x\n",
    )
    .unwrap();
    let o = check_workflows(&root, &[bad]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{said}");
    for problem in [
        "needs 'nope', which is not a job",
        "matrix profile 'nosuch' is not in profiles/",
        "'actions/checkout' is not pinned",
        "the Makefile has no target 'no-such-target'",
        "tests/nope.sh does not exist",
        "builder/Cargo.toml has no test target 'nope'",
        ".ci/missing does not exist",
        "calls ./.github/workflows/missing.yml, which does not exist",
        "passes input 'lock', which ./.github/workflows/alpine.yml does not declare",
        "uses inputs.lock, which no workflow_call or workflow_dispatch input declares",
    ] {
        assert!(said.contains(problem), "{problem:?} not reported:\n{said}");
    }
    assert_eq!(said.lines().count(), 10, "{said}");
}

/// alpine.yml builds every profile and runs the boot tests from Alpine's mirror on both
/// arches (each on its own runner), keeps the consoles and SHA256SUMS, and verifies every
/// profile × arch; locks.yml re-locks weekly, tests the new locks through alpine.yml and only
/// then opens a pull request.
#[test]
fn the_alpine_workflows_test_every_profile_on_both_arches() {
    let script = r#"
import json, sys, yaml
a = yaml.safe_load(open(sys.argv[1]))
l = yaml.safe_load(open(sys.argv[2]))
on = a.get("on", a.get(True))
boot, verify = a["jobs"]["boot"], a["jobs"]["verify"]
runs = lambda job: "\n".join(s.get("run", "") for s in job.get("steps", []))
uploads = [s["with"]["path"] for s in boot["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
lon = l.get("on", l.get(True))
print(json.dumps({
    "triggers": sorted(on), "push": on["push"]["branches"], "input": sorted(on["workflow_call"]["inputs"]),
    "runners": sorted((i["arch"], i["runner"]) for i in boot["strategy"]["matrix"]["include"]),
    "test_alpine": "make test-alpine ALPINE_ARCH=${{ matrix.arch }}" in runs(boot),
    "kept": "target/boot-logs" in runs(boot) and "SHA256SUMS" in runs(boot) and uploads == ["evidence/"],
    "verify_profiles": verify["strategy"]["matrix"]["profile"], "verify_arches": verify["strategy"]["matrix"]["arch"],
    "reproducible": "make reproducible" in runs(verify),
    "lock_triggers": sorted(lon), "relock": "hyve lock --profile" in runs(l["jobs"]["lock"]) and "--update" in runs(l["jobs"]["lock"]),
    "tested_by": l["jobs"]["test"]["uses"], "with": l["jobs"]["test"]["with"],
    "pr_needs": l["jobs"]["pull-request"]["needs"], "pr": "gh pr create" in runs(l["jobs"]["pull-request"]),
}))
"#;
    let w = workflow_facts(script, &["alpine.yml", "locks.yml"]);
    let mut verified: Vec<String> = serde_json::from_value(w["verify_profiles"].clone()).unwrap();
    verified.sort();
    assert_eq!(verified, stock_profiles(), "every profile is verified");
    assert_eq!(w["verify_arches"], serde_json::json!(["x86_64", "aarch64"]));
    assert_eq!(
        w["triggers"],
        serde_json::json!(["pull_request", "push", "schedule", "workflow_call", "workflow_dispatch"])
    );
    assert_eq!(w["push"], serde_json::json!(["main"]));
    assert_eq!(w["input"], serde_json::json!(["locks"]));
    assert_eq!(w["runners"], serde_json::json!([["aarch64", "ubuntu-24.04-arm"], ["x86_64", "ubuntu-24.04"]]));
    for check in ["test_alpine", "kept", "reproducible", "relock", "pr"] {
        assert_eq!(w[check].as_bool(), Some(true), "{check}");
    }
    assert_eq!(w["lock_triggers"], serde_json::json!(["schedule", "workflow_dispatch"]));
    assert_eq!(w["tested_by"], "./.github/workflows/alpine.yml");
    assert_eq!(w["with"], serde_json::json!({"locks": "new-locks"}));
    assert_eq!(w["pr_needs"], "test");
}

/// The boot tests run against any mirror (`HYVE_TEST_MIRROR`): outside comments, they name
/// the test mirror only as the default mirror and its key, no Alpine branch (the profiles
/// pin it), and nothing Debian's.
#[test]
fn the_boot_tests_name_nothing_only_the_test_mirror_has() {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/boot.rs")).unwrap();
    let code: Vec<&str> = source.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
    let naming = |needle: &str| code.iter().filter(|l| l.to_lowercase().contains(needle)).count();
    assert_eq!(naming("target/test-mirror"), 1, "the test mirror, named once as the default");
    assert_eq!(naming("hyve-test-mirror.rsa.pub"), 1, "its key, named once as the default");
    for stand_in in ["debian", "-linux-gnu", ".deb", "dpkg", "\"v3."] {
        assert_eq!(naming(stand_in), 0, "tests/boot.rs names {stand_in:?}");
    }
}
