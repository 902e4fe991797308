//! The apk layer against real Alpine files and against independent tools: every vector
//! verifies; every flipped byte in a signed or hashed region is caught and named; what hyve
//! writes verifies with `openssl dgst -verify`, and its Q1 and datahash match hashes
//! computed by other programs; `pkg create` and `repo index` are byte-for-byte reproducible.

use std::path::{Path, PathBuf};
use std::process::Command;

use hyve::apk::index::{read_index, read_verified_index};
use hyve::apk::package::{Limits, PackageReader};
use hyve::apk::Keyring;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/alpine").join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn hyve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hyve")).args(args).env_remove("SOURCE_DATE_EPOCH").output().expect("run hyve")
}

/// Opens, checks the signature and reads all data; the error text on failure.
fn check_package(bytes: &[u8], ring: &Keyring) -> Result<(), String> {
    let reader = PackageReader::open(bytes, "pkg.apk", Limits::default(), None).map_err(|e| e.to_string())?;
    let verdict = reader.control.verify_signature(ring);
    if !verdict.is_verified() {
        return Err(format!("signature: {verdict}"));
    }
    reader.read_data(|_, _| Ok(())).map(|_| ()).map_err(|e| e.to_string())
}

/// Length of the first gzip member of `bytes`.
fn first_member_len(bytes: &[u8]) -> usize {
    let mut c = std::io::Cursor::new(bytes);
    std::io::copy(&mut flate2::bufread::GzDecoder::new(&mut c), &mut std::io::sink()).unwrap();
    let end = c.position() as usize;
    assert!(end == bytes.len() || bytes[end..].starts_with(&[0x1f, 0x8b]), "not at a member boundary");
    end
}

