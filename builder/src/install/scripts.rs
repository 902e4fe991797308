//! What install scripts do that a guest needs, reproduced without running them: `addgroup`,
//! `adduser` and busybox's applet links; every other line is a warning.

use std::collections::{BTreeMap, BTreeSet};

use super::{read_text, write_text, InstallError, Result};
use crate::tree::{ContentStore, Node, NodeKind, Overwrite, Tree};

/// Lines scripts commonly carry that need no reproduction.
fn is_inert(line: &str) -> bool {
    line.is_empty()
        || line.starts_with('#')
        || matches!(line, "exit 0" | "exit" | "set -e" | "true" | ":" | "fi" | "done" | "esac" | "then" | "else" | "do")
}

pub(super) fn run_scripts(
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
pub(super) fn busybox_links(tree: &mut Tree, store: &ContentStore, warnings: &mut Vec<String>) -> Result<()> {
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
