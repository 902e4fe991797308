//! Test helpers: a loopback HTTP server with fault injection, and signed Alpine-layout
//! repositories generated with hyve's own writer.
#![allow(dead_code)] // each test binary uses a different part

pub mod guest;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyve::apk::archive::{DataEntry, EntryKind};
use hyve::apk::index::{write_index, IndexRecord};
use hyve::apk::package::{write_package, NewEntry};
use hyve::apk::pkginfo::PkgInfo;
use hyve::apk::{Dep, SigAlgo, SigningKey, Version};

/// What the server does to requests for one path, `times` times (then serves normally).
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Status(u16),
    /// Close the connection without answering.
    Reset,
    /// Announce the full length, send half, close.
    Truncate,
    /// Send headers, then nothing for this long.
    Stall(Duration),
}

#[derive(Default)]
struct State {
    faults: HashMap<String, (Fault, usize)>,
    requests: HashMap<String, usize>,
    not_modified: usize,
}

/// Serves files under `root` on 127.0.0.1 with ETags; faults on demand.
pub struct Server {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (root, st) = (root.to_path_buf(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (root, st) = (root.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &root, &st);
                });
            }
        });
        Server { url, state }
    }

    pub fn fault(&self, path: &str, fault: Fault, times: usize) {
        self.state.lock().unwrap().faults.insert(path.to_string(), (fault, times));
    }

    pub fn requests(&self, path: &str) -> usize {
        self.state.lock().unwrap().requests.get(path).copied().unwrap_or(0)
    }

    pub fn total_requests_matching(&self, suffix: &str) -> usize {
        self.state.lock().unwrap().requests.iter().filter(|(p, _)| p.ends_with(suffix)).map(|(_, n)| n).sum()
    }

    pub fn not_modified(&self) -> usize {
        self.state.lock().unwrap().not_modified
    }
}

fn handle(mut conn: TcpStream, root: &Path, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(v.trim().to_string());
            }
        }
    }
    let fault = {
        let mut st = state.lock().unwrap();
        *st.requests.entry(path.clone()).or_default() += 1;
        match st.faults.get_mut(&path) {
            Some((f, n)) if *n > 0 => {
                *n -= 1;
                Some(*f)
            }
            _ => None,
        }
    };
    let file = root.join(path.trim_start_matches('/'));
    let body = std::fs::read(&file).ok();
    match (fault, body) {
        (Some(Fault::Reset), _) => Ok(()),
        (Some(Fault::Status(code)), _) => {
            write!(conn, "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        (_, None) => write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        (fault, Some(body)) => {
            let etag = format!("\"{}\"", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)));
            if if_none_match.as_deref() == Some(etag.as_str()) && fault.is_none() {
                state.lock().unwrap().not_modified += 1;
                return write!(conn, "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n");
            }
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            match fault {
                Some(Fault::Truncate) => conn.write_all(&body[..body.len() / 2]),
                Some(Fault::Stall(d)) => {
                    conn.flush()?;
                    std::thread::sleep(d);
                    conn.write_all(&body)
                }
                _ => conn.write_all(&body),
            }
        }
    }
}

