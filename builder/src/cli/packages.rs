//! `hyve plan`, `hyve lock`, `hyve fetch`, `hyve vendor`: from a profile to a verified,
//! pinned package set in the cache.

use std::path::PathBuf;

use anyhow::Context;
use hyve::apk::index::{write_index, IndexRecord};
use hyve::apk::{Arch, SigningKey};
use hyve::fetch::{FetchOptions, Fetcher, Mirror, Reporter};
use hyve::profile::{self, DEFAULT_MIRROR};
use hyve::session::{preferences, vendor_files, LockPolicy, Session};
use serde_json::json;

use super::progress::Progress;
use super::{KeyArgs, Outcome, SigType};

/// Where profiles are found by name: ./profiles, the user's profile directory,
/// $HYVE_PROFILE_PATH, then the built-in ones (written out under `cache_dir` on first use).
pub fn lookup(cache_dir: &std::path::Path) -> anyhow::Result<profile::Lookup> {
    let mut dirs = vec![PathBuf::from("profiles")];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    dirs.extend(config.map(|c| c.join("hyve/profiles")));
    if let Some(extra) = std::env::var_os("HYVE_PROFILE_PATH") {
        dirs.extend(std::env::split_paths(&extra));
    }
    let builtin = hyve::builtin::materialize(cache_dir)
        .with_context(|| format!("writing hyve's built-in profiles under {}", cache_dir.display()))?;
    Ok(profile::Lookup { dirs, builtin: Some(builtin) })
}

/// The options every profile-driven command shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ProfileArgs {
    /// Profile name or path to a .toml. A name is looked up in ./profiles, the user's
    /// profiles ($XDG_CONFIG_HOME/hyve/profiles), $HYVE_PROFILE_PATH, then hyve's built-in
    /// profiles (`hyve profiles` lists them)
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: String,
    /// Target architecture (default: the host's, or the profile's first)
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Alpine mirror: https://..., file://DIR or a directory
    #[arg(long, env = "HYVE_MIRROR", default_value = DEFAULT_MIRROR)]
    pub mirror: String,
    /// Alpine branch, e.g. v3.24 (default: the profile's)
    #[arg(long)]
    pub branch: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Lock file (default: the profile's path with .lock; for a built-in profile NAME.lock in
    /// the working directory)
    #[arg(long, value_name = "FILE")]
    pub lockfile: Option<PathBuf>,
    /// Fail if the lock is missing or stale instead of writing it
    #[arg(long)]
    pub locked: bool,
    /// Use only the cache; never touch the network
    #[arg(long)]
    pub offline: bool,
    /// Cache directory (default: $HYVE_CACHE_DIR, else $XDG_CACHE_HOME/hyve)
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Parallel downloads (the largest package first), each package unpacked by the worker
    /// that fetched it; also the compression threads and the packages unpacked at once, at
    /// most one per core
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

impl ProfileArgs {
    pub fn session<'r>(&self, reporter: &'r Progress) -> anyhow::Result<Session<'r>> {
        let cache_dir = self.cache_dir.clone().unwrap_or_else(FetchOptions::default_cache_dir);
        let lookup = lookup(&cache_dir)?;
        let path = profile::locate(&self.profile, &lookup)?;
        let profile = profile::load(&path, &lookup)?;
        // A profile file keeps its lock beside it; a built-in one where the user works, as
        // cargo keeps Cargo.lock beside the manifest.
        let lockfile = self.lockfile.clone().unwrap_or_else(|| {
            if lookup.is_builtin(&path) {
                PathBuf::from(format!("{}.lock", profile.name))
            } else {
                path.with_extension("lock")
            }
        });
        reporter.note(&format!("profile {} ({}); lock {}", profile.name, lookup.describe(&path), lockfile.display()));
        let mut opts = FetchOptions::new(cache_dir);
        opts.offline = self.offline;
        opts.jobs = self.jobs.max(1);
        let fetcher = Fetcher::new(opts, reporter)?;
        let mirror = Mirror::parse(&self.mirror)?;
        Ok(Session::new(profile, self.branch.clone(), mirror, self.keys.keys.clone(), lockfile, fetcher))
    }

    /// `--arch`, else the host's if the profile builds it, else the profile's first.
    pub fn one_arch(&self, session: &Session) -> anyhow::Result<Arch> {
        let arches = &session.profile.arches;
        let arch = self.arch.or_else(|| Arch::host().filter(|h| arches.contains(h))).unwrap_or(arches[0]);
        anyhow::ensure!(
            arches.contains(&arch),
            "profile {} does not build {arch} (it builds {:?})",
            session.profile.name,
            arches
        );
        Ok(arch)
    }

    /// `--arch`, else every arch of the profile.
    pub fn all_arches(&self, session: &Session) -> anyhow::Result<Vec<Arch>> {
        match self.arch {
            Some(_) => Ok(vec![self.one_arch(session)?]),
            None => Ok(session.profile.arches.clone()),
        }
    }

    /// Lock policy and threads from the flags; the time source is the caller's.
    pub fn build_options(&self, source_date_epoch: Option<u64>) -> hyve::build::BuildOptions {
        hyve::build::BuildOptions {
            policy: self.policy(),
            workers: compression_workers(self.jobs),
            source_date_epoch,
            cancel: on_interrupt(),
            block_cache: true,
        }
    }

    fn policy(&self) -> LockPolicy {
        if self.locked {
            LockPolicy::Locked
        } else {
            LockPolicy::Auto
        }
    }
}

