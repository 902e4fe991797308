//! Between the work and whoever watches it: fetching and building report here, and the
//! command line turns it into progress bars on a terminal, plain lines in a log, or
//! nothing with `--json`. Nothing here changes what is built.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A slow step of a build, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Downloading (or reading from the cache) and unpacking every locked package.
    Packages,
    /// The kernel and the module set the profile asks for, with what they depend on.
    Modules,
    /// The compressed read-only root image (profiles with `output.root = "squashfs"`).
    Root,
    /// The compressed initramfs.
    Initramfs,
    /// The EFI disk image (UKI, kernel, initrd and loader entry on its ESP).
    Disk,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Packages => "packages",
            Phase::Modules => "modules",
            Phase::Root => "root image",
            Phase::Initramfs => "initramfs",
            Phase::Disk => "disk image",
        }
    }
}

/// What the work tells the user about.
pub trait Reporter: Send + Sync {
    /// A batch of `items` downloads totalling about `bytes` starts.
    fn batch(&self, _items: usize, _bytes: u64) {}
    /// `n` more bytes arrived (from the network or the cache).
    fn bytes(&self, _n: u64) {}
    /// One item finished; `cached` when no download was needed.
    fn done(&self, _what: &str, _cached: bool) {}
    /// A retry or other notable event.
    fn note(&self, _message: &str) {}
    /// A build phase starts; `total` bytes will pass through it (0: unknown).
    fn phase_start(&self, _phase: Phase, _total: u64) {}
    /// `n` more bytes of the current phase are done.
    fn phase_advance(&self, _n: u64) {}
    /// The phase ended after `took`.
    fn phase_end(&self, _phase: Phase, _took: Duration) {}
}

/// How long each phase of a build took, in order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseTimes(pub Vec<(Phase, f64)>);

/// A build's phases as they run: told to the reporter, timed.
pub struct Phases<'r> {
    reporter: &'r dyn Reporter,
    times: PhaseTimes,
}

impl<'r> Phases<'r> {
    pub fn new(reporter: &'r dyn Reporter) -> Self {
        Phases { reporter, times: PhaseTimes::default() }
    }

    /// Where the phases are told; work inside a phase reports its progress there too.
    pub fn reporter(&self) -> &'r dyn Reporter {
        self.reporter
    }

    /// Runs `work` as `phase` (`total` bytes, 0 when unknown), noting the time it took.
    pub fn run<T>(&mut self, phase: Phase, total: u64, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        self.reporter.phase_start(phase, total);
        let out = work();
        let took = started.elapsed();
        self.reporter.phase_end(phase, took);
        self.times.0.push((phase, took.as_secs_f64()));
        out
    }

    pub fn into_times(self) -> PhaseTimes {
        self.times
    }
}

impl PhaseTimes {
    /// `packages 1.2 s, modules 0.1 s, …`
    pub fn summary(&self) -> String {
        self.0.iter().map(|(p, s)| format!("{} {s:.1} s", p.name())).collect::<Vec<_>>().join(", ")
    }
}

/// Tells the reporter of every byte written or read through it (download and phase progress).
pub struct Reporting<'a, W> {
    inner: W,
    reporter: &'a dyn Reporter,
    /// Downloads report `bytes`, build phases `phase_advance`.
    phase: bool,
}

impl<'a, W> Reporting<'a, W> {
    /// Counts toward the download bar.
    pub fn download(inner: W, reporter: &'a dyn Reporter) -> Self {
        Reporting { inner, reporter, phase: false }
    }

    /// Counts toward the current build phase.
    pub fn phase(inner: W, reporter: &'a dyn Reporter) -> Self {
        Reporting { inner, reporter, phase: true }
    }

    fn count(&self, n: usize) {
        if self.phase {
            self.reporter.phase_advance(n as u64);
        } else {
            self.reporter.bytes(n as u64);
        }
    }
}

impl<W: Write> Write for Reporting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}
