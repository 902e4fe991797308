//! `hyve inspect FILE`: what is inside an .apk or APKINDEX.tar.gz, with every check run.
//! Exits non-zero when any check fails.

use std::io::{BufReader, Read};
use std::path::PathBuf;

use anyhow::Context;
use hyve::apk::archive::{DataEntry, EntryKind};
use hyve::apk::index::{read_index, IndexRecord};
use hyve::apk::package::{Limits, PackageReader};
use hyve::output::cpio::CpioEntry;
use serde_json::json;

use super::{KeyArgs, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// An .apk package, an APKINDEX.tar.gz, an initrd.img, a root.squashfs or a disk.img
    file: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub(super) json: bool,
}

enum Kind {
    Package,
    Index,
    Initramfs,
    RootImage,
    Disk,
}

/// Looks past any `.SIGN.*` entries at the first real entry name.
fn sniff(file: &PathBuf) -> anyhow::Result<Kind> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut head = vec![0u8; 520];
    let n = (&f).take(520).read(&mut head)?;
    if hyve::output::disk::looks_like_gpt(&head[..n]) {
        return Ok(Kind::Disk);
    }
    if head[..n].starts_with(hyve::output::squashfs::MAGIC) {
        return Ok(Kind::RootImage);
    }
    if head[..n].starts_with(b"ADB") {
        // The library gives the precise "apk v3 is not supported" error.
        return Ok(if file.to_string_lossy().ends_with(".apk") { Kind::Package } else { Kind::Index });
    }
    if hyve::output::compress::decompressor(BufReader::new(std::fs::File::open(file)?))
        .and_then(|mut r| {
            let mut magic = [0u8; 6];
            r.read_exact(&mut magic)?;
            Ok(&magic == b"070701")
        })
        .unwrap_or(false)
    {
        return Ok(Kind::Initramfs);
    }
    let f = std::fs::File::open(file)?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(BufReader::new(f)));
    for entry in archive.entries().with_context(|| format!("{} is not a gzip'd tar (apk v2) file", file.display()))? {
        let entry = entry.with_context(|| format!("{}: cannot read the first tar entries", file.display()))?;
        let path = entry.path_bytes();
        if path.starts_with(b".SIGN.") {
            continue;
        }
        return match &path[..] {
            b".PKGINFO" => Ok(Kind::Package),
            b"DESCRIPTION" | b"APKINDEX" => Ok(Kind::Index),
            other => anyhow::bail!(
                "{}: not an .apk or APKINDEX.tar.gz (first entry {:?})",
                file.display(),
                String::from_utf8_lossy(other)
            ),
        };
    }
    anyhow::bail!("{}: empty archive", file.display())
}

pub fn run(args: Args) -> Outcome {
    let keyring = args.keys.keyring(None)?;
    match sniff(&args.file)? {
        Kind::Package => inspect_package(&args, &keyring),
        Kind::Index => inspect_index(&args, &keyring),
        Kind::Initramfs => inspect_initramfs(&args),
        Kind::RootImage => inspect_root_image(&args),
        Kind::Disk => inspect_disk(&args),
    }
}

fn owner(id: u32, name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| id.to_string())
}

fn entry_line(e: &DataEntry) -> String {
    let target = match &e.kind {
        EntryKind::Symlink { target } => format!(" -> {target}"),
        EntryKind::Hardlink { target } => format!(" => {target}"),
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            format!(" ({major},{minor})")
        }
        _ => String::new(),
    };
    let sha1 = e.sha1.map(hex::encode).unwrap_or_else(|| "-".repeat(40));
    format!(
        "  {:<8} {:04o} {:>8}:{:<8} {:>10} {sha1}  {}{target}",
        e.kind.short_name(),
        e.mode,
        owner(e.uid, &e.uname),
        owner(e.gid, &e.gname),
        e.size,
        e.path
    )
}

