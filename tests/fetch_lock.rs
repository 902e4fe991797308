//! plan / lock / fetch / vendor against generated signed repositories served over loopback
//! HTTP: cache hits, offline use, stale locks, every broken trust link, server errors,
//! truncated bodies and stalls — each with its documented behaviour and a clear error.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{build_package, hyve, stderr, Fault, Pkg, Server, TestRepo};

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: TestRepo,
    server: Server,
    profile: PathBuf,
    cache: PathBuf,
}

fn packages() -> Vec<Pkg> {
    vec![
        Pkg::new("musl", "1.2.5-r0").provides("so:libc.musl-x86_64.so.1=1"),
        Pkg::new("busybox", "1.37.0-r0")
            .depends("so:libc.musl-x86_64.so.1")
            .provides("cmd:sh=1.37.0-r0 /bin/sh")
            .file("bin/busybox", b"\x7fELF busybox"),
        Pkg::new("lib", "1.0-r0"),
        Pkg::new("lib", "2.0-r0").file("usr/lib/libx.so.2", &[7u8; 50_000]),
        Pkg::new("app", "1.0-r0").depends("busybox /bin/sh lib>=2"),
        Pkg::new("linux-virt", "6.6.1-r0").file("boot/vmlinuz-virt", &[1u8; 20_000]),
    ]
}

const PKG_PATHS: &[&str] =
    &["musl-1.2.5-r0.apk", "busybox-1.37.0-r0.apk", "lib-2.0-r0.apk", "app-1.0-r0.apk", "linux-virt-6.6.1-r0.apk"];

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let repo = TestRepo::new(&root);
    repo.publish("v3.24", "main", "x86_64", &packages());
    let server = Server::start(&repo.root);
    let profile = root.join("profiles/test.toml");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    std::fs::write(&profile, "arches = [\"x86_64\"]\npackages = [\"app\"]\n").unwrap();
    Env { cache: root.join("cache"), _dir: dir, root, repo, server, profile }
}

impl Env {
    fn run(&self, cmd: &str, extra: &[&str]) -> std::process::Output {
        self.run_env(cmd, extra, &[])
    }

    fn run_env(&self, cmd: &str, extra: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
        let mut args = vec!["--key", self.repo.pub_path.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run_in(&self.cache, cmd, &args, envs)
    }

    /// `cmd --profile P --mirror URL --cache-dir CACHE EXTRA...` (no `--key` unless in EXTRA).
    fn run_in(&self, cache: &Path, cmd: &str, extra: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
        let (profile, cache) = (self.profile.to_str().unwrap(), cache.to_str().unwrap());
        let mut args = vec![cmd, "--profile", profile, "--mirror", &self.server.url, "--cache-dir", cache];
        args.extend_from_slice(extra);
        hyve(&args, envs)
    }

    fn url_path(&self, file: &str) -> String {
        format!("/v3.24/main/x86_64/{file}")
    }

    fn lock_text(&self) -> String {
        std::fs::read_to_string(self.profile.with_extension("lock")).unwrap()
    }

    fn package_requests(&self) -> usize {
        self.server.total_requests_matching(".apk")
    }
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "expected success:\n{}", stderr(o));
}

fn fails_with(o: &std::process::Output, needles: &[&str]) -> String {
    assert!(!o.status.success(), "expected failure, got success:\n{}", String::from_utf8_lossy(&o.stdout));
    let e = stderr(o);
    for n in needles {
        assert!(e.contains(n), "error does not mention {n:?}:\n{e}");
    }
    e
}

fn sha256_file(p: &Path) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(p).unwrap()))
}

#[test]
fn plan_prints_the_resolved_set_without_downloading() {
    let env = setup();
    let o = env.run("plan", &["--json"]);
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["profile"], "test");
    assert_eq!(doc["arch"], "x86_64");
    assert_eq!(doc["branch"], "v3.24");
    let names: Vec<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}-{}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(names, ["musl-1.2.5-r0", "busybox-1.37.0-r0", "lib-2.0-r0", "app-1.0-r0", "linux-virt-6.6.1-r0"]);
    let first = &doc["packages"][0];
    assert!(first["checksum"].as_str().unwrap().starts_with("Q1"));
    assert!(first["size"].as_u64().unwrap() > 0);
    assert_eq!(first["repository"], "main");
    assert_eq!(env.package_requests(), 0, "plan must not download packages");
}

