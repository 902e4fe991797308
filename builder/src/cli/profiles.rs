//! `hyve profiles`: which profiles a name finds (yours, then the built-in ones), the merged
//! result of one, and a built-in one written out as files to start your own from.

use std::path::PathBuf;

use anyhow::Context;
use hyve::fetch::FetchOptions;
use hyve::profile;

use super::packages::lookup;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Cache directory, where the built-in profiles are written out (default: $HYVE_CACHE_DIR,
    /// else $XDG_CACHE_HOME/hyve)
    #[arg(long, value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List every profile a name finds and where it comes from (the default)
    List,
    /// Print a profile as hyve reads it, with everything it extends merged in
    Show {
        /// Profile name or path
        name: String,
    },
    /// Write the built-in profiles and overlays into DIR (profiles/, overlay/) to start from
    Export {
        /// A built-in profile, checked to exist (all of them are written: they extend each other)
        name: String,
        /// A directory without them (nothing is overwritten)
        dir: PathBuf,
    },
}

pub fn run(a: Args) -> Outcome {
    let lookup = lookup(&a.cache_dir.unwrap_or_else(FetchOptions::default_cache_dir))?;
    match a.command.unwrap_or(Command::List) {
        Command::List => {
            for (name, path) in profile::available(&lookup) {
                let from = if lookup.is_builtin(&path) { "built in".to_string() } else { lookup.describe(&path) };
                let description =
                    profile::load(&path, &lookup).map(|p| p.description).unwrap_or_else(|e| format!("error: {e}"));
                println!("{name:<12} {from:<28} {description}");
            }
        }
        Command::Show { name } => {
            let path = profile::locate(&name, &lookup)?;
            let merged = profile::load(&path, &lookup)?;
            println!("# profile {} ({}), with everything it extends merged in", merged.name, lookup.describe(&path));
            print!("{}", toml::to_string(&merged).context("printing the profile")?);
        }
        Command::Export { name, dir } => {
            anyhow::ensure!(
                hyve::builtin::profile_names().contains(&name.as_str()),
                "{name:?} is not a built-in profile (hyve has {})",
                hyve::builtin::profile_names().join(", ")
            );
            let written =
                hyve::builtin::export_to(&dir).with_context(|| format!("exporting into {}", dir.display()))?;
            eprintln!(
                "hyve: wrote {} files into {}; build from them with --profile {}",
                written.len(),
                dir.display(),
                dir.join("profiles").join(format!("{name}.toml")).display()
            );
        }
    }
    Ok(true)
}
