//! `hyve repo index` and `hyve repo keygen`: local signed repositories.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyve::apk::index::{write_index, IndexRecord};
use hyve::apk::SigningKey;

use super::{Outcome, SigType};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write DIR/APKINDEX.tar.gz for every .apk in DIR, signed
    Index(IndexArgs),
    /// Generate an RSA key pair: NAME.rsa (private) and NAME.rsa.pub
    Keygen(KeygenArgs),
}

#[derive(clap::Args)]
pub struct IndexArgs {
    /// Repository directory holding .apk files
    dir: PathBuf,
    /// Private key to sign the index with
    #[arg(long, value_name = "KEY")]
    sign: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    sig_type: SigType,
    /// Text for DESCRIPTION
    #[arg(long, default_value = "")]
    description: String,
    /// Output file (default DIR/APKINDEX.tar.gz)
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Path prefix of the key pair, e.g. `keys/my-repo`
    name: PathBuf,
    /// Key size in bits
    #[arg(long, default_value_t = 4096)]
    bits: usize,
}

pub fn run(cmd: Command) -> Outcome {
    match cmd {
        Command::Index(args) => index(args),
        Command::Keygen(args) => keygen(args),
    }
}

fn index(a: IndexArgs) -> Outcome {
    let key = SigningKey::from_file(&a.sign)?;
    let mut apks: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("reading repository directory {}", a.dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    apks.retain(|p| p.extension().is_some_and(|e| e == "apk"));
    apks.sort();
    let records = apks.iter().map(|p| IndexRecord::from_file(p)).collect::<Result<Vec<_>, _>>()?;
    let mtime = match hyve::epoch::source_date_epoch()? {
        Some(t) => t,
        None => records.iter().filter_map(|r| r.build_time).max().unwrap_or(0),
    };
    let bytes = write_index(&records, &a.description, &key, a.sig_type.into(), mtime)?;
    let out = a.output.unwrap_or_else(|| a.dir.join("APKINDEX.tar.gz"));
    hyve::fsutil::write_atomic(&out, &bytes, 0o644).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} ({} packages, signed by {})", out.display(), records.len(), key.key_name);
    Ok(true)
}

fn keygen(a: KeygenArgs) -> Outcome {
    let name = a.name.file_name().and_then(|n| n.to_str()).context("NAME must end in a file name")?;
    let dir = match a.name.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    anyhow::ensure!(a.bits >= 2048, "--bits {} is too weak; use at least 2048 (Alpine uses 4096)", a.bits);
    let (private, public) = SigningKey::keygen(dir, name, a.bits)?;
    eprintln!("wrote {} and {}", private.display(), public.display());
    println!("{}", public.display());
    Ok(true)
}
