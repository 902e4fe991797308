//! The hostile-input corpus: every case is generated here (no hand-edited binaries) from the
//! small guest of `support::guest`, fed to `hyve build`, and must fail with its own clear
//! message while the previous output directory stays byte for byte as it was and nothing is
//! left beside it.
//!
//! Index cases remove the lock first (with a fresh lock the index is not read at all);
//! package cases build from an empty cache (a verified cache copy would be used instead).

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use hyve::apk::index::IndexRecord;
use hyve::apk::package::PackageReader;
use support::guest::{ok, packages, setup, Env};
use support::{build_package, stderr, Pkg};

/// A good build in `out`, and what it holds.
struct Hostile {
    env: Env,
    out: PathBuf,
    before: BTreeMap<String, Vec<u8>>,
    cold: std::cell::Cell<u32>,
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn prepared() -> Hostile {
    let env = setup(&["x86_64"]);
    let out = env.root.join("out/guest");
    ok(&env.build(&out, &env.root.join("cache"), &[], &[], "022"));
    let before = snapshot(&out);
    Hostile { env, out, before, cold: std::cell::Cell::new(0) }
}

impl Hostile {
    fn repo_dir(&self) -> PathBuf {
        self.env.repo.repo_dir("v3.24", "main", "x86_64")
    }

    fn apk(&self, name: &str) -> PathBuf {
        self.repo_dir().join(name)
    }

    /// Puts `pkg`, built for `arch` and changed by `tamper`, where the mirror's tool-2.0-r0.apk was.
    fn replace_tool(&self, pkg: &Pkg, arch: &str, tamper: impl Fn(&mut Vec<hyve::apk::package::NewEntry>)) {
        std::fs::write(self.apk("tool-2.0-r0.apk"), build_package(pkg, arch, &self.env.repo.key, tamper)).unwrap();
    }

    fn drop_lock(&self) {
        std::fs::remove_file(self.env.profile.with_extension("lock")).unwrap();
    }

    fn edit_profile(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.env.profile).unwrap();
        assert!(text.contains(from), "{from:?} not in the profile");
        std::fs::write(&self.env.profile, text.replace(from, to)).unwrap();
    }

    /// Indexes every .apk in the repository by hand (from its control member only), so a
    /// package whose data is hostile still gets a signed index entry.
    fn index_as_is(&self, adjust: impl Fn(&mut IndexRecord)) {
        let records: Vec<IndexRecord> = std::fs::read_dir(self.repo_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "apk"))
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                let r = PackageReader::open(&bytes[..], "x", Default::default(), None).unwrap();
                let mut rec = IndexRecord::from_package(&r.control, bytes.len() as u64);
                adjust(&mut rec);
                rec
            })
            .collect();
        self.env.repo.write_index("v3.24", "main", "x86_64", &records);
    }

    /// `hyve build` into the same output again, from an empty cache; it must fail naming
    /// every needle, and leave the output and its directory exactly as they were.
    fn refused(&self, needles: &[&str]) -> String {
        self.cold.set(self.cold.get() + 1);
        let cache = self.env.root.join(format!("cache-cold-{}", self.cold.get()));
        let o = self.env.build(&self.out, &cache, &[], &[], "022");
        let e = stderr(&o);
        assert!(!o.status.success(), "hostile input was accepted:\n{e}");
        for n in needles {
            assert!(e.contains(n), "the error does not say {n:?}:\n{e}");
        }
        assert!(snapshot(&self.out) == self.before, "the previous output changed");
        let beside: Vec<String> = std::fs::read_dir(self.out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "guest")
            .collect();
        assert!(beside.is_empty(), "left beside the output: {beside:?}");
        if cache.join("tmp").exists() {
            assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0, "partial downloads left in the cache");
        }
        e
    }
}

/// The gzip members of a file (each member's compressed bytes).
fn gzip_members(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut c = std::io::Cursor::new(bytes);
    while (c.position() as usize) < bytes.len() {
        let start = c.position() as usize;
        std::io::copy(&mut flate2::bufread::GzDecoder::new(&mut c), &mut std::io::sink()).unwrap();
        out.push(bytes[start..c.position() as usize].to_vec());
    }
    out
}

// ---- the signed index ----

#[test]
fn unsigned_index() {
    let h = prepared();
    h.drop_lock();
    let index = h.repo_dir().join("APKINDEX.tar.gz");
    let members = gzip_members(&std::fs::read(&index).unwrap());
    std::fs::write(&index, members[1..].concat()).unwrap();
    h.refused(&["APKINDEX.tar.gz", "UNSIGNED"]);
}

