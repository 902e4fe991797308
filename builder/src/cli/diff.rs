//! `hyve diff A B`: packages, kernel, command line and guest files that differ between two
//! builds. Exits 0 when they are the same, 1 when they differ (like diff(1)).

use std::path::PathBuf;

use anyhow::Context;
use hyve::diff::{diff, load, FileInfo};

use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// An output directory, initrd.img or disk.img
    a: PathBuf,
    /// The same kind of thing to compare with
    b: PathBuf,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub(super) json: bool,
}

fn file_line(sign: char, f: &FileInfo) -> String {
    let extra = match (&f.link, &f.device, &f.sha256) {
        (Some(l), _, _) => format!(" -> {l}"),
        (_, Some(d), _) => format!(" ({d})"),
        (_, _, Some(s)) => format!(" sha256 {}", &s[..16.min(s.len())]),
        _ => String::new(),
    };
    format!("  {sign} {} {:<7} {} {:>9} {}{extra}", f.mode, f.kind, f.owner, f.size, f.path)
}

pub fn run(args: Args) -> Outcome {
    let a = load(&args.a).with_context(|| format!("reading {}", args.a.display()))?;
    let b = load(&args.b).with_context(|| format!("reading {}", args.b.display()))?;
    let d = diff(&a, &b);
    let same = d.is_empty();
    if args.json {
        let mut doc = serde_json::to_value(&d)?;
        doc["a"] = serde_json::json!(args.a);
        doc["b"] = serde_json::json!(args.b);
        doc["identical"] = serde_json::json!(same);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(same);
    }
    println!("--- {}", args.a.display());
    println!("+++ {}", args.b.display());
    for c in &d.build {
        println!("{}: {} -> {}", c.name, c.from, c.to);
    }
    match &d.packages {
        None => println!("packages: not compared (a side has no manifest)"),
        Some(p) => {
            println!(
                "packages: {} added, {} removed, {} changed, {} rebuilt",
                p.added.len(),
                p.removed.len(),
                p.changed.len(),
                p.rebuilt.len()
            );
            for (n, v) in &p.added {
                println!("  + {n} {v}");
            }
            for (n, v) in &p.removed {
                println!("  - {n} {v}");
            }
            for c in &p.changed {
                println!("  ~ {} {} -> {}", c.name, c.from, c.to);
            }
            for c in &p.rebuilt {
                println!("  ~ {} same version, different .apk (sha256 {} -> {})", c.name, &c.from[..16], &c.to[..16]);
            }
        }
    }
    if let Some(k) = &d.kernel {
        println!("kernel: {} -> {}", k.from, k.to);
    }
    if let Some(c) = &d.cmdline {
        println!("cmdline:\n  - {}\n  + {}", c.from, c.to);
    }
    match &d.files {
        None => println!("files: not compared (a side has no initrd)"),
        Some(f) => {
            println!("files: {} added, {} removed, {} changed", f.added.len(), f.removed.len(), f.changed.len());
            for x in &f.added {
                println!("{}", file_line('+', x));
            }
            for x in &f.removed {
                println!("{}", file_line('-', x));
            }
            for c in &f.changed {
                println!("  ~ {}: {}", c.path, c.changes.join(", "));
            }
        }
    }
    for o in &d.outputs {
        println!("output {}: {} -> {}", o.name, o.from, o.to);
    }
    if same {
        println!("no differences");
    }
    Ok(same)
}