#[test]
fn lock_pins_every_file_and_fetch_hits_the_cache() {
    let env = setup();
    ok(&env.run("lock", &[]));
    let lock = env.lock_text();
    for file in PKG_PATHS {
        let sha = sha256_file(&env.repo.repo_dir("v3.24", "main", "x86_64").join(file));
        assert!(lock.contains(&sha), "lock lacks the sha256 of {file}:\n{lock}");
    }
    assert!(lock.contains("inputs_hash") && lock.contains("datahash") && lock.contains("checksum = \"Q1"));
    let downloads = env.package_requests();
    assert_eq!(downloads, PKG_PATHS.len());
    // Warm cache: no package is downloaded again; the index is revalidated with its ETag.
    let o = env.run("fetch", &["--json"]);
    ok(&o);
    assert_eq!(env.package_requests(), downloads);
    assert!(env.server.not_modified() >= 1 || env.server.requests(&env.url_path("APKINDEX.tar.gz")) == 1);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["arches"][0]["downloaded"], 0);
    // Locking again with nothing changed is a no-op.
    let before = env.lock_text();
    ok(&env.run("lock", &[]));
    assert_eq!(env.lock_text(), before);
}

#[test]
fn offline_uses_only_the_cache() {
    let env = setup();
    ok(&env.run("fetch", &[]));
    let requests = env.server.total_requests_matching("");
    ok(&env.run("fetch", &["--offline", "--locked"]));
    ok(&env.run("plan", &["--offline"]));
    assert_eq!(env.server.total_requests_matching(""), requests, "--offline touched the network");
    let empty = env.root.join("empty-cache");
    let o = env.run_in(&empty, "fetch", &["--key", env.repo.pub_path.to_str().unwrap(), "--offline"], &[]);
    fails_with(&o, &["not in the cache", "--offline"]);
}

#[test]
fn locked_refuses_missing_or_stale_locks() {
    let env = setup();
    fails_with(&env.run("fetch", &["--locked"]), &["has no lock for x86_64", "hyve lock --profile test"]);
    ok(&env.run("lock", &[]));
    std::fs::write(&env.profile, "arches = [\"x86_64\"]\npackages = [\"app\", \"musl\"]\n").unwrap();
    fails_with(&env.run("fetch", &["--locked"]), &["is stale for x86_64", "hyve lock --profile test"]);
    // Without --locked the lock is refreshed, keeping what still fits.
    ok(&env.run("fetch", &[]));
    assert!(env.lock_text().contains("name = \"musl\""));
}