#[test]
fn index_signed_by_an_untrusted_key() {
    let h = prepared();
    h.drop_lock();
    let stranger = hyve::apk::SigningKey::generate("stranger.rsa.pub", 2048).unwrap();
    let dir = h.repo_dir();
    let records: Vec<IndexRecord> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "apk"))
        .map(|p| IndexRecord::from_file(&p).unwrap())
        .collect();
    let bytes =
        hyve::apk::index::write_index(&records, "stranger", &stranger, hyve::apk::SigAlgo::RsaSha256, 1_700_000_000)
            .unwrap();
    std::fs::write(dir.join("APKINDEX.tar.gz"), bytes).unwrap();
    h.refused(&["APKINDEX.tar.gz", "UNTRUSTED", "stranger.rsa.pub", "--key"]);
}

#[test]
fn index_signature_over_another_index() {
    let h = prepared();
    h.drop_lock();
    let index = h.repo_dir().join("APKINDEX.tar.gz");
    let signed = gzip_members(&std::fs::read(&index).unwrap());
    // The same key signs an index with one more package; its signature goes on the old one.
    let mut pkgs = packages("x86_64");
    pkgs.push(Pkg::new("extra", "1-r0").file("etc/extra", b"x"));
    h.env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    let other = gzip_members(&std::fs::read(&index).unwrap());
    std::fs::write(&index, [other[0].clone(), signed[1].clone()].concat()).unwrap();
    h.refused(&["APKINDEX.tar.gz", "INVALID"]);
}

#[test]
fn truncated_index() {
    let h = prepared();
    h.drop_lock();
    let index = h.repo_dir().join("APKINDEX.tar.gz");
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() * 2 / 3]).unwrap();
    h.refused(&["APKINDEX.tar.gz"]);
}

// ---- packages ----

