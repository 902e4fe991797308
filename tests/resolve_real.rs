//! The resolver on Alpine's real v3.19 and v3.22 main indexes: the result is closed (every
//! dependency of every chosen package is satisfied inside the set, no conflict is violated)
//! and matches hand-checked expectations.

use std::path::Path;

use hyve::apk::index::read_verified_index;
use hyve::apk::{Arch, Dep, Keyring};
use hyve::resolve::{resolve, Chosen, Repo};

fn index(name: &str) -> Vec<hyve::apk::index::IndexRecord> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/alpine/apkindex").join(name);
    read_verified_index(&std::fs::read(p).unwrap(), name, &Keyring::alpine(Some(Arch::X86_64))).unwrap().records
}

/// Every dependency satisfied within the set; no `!conflict` violated; install order puts
/// providers before the packages that need them (except within cycles).
fn assert_closed(set: &[Chosen]) {
    let provides = |c: &Chosen, d: &Dep| {
        (c.record.name == d.name && d.version_matches(Some(&c.record.version)))
            || c.record
                .provides
                .iter()
                .any(|p| p.name == d.name && d.version_matches(p.constraint.as_ref().map(|(_, v)| v)))
    };
    for c in set {
        for d in &c.record.depends {
            let positive = Dep { conflict: false, ..d.clone() };
            let found = set.iter().any(|o| provides(o, &positive));
            if d.conflict {
                assert!(!found, "{} conflicts with {d}, which is installed", c.record.name);
            } else {
                assert!(found, "{}-{}: dependency {d} not satisfied in the set", c.record.name, c.record.version);
            }
        }
    }
    let mut names: Vec<&str> = set.iter().map(|c| c.record.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), set.len(), "a package name chosen twice");
}

fn solve(records: &[hyve::apk::index::IndexRecord], world: &str) -> Vec<Chosen> {
    let repos = [Repo { name: "main", records }];
    resolve(&Dep::parse_list(world).unwrap(), &repos, Arch::X86_64, &Default::default())
        .unwrap_or_else(|e| panic!("{world}: {e}"))
        .packages
}

#[test]
fn v322_docker_host_userland_is_closed() {
    let main = index("v3.22-main-x86_64_v3.22.2-204.APKINDEX.tar.gz");
    let set = solve(
        &main,
        "alpine-baselayout-data busybox busybox-binsh busybox-static musl linux-virt iptables e2fsprogs ca-certificates openssl socat",
    );
    assert_closed(&set);
    let get = |n: &str| set.iter().find(|c| c.record.name == n).unwrap_or_else(|| panic!("{n} not chosen"));
    // Hand-checked against the index: versions are the newest in v3.22.2.
    let musl = get("musl");
    assert!(musl.record.version.as_str().starts_with("1.2.5"), "{}", musl.record.version);
    assert!(get("linux-virt").record.version.as_str().starts_with("6.12."), "{}", get("linux-virt").record.version);
    // openssl pulls libssl3 and libcrypto3 through so: names.
    get("libssl3");
    get("libcrypto3");
    // iptables needs libxtables etc; e2fsprogs its libs.
    get("libxtables");
    // What the guest's stage 1 and dockerd's networking rely on, as Alpine ships it: busybox
    // linked against musl beside a static build, and iptables on the nftables backend.
    assert!(get("busybox").record.depends.iter().any(|d| d.name == "so:libc.musl-x86_64.so.1"));
    assert!(get("busybox-static").record.depends.is_empty(), "busybox-static needs nothing");
    get("libnftnl");
    assert!(get("iptables").record.provides.iter().any(|p| p.name == "cmd:xtables-nft-multi"));
    get("e2fsprogs-libs");
    // Install order: musl (the C library) before everything linked against it.
    let musl_at = set.iter().position(|c| c.record.name == "musl").unwrap();
    for (i, c) in set.iter().enumerate() {
        if c.record.depends.iter().any(|d| d.name == "so:libc.musl-x86_64.so.1") {
            assert!(i > musl_at, "{} is installed before musl", c.record.name);
        }
    }
}

#[test]
fn v319_alpine_base_is_closed_and_deterministic() {
    let main = index("v3.19-main-x86_64_v3.19.0-327.APKINDEX.tar.gz");
    let a = solve(&main, "alpine-base");
    assert_closed(&a);
    for n in ["alpine-baselayout", "busybox", "openrc", "apk-tools", "musl", "alpine-release", "busybox-openrc"] {
        assert!(a.iter().any(|c| c.record.name == n), "alpine-base should bring {n}");
    }
    assert_eq!(a, solve(&main, "alpine-base"));
}