#[test]
fn lock_update_moves_only_what_is_asked() {
    let env = setup();
    ok(&env.run("lock", &[]));
    // A new lib and a new busybox appear on the mirror.
    let mut pkgs = packages();
    pkgs.push(Pkg::new("lib", "2.1-r0"));
    pkgs.push(
        Pkg::new("busybox", "1.37.0-r1").depends("so:libc.musl-x86_64.so.1").provides("cmd:sh=1.37.0-r1 /bin/sh"),
    );
    env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let o = env.run("lock", &["--update", "lib"]);
    ok(&o);
    let lock = env.lock_text();
    assert!(lock.contains("version = \"2.1-r0\""), "{lock}");
    assert!(lock.contains("version = \"1.37.0-r0\""), "busybox must stay pinned:\n{lock}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("~ lib 2.0-r0 -> 2.1-r0"));
    ok(&env.run("lock", &["--update"]));
    assert!(env.lock_text().contains("version = \"1.37.0-r1\""));
    fails_with(&env.run("lock", &["--update", "nosuch"]), &["nosuch is not in the x86_64 lock"]);
}

#[test]
fn a_vanished_package_points_at_lock_update_and_vendor() {
    let env = setup();
    ok(&env.run("lock", &[]));
    std::fs::remove_file(env.repo.repo_dir("v3.24", "main", "x86_64").join("app-1.0-r0.apk")).unwrap();
    let o = env.run_in(&env.root.join("c2"), "fetch", &["--key", env.repo.pub_path.to_str().unwrap()], &[]);
    fails_with(&o, &["app-1.0-r0.apk", "404", "hyve lock --update", "hyve vendor"]);
    assert_eq!(env.server.requests(&env.url_path("app-1.0-r0.apk")), 2, "404 is never retried (one request per fetch)");
}

#[test]
fn every_trust_link_is_checked() {
    // 1: index signature.
    let env = setup();
    let o = env.run_in(&env.cache, "plan", &[], &[]);
    fails_with(&o, &["APKINDEX.tar.gz", "UNTRUSTED", "test-repo.rsa.pub", "--key"]);
    let idx = env.repo.repo_dir("v3.24", "main", "x86_64").join("APKINDEX.tar.gz");
    let mut bytes = std::fs::read(&idx).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&idx, &bytes).unwrap();
    fails_with(&env.run("plan", &[]), &["signature check failed", "INVALID"]);

    // 2: the lock's sha256 — the mirror now serves different (validly signed) bytes.
    let env = setup();
    ok(&env.run("lock", &[]));
    let mut pkgs = packages();
    pkgs[4] = Pkg::new("app", "1.0-r0").depends("busybox /bin/sh lib>=2").file("etc/changed", b"x");
    env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let o = env.run_in(&env.root.join("c2"), "fetch", &["--key", env.repo.pub_path.to_str().unwrap(), "--locked"], &[]);
    fails_with(&o, &["app", "does not match the lock", "hyve lock --update app"]);

    // 3: Q1 — the package is not the one the signed index names.
    let env = setup();
    let dir = env.repo.repo_dir("v3.24", "main", "x86_64");
    let other = build_package(
        &Pkg::new("app", "1.0-r0").depends("busybox /bin/sh lib>=2").file("etc/evil", b"x"),
        "x86_64",
        &env.repo.key,
        |_| {},
    );
    std::fs::write(dir.join("app-1.0-r0.apk"), &other).unwrap();
    fails_with(&env.run("lock", &[]), &["app-1.0-r0.apk", "identity mismatch"]);

    // 4: datahash — same control member, other data.
    let env = setup();
    let dir = env.repo.repo_dir("v3.24", "main", "x86_64");
    let good = std::fs::read(dir.join("lib-2.0-r0.apk")).unwrap();
    let split = |b: &[u8]| {
        let mut c = std::io::Cursor::new(b);
        for _ in 0..2 {
            std::io::copy(&mut flate2::bufread::GzDecoder::new(&mut c), &mut std::io::sink()).unwrap();
        }
        c.position() as usize
    };
    let foreign = std::fs::read(dir.join("musl-1.2.5-r0.apk")).unwrap();
    let spliced = [&good[..split(&good)], &foreign[split(&foreign)..]].concat();
    std::fs::write(dir.join("lib-2.0-r0.apk"), spliced).unwrap();
    fails_with(&env.run("lock", &[]), &["lib-2.0-r0.apk", "datahash mismatch"]);

    // 5: per-file SHA-1 — a package whose tar header lies about a file.
    let env = setup();
    let dir = env.repo.repo_dir("v3.24", "main", "x86_64");
    let lying = build_package(
        &Pkg::new("lib", "2.0-r0").file("usr/lib/libx.so.2", &[7u8; 50_000]),
        "x86_64",
        &env.repo.key,
        |entries| {
            let e = entries.iter_mut().find(|e| e.entry.path == "usr/lib/libx.so.2").unwrap();
            e.entry.sha1 = Some([0u8; 20]);
        },
    );
    std::fs::write(dir.join("lib-2.0-r0.apk"), &lying).unwrap();
    let records: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "apk"))
        .map(|p| {
            // Index the lying package by hand: IndexRecord::from_file would refuse it.
            let bytes = std::fs::read(&p).unwrap();
            let r = hyve::apk::package::PackageReader::open(&bytes[..], "x", Default::default(), None).unwrap();
            hyve::apk::index::IndexRecord::from_package(&r.control, bytes.len() as u64)
        })
        .collect();
    env.repo.write_index("v3.24", "main", "x86_64", &records);
    fails_with(&env.run("lock", &[]), &["usr/lib/libx.so.2", "SHA-1 mismatch"]);
    let lying_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&lying));
    assert!(!env.cache.join("blobs/sha256").join(lying_sha).exists(), "an unverified package entered the cache");
    assert!(std::fs::read_dir(env.cache.join("tmp")).unwrap().next().is_none(), "a download was left behind");
}

