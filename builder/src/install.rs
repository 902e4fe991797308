//! Unpacking verified packages into the tree, in install order, the way `apk add` would —
//! except that install scripts never run on the host. What the profiles' scripts do is
//! reproduced instead: users and groups (`addgroup` / `adduser`) and busybox applet links.
//! Anything else a script does is reported as a warning naming the package and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sha2::Sha256;

use crate::apk::archive::{DataEntry, EntryKind};
use crate::apk::package::{Limits, PackageReader};
use crate::apk::pkginfo::PkgInfo;
use crate::apk::{Dep, Q1};
use crate::tree::{ContentStore, Node, NodeKind, Overwrite, Tree, TreeError};

/// A package file to install and the identity it must have.
#[derive(Debug, Clone)]
pub struct PackageFile {
    pub path: PathBuf,
    pub q1: Q1,
    /// The lock's pin of the whole file (trust link 2), checked in the same pass that
    /// unpacks it.
    pub sha256: String,
    pub installed_size: u64,
}

/// What was installed, for `/lib/apk/db/installed`, the manifest and the SBOM.
#[derive(Debug, Clone)]
pub struct InstalledPackage {
    pub info: PkgInfo,
    pub q1: Q1,
    /// Paths the package owns, in archive order, with the SHA-1 apk records for them.
    pub files: Vec<(String, EntryKind, Option<[u8; 20]>)>,
}

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstallError {
    #[error("installing {package}: {source}")]
    Tree { package: String, source: Box<TreeError> },
    #[error("content store: {source}")]
    Store {
        #[from]
        #[serde(serialize_with = "crate::serialize_display")]
        source: std::io::Error,
    },
    #[error("installing {package}: {detail}")]
    Script { package: String, detail: String },
    /// A package built for another architecture (its .PKGINFO says so).
    #[error("{path}: {package} is built for {actual}, not {expected}; the repository serves the wrong architecture's package")]
    WrongArch { path: String, package: String, expected: String, actual: String },
    /// Trust link 2 on a cached file, checked while unpacking it.
    #[error("{path}: SHA-256 {actual} does not match the lock's {expected}; the corrupt cache entry was removed — run the build again to fetch it")]
    CacheCorrupt { path: String, expected: String, actual: String },
    #[error(transparent)]
    #[serde(untagged)]
    Apk(#[from] crate::apk::Error),
}

type Result<T> = std::result::Result<T, InstallError>;

/// Installs packages into a tree one at a time, in install order, as they become available
/// (the build unpacks each package while later ones are still downloading); `finish` returns
/// what was installed and warnings about script commands that were not reproduced. (Mtimes
/// are clamped when the tree is written.)
pub struct Installer<'a> {
    tree: &'a mut Tree,
    store: &'a mut ContentStore,
    /// Every package must be built for it (or be `noarch`).
    arch: crate::apk::Arch,
    installed: Vec<InstalledPackage>,
    warnings: Vec<String>,
}

impl<'a> Installer<'a> {
    pub fn new(tree: &'a mut Tree, store: &'a mut ContentStore, arch: crate::apk::Arch) -> Self {
        Installer { tree, store, arch, installed: Vec::new(), warnings: Vec::new() }
    }