/// A package to generate.
pub struct Pkg {
    pub name: &'static str,
    pub version: &'static str,
    pub depends: &'static str,
    pub provides: &'static str,
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// (path, mode) overrides for files.
    pub modes: Vec<(&'static str, u32)>,
    /// (path, target) symlinks and hardlinks.
    pub symlinks: Vec<(&'static str, &'static str)>,
    pub hardlinks: Vec<(&'static str, &'static str)>,
    pub scripts: Vec<(&'static str, Vec<u8>)>,
    /// (path, uid, gid, group name)
    pub owners: Vec<(&'static str, u32, u32, &'static str)>,
}

impl Pkg {
    pub fn new(name: &'static str, version: &'static str) -> Pkg {
        Pkg {
            name,
            version,
            depends: "",
            provides: "",
            files: vec![(
                Box::leak(format!("usr/share/{name}/README").into_boxed_str()),
                format!("{name} {version}\n").into_bytes(),
            )],
            modes: vec![],
            symlinks: vec![],
            hardlinks: vec![],
            scripts: vec![],
            owners: vec![],
        }
    }
    pub fn depends(mut self, d: &'static str) -> Pkg {
        self.depends = d;
        self
    }
    pub fn provides(mut self, p: &'static str) -> Pkg {
        self.provides = p;
        self
    }
    pub fn file(mut self, path: &'static str, content: &[u8]) -> Pkg {
        self.files.push((path, content.to_vec()));
        self
    }
    pub fn mode(mut self, path: &'static str, mode: u32) -> Pkg {
        self.modes.push((path, mode));
        self
    }
    pub fn symlink(mut self, path: &'static str, target: &'static str) -> Pkg {
        self.symlinks.push((path, target));
        self
    }
    pub fn hardlink(mut self, path: &'static str, target: &'static str) -> Pkg {
        self.hardlinks.push((path, target));
        self
    }
    pub fn script(mut self, name: &'static str, content: &[u8]) -> Pkg {
        self.scripts.push((name, content.to_vec()));
        self
    }
    pub fn owner(mut self, path: &'static str, uid: u32, gid: u32, group: &'static str) -> Pkg {
        self.owners.push((path, uid, gid, group));
        self
    }
}

/// Builds the .apk bytes for `pkg`, letting `tamper` change entries before writing.
pub fn build_package(pkg: &Pkg, arch: &str, key: &SigningKey, tamper: impl Fn(&mut Vec<NewEntry>)) -> Vec<u8> {
    let mut info = PkgInfo::new(pkg.name, Version::parse(pkg.version).unwrap(), arch);
    info.build_date = 1_700_000_000;
    info.description = format!("test package {}", pkg.name);
    info.license = "MIT".into();
    info.depends = Dep::parse_list(pkg.depends).unwrap();
    info.provides = Dep::parse_list(pkg.provides).unwrap();
    let dir = |path: &str| DataEntry::owned_by_root(path, EntryKind::Dir, 0o755, 1_700_000_000);
    enum What {
        Dir,
        File(Vec<u8>),
        Symlink(&'static str),
        Hardlink(&'static str),
    }
    let mut paths: Vec<(String, What)> = Vec::new();
    let links = pkg
        .symlinks
        .iter()
        .map(|(p, t)| (*p, What::Symlink(t)))
        .chain(pkg.hardlinks.iter().map(|(p, t)| (*p, What::Hardlink(t))));
    for (path, what) in pkg.files.iter().map(|(p, c)| (*p, What::File(c.clone()))).chain(links) {
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            parent = if parent.is_empty() { part.to_string() } else { format!("{parent}/{part}") };
            if !paths.iter().any(|(p, _)| p == &parent) {
                paths.push((parent.clone(), What::Dir));
            }
        }
        paths.push((path.to_string(), what));
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries: Vec<NewEntry> = paths
        .into_iter()
        .map(|(p, w)| {
            let mode = pkg.modes.iter().find(|(m, _)| *m == p).map(|(_, m)| *m);
            let mut e = match w {
                What::Dir => NewEntry::without_content(dir(&p)),
                What::File(content) => NewEntry::from_bytes(
                    DataEntry { kind: EntryKind::File, mode: mode.unwrap_or(0o644), ..dir(&p) },
                    content,
                ),
                What::Symlink(t) => NewEntry::without_content(DataEntry {
                    kind: EntryKind::Symlink { target: t.into() },
                    mode: 0o777,
                    ..dir(&p)
                }),
                What::Hardlink(t) => NewEntry::without_content(DataEntry {
                    kind: EntryKind::Hardlink { target: t.into() },
                    mode: mode.unwrap_or(0o644),
                    ..dir(&p)
                }),
            };
            if let Some((_, uid, gid, group)) = pkg.owners.iter().find(|(o, ..)| *o == p) {
                e.entry.uid = *uid;
                e.entry.gid = *gid;
                e.entry.gname = Some(group.to_string());
            }
            e
        })
        .collect();
    tamper(&mut entries);
    let mut out = Vec::new();
    let scripts: Vec<(String, Vec<u8>)> = pkg.scripts.iter().map(|(n, c)| (n.to_string(), c.clone())).collect();
    write_package(&mut out, &mut info, &scripts, &entries, key, SigAlgo::RsaSha256).unwrap();
    out
}

/// A signed repository on disk: `<root>/<branch>/<repo>/<arch>/`.
pub struct TestRepo {
    pub root: PathBuf,
    pub key: SigningKey,
    pub key_path: PathBuf,
    pub pub_path: PathBuf,
}

impl TestRepo {
    pub fn new(dir: &Path) -> TestRepo {
        let (key_path, pub_path) = SigningKey::keygen(dir, "test-repo", 2048).unwrap();
        let key = SigningKey::from_file(&key_path).unwrap();
        let root = dir.join("mirror");
        std::fs::create_dir_all(&root).unwrap();
        TestRepo { root, key, key_path, pub_path }
    }

    pub fn repo_dir(&self, branch: &str, repo: &str, arch: &str) -> PathBuf {
        self.root.join(branch).join(repo).join(arch)
    }

    /// Writes the packages and a signed index over exactly them.
    pub fn publish(&self, branch: &str, repo: &str, arch: &str, pkgs: &[Pkg]) {
        let dir = self.repo_dir(branch, repo, arch);
        std::fs::create_dir_all(&dir).unwrap();
        let mut records = Vec::new();
        for p in pkgs {
            let path = dir.join(format!("{}-{}.apk", p.name, p.version));
            std::fs::write(&path, build_package(p, arch, &self.key, |_| {})).unwrap();
            records.push(IndexRecord::from_file(&path).unwrap());
        }
        self.write_index(branch, repo, arch, &records);
    }

    pub fn write_index(&self, branch: &str, repo: &str, arch: &str, records: &[IndexRecord]) {
        let bytes = write_index(records, "test", &self.key, SigAlgo::RsaSha256, 1_700_000_000).unwrap();
        std::fs::write(self.repo_dir(branch, repo, arch).join("APKINDEX.tar.gz"), bytes).unwrap();
    }
}

/// Runs the hyve binary with a clean environment for reproducible behaviour.
pub fn hyve(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hyve"));
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH").env_remove("HYVE_MIRROR").env_remove("HYVE_CACHE_DIR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run hyve")
}

/// `cmd` as user `nobody` when the tests run as root (root may write a file its mode forbids),
/// where `nobody` can run the hyve binary; as the current user otherwise.
pub fn unprivileged(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return cmd;
    }
    let runs = std::process::Command::new(env!("CARGO_BIN_EXE_hyve"))
        .arg("--version")
        .uid(65534)
        .gid(65534)
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        cmd.uid(65534).gid(65534);
    } else {
        eprintln!("note: user nobody cannot run {}; running as root", env!("CARGO_BIN_EXE_hyve"));
    }
    cmd
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}