#[test]
fn server_errors_are_retried_then_fail_clearly() {
    let env = setup();
    // Two 500s, a reset and a truncation are retried; the fetch succeeds.
    env.server.fault(&env.url_path("app-1.0-r0.apk"), Fault::Status(500), 2);
    env.server.fault(&env.url_path("lib-2.0-r0.apk"), Fault::Reset, 1);
    env.server.fault(&env.url_path("busybox-1.37.0-r0.apk"), Fault::Truncate, 1);
    let o = env.run("lock", &[]);
    ok(&o);
    assert!(stderr(&o).contains("retrying"), "{}", stderr(&o));
    assert_eq!(env.server.requests(&env.url_path("app-1.0-r0.apk")), 3);

    // Persistent 500: bounded attempts, then a clear error.
    let env = setup();
    env.server.fault(&env.url_path("app-1.0-r0.apk"), Fault::Status(503), 100);
    fails_with(&env.run("lock", &[]), &["app-1.0-r0.apk", "HTTP 503 after 4 attempt(s)"]);
    assert_eq!(env.server.requests(&env.url_path("app-1.0-r0.apk")), 4);

    // Persistent connection resets.
    let env = setup();
    env.server.fault(&env.url_path("app-1.0-r0.apk"), Fault::Reset, 100);
    fails_with(&env.run("lock", &[]), &["app-1.0-r0.apk", "4 attempt(s)", "check the network"]);
    assert_eq!(env.server.requests(&env.url_path("app-1.0-r0.apk")), 4);

    // Persistent truncation.
    let env = setup();
    env.server.fault(&env.url_path("lib-2.0-r0.apk"), Fault::Truncate, 100);
    fails_with(&env.run("lock", &[]), &["lib-2.0-r0.apk", "4 attempt(s)"]);
    assert!(std::fs::read_dir(env.cache.join("tmp")).unwrap().next().is_none(), "partial download left in the cache");
    let full_sha = sha256_file(&env.repo.repo_dir("v3.24", "main", "x86_64").join("lib-2.0-r0.apk"));
    assert!(!env.cache.join("blobs/sha256").join(full_sha).exists());
}

#[test]
fn a_stalled_server_times_out_and_is_retried() {
    let env = setup();
    env.server.fault(&env.url_path("app-1.0-r0.apk"), Fault::Stall(Duration::from_secs(4)), 1);
    let o = env.run_env("lock", &[], &[("HYVE_HTTP_TIMEOUT", "1")]);
    ok(&o);
    assert!(stderr(&o).contains("retrying"), "{}", stderr(&o));
    let env = setup();
    env.server.fault(&env.url_path("app-1.0-r0.apk"), Fault::Stall(Duration::from_secs(3)), 100);
    fails_with(&env.run_env("lock", &[], &[("HYVE_HTTP_TIMEOUT", "1")]), &["app-1.0-r0.apk", "4 attempt(s)"]);
}

