//! `hyve build`: the guest image for one arch of a profile.

use std::path::PathBuf;

use serde_json::json;

use super::packages::ProfileArgs;
use super::progress::Progress;
use super::Outcome;

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub(super) common: ProfileArgs,
    /// Output directory (default out/<profile>-<arch>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: BuildArgs) -> Outcome {
    let progress = Progress::new(args.common.json);
    let session = args.common.session(&progress)?;
    let arch = args.common.one_arch(&session)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("out").join(format!("{}-{arch}", session.profile.name)));
    let opts = args.common.build_options(hyve::epoch::source_date_epoch()?);
    let result = hyve::build::build(&session, arch, &opts, &out)?;
    progress.finish();
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&json!(result))?);
    } else {
        for w in &result.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "built {} ({arch}, {} packages, {} initramfs entries, SOURCE_DATE_EPOCH={})",
            result.dir.display(),
            result.packages,
            result.entries,
            result.source_date_epoch
        );
        for a in &result.outputs {
            println!("  {:<14} {:>12} {}", a.name, a.size, a.sha256);
        }
        if let Some(blocks) = &result.root_blocks {
            let cached = match &blocks.cache {
                Some(pack) => format!("{} from the block cache ({})", blocks.cached, pack.display()),
                None => "none from a block cache".into(),
            };
            println!("  root image: {} blocks, {cached}", blocks.total);
        }
        println!("  took {}", result.phases.summary());
    }
    Ok(true)
}