    /// Unpacks the next package in install order.
    pub fn add(&mut self, pkg: &PackageFile) -> Result<()> {
        let (tree, store, warnings) = (&mut *self.tree, &mut *self.store, &mut self.warnings);
        let origin = pkg.path.display().to_string();
        let file = std::fs::File::open(&pkg.path)
            .map_err(|source| crate::apk::Error::Io { origin: origin.clone(), source })?;
        let mut hashing = crate::fsutil::Hashing::<_, Sha256>::new(file);
        let reader = PackageReader::open(
            std::io::BufReader::new(&mut hashing),
            &origin,
            Limits::for_installed_size(pkg.installed_size),
            Some(pkg.q1),
        )
        .map_err(|e| corrupt_or(e, pkg))?;
        let control = reader.control.clone();
        if control.info.arch != self.arch.as_str() && control.info.arch != "noarch" {
            return Err(InstallError::WrongArch {
                path: origin,
                package: control.info.name.clone(),
                expected: self.arch.to_string(),
                actual: control.info.arch.clone(),
            });
        }
        let name = control.info.name.clone();
        let replaces: BTreeSet<String> = control.info.replaces.iter().map(|d| d.name.clone()).collect();
        let scripts = control.scripts.clone();
        run_scripts(tree, store, &name, &scripts, &[".pre-install"], warnings)?;
        let mut files = Vec::new();
        let mut pending: Vec<(DataEntry, Option<crate::tree::Blob>)> = Vec::new();
        reader
            .read_data(|entry, content| {
                let blob = match entry.kind {
                    EntryKind::File => Some(
                        store
                            .add(content)
                            .map_err(|source| crate::apk::Error::Io { origin: origin.clone(), source })?,
                    ),
                    _ => None,
                };
                pending.push((entry.clone(), blob));
                Ok(())
            })
            .map_err(|e| corrupt_or(e, pkg))?;
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|source| crate::apk::Error::Io { origin: origin.clone(), source })?;
        let actual = hex::encode(hashing.finish().1);
        if actual != pkg.sha256 {
            return Err(cache_corrupt(pkg, actual));
        }
        // Only now, with the file's pin, datahash and every file checked, does anything reach
        // the tree.
        for (entry, blob) in pending {
            let (uid, gid) = owner_ids(tree, store, &entry);
            let kind = match &entry.kind {
                EntryKind::File => NodeKind::File(blob.expect("blob stored for files")),
                EntryKind::Dir => NodeKind::Dir,
                EntryKind::Symlink { target } => NodeKind::Symlink(target.clone()),
                EntryKind::Hardlink { target } => NodeKind::Hardlink(target.clone()),
                EntryKind::CharDevice { major, minor } => NodeKind::CharDevice(*major, *minor),
                EntryKind::BlockDevice { major, minor } => NodeKind::BlockDevice(*major, *minor),
                EntryKind::Fifo => NodeKind::Fifo,
            };
            let node = Node {
                kind,
                mode: entry.mode,
                uid,
                gid,
                mtime: entry.mtime,
                xattrs: entry.xattrs.clone(),
                owner: name.clone(),
            };
            let overwrite = match tree.get(&entry.path) {
                Some(existing) if replaces.contains(&existing.owner) => Overwrite::Allowed,
                _ => Overwrite::Never,
            };
            tree.insert(&entry.path, node, overwrite)
                .map_err(|source| InstallError::Tree { package: name.clone(), source: Box::new(source) })?;
            files.push((entry.path.clone(), entry.kind.clone(), entry.sha1));
        }
        run_scripts(tree, store, &name, &scripts, &[".post-install", ".trigger"], warnings)?;
        self.installed.push(InstalledPackage { info: control.info, q1: control.q1, files });
        Ok(())
    }

    /// Checks hardlinks across packages, adds busybox's applet links; what was installed and
    /// the warnings.
    pub fn finish(mut self) -> Result<(Vec<InstalledPackage>, Vec<String>)> {
        self.tree
            .check_hardlinks()
            .map_err(|source| InstallError::Tree { package: "(all)".into(), source: Box::new(source) })?;
        busybox_links(self.tree, self.store, &mut self.warnings)?;
        Ok((self.installed, self.warnings))
    }
}

/// A cached file that fails a check it passed on its way into the cache has changed since:
/// when its bytes no longer match the pin, that is the error (and the entry is removed).
fn corrupt_or(e: crate::apk::Error, pkg: &PackageFile) -> InstallError {
    match std::fs::File::open(&pkg.path).and_then(crate::fsutil::sha256_of) {
        Ok((actual, _)) if actual != pkg.sha256 => cache_corrupt(pkg, actual),
        _ => e.into(),
    }
}

fn cache_corrupt(pkg: &PackageFile, actual: String) -> InstallError {
    let _ = std::fs::remove_file(&pkg.path);
    InstallError::CacheCorrupt { path: pkg.path.display().to_string(), expected: pkg.sha256.clone(), actual }
}

/// Header owner names win over numbers when the guest's passwd/group know them, as apk
/// resolves them against the target root.
fn owner_ids(tree: &Tree, store: &ContentStore, entry: &DataEntry) -> (u32, u32) {
    let lookup = |file: &str, name: &Option<String>, fallback: u32| -> u32 {
        let Some(name) = name else { return fallback };
        if name == "root" {
            return 0;
        }
        read_text(tree, store, file)
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok()).flatten()
                })
            })
            .unwrap_or(fallback)
    };
    (lookup("etc/passwd", &entry.uname, entry.uid), lookup("etc/group", &entry.gname, entry.gid))
}