#[test]
fn every_real_alpine_file_verifies_and_parses() {
    let ring = Keyring::alpine(None);
    for p in fixtures("packages") {
        let bytes = std::fs::read(&p).unwrap();
        check_package(&bytes, &ring).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let out = hyve(&["inspect", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
    }
    for p in fixtures("apkindex") {
        let bytes = std::fs::read(&p).unwrap();
        let idx = read_verified_index(&bytes, "idx", &ring).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(idx.records.len() >= 100);
        let out = hyve(&["inspect", "--json", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["count"].as_u64().unwrap() as usize, idx.records.len());
        assert_eq!(doc["signature"]["status"], "verified");
    }
}

#[test]
fn iso_index_names_the_real_packages() {
    let ring = Keyring::alpine(None);
    let index_path = fixtures("apkindex").into_iter().find(|p| p.to_string_lossy().contains("iso-3.19.1")).unwrap();
    let idx = read_verified_index(&std::fs::read(index_path).unwrap(), "iso", &ring).unwrap();
    for p in fixtures("packages") {
        let bytes = std::fs::read(&p).unwrap();
        let info = PackageReader::open(&bytes[..], "p", Limits::default(), None).unwrap().control.info;
        let Some(rec) = idx.records.iter().find(|r| r.name == info.name && r.version == info.version) else {
            continue; // libc6-compat comes from another branch
        };
        PackageReader::open(&bytes[..], "p", Limits::default(), Some(rec.checksum)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rec.size, std::fs::metadata(&p).unwrap().len(), "{}", p.display());
    }
}

#[test]
fn a_package_the_index_does_not_name_is_refused_before_parsing() {
    // The file is alpine-keys-2.4-r1 (v3.19); v3.22's index names alpine-keys 2.5-r0.
    let ring = Keyring::alpine(None);
    let p = fixtures("packages").into_iter().find(|p| p.to_string_lossy().contains("alpine-keys")).unwrap();
    let v322 = fixtures("apkindex").into_iter().find(|p| p.to_string_lossy().contains("v3.22")).unwrap();
    let idx = read_verified_index(&std::fs::read(v322).unwrap(), "v3.22", &ring).unwrap();
    let rec = idx.records.iter().find(|r| r.name == "alpine-keys").unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let e = PackageReader::open(&bytes[..], p.to_str().unwrap(), Limits::default(), Some(rec.checksum))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("identity mismatch")
            && e.contains("alpine-keys-2.4-r1.apk")
            && e.contains(&rec.checksum.to_string()),
        "{e}"
    );
}

#[test]
fn flipped_bytes_in_real_packages_are_caught_and_named() {
    let ring = Keyring::alpine(None);
    for p in fixtures("packages") {
        let bytes = std::fs::read(&p).unwrap();
        let sig_end = first_member_len(&bytes);
        let control_end = sig_end + first_member_len(&bytes[sig_end..]);
        // Every byte of small packages, an even sample of large ones.
        let stride = (bytes.len() / 3000).max(1);
        for i in (sig_end..bytes.len()).step_by(stride).chain([bytes.len() - 1]) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let e = check_package(&bad, &ring).expect_err(&format!("{}: flip at {i} went unnoticed", p.display()));
            let named = if i < control_end {
                e.contains("signature: INVALID") || e.contains("control member")
            } else {
                e.contains("data member") || e.contains("datahash mismatch") || e.contains("SHA-1 mismatch")
            };
            assert!(
                named,
                "{}: flip at {i} (control ends at {control_end}): error does not name the link: {e}",
                p.display()
            );
        }
    }
}

#[test]
fn flipped_bytes_in_real_indexes_are_caught() {
    let ring = Keyring::alpine(None);
    let p = fixtures("apkindex").into_iter().find(|p| p.to_string_lossy().contains("iso-3.19.1")).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let sig_end = first_member_len(&bytes);
    for i in (sig_end..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let e = read_verified_index(&bad, "idx", &ring).expect_err(&format!("flip at {i} went unnoticed")).to_string();
        assert!(e.contains("signature check failed: INVALID"), "flip at {i}: {e}");
        // Reporting mode still parses what it can, but never calls it verified.
        if let Ok(idx) = read_index(&bad, "idx", &ring) {
            assert!(!idx.verdict.is_verified());
        }
    }
}

/// Splits gzip members and hashes with python3's zlib and openssl, not with hyve's code.
fn independent_members(file: &Path, out: &Path) -> Vec<PathBuf> {
    let script = r#"
import sys, zlib
data = open(sys.argv[1], 'rb').read()
off, n = 0, 0
while off < len(data):
    d = zlib.decompressobj(31)
    d.decompress(data[off:])
    used = len(data) - off - len(d.unused_data)
    open('%s/member%d' % (sys.argv[2], n), 'wb').write(data[off:off + used])
    off += used; n += 1
print(n)
"#;
    let o = Command::new("python3")
        .args(["-c", script, file.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n: usize = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (0..n).map(|i| out.join(format!("member{i}"))).collect()
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().expect("openssl")
}

/// The raw signature bytes out of the first member (a one-entry tar), via python3's tarfile.
fn signature_from_member(member: &Path, out: &Path) -> (String, PathBuf) {
    let script = r#"
import sys, tarfile
t = tarfile.open(sys.argv[1], 'r:gz')
m = t.next()
open(sys.argv[2], 'wb').write(t.extractfile(m).read())
print(m.name)
"#;
    let sig = out.join("signature.bin");
    let o =
        Command::new("python3").args(["-c", script, member.to_str().unwrap(), sig.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (String::from_utf8_lossy(&o.stdout).trim().to_string(), sig)
}

/// Splits `file` into gzip members with python3, and checks with `openssl dgst -verify`
/// that the first member's signature covers the second; returns the members.
fn openssl_verified_members(file: &Path, work: &Path, sig_type: &str, public_key: &str) -> Vec<PathBuf> {
    std::fs::create_dir_all(work).unwrap();
    let members = independent_members(file, work);
    let (name, sig) = signature_from_member(&members[0], work);
    assert_eq!(name, format!(".SIGN.{sig_type}.test.rsa.pub"));
    let digest = if sig_type == "RSA" { "-sha1" } else { "-sha256" };
    let o = openssl(&[
        "dgst",
        digest,
        "-verify",
        public_key,
        "-signature",
        sig.to_str().unwrap(),
        members[1].to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "openssl: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    members
}

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let out = hyve(&["repo", "keygen", dir.path().join("test").to_str().unwrap(), "--bits", "2048"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::create_dir_all(src.join("etc/hello")).unwrap();
        std::fs::write(src.join("usr/bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(src.join("etc/hello/conf"), vec![b'x'; 70_000]).unwrap();
        std::os::unix::fs::symlink("hello", src.join("usr/bin/hi")).unwrap();
        std::fs::write(dir.path().join("pre"), b"#!/bin/sh\naddgroup -S hello 2>/dev/null\nexit 0\n").unwrap();
        std::fs::create_dir_all(dir.path().join("repo")).unwrap();
        Repo { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn s(&self, p: &str) -> String {
        self.path(p).to_str().unwrap().to_string()
    }

    fn create(&self, out: &str, extra: &[&str]) -> Vec<u8> {
        let (src, pre, key) = (self.s("src"), self.s("pre"), self.s("test.rsa"));
        let mut args = vec![
            "pkg",
            "create",
            &src,
            "--name",
            "hello",
            "--version",
            "1.0-r0",
            "--arch",
            "x86_64",
            "--depends",
            "busybox so:libc.musl-x86_64.so.1",
            "--provides",
            "cmd:hello=1.0-r0",
            "--pre-install",
            &pre,
            "--build-date",
            "1700000000",
            "--sign",
            &key,
        ];
        let out_path = self.s(out);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", &out_path]);
        let o = hyve(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&out_path).unwrap()
    }
}

#[test]
fn written_packages_verify_with_openssl_and_match_independent_hashes() {
    for sig_type in ["RSA", "RSA256"] {
        let r = Repo::new();
        r.create("repo/hello-1.0-r0.apk", &["--sig-type", sig_type]);
        let members = openssl_verified_members(
            &r.path("repo/hello-1.0-r0.apk"),
            &r.path("split"),
            sig_type,
            &r.s("test.rsa.pub"),
        );
        assert_eq!(members.len(), 3, "signature, control, data");

        // Q1 = base64(sha1(control member)); datahash = sha256(data member).
        let q1 = openssl(&["dgst", "-sha1", "-binary", members[1].to_str().unwrap()]).stdout;
        use base64::Engine;
        let q1 = format!("Q1{}", base64::engine::general_purpose::STANDARD.encode(q1));
        let datahash = hex::encode(openssl(&["dgst", "-sha256", "-binary", members[2].to_str().unwrap()]).stdout);
        let o = hyve(&["inspect", "--json", "--key", &r.s("test.rsa.pub"), &r.s("repo/hello-1.0-r0.apk")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(doc["checksum"], q1.as_str());
        assert_eq!(doc["pkginfo"]["datahash"], datahash.as_str());
        assert_eq!(doc["data"]["datahash"], datahash.as_str());
        let files = doc["files"].as_array().unwrap();
        let hello = files.iter().find(|f| f["path"] == "usr/bin/hello").unwrap();
        let want = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(b"#!/bin/sh\necho hello\n"));
        assert_eq!(hello["sha1"], want.as_str());

        // The index: signature over the raw second member, and C: = the package's Q1.
        let o = hyve(&[
            "repo",
            "index",
            &r.s("repo"),
            "--sign",
            &r.s("test.rsa"),
            "--sig-type",
            sig_type,
            "--description",
            "test repo",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let members = openssl_verified_members(
            &r.path("repo/APKINDEX.tar.gz"),
            &r.path("isplit"),
            sig_type,
            &r.s("test.rsa.pub"),
        );
        assert_eq!(members.len(), 2);
        let text = Command::new("python3")
            .args([
                "-c",
                "import sys,tarfile; t=tarfile.open(sys.argv[1]); print(t.extractfile('APKINDEX').read().decode())",
                members[1].to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(&format!("C:{q1}\nP:hello\nV:1.0-r0\nA:x86_64\n")), "{text}");
        assert!(text.contains("D:busybox so:libc.musl-x86_64.so.1\np:cmd:hello=1.0-r0\n"), "{text}");
    }
}

#[test]
fn pkg_create_and_repo_index_are_reproducible() {
    let r = Repo::new();
    let a = r.create("a.apk", &[]);
    // Different creation order and mtimes of the source files must not matter.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(r.path("src/usr/bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    let b = r.create("b.apk", &[]);
    assert_eq!(a, b, "pkg create is not reproducible");
    std::fs::copy(r.path("a.apk"), r.path("repo/hello-1.0-r0.apk")).unwrap();
    let index = |out: &str| {
        let o = hyve(&["repo", "index", &r.s("repo"), "--sign", &r.s("test.rsa"), "-o", &r.s(out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(r.path(out)).unwrap()
    };
    assert_eq!(index("i1.tar.gz"), index("i2.tar.gz"), "repo index is not reproducible");
}

#[test]
fn inspect_fails_on_untrusted_tampered_and_malicious_input() {
    let r = Repo::new();
    let good = r.create("repo/hello-1.0-r0.apk", &[]);
    // Untrusted: the key is not passed.
    let o = hyve(&["inspect", &r.s("repo/hello-1.0-r0.apk")]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("UNTRUSTED"), "{}", String::from_utf8_lossy(&o.stderr));
    // Tampered data: flip a byte near the end (inside the data member).
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 30] ^= 0xff;
    std::fs::write(r.path("bad.apk"), &bad).unwrap();
    let o = hyve(&["inspect", "--key", &r.s("test.rsa.pub"), &r.s("bad.apk")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("data member") || err.contains("datahash") || err.contains("SHA-1 mismatch"), "{err}");
    // v3 files are named as such.
    std::fs::write(r.path("Packages.adb"), b"ADB.\x00\x00\x00\x00").unwrap();
    let o = hyve(&["inspect", &r.s("Packages.adb")]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("apk v3"));
}

#[test]
fn malicious_entries_are_refused() {
    use hyve::apk::archive::{DataEntry, EntryKind};
    use hyve::apk::package::{write_package, NewEntry};
    use hyve::apk::pkginfo::PkgInfo;
    use hyve::apk::{SigAlgo, SigningKey, Version};
    let key = SigningKey::generate("evil.rsa.pub", 2048).unwrap();
    let mut ring = Keyring::empty();
    ring.add("evil.rsa.pub", key.public_key());
    for (path, reason) in [("../etc/passwd", "`..`"), ("/etc/passwd", "absolute path"), ("usr/../../x", "`..`")] {
        let entry = DataEntry::owned_by_root(path, EntryKind::File, 0o644, 0);
        let mut info = PkgInfo::new("evil", Version::parse("1").unwrap(), "x86_64");
        let mut bytes = Vec::new();
        write_package(
            &mut bytes,
            &mut info,
            &[],
            &[NewEntry::from_bytes(entry, b"root::0:0::/:/bin/sh\n".to_vec())],
            &key,
            SigAlgo::RsaSha256,
        )
        .unwrap();
        let e = check_package(&bytes, &ring).unwrap_err();
        assert!(e.contains("refusing data entry") && e.contains(reason), "{path}: {e}");
    }
}

#[test]
fn decompression_bombs_are_refused() {
    let r = Repo::new();
    let bytes = r.create("big.apk", &[]);
    let reader =
        PackageReader::open(&bytes[..], "big.apk", Limits { data_bytes: 10_000, ..Limits::default() }, None).unwrap();
    let e = reader.read_data(|_, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("big.apk") && e.contains("decompression bomb"), "{e}");
}
