//! One run of `plan` / `lock` / `fetch` / `vendor` (and later `build`): the profile's signed
//! indexes, the resolution, the lock, and the verified package files in the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::apk::index::{read_verified_index, Index};
use crate::apk::sign::KeyError;
use crate::apk::{Arch, Dep, Keyring, Version, Q1};
use crate::fetch::{CachedPackage, FetchError, Fetcher, Mirror, PackageRequest};
use crate::lock::{ArchLock, LockError, LockFile, LockState, LockedPackage};
use crate::profile::Profile;
use crate::resolve::{resolve, Repo, Resolution, ResolveError};

/// Everything that can stop a session, each naming what failed and what to do.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Error {
    /// The profile's packages cannot be resolved.
    #[error("resolving profile {profile} for {arch}: {source}")]
    Resolve { profile: String, arch: Arch, source: ResolveError },
    /// `--locked` and no lock section.
    #[error(
        "{path} has no lock for {arch} and --locked forbids creating one; run `hyve lock --profile {profile}` first"
    )]
    LockMissing { path: String, arch: Arch, profile: String },
    /// `--locked` and the profile changed since locking.
    #[error("{path} is stale for {arch}: it was resolved from other profile inputs (locked {locked:.12}, profile now {current:.12}); run `hyve lock --profile {profile}` to update it")]
    LockStale { path: String, arch: Arch, profile: String, locked: String, current: String },
    /// The mirror has no such repository.
    #[error("{url}: the mirror has no {repo} repository for {arch} on branch {branch} (HTTP 404); check --mirror, --branch and the profile's repositories")]
    NoRepository { url: String, repo: String, arch: Arch, branch: String },
    /// A lock entry is unusable.
    #[error("{path}: {detail}; regenerate it with `hyve lock --update`")]
    BadLockEntry { path: String, detail: String },
    #[error(transparent)]
    #[serde(untagged)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    #[serde(untagged)]
    Apk(#[from] crate::apk::Error),
    #[error(transparent)]
    #[serde(untagged)]
    Key(#[from] KeyError),
    #[error(transparent)]
    #[serde(untagged)]
    Lock(#[from] LockError),
    /// Local filesystem trouble.
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A repository's verified index.
pub struct LoadedRepo {
    pub name: String,
    pub url: String,
    pub index: Index,
}

/// How to treat the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// Use it when fresh; create or refresh it (keeping locked versions where they fit).
    Auto,
    /// It must exist and be fresh (`--locked`).
    Locked,
}

pub struct Session<'r> {
    pub profile: Profile,
    /// The branch (`--branch` or the profile's).
    pub branch: String,
    pub mirror: Mirror,
    /// Public keys trusted besides Alpine's (`--key`).
    pub keys: Vec<PathBuf>,
    pub lockfile: PathBuf,
    pub fetcher: Fetcher<'r>,
}

impl<'r> Session<'r> {
    /// The profile with `--branch` applied (it is part of what a lock pins).
    pub fn new(
        mut profile: Profile,
        branch: Option<String>,
        mirror: Mirror,
        keys: Vec<PathBuf>,
        lockfile: PathBuf,
        fetcher: Fetcher<'r>,
    ) -> Self {
        if let Some(b) = branch {
            profile.branch = b;
        }
        Session { branch: profile.branch.clone(), profile, mirror, keys, lockfile, fetcher }
    }

    /// Alpine's keys for `arch` plus `--key` files.
    pub fn keyring(&self, arch: Arch) -> Result<Keyring> {
        Ok(Keyring::with_files(Some(arch), &self.keys)?)
    }

    /// Trust link 1 for every repository of the profile. A cached copy that fails
    /// verification is discarded and fetched again.
    pub fn repos(&self, arch: Arch) -> Result<Vec<LoadedRepo>> {
        let keyring = self.keyring(arch)?;
        let mut out = Vec::new();
        for name in &self.profile.repositories {
            let url = self.mirror.url(&self.branch, name, arch.as_str(), "APKINDEX.tar.gz");
            let fetched = match self.fetcher.index(&url, false) {
                Ok(f) => f,
                Err(FetchError::NotFound { url }) => {
                    let adb = self.mirror.url(&self.branch, name, arch.as_str(), "Packages.adb");
                    if self.fetcher.index(&adb, true).is_ok() {
                        return Err(crate::apk::Error::V3Unsupported { origin: adb, what: "repository" }.into());
                    }
                    return Err(Error::NoRepository { url, repo: name.clone(), arch, branch: self.branch.clone() });
                }
                Err(e) => return Err(e.into()),
            };
            let index = match read_verified_index(&fetched.bytes, &url, &keyring) {
                Ok(i) => i,
                Err(_) if fetched.from_cache => {
                    let again = self.fetcher.index(&url, true)?;
                    read_verified_index(&again.bytes, &url, &keyring)?
                }
                Err(e) => return Err(e.into()),
            };
            out.push(LoadedRepo { name: name.clone(), url, index });
        }
        Ok(out)
    }

    /// Resolves the profile's world for `arch`, preferring `prefer`'s versions.
    pub fn resolve(&self, arch: Arch, repos: &[LoadedRepo], prefer: &BTreeMap<String, Version>) -> Result<Resolution> {
        let world: Vec<Dep> = self
            .profile
            .world()
            .iter()
            .map(|p| Dep::parse(p).expect("validated when the profile was loaded"))
            .collect();
        let views: Vec<Repo> = repos.iter().map(|r| Repo { name: &r.name, records: &r.index.records }).collect();
        resolve(&world, &views, arch, prefer).map_err(|source| Error::Resolve {
            profile: self.profile.name.clone(),
            arch,
            source,
        })
    }

    /// Resolves, downloads and verifies every package, and returns the lock section.
    pub fn lock_arch(&self, arch: Arch, prefer: &BTreeMap<String, Version>) -> Result<ArchLock> {
        let repos = self.repos(arch)?;
        let resolution = self.resolve(arch, &repos, prefer)?;
        let reqs: Vec<PackageRequest> = resolution
            .packages
            .iter()
            .map(|c| PackageRequest {
                name: c.record.name.clone(),
                version: c.record.version.to_string(),
                url: self.mirror.url(&self.branch, &c.repository, arch.as_str(), &c.record.file_name()),
                q1: c.record.checksum,
                size: Some(c.record.size),
                sha256: None,
                datahash: None,
                installed_size: c.record.installed_size,
                rehash_cached: true,
            })
            .collect();
        let cached = self.fetcher.packages(&reqs)?;
        let packages = resolution
            .packages
            .iter()
            .zip(cached)
            .map(|(c, f)| LockedPackage {
                name: c.record.name.clone(),
                version: c.record.version.to_string(),
                repository: c.repository.clone(),
                sha256: f.sha256,
                size: f.size,
                checksum: c.record.checksum.to_string(),
                datahash: f.datahash,
                installed_size: c.record.installed_size,
            })
            .collect();
        Ok(ArchLock { inputs_hash: self.profile.inputs_hash(), branch: self.branch.clone(), packages })
    }

    pub fn read_lock(&self) -> Result<LockFile> {
        Ok(LockFile::read(&self.lockfile)?.unwrap_or_else(|| LockFile::new(&self.profile.name)))
    }

    pub fn write_lock(&self, lock: &LockFile) -> Result<()> {
        lock.write(&self.lockfile).map_err(|e| crate::fsutil::at(&self.lockfile)(e).into())
    }

    /// The lock section for `arch` under `policy`; `true` when it was (re)created and the
    /// lock file rewritten.
    pub fn ensure_lock(&self, arch: Arch, policy: LockPolicy) -> Result<(ArchLock, bool)> {
        let mut lock = self.read_lock()?;
        let path = self.lockfile.display().to_string();
        let profile = self.profile.name.clone();
        match (lock.state(arch.as_str(), &self.profile.inputs_hash()), policy) {
            (LockState::Fresh, _) => return Ok((lock.arch[arch.as_str()].clone(), false)),
            (LockState::Missing, LockPolicy::Locked) => return Err(Error::LockMissing { path, arch, profile }),
            (LockState::Stale { locked, current }, LockPolicy::Locked) => {
                return Err(Error::LockStale { path, arch, profile, locked, current })
            }
            _ => {}
        }
        let prefer = lock.arch.get(arch.as_str()).map(preferences).unwrap_or_default();
        let section = self.lock_arch(arch, &prefer)?;
        lock.arch.insert(arch.as_str().to_string(), section.clone());
        self.write_lock(&lock)?;
        Ok((section, true))
    }

    /// Brings every locked package into the cache, verified against its pins.
    pub fn fetch_locked(&self, arch: Arch, section: &ArchLock) -> Result<Vec<CachedPackage>> {
        Ok(self.fetcher.packages(&self.locked_requests(arch, section, false)?)?)
    }

    /// What to fetch for a lock section. With `checked_by_caller`, cached copies are not
    /// hashed by the fetcher: the caller reads each file whole and checks it against the
    /// lock's sha256 itself (see `install`).
    pub fn locked_requests(
        &self,
        arch: Arch,
        section: &ArchLock,
        checked_by_caller: bool,
    ) -> Result<Vec<PackageRequest>> {
        section
            .packages
            .iter()
            .map(|p| {
                let q1 = Q1::parse(&p.checksum).ok_or_else(|| Error::BadLockEntry {
                    path: self.lockfile.display().to_string(),
                    detail: format!("{}: checksum {:?} is not a Q1 checksum", p.name, p.checksum),
                })?;
                Ok(PackageRequest {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    url: self.mirror.url(
                        &section.branch,
                        &p.repository,
                        arch.as_str(),
                        &format!("{}-{}.apk", p.name, p.version),
                    ),
                    q1,
                    size: Some(p.size),
                    sha256: Some(p.sha256.clone()),
                    datahash: Some(p.datahash.clone()),
                    installed_size: p.installed_size,
                    rehash_cached: !checked_by_caller,
                })
            })
            .collect::<Result<Vec<_>>>()
    }
}

/// The versions a lock section pins, as resolver preferences.
pub fn preferences(section: &ArchLock) -> BTreeMap<String, Version> {
    section.packages.iter().filter_map(|p| Version::parse(&p.version).ok().map(|v| (p.name.clone(), v))).collect()
}

/// Copies `packages` into `dir` in Alpine layout (`<branch>/<repo>/<arch>/<file>`),
/// returning each repository directory with the files written to it.
pub fn vendor_files(
    dir: &Path,
    branch: &str,
    arch: Arch,
    section: &ArchLock,
    packages: &[CachedPackage],
) -> Result<Vec<(PathBuf, Vec<PathBuf>)>> {
    let mut repo_dirs: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for (locked, cached) in section.packages.iter().zip(packages) {
        let repo_dir = dir.join(branch).join(&locked.repository).join(arch.as_str());
        std::fs::create_dir_all(&repo_dir).map_err(crate::fsutil::at(&repo_dir))?;
        let target = repo_dir.join(format!("{}-{}.apk", locked.name, locked.version));
        crate::fsutil::copy_atomic(&cached.path, &target).map_err(crate::fsutil::at(&target))?;
        match repo_dirs.iter_mut().find(|(d, _)| *d == repo_dir) {
            Some((_, files)) => files.push(target),
            None => repo_dirs.push((repo_dir, vec![target])),
        }
    }
    Ok(repo_dirs)
}