pub(crate) fn read_text(tree: &Tree, store: &ContentStore, path: &str) -> Option<String> {
    match tree.get(path)?.kind {
        NodeKind::File(blob) => store.read_all(blob).ok().map(|b| String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

pub(crate) fn write_text(
    tree: &mut Tree,
    store: &mut ContentStore,
    path: &str,
    text: &str,
    mode: u32,
    mtime: u64,
) -> Result<()> {
    let blob = store.add_bytes(text.as_bytes())?;
    let (uid, gid, mode, mtime) = match tree.get(path) {
        Some(n) => (n.uid, n.gid, n.mode, n.mtime),
        None => (0, 0, mode, mtime),
    };
    let node = Node { kind: NodeKind::File(blob), mode, uid, gid, mtime, xattrs: vec![], owner: "hyve".into() };
    tree.insert(path, node, Overwrite::Allowed)
        .map_err(|source| InstallError::Tree { package: "hyve".into(), source: Box::new(source) })
}

/// Lines scripts commonly carry that need no reproduction.
fn is_inert(line: &str) -> bool {
    line.is_empty()
        || line.starts_with('#')
        || matches!(line, "exit 0" | "exit" | "set -e" | "true" | ":" | "fi" | "done" | "esac" | "then" | "else" | "do")
}

fn run_scripts(
    tree: &mut Tree,
    store: &mut ContentStore,
    pkg: &str,
    scripts: &[(String, Vec<u8>)],
    which: &[&str],
    warnings: &mut Vec<String>,
) -> Result<()> {
    for (name, content) in scripts.iter().filter(|(n, _)| which.contains(&n.as_str())) {
        let text = String::from_utf8_lossy(content);
        for raw in text.lines() {
            let line = raw.trim();
            // Drop `|| true`-style tails and redirections: they do not change what is created.
            let command = line.split(['|', ';', '&']).next().unwrap_or("");
            let words: Vec<&str> =
                command.split_whitespace().filter(|w| !w.contains('>') && !w.starts_with('<')).collect();
            match words.first().copied() {
                Some("addgroup") => add_group(tree, store, &words[1..])
                    .map_err(|detail| InstallError::Script { package: pkg.into(), detail })?,
                Some("adduser") => add_user(tree, store, &words[1..])
                    .map_err(|detail| InstallError::Script { package: pkg.into(), detail })?,
                // Reproduced once every package is in, from /etc/busybox-paths.d/busybox.
                Some(cmd) if cmd.ends_with("busybox") && words.contains(&"--install") => {}
                _ if is_inert(line) => {}
                _ => warnings.push(format!("{pkg} {name}: not reproduced (scripts never run on the host): {line}")),
            }
        }
    }
    Ok(())
}

/// Parses busybox-style options: flags in `flags` take no value; others take one.
fn parse_opts<'a>(args: &[&'a str], flags: &str) -> (BTreeMap<char, &'a str>, Vec<&'a str>) {
    let mut opts = BTreeMap::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if let Some(o) = a.strip_prefix('-').and_then(|o| o.chars().next()).filter(|_| a.len() == 2) {
            if flags.contains(o) {
                opts.insert(o, "");
            } else if i + 1 < args.len() {
                opts.insert(o, args[i + 1]);
                i += 1;
            }
        } else {
            rest.push(a);
        }
        i += 1;
    }
    (opts, rest)
}

/// Lowest free id >= `from` among the third fields of `text`.
fn free_id(text: &str, from: u32) -> u32 {
    let used: BTreeSet<u32> = text.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).collect();
    (from..).find(|i| !used.contains(i)).expect("ids left")
}

