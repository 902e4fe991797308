//! Builds the stock profiles (`profiles/*.toml`) and overlays (`overlay/`) into the binary, so
//! an installed `hyve` needs no checkout. Written by hand rather than with `include_dir`:
//! the overlays' executable bits matter (the guest's scripts) and that crate keeps no modes.
//! Modes are recorded the way git records them (0755 if the owner may execute, else 0644),
//! so the checkout's umask does not reach the binary.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            walk(&p, out);
        } else if meta.is_file() {
            out.push(p);
        } else {
            panic!("{}: only files and directories can be built into hyve", p.display());
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut files = Vec::new();
    walk(&root.join("overlay"), &mut files);
    walk(&root.join("profiles"), &mut files);
    let mut code = String::from("/// (path, mode, contents) of every built-in file, sorted by path.\npub static FILES: &[(&str, u32, &[u8])] = &[\n");
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_str().expect("UTF-8 path");
        let keep = match rel.split_once('/') {
            Some(("profiles", name)) => name.ends_with(".toml"),
            _ => !rel.ends_with("README.md"),
        };
        if !keep {
            continue;
        }
        println!("cargo:rerun-if-changed={}", f.display());
        let mode = if std::fs::metadata(f).unwrap().permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 };
        writeln!(code, "    ({rel:?}, 0o{mode:o}, include_bytes!({:?})),", f.display().to_string()).unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("builtin.rs");
    std::fs::write(out, code).unwrap();
}
