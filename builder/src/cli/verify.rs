//! `hyve verify`: rebuild from the lock and compare with what was published.

use std::path::PathBuf;

use anyhow::Context;
use hyve::verify::{compare, FileCheck, Published, Verdict};
use serde_json::json;

use super::packages::ProfileArgs;
use super::progress::Progress;
use super::Outcome;

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub(super) common: ProfileArgs,
    /// The published build: an output directory, a SHA256SUMS file, or an http(s)/file URL of
    /// SHA256SUMS (or of the directory holding it)
    #[arg(long, value_name = "DIR|SHA256SUMS|URL")]
    against: String,
    /// With a SHA256SUMS or URL: trust a listed checksum that matches the rebuild instead of
    /// downloading the file to compare its bytes
    #[arg(long)]
    checksums_only: bool,
    /// Keep the rebuild in DIR, e.g. for `hyve diff` (an earlier build there is replaced;
    /// a directory with other files is refused)
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

pub fn run(args: VerifyArgs) -> Outcome {
    let progress = Progress::new(args.common.json);
    let session = args.common.session(&progress)?;
    let published = Published::parse(&args.against)?;
    // Checked before the rebuild: --keep replaces only an earlier build.
    if let Some(keep) = &args.keep {
        hyve::build::check_replaceable(keep)?;
    }
    let scratch = tempfile::Builder::new().prefix("hyve-verify-").tempdir().context("creating a scratch directory")?;
    let manifest = published.manifest(&session.fetcher, scratch.path())?;
    // The published manifest says how it was built; the command line and SOURCE_DATE_EPOCH
    // win when given.
    let arch = match (&manifest, args.common.arch) {
        (Some(m), None) => m.arch.parse().map_err(|e| anyhow::anyhow!("the published manifest.json: {e}"))?,
        _ => args.common.one_arch(&session)?,
    };
    if let Some(m) = &manifest {
        anyhow::ensure!(
            m.profile == session.profile.name,
            "the published build is of profile {:?}, not {:?}; pass --profile {}",
            m.profile,
            session.profile.name,
            m.profile
        );
    }
    let epoch = hyve::epoch::source_date_epoch()?.or(manifest.as_ref().map(|m| m.source_date_epoch));
    let mut opts = args.common.build_options(epoch);
    opts.policy = hyve::session::LockPolicy::Locked;
    opts.block_cache = false;
    // With --keep the rebuild goes straight there (swapped in whole, as every build).
    let rebuilt = args.keep.clone().unwrap_or_else(|| scratch.path().join("rebuilt"));
    let result = hyve::build::build(&session, arch, &opts, &rebuilt)
        .with_context(|| format!("rebuilding {} ({arch}) from {}", session.profile.name, session.lockfile.display()))?;
    progress.finish();
    let checks = compare(&published, &rebuilt, &session.fetcher, scratch.path(), args.checksums_only)?;
    let identical = checks.iter().all(|c| c.verdict == Verdict::Identical);
    if args.common.json {
        let doc = json!({
            "identical": identical,
            "profile": session.profile.name,
            "arch": arch,
            "against": args.against,
            "source_date_epoch": result.source_date_epoch,
            "rebuild": args.keep,
            "hyve_version": env!("CARGO_PKG_VERSION"),
            "published_hyve_version": manifest.as_ref().map(|m| &m.hyve_version),
            "files": checks,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(identical);
    }
    println!(
        "rebuilt {} ({arch}) from {} with SOURCE_DATE_EPOCH={}",
        session.profile.name,
        session.lockfile.display(),
        result.source_date_epoch
    );
    for c in &checks {
        println!("{}", check_line(c));
    }
    let bad = checks.iter().filter(|c| c.verdict != Verdict::Identical).count();
    if identical {
        println!("verified: all {} files are byte-identical to {}", checks.len(), args.against);
    } else {
        let hint = match &args.keep {
            Some(dir) => format!("`hyve diff {} {}` shows what is inside them", args.against, dir.display()),
            None => "rerun with --keep DIR, then `hyve diff` the two to see what is inside them".into(),
        };
        eprintln!("FAILED: {bad} of {} files do not match {}; {hint}", checks.len(), args.against);
        if let Some(note) = version_note(manifest.as_ref().map(|m| m.hyve_version.as_str())) {
            eprintln!("{note}");
        }
    }
    Ok(identical)
}

/// Why a rebuild may differ when another hyve made the published build: the same inputs
/// give the same bytes only through the same writers and compressors.
fn version_note(published: Option<&str>) -> Option<String> {
    let ours = env!("CARGO_PKG_VERSION");
    let theirs = published.filter(|v| *v != ours)?;
    Some(format!(
        "note: the published build was made by hyve {theirs}, this is hyve {ours}; outputs are the same \
         byte for byte only from the same hyve version: verify with hyve {theirs}"
    ))
}

fn short(sha: &Option<String>) -> String {
    sha.as_deref().map_or("?".into(), |s| s[..16.min(s.len())].to_string())
}

fn size(n: Option<u64>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

fn check_line(c: &FileCheck) -> String {
    match c.verdict {
        Verdict::Identical => {
            format!(
                "  identical      {:<16} {:>12} bytes  sha256 {}",
                c.name,
                size(c.rebuilt_size),
                short(&c.rebuilt_sha256)
            )
        }
        Verdict::Differs => {
            let at = match c.first_difference {
                Some(o) => format!("first difference at byte {o} ({o:#x})"),
                None => "only its checksum was published, so no offset".into(),
            };
            format!(
                "  DIFFERS        {:<16} published {} bytes sha256 {}, rebuilt {} bytes sha256 {}; {at}",
                c.name,
                size(c.published_size),
                short(&c.published_sha256),
                size(c.rebuilt_size),
                short(&c.rebuilt_sha256)
            )
        }
        Verdict::NotPublished => {
            format!("  NOT PUBLISHED  {:<16} the rebuild writes it; the published set lacks it", c.name)
        }
        Verdict::NotRebuilt => {
            format!("  NOT REBUILT    {:<16} published, but this profile's rebuild does not write it", c.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_hyve_version_is_named() {
        let ours = env!("CARGO_PKG_VERSION");
        assert_eq!(version_note(Some(ours)), None);
        assert_eq!(version_note(None), None);
        let note = version_note(Some("0.0.1-old")).unwrap();
        assert!(note.contains("made by hyve 0.0.1-old") && note.contains(&format!("this is hyve {ours}")), "{note}");
    }
}