fn inspect_package(args: &Args, keyring: &hyve::apk::Keyring) -> Outcome {
    let origin = args.file.display().to_string();
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {origin}"))?;
    let reader = PackageReader::open(BufReader::new(file), &origin, Limits::default(), None)?;
    let control = reader.control.clone();
    let verdict = control.verify_signature(keyring);
    let mut entries = Vec::new();
    let data = reader.read_data(|e, _| {
        entries.push(e.clone());
        Ok(())
    });
    let mut problems = Vec::new();
    if !verdict.is_verified() {
        problems.push(format!("signature: {verdict}"));
    }
    if let Err(e) = &data {
        problems.push(e.to_string());
    }
    if args.json {
        let doc = json!({
            "file": origin,
            "type": "apk",
            "signature": verdict,
            "signatures": control.signatures.iter().map(|s| json!({"type": s.algo, "key": s.key_name})).collect::<Vec<_>>(),
            "checksum": control.q1,
            "pkginfo": control.info,
            "scripts": control.scripts.iter().map(|(n, c)| json!({"name": n, "size": c.len()})).collect::<Vec<_>>(),
            "data": data.as_ref().ok(),
            "files": entries,
            "ok": problems.is_empty(),
            "problems": problems,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let i = &control.info;
        println!("file:       {origin}");
        println!("type:       apk package (v2)");
        println!("signature:  {verdict}");
        println!("checksum:   {}", control.q1);
        match &data {
            Ok(d) => println!(
                "datahash:   ok {} ({} bytes compressed, {} entries)",
                d.datahash, d.compressed_size, d.entries
            ),
            Err(_) => println!("datahash:   NOT VERIFIED"),
        }
        println!("name:       {}", i.name);
        println!("version:    {}", i.version);
        println!("arch:       {}", i.arch);
        println!("description: {}", i.description);
        println!("url:        {}", i.url);
        println!("license:    {}", i.license);
        println!("origin:     {}", i.origin);
        println!("maintainer: {}", i.maintainer);
        println!("builddate:  {}", i.build_date);
        println!("size:       {}", i.installed_size);
        let list = hyve::apk::Dep::format_list;
        println!("depends:    {}", list(&i.depends));
        println!("provides:   {}", list(&i.provides));
        println!("install_if: {}", list(&i.install_if));
        println!("replaces:   {}", list(&i.replaces));
        if let Some(p) = i.provider_priority {
            println!("provider_priority: {p}");
        }
        for (k, v) in &i.other {
            println!("{k}: {v}");
        }
        for (name, content) in &control.scripts {
            println!("script:     {name} ({} bytes)", content.len());
        }
        println!("files:");
        for e in &entries {
            println!("{}", entry_line(e));
        }
        for p in &problems {
            eprintln!("FAILED: {p}");
        }
    }
    Ok(problems.is_empty())
}

fn record_line(r: &IndexRecord) -> String {
    let list = hyve::apk::Dep::format_list;
    let mut line = format!("  {}-{} {} {} {}", r.name, r.version, r.arch, r.size, r.checksum);
    for (tag, deps) in [("D", &r.depends), ("p", &r.provides), ("i", &r.install_if)] {
        if !deps.is_empty() {
            line.push_str(&format!(" {tag}:[{}]", list(deps)));
        }
    }
    if let Some(why) = &r.uninstallable {
        line.push_str(&format!(" UNINSTALLABLE({why})"));
    }
    line
}

fn inspect_index(args: &Args, keyring: &hyve::apk::Keyring) -> Outcome {
    let origin = args.file.display().to_string();
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {origin}"))?;
    let index = read_index(&bytes, &origin, keyring)?;
    let ok = index.verdict.is_verified();
    if args.json {
        let doc = json!({
            "file": origin,
            "type": "apkindex",
            "signature": index.verdict,
            "signatures": index.signatures.iter().map(|s| json!({"type": s.algo, "key": s.key_name})).collect::<Vec<_>>(),
            "description": index.description,
            "count": index.records.len(),
            "records": index.records,
            "ok": ok,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("file:        {origin}");
        println!("type:        APKINDEX (v2)");
        println!("signature:   {}", index.verdict);
        println!("description: {}", index.description);
        println!("records:     {}", index.records.len());
        for r in &index.records {
            println!("{}", record_line(r));
        }
        if !ok {
            eprintln!("FAILED: signature: {}", index.verdict);
        }
    }
    Ok(ok)
}

fn inspect_initramfs(args: &Args) -> Outcome {
    let origin = args.file.display().to_string();
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {origin}"))?;
    let reader = hyve::output::compress::decompressor(BufReader::new(file)).with_context(|| origin.clone())?;
    let entries = hyve::output::cpio::read_entries(BufReader::new(reader))
        .with_context(|| format!("{origin}: reading the newc archive"))?;
    print_entries(&origin, ("initramfs", "initramfs (newc cpio)"), &entries, args.json)
}

/// A SquashFS root image (`output.root = "squashfs"`): every entry, its data read through.
fn inspect_root_image(args: &Args) -> Outcome {
    let origin = args.file.display().to_string();
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {origin}"))?;
    let (entries, _) = hyve::output::squashfs::read_image(BufReader::new(file), 0, &origin, |_| false)?;
    print_entries(&origin, ("root_image", "root image (SquashFS 4.0)"), &entries, args.json)
}

/// The entries of an initramfs or root image: (JSON type, text type).
fn print_entries(origin: &str, kind: (&str, &str), entries: &[CpioEntry], json: bool) -> Outcome {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"file": origin, "type": kind.0, "count": entries.len(), "entries": entries})
            )?
        );
    } else {
        println!("file:    {origin}");
        println!("type:    {}", kind.1);
        println!("entries: {}", entries.len());
        for e in entries {
            let link = e.link.as_ref().map(|l| format!(" -> {l}")).unwrap_or_default();
            let dev = if e.rdev_major != 0 || e.rdev_minor != 0 {
                format!(" ({},{})", e.rdev_major, e.rdev_minor)
            } else {
                String::new()
            };
            println!("  {:06o} {:>5}:{:<5} {:>3} {:>10} {}{link}{dev}", e.mode, e.uid, e.gid, e.nlink, e.size, e.name);
        }
    }
    Ok(true)
}