fn add_group(tree: &mut Tree, store: &mut ContentStore, args: &[&str]) -> std::result::Result<(), String> {
    let (opts, rest) = parse_opts(args, "S");
    let mut group = read_text(tree, store, "etc/group").unwrap_or_default();
    match rest.as_slice() {
        [name] => {
            if group.lines().any(|l| l.split(':').next() == Some(name)) {
                return Ok(());
            }
            let gid = match opts.get(&'g') {
                Some(g) => g.parse::<u32>().map_err(|_| format!("addgroup -g {g}: not a number"))?,
                None => free_id(&group, if opts.contains_key(&'S') { 100 } else { 1000 }),
            };
            group.push_str(&format!("{name}:x:{gid}:\n"));
        }
        [user, name] => {
            // Add an existing user to a group.
            let mut out = String::new();
            for l in group.lines() {
                let mut f: Vec<String> = l.split(':').map(str::to_string).collect();
                if f.len() == 4 && f[0] == *name && !f[3].split(',').any(|m| m == *user) {
                    f[3] = if f[3].is_empty() { user.to_string() } else { format!("{},{user}", f[3]) };
                }
                out.push_str(&f.join(":"));
                out.push('\n');
            }
            group = out;
        }
        _ => return Err(format!("cannot reproduce `addgroup {}`", args.join(" "))),
    }
    write_text(tree, store, "etc/group", &group, 0o644, 0).map_err(|e| e.to_string())
}

