//! Getting bytes from mirrors into a content-addressed cache, checking every link on the
//! way in: nothing enters the cache that has not been verified, and nothing is trusted
//! coming out of it without being hashed again.
//!
//! Cache layout (`$XDG_CACHE_HOME/hyve`):
//! - `blobs/sha256/<hex>` — package files, named by their SHA-256
//! - `q1/<hex of Q1>` — which blob holds the package with that identity
//! - `indexes/<sha256 of URL>` and `.meta` — signed indexes with their ETag / Last-Modified
//! - `tmp/` — downloads in progress (same filesystem, so renames are atomic)

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::apk::package::{DataSummary, Limits, PackageReader};
use crate::apk::Q1;
use crate::fsutil;
use crate::fsutil::Hashing;
use crate::report::Reporting;

pub use crate::report::Reporter;

/// Why a fetch failed. Each names the URL or file and says what to do next.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FetchError {
    /// 404: Alpine deletes superseded packages from its mirrors within days.
    #[error("{url}: not found on the mirror (HTTP 404); Alpine deletes superseded packages — run `hyve lock --update` to re-resolve against the mirror, or build from a `hyve vendor` copy of the lock")]
    NotFound { url: String },
    /// A non-retryable or persistent HTTP error.
    #[error("{url}: HTTP {status} after {attempts} attempt(s); check the mirror URL or try again later")]
    Http { url: String, status: u16, attempts: u32 },
    /// Connection failures, resets, timeouts.
    #[error("{url}: {detail} after {attempts} attempt(s); check the network and the mirror, or use --offline with a filled cache")]
    Network { url: String, detail: String, attempts: u32 },
    /// The body was cut short, or is complete but not the size the index says.
    #[error("{url}: received {actual} bytes but expected {expected} after {attempts} attempt(s); the mirror serves a truncated or different file")]
    Size { url: String, expected: u64, actual: u64, attempts: u32 },
    /// `--offline` and the cache does not have it.
    #[error(
        "{what} is not in the cache ({cache}) and --offline forbids the network; run `hyve fetch` while online first"
    )]
    Offline { what: String, cache: String },
    /// Trust link 2: the file is not the one the lock pinned.
    #[error("{name}: {url}: SHA-256 {actual} does not match the lock's {expected}; the mirror serves different bytes than were locked — if that is expected, run `hyve lock --update {name}`")]
    LockMismatch { name: String, url: String, expected: String, actual: String },
    /// The mirror URL is not usable.
    #[error("mirror {url:?} is not an http(s):// or file:// URL or a directory")]
    BadMirror { url: String },
    /// Trust links 3 to 5 (and the format itself).
    #[error(transparent)]
    #[serde(untagged)]
    Verify(#[from] crate::apk::Error),
    /// Local filesystem trouble (cache or file:// mirror).
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

type Result<T, E = FetchError> = std::result::Result<T, E>;

/// Where packages come from: an HTTP(S) base URL or a local directory in Alpine layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    Http(String),
    Dir(PathBuf),
}

impl Mirror {
    pub fn parse(s: &str) -> Result<Mirror> {
        let s = s.trim_end_matches('/');
        if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Mirror::Http(s.to_string()))
        } else if let Some(p) = s.strip_prefix("file://") {
            Ok(Mirror::Dir(PathBuf::from(p)))
        } else if Path::new(s).is_dir() {
            Ok(Mirror::Dir(PathBuf::from(s)))
        } else {
            Err(FetchError::BadMirror { url: s.to_string() })
        }
    }

    /// `<mirror>/<branch>/<repo>/<arch>/<file>`
    pub fn url(&self, branch: &str, repo: &str, arch: &str, file: &str) -> String {
        match self {
            Mirror::Http(base) => format!("{base}/{branch}/{repo}/{arch}/{file}"),
            Mirror::Dir(dir) => format!("file://{}/{branch}/{repo}/{arch}/{file}", dir.display()),
        }
    }
}

