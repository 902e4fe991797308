//! Command-line parsing and presentation: clap commands, human or `--json` output, and
//! the exit code. Work happens in the library.

mod build;
mod diff;
mod disk;
mod inspect;
mod packages;
mod pkg;
mod profiles;
mod progress;
mod repo;
mod run;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use hyve::apk::{Arch, Keyring};

#[derive(Parser)]
#[command(
    name = "hyve",
    version,
    about = "Build reproducible boot2docker-style Linux guest images from verified Alpine packages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the guest: kernel, initrd.img, disk.img, cmdline, manifest.json, sbom.spdx.json, SHA256SUMS in out/<profile>-<arch>
    Build(build::BuildArgs),
    /// Boot an output directory in QEMU (console on stdout), or print the command for vfkit, hyperkit, xhyve
    Run(run::RunArgs),
    /// Rebuild from the lock and compare every output byte for byte with a published build
    Verify(verify::VerifyArgs),
    /// What differs between two builds (output directories, initrds or disk images): packages, kernel, cmdline, files
    Diff(diff::Args),
    /// Resolve a profile against the signed indexes and print the package set (no downloads)
    Plan(packages::PlanArgs),
    /// Resolve, download, verify and pin every package in the profile's lock file
    Lock(packages::LockArgs),
    /// Fill the cache with the locked packages, for offline builds
    Fetch(packages::FetchArgs),
    /// Write a signed local repository holding exactly the locked packages
    Vendor(packages::VendorArgs),
    /// Show what is inside an .apk, APKINDEX.tar.gz or initrd.img and check every signature and hash
    Inspect(inspect::Args),
    /// Persistent data disks for the guest
    #[command(subcommand)]
    Disk(disk::Command),
    /// Local packages
    #[command(subcommand)]
    Pkg(pkg::Command),
    /// Local signed repositories and their keys
    #[command(subcommand)]
    Repo(repo::Command),
    /// The profiles a name finds (yours, then the built-in ones); show or export one
    Profiles(profiles::Args),
    /// Print a shell completion script: hyve completions bash > /etc/bash_completion.d/hyve
    Completions { shell: clap_complete::Shell },
    /// Print hyve's manual page (roff): hyve man > hyve.1 && man ./hyve.1
    Man,
}

/// `--key FILE`, on every command that verifies signatures.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Also trust this public key (PEM; its file name is its key name). Repeatable.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
}

impl KeyArgs {
    /// Alpine's built-in keys for `arch` (all arches when `None`) plus `--key` files.
    pub fn keyring(&self, arch: Option<Arch>) -> anyhow::Result<Keyring> {
        Ok(Keyring::with_files(arch, &self.keys)?)
    }
}

/// What a command reports besides an error: `Ok(false)` means checks failed and were
/// already reported.
type Outcome = anyhow::Result<bool>;

/// An error that ends hyve with its own exit status instead of 1 (a timeout's 124, as
/// timeout(1) has it). Returned, never `process::exit`, so every drop cleans up first.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[error("{message}")]
#[serde(tag = "kind", rename = "exit_with")]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

impl Command {
    /// Whether the command was asked for `--json`: its errors are a JSON object then too.
    fn json(&self) -> bool {
        match self {
            Command::Build(a) => a.common.json,
            Command::Verify(a) => a.common.json,
            Command::Plan(a) => a.common.json,
            Command::Lock(a) => a.common.json,
            Command::Fetch(a) => a.common.json,
            Command::Vendor(a) => a.common.json,
            Command::Diff(a) => a.json,
            Command::Inspect(a) => a.json,
            _ => false,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.command.json();
    let outcome: Outcome = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Run(args) => run::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Plan(args) => packages::plan(args),
        Command::Lock(args) => packages::lock(args),
        Command::Fetch(args) => packages::fetch(args),
        Command::Vendor(args) => packages::vendor(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Pkg(cmd) => pkg::run(cmd),
        Command::Repo(cmd) => repo::run(cmd),
        Command::Profiles(args) => profiles::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hyve", &mut std::io::stdout());
            Ok(true)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map(|()| true).map_err(Into::into)
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let message = error_chain(&e);
            if json {
                println!("{}", serde_json::to_string_pretty(&json_error(&e, &message)).expect("json"));
            } else {
                eprintln!("error: {message}");
            }
            e.downcast_ref::<ExitWith>().map_or(ExitCode::FAILURE, |x| ExitCode::from(x.code))
        }
    }
}

/// `{"error": {"kind": …, "message": …, and the fields of the first of hyve's own errors in
/// the chain: file, package, URL, expected and actual, as the error has them}}`. `kind` is
/// that error's name ("not_found", "q1_mismatch", …), or "error" when none of hyve's errors
/// is in the chain (a bad command line caught by hand, say).
fn json_error(e: &anyhow::Error, message: &str) -> serde_json::Value {
    use hyve::*;
    /// The first cause that is one of `$ty`, serialized.
    macro_rules! first_of {
        ($($ty:ty),* $(,)?) => {
            e.chain().find_map(|cause| {
                $(if let Some(x) = cause.downcast_ref::<$ty>() {
                    return serde_json::to_value(x).ok();
                })*
                None
            })
        };
    }
    let fields = first_of!(
        build::BuildError,
        session::Error,
        fetch::FetchError,
        apk::Error,
        install::InstallError,
        verify::VerifyError,
        diff::DiffError,
        profile::ProfileError,
        lock::LockError,
        resolve::ResolveError,
        kernel::KernelError,
        overlay::OverlayError,
        tree::TreeError,
        output::disk::DiskError,
        output::uki::UkiError,
        output::fat::FatError,
        output::sums::BadSums,
        datadisk::DataDiskError,
        dockertls::TlsError,
        apk::sign::KeyError,
        vmm::VmmError,
        epoch::BadEpoch,
        fsutil::IoError,
        ExitWith,
    );
    let mut object = match fields {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::from_iter([("kind".to_string(), "error".into())]),
    };
    object.insert("message".into(), message.into());
    serde_json::json!({ "error": object })
}

/// The error and its causes, each once: library errors already name their cause in their
/// message, so a cause whose text is already there is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
    }
    msg
}

/// The build date for things hyve writes: `--build-date`, else `SOURCE_DATE_EPOCH`, else 0
/// (never the clock, so output is reproducible by default).
pub fn build_date(explicit: Option<u64>) -> anyhow::Result<u64> {
    Ok(match explicit {
        Some(d) => d,
        None => hyve::epoch::source_date_epoch()?.unwrap_or(0),
    })
}

/// `--sig-type`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum SigType {
    /// SHA-1, what Alpine itself signs with (for old apk-tools)
    #[value(name = "RSA")]
    Rsa,
    /// SHA-256 (default)
    #[default]
    #[value(name = "RSA256")]
    Rsa256,
    /// SHA-512
    #[value(name = "RSA512")]
    Rsa512,
}

impl From<SigType> for hyve::apk::SigAlgo {
    fn from(t: SigType) -> Self {
        match t {
            SigType::Rsa => hyve::apk::SigAlgo::RsaSha1,
            SigType::Rsa256 => hyve::apk::SigAlgo::RsaSha256,
            SigType::Rsa512 => hyve::apk::SigAlgo::RsaSha512,
        }
    }
}
