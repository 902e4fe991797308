//! `hyve disk create`: a persistent data disk the guest formats on first boot.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use hyve::datadisk::{self, UserFile};
use hyve::dockertls;

use super::Outcome;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a sparse raw disk that the guest partitions and formats (ext4, label hyve-data) on first boot
    Create(CreateArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The disk file to write (never overwritten)
    file: PathBuf,
    /// Disk size: 20G, 512M, 1T (powers of 1024; at least 64M). Sparse: costs nothing until used
    #[arg(long)]
    size: String,
    /// An OpenSSH public key file, installed as root's authorized_keys (dev profile's sshd)
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// Put SRC on the data disk at DEST (relative to /var/lib/hyve; e.g. hostname, bootlocal.sh). Repeatable
    #[arg(long = "file", value_name = "SRC:DEST")]
    files: Vec<String>,
    /// The Docker API over TLS: DIR becomes a DOCKER_CERT_PATH (a CA and a client certificate,
    /// made here on first use and reused after), and the guest gets the CA to issue its server
    /// certificate with. No private key ever appears on the guest's console
    #[arg(long, value_name = "DIR")]
    docker_certs: Option<PathBuf>,
}

pub fn run(cmd: Command) -> Outcome {
    let Command::Create(a) = cmd;
    let size = datadisk::parse_size(&a.size)?;
    let mut files = Vec::new();
    if let Some(key) = &a.ssh_key {
        files.push(UserFile::ssh_key(key)?);
    }
    for spec in &a.files {
        let (src, dest) = spec
            .rsplit_once(':')
            .with_context(|| format!("--file {spec:?}: expected SRC:DEST, e.g. ./myhost:hostname"))?;
        let meta = std::fs::metadata(src).with_context(|| format!("--file {spec:?}: cannot read {src}"))?;
        anyhow::ensure!(meta.is_file(), "--file {spec:?}: {src} is not a regular file");
        let content = std::fs::read(src).with_context(|| format!("--file {spec:?}: cannot read {src}"))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        files.push(UserFile::new(dest, content, mode)?);
    }
    // Before any certificate is made for it.
    if a.file.symlink_metadata().is_ok() {
        return Err(datadisk::DataDiskError::Exists { path: a.file.display().to_string() }.into());
    }
    let bundle = a.docker_certs.as_deref().map(dockertls::ensure).transpose()?;
    if let Some(b) = &bundle {
        files.extend(b.user_data()?);
    }
    datadisk::create(&a.file, size, &files)?;
    let listed = files.iter().map(|f| f.dest.as_str()).collect::<Vec<_>>();
    eprintln!(
        "hyve: wrote {} ({} sparse; user data: {}); the guest formats it on first boot",
        a.file.display(),
        a.size,
        if listed.is_empty() { "none".to_string() } else { listed.join(", ") }
    );
    if let Some(b) = bundle {
        eprintln!(
            "hyve: Docker client certificates {} in {d}: DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={d}",
            if b.created { "made" } else { "reused" },
            d = b.dir.display()
        );
    }
    Ok(true)
}