/// A package to bring into the cache.
#[derive(Debug, Clone)]
pub struct PackageRequest {
    pub name: String,
    pub version: String,
    pub url: String,
    /// Identity from the signed index (or the lock, which recorded it from one).
    pub q1: Q1,
    /// File size from the index, when known.
    pub size: Option<u64>,
    /// The lock's pin, when there is a lock.
    pub sha256: Option<String>,
    /// The lock's datahash, when there is a lock.
    pub datahash: Option<String>,
    pub installed_size: u64,
    /// Hash a cached copy, and fully verify a download, before handing it out. `false` when
    /// the caller reads the whole file anyway and checks it against `sha256`, Q1, datahash
    /// and every file's SHA-1 on the way (the build's install), so each package is read once.
    pub rehash_cached: bool,
}

/// A verified package file in the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedPackage {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub q1: Q1,
    pub datahash: String,
    pub from_cache: bool,
}

/// Network and cache settings.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub jobs: usize,
    /// Attempts per URL for retryable failures (connection errors, timeouts, 5xx, short bodies).
    pub attempts: u32,
    /// Idle timeout for connect and each read.
    pub timeout: Duration,
    /// First retry delay; doubles each time.
    pub backoff: Duration,
}

impl FetchOptions {
    /// `--cache-dir`, else `HYVE_CACHE_DIR`, else `$XDG_CACHE_HOME/hyve` (`~/Library/Caches/hyve`
    /// on macOS, `~/.cache/hyve` elsewhere).
    pub fn default_cache_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("HYVE_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("hyve");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        if cfg!(target_os = "macos") {
            home.join("Library/Caches/hyve")
        } else {
            home.join(".cache/hyve")
        }
    }

    pub fn new(cache_dir: PathBuf) -> Self {
        let timeout = std::env::var("HYVE_HTTP_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
        FetchOptions {
            cache_dir,
            offline: false,
            jobs: 8,
            attempts: 4,
            timeout: Duration::from_secs(timeout),
            backoff: Duration::from_millis(250),
        }
    }
}

/// Index bytes and where they came from.
pub struct FetchedIndex {
    pub bytes: Vec<u8>,
    pub from_cache: bool,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct IndexMeta {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Downloads and caches; shareable across threads.
pub struct Fetcher<'r> {
    opts: FetchOptions,
    /// Made at the first download: reqwest's blocking client runs a thread of its own, which
    /// a build from the cache or a file:// mirror does not need to start and stop.
    client: std::sync::OnceLock<reqwest::blocking::Client>,
    reporter: &'r dyn Reporter,
}

enum Attempt<T> {
    Done(T),
    Retry(FetchError),
    Fail(FetchError),
}

impl<'r> Fetcher<'r> {
    pub fn new(opts: FetchOptions, reporter: &'r dyn Reporter) -> Result<Self> {
        for sub in ["blobs/sha256", "q1", "indexes", "tmp"] {
            let d = opts.cache_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(fsutil::at(&d))?;
        }
        Ok(Fetcher { opts, client: std::sync::OnceLock::new(), reporter })
    }