#[test]
fn truncated_package() {
    let h = prepared();
    let apk = h.apk("tool-2.0-r0.apk");
    let bytes = std::fs::read(&apk).unwrap();
    std::fs::write(&apk, &bytes[..bytes.len() / 2]).unwrap();
    // Locked: the pin catches it first, naming the package and the way out.
    h.refused(&["tool-2.0-r0.apk", "does not match the lock's"]);
    // With --json the failure is one JSON object on stdout: the error's kind and fields.
    let o = h.env.build(&h.out, &h.env.root.join("cache-json"), &["--json"], &[], "022");
    assert!(!o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json: stdout is one JSON document");
    let error = &doc["error"];
    assert_eq!(error["kind"], "lock_mismatch", "{doc}");
    assert!(error["url"].as_str().unwrap().ends_with("tool-2.0-r0.apk"), "{doc}");
    assert_eq!(error["expected"].as_str().unwrap().len(), 64, "{doc}");
    assert_ne!(error["expected"], error["actual"], "{doc}");
    assert!(error["message"].as_str().unwrap().contains("does not match the lock's"), "{doc}");
}

#[test]
fn truncated_package_gzip_member_without_a_lock() {
    let h = prepared();
    h.drop_lock();
    let apk = h.apk("tool-2.0-r0.apk");
    let bytes = std::fs::read(&apk).unwrap();
    std::fs::write(&apk, &bytes[..bytes.len() - 40]).unwrap();
    h.refused(&["tool-2.0-r0.apk", "datahash mismatch", "truncated"]);
}

#[test]
fn package_is_not_the_one_the_index_names() {
    let h = prepared();
    h.drop_lock();
    let other = Pkg::new("tool", "2.0-r0").depends("busybox").file("usr/bin/tool", b"#!/bin/sh\nevil\n");
    h.replace_tool(&other, "x86_64", |_| {});
    h.refused(&["tool-2.0-r0.apk", "identity mismatch"]);
}

#[test]
fn package_data_swapped_under_its_control_member() {
    let h = prepared();
    h.drop_lock();
    let good = gzip_members(&std::fs::read(h.apk("tool-2.0-r0.apk")).unwrap());
    let foreign = gzip_members(&std::fs::read(h.apk("musl-1.2.5-r10.apk")).unwrap());
    std::fs::write(h.apk("tool-2.0-r0.apk"), [good[0].clone(), good[1].clone(), foreign[2].clone()].concat()).unwrap();
    h.refused(&["tool-2.0-r0.apk", "datahash mismatch"]);
}

#[test]
fn file_checksum_that_lies() {
    let h = prepared();
    h.drop_lock();
    let p = Pkg::new("tool", "2.0-r0").depends("busybox").file("usr/bin/tool", &[7u8; 50_000]);
    h.replace_tool(&p, "x86_64", |entries| {
        entries.iter_mut().find(|e| e.entry.path == "usr/bin/tool").unwrap().entry.sha1 = Some([0u8; 20]);
    });
    h.index_as_is(|_| {});
    h.refused(&["usr/bin/tool", "SHA-1 mismatch"]);
}

#[test]
fn mirror_serves_other_bytes_than_the_lock_pinned() {
    let h = prepared();
    let mut pkgs = packages("x86_64");
    let i = pkgs.iter().position(|p| p.name == "tool").unwrap();
    pkgs[i] = Pkg::new("tool", "2.0-r0").depends("busybox").file("usr/bin/tool", b"#!/bin/sh\nswapped\n");
    h.env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    h.refused(&["tool", "does not match the lock", "hyve lock --update tool"]);
}

#[test]
fn package_for_another_arch() {
    let h = prepared();
    h.drop_lock();
    let p = Pkg::new("tool", "2.0-r0").depends("busybox").file("usr/bin/tool", b"#!/bin/sh\n");
    h.replace_tool(&p, "aarch64", |_| {});
    h.index_as_is(|_| {});
    h.refused(&["tool", "built for aarch64", "x86_64"]);
}

/// A package whose data entry is renamed by `rename` after it was built.
fn entry_renamed(rename: &'static str) -> String {
    let h = prepared();
    h.drop_lock();
    let p = Pkg::new("tool", "2.0-r0").depends("busybox").file("usr/bin/tool", b"root::0:0::/:/bin/sh\n");
    h.replace_tool(&p, "x86_64", |entries| {
        entries.iter_mut().find(|e| e.entry.path == "usr/bin/tool").unwrap().entry.path = rename.into();
    });
    h.index_as_is(|_| {});
    h.refused(&["refusing data entry"])
}

#[test]
fn entry_climbing_out_with_dotdot() {
    assert!(entry_renamed("../../etc/passwd").contains("`..`"));
}

#[test]
fn entry_with_an_absolute_path() {
    assert!(entry_renamed("/etc/passwd").contains("absolute path"));
}

#[test]
fn symlink_that_would_carry_a_later_entry_out_of_the_tree() {
    let h = prepared();
    let mut pkgs = packages("x86_64");
    pkgs.push(Pkg::new("aaa-link", "1-r0").symlink("usr/lib/x", "/etc"));
    pkgs.push(Pkg::new("zzz-write", "1-r0").depends("aaa-link").file("usr/lib/x/passwd", b"root::0:0::/:/bin/sh\n"));
    h.env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    h.edit_profile("\"tool\"]", "\"tool\", \"zzz-write\"]");
    h.refused(&["zzz-write", "usr/lib/x", "installs a directory where aaa-link installed a symlink"]);
}

#[test]
fn two_packages_write_one_path_with_different_content() {
    let h = prepared();
    let mut pkgs = packages("x86_64");
    pkgs.push(Pkg::new("clash", "1-r0").file("usr/bin/tool", b"another tool\n"));
    h.env.repo.publish("v3.24", "main", "x86_64", &pkgs);
    h.edit_profile("\"tool\"]", "\"tool\", \"clash\"]");
    h.refused(&["usr/bin/tool: both", "clash", "different contents"]);
}

#[test]
fn gzip_bomb_far_beyond_the_declared_size() {
    let h = prepared();
    h.drop_lock();
    // 256 MiB of zeros compress to a few hundred KiB; the index declares 4 KiB installed.
    let zeros = vec![0u8; 256 << 20];
    let p = Pkg::new("tool", "2.0-r0").depends("busybox").file("usr/bin/tool", &zeros);
    h.replace_tool(&p, "x86_64", |_| {});
    h.index_as_is(|r| {
        if r.name == "tool" {
            r.installed_size = 4096;
        }
    });
    h.refused(&["tool-2.0-r0.apk", "decompression bomb"]);
}

// ---- the profile ----

#[test]
fn profile_with_an_unknown_field() {
    let h = prepared();
    h.edit_profile("hostname = ", "colour = \"blue\"\nhostname = ");
    h.refused(&["guest.toml:", "colour"]);
}

#[test]
fn profile_with_a_bad_type() {
    let h = prepared();
    h.edit_profile("hostname = \"testbox\"", "hostname = 42");
    h.refused(&["guest.toml:3:", "hostname = 42", "expected a string"]);
}

#[test]
fn profiles_extending_each_other() {
    let h = prepared();
    let dir = h.env.profile.parent().unwrap();
    std::fs::write(dir.join("loop.toml"), "extends = \"guest\"\n").unwrap();
    let text = std::fs::read_to_string(&h.env.profile).unwrap();
    std::fs::write(&h.env.profile, format!("extends = \"loop\"\n{text}")).unwrap();
    h.refused(&["guest.toml", "loop.toml", "cycle"]);
}

#[test]
fn profile_naming_a_missing_overlay() {
    let h = prepared();
    h.edit_profile("overlay-test", "overlay-missing");
    h.refused(&["overlay-missing", "does not exist"]);
}

#[test]
fn profile_naming_an_unknown_kernel_module() {
    let h = prepared();
    h.edit_profile("\"virtio-blk\"", "\"no_such_module\"");
    h.refused(&["no_such_module", "linux-virt"]);
}

/// Every hostile file this suite generates is made by code above; nothing binary is
/// checked in under tests/hostile/.
#[test]
fn the_corpus_is_generated_not_checked_in() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hostile");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let mut head = Vec::new();
        std::fs::File::open(&p).unwrap().take(4096).read_to_end(&mut head).unwrap();
        assert!(std::str::from_utf8(&head).is_ok(), "{} is not source text", p.display());
    }
}