#[derive(clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub(super) common: ProfileArgs,
}

#[derive(clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub(super) common: ProfileArgs,
    /// Re-resolve: every package (no names), or just the named ones, keeping the rest
    #[arg(long, num_args = 0.., value_name = "PKG")]
    update: Option<Vec<String>>,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub(super) common: ProfileArgs,
}

#[derive(clap::Args)]
pub struct VendorArgs {
    #[command(flatten)]
    pub(super) common: ProfileArgs,
    /// Directory to write the repository into (Alpine layout)
    dir: PathBuf,
    /// Private key to sign the vendored indexes with
    #[arg(long, value_name = "KEY")]
    sign: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    sig_type: SigType,
}

pub fn plan(args: PlanArgs) -> Outcome {
    let progress = Progress::new(args.common.json);
    let session = args.common.session(&progress)?;
    let arch = args.common.one_arch(&session)?;
    let repos = session.repos(arch)?;
    let resolution = session.resolve(arch, &repos, &Default::default())?;
    progress.finish();
    if args.common.json {
        let doc = json!({
            "profile": session.profile.name,
            "arch": arch,
            "branch": session.branch,
            "packages": resolution.packages.iter().map(|c| json!({
                "name": c.record.name,
                "version": c.record.version,
                "repository": c.repository,
                "checksum": c.record.checksum,
                "size": c.record.size,
                "required_by": c.required_by,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "profile {} ({arch}, {}): {} packages",
            session.profile.name,
            session.branch,
            resolution.packages.len()
        );
        for c in &resolution.packages {
            println!(
                "  {:<32} {:<24} {:<10} {:>10}",
                c.record.name,
                c.record.version.as_str(),
                c.repository,
                c.record.size
            );
        }
        let total: u64 = resolution.packages.iter().map(|c| c.record.size).sum();
        println!(
            "  total download {total} bytes, installed {} bytes",
            resolution.packages.iter().map(|c| c.record.installed_size).sum::<u64>()
        );
    }
    Ok(true)
}

pub fn lock(args: LockArgs) -> Outcome {
    let progress = Progress::new(args.common.json);
    let session = args.common.session(&progress)?;
    let mut lock = session.read_lock()?;
    let mut report = Vec::new();
    for arch in args.common.all_arches(&session)? {
        let existing = lock.arch.get(arch.as_str());
        let fresh = lock.state(arch.as_str(), &session.profile.inputs_hash()) == hyve::lock::LockState::Fresh;
        let prefer = match (&args.update, existing) {
            (None, Some(_)) if fresh => {
                report.push(json!({"arch": arch, "status": "up to date"}));
                continue;
            }
            (None, Some(e)) => preferences(e),
            (Some(names), Some(e)) if !names.is_empty() => {
                let mut p = preferences(e);
                for n in names {
                    anyhow::ensure!(p.remove(n).is_some(), "--update {n}: {n} is not in the {arch} lock");
                }
                p
            }
            _ => Default::default(),
        };
        anyhow::ensure!(!args.common.locked, "--locked: refusing to change {}", session.lockfile.display());
        let section = session.lock_arch(arch, &prefer)?;
        let changed = diff(existing, &section);
        report.push(json!({"arch": arch, "status": "locked", "packages": section.packages.len(), "changes": changed}));
        lock.arch.insert(arch.as_str().to_string(), section);
    }
    session.write_lock(&lock)?;
    progress.finish();
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&json!({"lockfile": session.lockfile, "arches": report}))?);
    } else {
        for r in &report {
            println!("{}: {}", r["arch"].as_str().unwrap_or_default(), r["status"].as_str().unwrap_or_default());
            for c in r["changes"].as_array().into_iter().flatten() {
                println!("  {}", c.as_str().unwrap_or_default());
            }
        }
        println!("wrote {}", session.lockfile.display());
    }
    Ok(true)
}

/// Human lines for what changed between two lock sections.
fn diff(old: Option<&hyve::lock::ArchLock>, new: &hyve::lock::ArchLock) -> Vec<String> {
    let before: std::collections::BTreeMap<&str, &str> =
        old.map(|o| o.packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect()).unwrap_or_default();
    let after: std::collections::BTreeMap<&str, &str> =
        new.packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
    let mut out = Vec::new();
    for (n, v) in &after {
        match before.get(n) {
            None => out.push(format!("+ {n} {v}")),
            Some(old) if old != v => out.push(format!("~ {n} {old} -> {v}")),
            _ => {}
        }
    }
    for (n, v) in &before {
        if !after.contains_key(n) {
            out.push(format!("- {n} {v}"));
        }
    }
    out
}

pub fn fetch(args: FetchArgs) -> Outcome {
    let progress = Progress::new(args.common.json);
    let session = args.common.session(&progress)?;
    let mut report = Vec::new();
    for arch in args.common.all_arches(&session)? {
        let (section, created) = session.ensure_lock(arch, args.common.policy())?;
        let cached = session.fetch_locked(arch, &section)?;
        let fetched = cached.iter().filter(|c| !c.from_cache).count();
        report.push(json!({"arch": arch, "packages": cached.len(), "downloaded": fetched, "lock_written": created}));
    }
    progress.finish();
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&json!({"cache": session.fetcher.cache_dir(), "arches": report}))?);
    } else {
        for r in &report {
            println!(
                "{}: {} packages in the cache ({} downloaded)",
                r["arch"].as_str().unwrap_or_default(),
                r["packages"],
                r["downloaded"]
            );
        }
    }
    Ok(true)
}