fn add_user(tree: &mut Tree, store: &mut ContentStore, args: &[&str]) -> std::result::Result<(), String> {
    let (opts, rest) = parse_opts(args, "SDH");
    let [name] = rest.as_slice() else { return Err(format!("cannot reproduce `adduser {}`", args.join(" "))) };
    let mut passwd = read_text(tree, store, "etc/passwd").unwrap_or_default();
    if passwd.lines().any(|l| l.split(':').next() == Some(name)) {
        return Ok(());
    }
    let system = opts.contains_key(&'S');
    let uid = match opts.get(&'u') {
        Some(u) => u.parse::<u32>().map_err(|_| format!("adduser -u {u}: not a number"))?,
        None => free_id(&passwd, if system { 100 } else { 1000 }),
    };
    let group_text = read_text(tree, store, "etc/group").unwrap_or_default();
    let gid_of = |g: &str| {
        group_text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[0] == g).then(|| f[2].parse::<u32>().ok()).flatten()
        })
    };
    let gid = match opts.get(&'G') {
        Some(g) => gid_of(g).ok_or_else(|| format!("adduser -G {g}: no such group"))?,
        // busybox: a system user without -G gets group nogroup; others get a group of their own.
        None if system => gid_of("nogroup").unwrap_or(65533),
        None => {
            add_group(tree, store, &["-g", &uid.to_string(), name])?;
            uid
        }
    };
    let home = opts.get(&'h').copied().unwrap_or(if system { "/dev/null" } else { "/home" });
    let home = if opts.contains_key(&'h') || system { home.to_string() } else { format!("/home/{name}") };
    let shell = opts.get(&'s').copied().unwrap_or(if system { "/sbin/nologin" } else { "/bin/sh" });
    let gecos = opts.get(&'g').copied().unwrap_or("Linux User,,,");
    passwd.push_str(&format!("{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n"));
    write_text(tree, store, "etc/passwd", &passwd, 0o644, 0).map_err(|e| e.to_string())?;
    if let Some(mut shadow) = read_text(tree, store, "etc/shadow") {
        shadow.push_str(&format!("{name}:!::0:::::\n"));
        write_text(tree, store, "etc/shadow", &shadow, 0o640, 0).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// busybox's post-install runs `busybox --install -s`, which links every applet to
/// `/bin/busybox` unless something else is there; the paths are listed in
/// `/etc/busybox-paths.d/busybox`.
fn busybox_links(tree: &mut Tree, store: &ContentStore, warnings: &mut Vec<String>) -> Result<()> {
    let mtime = tree.get("etc/busybox-paths.d/busybox").map_or(0, |n| n.mtime);
    let Some(list) = read_text(tree, store, "etc/busybox-paths.d/busybox") else {
        if tree.get("bin/busybox").is_some() {
            warnings.push("busybox: no /etc/busybox-paths.d/busybox, so no applet links were created".into());
        }
        return Ok(());
    };
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let path = line.trim_start_matches('/');
        if path.is_empty() || tree.get(path).is_some() {
            continue;
        }
        let node = Node {
            kind: NodeKind::Symlink("/bin/busybox".into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: vec![],
            owner: "busybox".into(),
        };
        tree.insert(path, node, Overwrite::Never)
            .map_err(|source| InstallError::Tree { package: "busybox".into(), source: Box::new(source) })?;
    }
    Ok(())
}

/// `/lib/apk/db/installed`, so `apk` inside the guest knows what is there.
pub fn installed_db(packages: &[InstalledPackage]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for p in packages {
        let i = &p.info;
        let list = Dep::format_list;
        out.push_str(&format!(
            "C:{}\nP:{}\nV:{}\nA:{}\nS:0\nI:{}\nT:{}\nU:{}\nL:{}\no:{}\n",
            p.q1, i.name, i.version, i.arch, i.installed_size, i.description, i.url, i.license, i.origin
        ));
        if !i.maintainer.is_empty() {
            out.push_str(&format!("m:{}\n", i.maintainer));
        }
        out.push_str(&format!("t:{}\n", i.build_date));
        if !i.commit.is_empty() {
            out.push_str(&format!("c:{}\n", i.commit));
        }
        for (tag, deps) in [("D", &i.depends), ("p", &i.provides), ("i", &i.install_if), ("r", &i.replaces)] {
            if !deps.is_empty() {
                out.push_str(&format!("{tag}:{}\n", list(deps)));
            }
        }
        let mut dir = None::<String>;
        for (path, kind, sha1) in &p.files {
            if *kind == EntryKind::Dir {
                out.push_str(&format!("F:{path}\n"));
                dir = Some(path.clone());
                continue;
            }
            let (parent, base) = path.rsplit_once('/').unwrap_or(("", path));
            if dir.as_deref() != Some(parent) {
                out.push_str(&format!("F:{parent}\n"));
                dir = Some(parent.to_string());
            }
            out.push_str(&format!("R:{base}\n"));
            if let Some(d) = sha1 {
                out.push_str(&format!("Z:Q1{}\n", base64::engine::general_purpose::STANDARD.encode(d)));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_text(tree: &Tree, store: &ContentStore, p: &str) -> String {
        read_text(tree, store, p).unwrap()
    }

    #[test]
    fn busybox_applets_become_links_unless_taken() {
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        write_text(&mut tree, &mut store, "bin/busybox", "elf", 0o755, 0).unwrap();
        write_text(&mut tree, &mut store, "bin/ls", "real ls", 0o755, 0).unwrap();
        write_text(
            &mut tree,
            &mut store,
            "etc/busybox-paths.d/busybox",
            "/bin/ls\n/bin/sh\n/sbin/modprobe\n",
            0o644,
            0,
        )
        .unwrap();
        let mut warnings = Vec::new();
        busybox_links(&mut tree, &store, &mut warnings).unwrap();
        assert_eq!(tree.get("bin/sh").unwrap().kind, NodeKind::Symlink("/bin/busybox".into()));
        assert_eq!(tree.get("sbin/modprobe").unwrap().kind, NodeKind::Symlink("/bin/busybox".into()));
        assert!(matches!(tree.get("bin/ls").unwrap().kind, NodeKind::File(_)));
        assert!(warnings.is_empty());
    }

    #[test]
    fn users_and_groups_from_docker_style_scripts() {
        let mut store = ContentStore::new().unwrap();
        let mut tree = Tree::new();
        write_text(&mut tree, &mut store, "etc/group", "root:x:0:root\nnogroup:x:65533:\n", 0o644, 0).unwrap();
        write_text(&mut tree, &mut store, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644, 0).unwrap();
        write_text(&mut tree, &mut store, "etc/shadow", "root:*::0:::::\n", 0o640, 0).unwrap();
        let script = b"#!/bin/sh\naddgroup -S docker 2>/dev/null\nadduser -S -D -H -h /var/lib/dockremap -s /sbin/nologin -G docker dockremap 2>/dev/null\naddgroup dockremap docker\nchown root:docker /run/docker.sock\nexit 0\n";
        let mut warnings = Vec::new();
        run_scripts(
            &mut tree,
            &mut store,
            "docker",
            &[(".pre-install".into(), script.to_vec())],
            &[".pre-install"],
            &mut warnings,
        )
        .unwrap();
        assert_eq!(file_text(&tree, &store, "etc/group"), "root:x:0:root\nnogroup:x:65533:\ndocker:x:100:dockremap\n");
        assert_eq!(
            file_text(&tree, &store, "etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndockremap:x:100:100:Linux User,,,:/var/lib/dockremap:/sbin/nologin\n"
        );
        assert!(file_text(&tree, &store, "etc/shadow").contains("dockremap:!:"));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("docker .pre-install") && warnings[0].contains("chown root:docker"),
            "{warnings:?}"
        );
    }
}