/// A disk image: its GPT (every CRC checked), the ESP's files, and the UKI's sections.
fn inspect_disk(args: &Args) -> Outcome {
    use hyve::output::disk;
    let origin = args.file.display().to_string();
    let mut file = std::fs::File::open(&args.file).with_context(|| format!("opening {origin}"))?;
    let size = file.metadata()?.len();
    let (disk_guid, parts) = disk::read_gpt(&mut file, &origin)?;
    let esp = parts.iter().find(|p| p.type_guid == disk::ESP_TYPE);
    let files = match esp {
        Some(esp) => disk::list_esp(&mut file, esp, &origin)?,
        None => vec![],
    };
    let uki = files.iter().find(|(p, _)| p.starts_with("EFI/BOOT/BOOT") && p.ends_with(".EFI")).map(|(p, _)| p.clone());
    let sections = match (esp, &uki) {
        (Some(esp), Some(path)) => {
            let head = disk::read_esp_file(&mut file, esp, path, 64 << 10)?;
            hyve::output::uki::sections(&head).map_err(|e| anyhow::anyhow!("{origin}: {path}: {e}"))?
        }
        _ => vec![],
    };
    if args.json {
        let doc = json!({
            "file": origin,
            "type": "disk",
            "size": size,
            "disk_guid": disk_guid,
            "partitions": parts.iter().map(|p| json!({
                "type": p.type_guid, "guid": p.guid, "first_lba": p.first_lba, "last_lba": p.last_lba, "name": p.name,
            })).collect::<Vec<_>>(),
            "esp_files": files.iter().map(|(p, s)| json!({"path": p, "size": s})).collect::<Vec<_>>(),
            "uki": uki.as_ref().map(|u| json!({"path": u, "sections": sections.iter().map(|s| json!({
                "name": s.name, "virtual_address": s.virtual_address, "virtual_size": s.virtual_size,
                "raw_offset": s.raw_offset, "raw_size": s.raw_size,
            })).collect::<Vec<_>>()})),
            "ok": true,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("file:       {origin}");
        println!("type:       raw disk, GPT (headers, tables and backup checked)");
        println!("size:       {size} bytes ({} MiB)", size / disk::MIB);
        println!("disk GUID:  {disk_guid}");
        println!("partitions:");
        for (i, p) in parts.iter().enumerate() {
            let kind = match p.type_guid.as_str() {
                disk::ESP_TYPE => "EFI System",
                disk::LINUX_DATA_TYPE => "Linux data",
                disk::ROOT_X86_64_TYPE => "root x86-64",
                disk::ROOT_ARM64_TYPE => "root arm64",
                _ => "other",
            };
            let mib = (p.last_lba + 1 - p.first_lba) * disk::SECTOR / disk::MIB;
            println!(
                "  {} {:>8}..{:<8} {mib:>6} MiB  {kind:<10} {:<22} {}",
                i + 1,
                p.first_lba,
                p.last_lba,
                p.name,
                p.guid
            );
        }
        if esp.is_some() {
            println!("ESP files:");
            for (path, size) in &files {
                match size {
                    Some(n) => println!("  {n:>12}  {path}"),
                    None => println!("  {:>12}  {path}", "dir"),
                }
            }
        }
        if let Some(u) = &uki {
            println!("UKI {u} sections:");
            for s in &sections {
                println!(
                    "  {:<9} va {:#010x} size {:>10}  file {:#010x} raw {:>10}",
                    s.name, s.virtual_address, s.virtual_size, s.raw_offset, s.raw_size
                );
            }
        }
    }
    Ok(true)
}