pub fn vendor(args: VendorArgs) -> Outcome {
    let progress = Progress::new(args.common.json);
    let session = args.common.session(&progress)?;
    let key = SigningKey::from_file(&args.sign)?;
    let mut written = Vec::new();
    for arch in args.common.all_arches(&session)? {
        let (section, _) = session.ensure_lock(arch, args.common.policy())?;
        let cached = session.fetch_locked(arch, &section)?;
        for (repo_dir, files) in vendor_files(&args.dir, &section.branch, arch, &section, &cached)? {
            let records = files.iter().map(|f| IndexRecord::from_file(f)).collect::<Result<Vec<_>, _>>()?;
            let mtime = records.iter().filter_map(|r| r.build_time).max().unwrap_or(0);
            let description = format!("hyve vendor of {} ({})", session.profile.name, section.branch);
            let bytes = write_index(&records, &description, &key, args.sig_type.into(), mtime)?;
            let index = repo_dir.join("APKINDEX.tar.gz");
            hyve::fsutil::write_atomic(&index, &bytes, 0o644)
                .with_context(|| format!("writing {}", index.display()))?;
            written.push(json!({"arch": arch, "index": index, "packages": records.len()}));
        }
    }
    progress.finish();
    if args.common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"dir": args.dir, "key": key.key_name, "indexes": written}))?
        );
    } else {
        for w in &written {
            println!("{} ({} packages)", w["index"].as_str().unwrap_or_default(), w["packages"]);
        }
        println!("use it with: --mirror file://{} --key {}.pub", args.dir.display(), args.sign.display());
    }
    Ok(true)
}

/// zstd threads: `--jobs`, but never more than the cores. Each worker of zstd level 12 holds
/// about 55 MiB of match tables and buffers, and a thread without a core of its own only costs
/// memory (measured on `minimal`, 2 cores: 8 workers 588 MiB peak and 23.1 s, 2 workers
/// 207 MiB and 19.5 s). The output is the same for any count.
fn compression_workers(jobs: usize) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(jobs.clamp(1, cores.min(64))).unwrap_or(1)
}

/// A `Cancel` set by the first SIGINT or SIGTERM (the build then stops cleanly); a second
/// one ends the process at once.
fn on_interrupt() -> hyve::cancel::Cancel {
    let cancel = hyve::cancel::Cancel::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal: set = second.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, cancel.flag());
        let _ = signal_hook::flag::register(sig, cancel.flag());
    }
    cancel
}