#[test]
fn a_corrupt_cache_entry_is_discarded_and_fetched_again() {
    let env = setup();
    ok(&env.run("lock", &[]));
    let lock = env.lock_text();
    let sha = sha256_file(&env.repo.repo_dir("v3.24", "main", "x86_64").join("app-1.0-r0.apk"));
    assert!(lock.contains(&sha));
    let blob = env.cache.join("blobs/sha256").join(&sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let before = env.server.requests(&env.url_path("app-1.0-r0.apk"));
    let o = env.run("fetch", &["--locked"]);
    ok(&o);
    assert!(stderr(&o).contains("discarding corrupt cache entry"), "{}", stderr(&o));
    assert_eq!(env.server.requests(&env.url_path("app-1.0-r0.apk")), before + 1);
    assert_eq!(sha256_file(&blob), sha);
}

#[test]
fn vendor_writes_a_signed_repository_of_exactly_the_lock() {
    let env = setup();
    // An extra package on the mirror that the profile does not need.
    let mut pkgs = packages();
    pkgs.push(Pkg::new("unrelated", "1-r0"));
    env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let (vendor_key, vendor_pub) = hyve::apk::SigningKey::keygen(&env.root, "vendor", 2048).unwrap();
    let out = env.root.join("vendored");
    ok(&env.run("vendor", &[out.to_str().unwrap(), "--sign", vendor_key.to_str().unwrap()]));
    let dir = out.join("v3.24/main/x86_64");
    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    let mut want: Vec<String> =
        PKG_PATHS.iter().map(|s| s.to_string()).chain(["APKINDEX.tar.gz".to_string()]).collect();
    want.sort();
    assert_eq!(files, want);
    // The vendored copy works as a mirror on its own, with its own key, from a cold cache.
    let lock_copy = env.root.join("copy.lock");
    std::fs::copy(env.profile.with_extension("lock"), &lock_copy).unwrap();
    let mirror = format!("file://{}", out.display());
    let from_vendor = |cache: &str, cmd: &str, extra: &[&str]| {
        let mut args = vec![cmd, "--profile", env.profile.to_str().unwrap(), "--mirror", &mirror];
        args.extend_from_slice(&["--key", vendor_pub.to_str().unwrap(), "--cache-dir"]);
        let cache = env.root.join(cache);
        args.push(cache.to_str().unwrap());
        args.extend_from_slice(extra);
        hyve(&args, &[])
    };
    ok(&from_vendor("c3", "fetch", &["--lockfile", lock_copy.to_str().unwrap(), "--locked"]));
    let o = from_vendor("c4", "plan", &[]);
    ok(&o);
}

#[test]
fn unsatisfiable_profiles_name_the_chain() {
    let env = setup();
    std::fs::write(&env.profile, "arches = [\"x86_64\"]\npackages = [\"app\", \"lib<2\"]\n").unwrap();
    fails_with(&env.run("plan", &[]), &["resolving profile test for x86_64", "lib"]);
    std::fs::write(&env.profile, "arches = [\"x86_64\"]\npackages = [\"nosuch\"]\n").unwrap();
    fails_with(&env.run("plan", &[]), &["no package provides nosuch", "world"]);
    std::fs::write(&env.profile, "arches = [\"x86_64\"]\npackagez = [\"app\"]\n").unwrap();
    fails_with(&env.run("plan", &[]), &["test.toml:2:1", "packagez"]);
}

#[test]
fn resolves_alpines_real_index_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("mirror/v3.22/main/x86_64");
    std::fs::create_dir_all(&repo).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/alpine/apkindex/v3.22-main-x86_64_v3.22.2-204.APKINDEX.tar.gz");
    std::fs::copy(fixture, repo.join("APKINDEX.tar.gz")).unwrap();
    let server = Server::start(&dir.path().join("mirror"));
    let profile = dir.path().join("real.toml");
    std::fs::write(&profile, "branch = \"v3.22\"\narches = [\"x86_64\"]\npackages = [\"busybox\", \"busybox-binsh\", \"openssl\", \"iptables\", \"e2fsprogs\"]\n").unwrap();
    let o = hyve(
        &[
            "plan",
            "--profile",
            profile.to_str().unwrap(),
            "--mirror",
            &server.url,
            "--cache-dir",
            dir.path().join("c").to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    ok(&o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let version = |n: &str| {
        doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .map(|p| p["version"].as_str().unwrap().to_string())
    };
    // Hand-checked against the index (the newest of each in v3.22.2).
    assert_eq!(version("busybox").as_deref(), Some("1.37.0-r19"));
    assert_eq!(version("musl").as_deref(), Some("1.2.5-r10"));
    assert_eq!(version("openssl").as_deref(), Some("3.5.4-r0"));
    assert_eq!(version("libssl3").as_deref(), Some("3.5.4-r0"));
    assert_eq!(version("iptables").as_deref(), Some("1.8.11-r1"));
    assert!(version("linux-virt").unwrap().starts_with("6.12."));
    // install_if: busybox + libssl3 bring ssl_client.
    assert!(version("ssl_client").is_some());
}
