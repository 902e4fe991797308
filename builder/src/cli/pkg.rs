//! `hyve pkg create`: a signed .apk from a directory, byte-for-byte reproducible.

use std::path::PathBuf;

use anyhow::Context;
use hyve::apk::package::write_package;
use hyve::apk::pkginfo::PkgInfo;
use hyve::apk::{srcdir, Dep, SigningKey, Version};

use super::{build_date, Outcome, SigType};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Pack DIR into a signed .apk (owners root, times = build date, sorted)
    Create(Box<CreateArgs>),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Directory whose contents become the package's files
    dir: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long)]
    version: String,
    /// Package architecture (x86_64, aarch64, noarch, ...)
    #[arg(long)]
    arch: String,
    #[arg(long, default_value = "")]
    description: String,
    #[arg(long, default_value = "")]
    url: String,
    #[arg(long, default_value = "")]
    license: String,
    /// Source package name (default: --name)
    #[arg(long)]
    origin: Option<String>,
    #[arg(long, default_value = "")]
    maintainer: String,
    /// Dependency atoms, e.g. `musl>=1.2` or `so:libc.musl-x86_64.so.1` (repeatable; spaces separate several)
    #[arg(long = "depends", value_name = "ATOM")]
    depends: Vec<String>,
    /// Provided names, e.g. `cmd:sh=1.36.1-r0` (repeatable)
    #[arg(long = "provides", value_name = "ATOM")]
    provides: Vec<String>,
    /// install_if atoms (repeatable)
    #[arg(long = "install-if", value_name = "ATOM")]
    install_if: Vec<String>,
    /// Packages whose files this one may overwrite (repeatable)
    #[arg(long = "replaces", value_name = "ATOM")]
    replaces: Vec<String>,
    #[arg(long)]
    provider_priority: Option<u64>,
    #[arg(long, value_name = "FILE")]
    pre_install: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    post_install: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pre_upgrade: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    post_upgrade: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pre_deinstall: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    post_deinstall: Option<PathBuf>,
    /// Seconds since 1970 for builddate and every mtime (default: SOURCE_DATE_EPOCH, else 0)
    #[arg(long)]
    build_date: Option<u64>,
    /// Private key to sign with; the signature names `<KEY file name>.pub`
    #[arg(long, value_name = "KEY")]
    sign: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    sig_type: SigType,
    /// Output file
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(cmd: Command) -> Outcome {
    match cmd {
        Command::Create(args) => create(*args),
    }
}

fn atoms(list: &[String], what: &str) -> anyhow::Result<Vec<Dep>> {
    list.iter()
        .flat_map(|s| s.split_ascii_whitespace())
        .map(|a| Dep::parse(a).with_context(|| format!("--{what}")))
        .collect()
}

fn create(a: CreateArgs) -> Outcome {
    let version = Version::parse(&a.version).context("--version")?;
    let key = SigningKey::from_file(&a.sign)?;
    let date = build_date(a.build_date)?;
    let mut info = PkgInfo::new(&a.name, version, &a.arch);
    info.description = a.description;
    info.url = a.url;
    info.license = a.license;
    info.maintainer = a.maintainer;
    info.build_date = date;
    if let Some(o) = a.origin {
        info.origin = o;
    }
    info.depends = atoms(&a.depends, "depends")?;
    info.provides = atoms(&a.provides, "provides")?;
    info.install_if = atoms(&a.install_if, "install-if")?;
    info.replaces = atoms(&a.replaces, "replaces")?;
    info.provider_priority = a.provider_priority;
    let mut scripts = Vec::new();
    for (name, file) in [
        (".pre-install", &a.pre_install),
        (".post-install", &a.post_install),
        (".pre-upgrade", &a.pre_upgrade),
        (".post-upgrade", &a.post_upgrade),
        (".pre-deinstall", &a.pre_deinstall),
        (".post-deinstall", &a.post_deinstall),
    ] {
        if let Some(f) = file {
            let content = std::fs::read(f).with_context(|| format!("reading {name} script {}", f.display()))?;
            scripts.push((name.to_string(), content));
        }
    }
    let meta = std::fs::metadata(&a.dir).with_context(|| format!("package directory {}", a.dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", a.dir.display());
    let entries = srcdir::entries_from_dir(&a.dir, date).with_context(|| format!("reading {}", a.dir.display()))?;
    let mut bytes = Vec::new();
    let q1 = write_package(&mut bytes, &mut info, &scripts, &entries, &key, a.sig_type.into())
        .with_context(|| format!("packing {}", a.dir.display()))?;
    hyve::fsutil::write_atomic(&a.output, &bytes, 0o644).with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "wrote {} ({} {}, {} entries, {} bytes, {q1})",
        a.output.display(),
        info.name,
        info.version,
        entries.len(),
        bytes.len()
    );
    Ok(true)
}