    fn client(&self, url: &str) -> Result<&reqwest::blocking::Client> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(self.opts.timeout)
            .connect_timeout(self.opts.timeout)
            .user_agent(concat!("hyve/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Network { url: url.to_string(), detail: e.to_string(), attempts: 0 })?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Where this fetcher's work, and a build's using it, is reported.
    pub fn reporter(&self) -> &'r dyn Reporter {
        self.reporter
    }

    pub fn cache_dir(&self) -> &Path {
        &self.opts.cache_dir
    }

    fn with_retries<T>(&self, url: &str, mut once: impl FnMut(u32) -> Attempt<T>) -> Result<T> {
        let mut delay = self.opts.backoff;
        for attempt in 1..=self.opts.attempts {
            match once(attempt) {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) if attempt == self.opts.attempts => return Err(e),
                Attempt::Retry(e) => {
                    self.reporter.note(&format!("retrying {url} in {} ms: {e}", delay.as_millis()));
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        unreachable!("attempts >= 1")
    }

    fn classify(url: &str, e: reqwest::Error, attempts: u32) -> Attempt<()> {
        let detail = if e.is_timeout() { "timed out".to_string() } else { format!("{e}") };
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        let mut full = detail;
        while let Some(s) = source {
            full.push_str(&format!(": {s}"));
            source = s.source();
        }
        Attempt::Retry(FetchError::Network { url: url.to_string(), detail: full, attempts })
    }

    /// An index, revalidated with ETag / Last-Modified against the cached copy. With
    /// `force`, the cached copy is ignored (it failed verification).
    pub fn index(&self, url: &str, force: bool) -> Result<FetchedIndex> {
        let key = hex::encode(Sha256::digest(url.as_bytes()));
        let path = self.opts.cache_dir.join("indexes").join(&key);
        let meta_path = path.with_extension("meta");
        let cached = if force { None } else { std::fs::read(&path).ok() };
        let meta: IndexMeta =
            std::fs::read(&meta_path).ok().and_then(|m| serde_json::from_slice(&m).ok()).unwrap_or_default();
        if self.opts.offline {
            return match cached {
                Some(bytes) => Ok(FetchedIndex { bytes, from_cache: true }),
                None => {
                    Err(FetchError::Offline { what: url.to_string(), cache: self.opts.cache_dir.display().to_string() })
                }
            };
        }
        if let Some(p) = url.strip_prefix("file://") {
            let bytes = std::fs::read(p).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => FetchError::NotFound { url: url.to_string() },
                _ => crate::fsutil::at_named(p)(e).into(),
            })?;
            return Ok(FetchedIndex { bytes, from_cache: false });
        }
        let client = self.client(url)?;
        let fetched = self.with_retries(url, |attempt| {
            let mut req = client.get(url);
            if cached.is_some() && meta.url == url {
                if let Some(etag) = &meta.etag {
                    req = req.header(reqwest::header::IF_NONE_MATCH, etag);
                }
                if let Some(lm) = &meta.last_modified {
                    req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
                }
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => return Self::classify(url, e, attempt).map_retry(),
            };
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_MODIFIED {
                return Attempt::Done(None);
            }
            if let Some(a) = Self::status_error(url, status.as_u16(), attempt) {
                return a;
            }
            let header = |h| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
            let new_meta = IndexMeta {
                url: url.to_string(),
                etag: header(reqwest::header::ETAG),
                last_modified: header(reqwest::header::LAST_MODIFIED),
            };
            let expected = resp.content_length();
            let mut body = Vec::new();
            let mut resp = resp;
            if let Err(e) = resp.read_to_end(&mut body) {
                return Attempt::Retry(FetchError::Network {
                    url: url.to_string(),
                    detail: format!("reading the body: {e}"),
                    attempts: attempt,
                });
            }
            if let Some(n) = expected.filter(|&n| n != body.len() as u64) {
                return Attempt::Retry(FetchError::Size {
                    url: url.to_string(),
                    expected: n,
                    actual: body.len() as u64,
                    attempts: attempt,
                });
            }
            Attempt::Done(Some((body, new_meta)))
        })?;
        match fetched {
            None => {
                Ok(FetchedIndex { bytes: cached.expect("304 only when a cached copy was offered"), from_cache: true })
            }
            Some((bytes, meta)) => {
                crate::fsutil::write_atomic(&path, &bytes, 0o644).map_err(fsutil::at(&path))?;
                let meta_json = serde_json::to_vec(&meta).expect("meta serialises");
                crate::fsutil::write_atomic(&meta_path, &meta_json, 0o644).map_err(fsutil::at(&meta_path))?;
                Ok(FetchedIndex { bytes, from_cache: false })
            }
        }
    }

    fn status_error<T>(url: &str, status: u16, attempts: u32) -> Option<Attempt<T>> {
        match status {
            200..=299 => None,
            404 | 410 => Some(Attempt::Fail(FetchError::NotFound { url: url.to_string() })),
            500..=599 | 408 | 429 => Some(Attempt::Retry(FetchError::Http { url: url.to_string(), status, attempts })),
            _ => Some(Attempt::Fail(FetchError::Http { url: url.to_string(), status, attempts })),
        }
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.opts.cache_dir.join("blobs/sha256").join(sha256)
    }

    fn q1_path(&self, q1: Q1) -> PathBuf {
        self.opts.cache_dir.join("q1").join(hex::encode(q1.0))
    }

    /// Hashes a cached blob; `None` (and the blob removed) when it is corrupt. With
    /// `rehash` false, only its size is checked (`expected`, when known).
    fn check_blob(&self, path: &Path, sha256: &str, rehash: bool, expected: Option<u64>) -> Result<Option<u64>> {
        if !rehash {
            let size = std::fs::metadata(path).ok().map(|m| m.len()).filter(|n| expected.is_none_or(|e| e == *n));
            // Read later by the installer, which checks the pin: counted as done here.
            self.reporter.bytes(size.unwrap_or(0));
            return Ok(size);
        }
        let Ok(f) = std::fs::File::open(path) else { return Ok(None) };
        let (actual, n) = crate::fsutil::sha256_of(f).map_err(fsutil::at(path))?;
        if actual == sha256 {
            self.reporter.bytes(n);
            return Ok(Some(n));
        }
        self.reporter.note(&format!("discarding corrupt cache entry {}", path.display()));
        let _ = std::fs::remove_file(path);
        Ok(None)
    }

    /// Verifies a package file fully (Q1 before parsing, every file's SHA-1, datahash).
    fn verify_file(path: &Path, req: &PackageRequest, origin: &str) -> Result<DataSummary> {
        let f = std::fs::File::open(path).map_err(fsutil::at(path))?;
        let limits = Limits::for_installed_size(req.installed_size);
        let reader = PackageReader::open(io::BufReader::new(f), origin, limits, Some(req.q1))?;
        Ok(reader.read_data(|_, _| Ok(()))?)
    }

    /// Brings one package into the cache (or finds it there) and returns it verified.
    pub fn package(&self, req: &PackageRequest) -> Result<CachedPackage> {
        let done = |path: PathBuf, sha256: String, size: u64, datahash: String, from_cache: bool| {
            self.reporter.done(&format!("{}-{}", req.name, req.version), from_cache);
            Ok(CachedPackage {
                name: req.name.clone(),
                version: req.version.clone(),
                path,
                sha256,
                size,
                q1: req.q1,
                datahash,
                from_cache,
            })
        };
        // The cache: by the lock's pin, else by identity.
        let known = req
            .sha256
            .clone()
            .or_else(|| std::fs::read_to_string(self.q1_path(req.q1)).ok().map(|s| s.trim().to_string()));
        if let Some(sha) = &known {
            let path = self.blob_path(sha);
            if let Some(size) = self.check_blob(&path, sha, req.rehash_cached || req.sha256.is_none(), req.size)? {
                // Same SHA-256 as bytes that were fully verified on their way in. A lock
                // already knows the datahash; otherwise read it (checking everything again).
                let datahash = match &req.datahash {
                    Some(d) => d.clone(),
                    None => Self::verify_file(&path, req, &path.display().to_string())?.datahash,
                };
                return done(path, sha.clone(), size, datahash, true);
            }
        }
        if self.opts.offline {
            return Err(FetchError::Offline {
                what: format!("{}-{} ({})", req.name, req.version, req.url),
                cache: self.opts.cache_dir.display().to_string(),
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix("dl-")
            .tempfile_in(self.opts.cache_dir.join("tmp"))
            .map_err(fsutil::at(&self.opts.cache_dir))?;
        let (tmp, sha256, size) = self.download(&req.url, tmp)?;
        if let Some(expected) = &req.sha256 {
            if expected != &sha256 {
                return Err(FetchError::LockMismatch {
                    name: req.name.clone(),
                    url: req.url.clone(),
                    expected: expected.clone(),
                    actual: sha256,
                });
            }
        }
        // A file matching the lock's pin is byte for byte the one that passed every check
        // when it was locked; a caller that unpacks it checks links 3 to 5 again on the way
        // (so the file is read once). Otherwise check it all before it enters the cache.
        let datahash = match (&req.sha256, &req.datahash, req.rehash_cached) {
            (Some(_), Some(datahash), false) => datahash.clone(),
            _ => Self::verify_file(tmp.path(), req, &req.url)?.datahash,
        };
        if let Some(expected) = req.size.filter(|&e| e != size) {
            return Err(FetchError::Size { url: req.url.clone(), expected, actual: size, attempts: 1 });
        }
        let path = self.blob_path(&sha256);
        tmp.persist(&path).map_err(|e| crate::fsutil::at(&path)(e.error))?;
        let q1_path = self.q1_path(req.q1);
        crate::fsutil::write_atomic(&q1_path, sha256.as_bytes(), 0o644).map_err(fsutil::at(&q1_path))?;
        done(path, sha256, size, datahash, false)
    }

    /// Any file (a published SHA256SUMS, an output to compare) into a temporary file in
    /// `dir`, with the same retries as packages; its SHA-256 and size. A missing file is
    /// `FetchError::NotFound` (whose message is about packages: callers name the file).
    pub fn download_file(&self, url: &str, dir: &Path) -> Result<(tempfile::NamedTempFile, String, u64)> {
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(fsutil::at(dir))?;
        self.download(url, tmp)
    }

    /// Streams `url` into `tmp`, hashing as it goes; retries rewind the file.
    fn download(&self, url: &str, tmp: tempfile::NamedTempFile) -> Result<(tempfile::NamedTempFile, String, u64)> {
        if let Some(p) = url.strip_prefix("file://") {
            let mut src = std::fs::File::open(p).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => FetchError::NotFound { url: url.to_string() },
                _ => crate::fsutil::at_named(p)(e).into(),
            })?;
            let mut out = tmp;
            let mut hashing = download_sink(out.as_file_mut(), self.reporter);
            io::copy(&mut src, &mut hashing).map_err(fsutil::at(Path::new(p)))?;
            let (_, sha, n) = hashing.finish();
            return Ok((out, hex::encode(sha), n));
        }
        let tmp = Mutex::new(tmp);
        let client = self.client(url)?;
        let (sha, n) = self.with_retries(url, |attempt| {
            let mut guard = tmp.lock().expect("not poisoned");
            let file = guard.as_file_mut();
            if let Err(e) = file.set_len(0).and_then(|_| io::Seek::rewind(file)) {
                return Attempt::Fail(crate::fsutil::at_named("cache tmp")(e).into());
            }
            let resp = match client.get(url).send() {
                Ok(r) => r,
                Err(e) => return Self::classify(url, e, attempt).map_retry(),
            };
            if let Some(a) = Self::status_error(url, resp.status().as_u16(), attempt) {
                return a;
            }
            let announced = resp.content_length();
            let mut resp = resp;
            let mut hashing = download_sink(file, self.reporter);
            if let Err(e) = io::copy(&mut resp, &mut hashing) {
                return Attempt::Retry(FetchError::Network {
                    url: url.to_string(),
                    detail: format!("reading the body: {e}"),
                    attempts: attempt,
                });
            }
            let n = hashing.count();
            // Fewer bytes than the server announced is a broken transfer (retry). A complete
            // body of another size is another file: the caller's checks name it.
            if let Some(e) = announced.filter(|&e| n < e) {
                return Attempt::Retry(FetchError::Size {
                    url: url.to_string(),
                    expected: e,
                    actual: n,
                    attempts: attempt,
                });
            }
            Attempt::Done((hex::encode(hashing.finish().1), n))
        })?;
        let tmp = tmp.into_inner().expect("not poisoned");
        tmp.as_file().sync_all().map_err(fsutil::at(tmp.path()))?;
        Ok((tmp, sha, n))
    }

    /// Fetches every request with `jobs` workers; results in request order. Of the
    /// failures, the first in request order is returned, once in-flight work stops.
    pub fn packages(&self, reqs: &[PackageRequest]) -> Result<Vec<CachedPackage>> {
        self.packages_each(reqs, |_, _| Ok::<(), FetchError>(()), |_, _, ()| Ok(()))
    }

    /// How many workers `packages_each` runs for `requests` packages.
    pub fn workers(&self, requests: usize) -> usize {
        self.opts.jobs.clamp(1, 64).min(requests.max(1))
    }

    /// Like `packages`, and runs `prepare` on each package in the worker that fetched it
    /// (several at once, the largest first), then hands its result to `consume` in request
    /// order as soon as it and every one before it are prepared, while the rest are still
    /// downloading. A failure stops the workers from starting more (a dead mirror fails
    /// once, not once per package); of the failures, the first in request order is returned.
    ///
    /// Largest first: the one big package (docker's) takes longer to download and unpack
    /// than all the small ones together; started last, it would finish alone at the end.
    pub fn packages_each<T: Send, E: From<FetchError> + Send>(
        &self,
        reqs: &[PackageRequest],
        prepare: impl Fn(usize, &CachedPackage) -> std::result::Result<T, E> + Sync,
        mut consume: impl FnMut(usize, &CachedPackage, T) -> std::result::Result<(), E>,
    ) -> std::result::Result<Vec<CachedPackage>, E> {
        self.reporter.batch(reqs.len(), reqs.iter().filter_map(|r| r.size).sum());
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(reqs[i].size.unwrap_or(0)));
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for _ in 0..self.workers(reqs.len()) {
                let tx = tx.clone();
                let (order, next, stop, prepare) = (&order, &next, &stop, &prepare);
                s.spawn(move || {
                    while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = self.package(&reqs[i]).map_err(E::from).and_then(|p| prepare(i, &p).map(|t| (p, t)));
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        if tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut ready: Vec<Option<CachedPackage>> = (0..reqs.len()).map(|_| None).collect();
            let mut prepared: Vec<Option<T>> = (0..reqs.len()).map(|_| None).collect();
            let mut consumed = 0;
            let mut failure: Option<(usize, E)> = None;
            // Ends when every worker has finished.
            for (i, r) in rx {
                match r {
                    Ok((p, t)) => (ready[i], prepared[i]) = (Some(p), Some(t)),
                    Err(e) => {
                        if failure.as_ref().is_none_or(|(j, _)| i < *j) {
                            failure = Some((i, e));
                        }
                    }
                }
                while consumed < reqs.len() && failure.as_ref().is_none_or(|(j, _)| consumed < *j) {
                    let (Some(p), Some(t)) = (&ready[consumed], prepared[consumed].take()) else { break };
                    if let Err(e) = consume(consumed, p, t) {
                        stop.store(true, Ordering::Relaxed);
                        failure = Some((consumed, e));
                        break;
                    }
                    consumed += 1;
                }
            }
            match failure {
                Some((_, e)) => Err(e),
                None => Ok(ready.into_iter().map(|p| p.expect("every request finished")).collect()),
            }
        })
    }
}

impl Attempt<()> {
    fn map_retry<T>(self) -> Attempt<T> {
        match self {
            Attempt::Retry(e) => Attempt::Retry(e),
            Attempt::Fail(e) => Attempt::Fail(e),
            Attempt::Done(()) => unreachable!("classify never succeeds"),
        }
    }
}

/// A download's sink: written to `file`, hashed and reported.
fn download_sink<'a, W: Write>(file: W, reporter: &'a dyn Reporter) -> Hashing<Reporting<'a, W>, Sha256> {
    Hashing::new(Reporting::download(file, reporter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls() {
        let m = Mirror::parse("https://dl-cdn.alpinelinux.org/alpine/").unwrap();
        assert_eq!(
            m.url("v3.24", "main", "x86_64", "APKINDEX.tar.gz"),
            "https://dl-cdn.alpinelinux.org/alpine/v3.24/main/x86_64/APKINDEX.tar.gz"
        );
        let m = Mirror::parse("file:///srv/mirror").unwrap();
        assert_eq!(
            m.url("v3.24", "community", "aarch64", "a-1.apk"),
            "file:///srv/mirror/v3.24/community/aarch64/a-1.apk"
        );
        assert!(Mirror::parse("ftp://x").is_err());
    }

    /// Cached packages, prepared on the workers in whatever order they finish (the first
    /// ones slowest), reach `consume` in request order. The error is the first in request
    /// order, whichever failed first: every package before it is consumed, none after.
    #[test]
    fn prepared_packages_are_consumed_in_request_order() {
        let dir = tempfile::tempdir().unwrap();
        let (fetcher, reqs) = cached_packages(dir.path(), 4, &[10; 6]);
        assert_eq!((fetcher.workers(6), fetcher.workers(2), fetcher.workers(0)), (4, 2, 1));
        // p2 and p4 fail, p4 first (at once, while p0..p3 sleep).
        let failing = |fail: &'static [&'static str]| {
            move |i: usize, p: &CachedPackage| {
                if fail.contains(&p.name.as_str()) && p.name == "p4" {
                    return Err(FetchError::Offline { what: p.name.clone(), cache: String::new() });
                }
                std::thread::sleep(Duration::from_millis(30 * (6 - i as u64)));
                if fail.contains(&p.name.as_str()) {
                    return Err(FetchError::Offline { what: p.name.clone(), cache: String::new() });
                }
                Ok(std::fs::read(&p.path).unwrap()[0])
            }
        };
        let run = |fail, consume_fails_at: Option<usize>| {
            let mut seen = Vec::new();
            let r = fetcher.packages_each(&reqs, failing(fail), |i, p, first_byte| {
                assert_eq!((p.name.clone(), first_byte), (format!("p{i}"), i as u8));
                if consume_fails_at == Some(i) {
                    return Err(FetchError::Offline { what: "consume".into(), cache: String::new() });
                }
                seen.push(i);
                Ok(())
            });
            (r.map(|_| ()).map_err(|e| e.to_string()), seen)
        };
        let (r, seen) = run(&["p2", "p4"], None);
        assert!(r.as_ref().is_err_and(|e| e.contains("p2") && !e.contains("p4")), "{r:?}");
        assert_eq!(seen, [0, 1]);
        let (r, seen) = run(&["p4"], Some(3));
        assert!(r.as_ref().is_err_and(|e| e.contains("consume")), "{r:?}");
        assert_eq!(seen, [0, 1, 2]);
        let (r, seen) = run(&[], None);
        assert_eq!((r, seen), (Ok(()), vec![0, 1, 2, 3, 4, 5]));
    }

    struct Quiet;
    impl Reporter for Quiet {}

    /// A fetcher with `jobs` workers, and packages p0, p1, … of these sizes in its cache.
    fn cached_packages(dir: &Path, jobs: usize, sizes: &[usize]) -> (Fetcher<'static>, Vec<PackageRequest>) {
        let fetcher = Fetcher::new(FetchOptions { jobs, ..FetchOptions::new(dir.into()) }, &Quiet).unwrap();
        let reqs = (0u8..)
            .zip(sizes)
            .map(|(i, &size)| {
                let body = vec![i; size];
                let (sha, _) = crate::fsutil::sha256_of(&body[..]).unwrap();
                std::fs::write(dir.join("blobs/sha256").join(&sha), &body).unwrap();
                PackageRequest {
                    name: format!("p{i}"),
                    version: "1-r0".into(),
                    url: format!("file:///nowhere/p{i}-1-r0.apk"),
                    q1: Q1([i; 20]),
                    size: Some(size as u64),
                    sha256: Some(sha),
                    datahash: Some(String::new()),
                    installed_size: size as u64,
                    rehash_cached: false,
                }
            })
            .collect();
        (fetcher, reqs)
    }

    /// The largest package is started first (one worker: one at a time, in the order they
    /// are claimed); a failure stops the rest from starting.
    #[test]
    fn the_largest_packages_are_started_first() {
        let dir = tempfile::tempdir().unwrap();
        let (fetcher, reqs) = cached_packages(dir.path(), 1, &[10, 40, 20, 30]);
        let run = |fail: &[usize]| {
            let started = Mutex::new(Vec::new());
            let r = fetcher.packages_each(
                &reqs,
                |i, p| {
                    started.lock().unwrap().push(i);
                    match fail.contains(&i) {
                        true => Err(FetchError::Offline { what: p.name.clone(), cache: String::new() }),
                        false => Ok(()),
                    }
                },
                |_, _, ()| Ok::<(), FetchError>(()),
            );
            (r.map(|_| ()).map_err(|e| e.to_string()), started.into_inner().unwrap())
        };
        assert_eq!(run(&[]), (Ok(()), vec![1, 3, 2, 0]));
        let (r, started) = run(&[3]);
        assert!(r.is_err_and(|e| e.contains("p3")) && started == [1, 3], "{started:?}");
    }
}
