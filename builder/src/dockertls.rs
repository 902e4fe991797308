//! The Docker API's TLS identities, made on the host so that no private key ever has to cross
//! a console or a log (vfkit, Lima and CI jobs keep console output in files).
//!
//! `hyve disk create --docker-certs DIR` makes, once per DIR: a root CA (`ca.pem`,
//! `ca-key.pem`, which never leaves the host) and a client certificate signed by it
//! (`cert.pem`, `key.pem`) — DIR is then a complete `DOCKER_CERT_PATH`. Each disk gets its own
//! server CA, an intermediate signed by the root that may sign only server certificates
//! (path length 0, extended key usage serverAuth): the user data carries it with its key and
//! the root certificate (`docker-tls/`). The guest issues its server certificate from it for
//! the names and addresses it has at boot, and dockerd checks client certificates against the
//! root. A guest's key can thus sign no client certificate that another guest from the same
//! DIR would take. EC P-256 keys (rcgen), like the guest's openssl makes.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::datadisk::UserFile;
use crate::fsutil;

/// The files of a complete `DOCKER_CERT_PATH` made by hyve: name, mode, PEM label.
pub const FILES: [(&str, u32, &str); 4] = [
    ("ca.pem", 0o644, "CERTIFICATE"),
    ("ca-key.pem", 0o600, "PRIVATE KEY"),
    ("cert.pem", 0o644, "CERTIFICATE"),
    ("key.pem", 0o600, "PRIVATE KEY"),
];
/// Where the user data puts the guest's TLS material (relative to its data disk).
pub const USER_DATA_DIR: &str = "docker-tls";

/// How long the CAs and the client certificate are valid.
const CA_DAYS: i64 = 3650;
const CLIENT_DAYS: i64 = 825;
/// The root's subject: the issuer every certificate it signs names.
const ROOT_NAME: &str = "hyve Docker CA";

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TlsError {
    /// DIR holds part of a bundle: using it could pair a client with the wrong CA.
    #[error("{dir} has {present} but not {missing}; point --docker-certs at an empty or new directory, or restore the missing files")]
    Incomplete { dir: String, present: String, missing: String },
    /// A file of the bundle is not what hyve wrote there.
    #[error("{path}: expected a PEM {expected}; point --docker-certs at an empty or new directory")]
    NotPem { path: String, expected: &'static str },
    #[error("making the Docker TLS certificates: {source}")]
    Generate {
        #[from]
        #[serde(serialize_with = "crate::serialize_display")]
        source: rcgen::Error,
    },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    #[serde(untagged)]
    UserData(#[from] crate::datadisk::DataDiskError),
}

/// A `DOCKER_CERT_PATH` directory with a root CA and a client certificate.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Whether this call made it (else it was there already).
    pub created: bool,
}

impl Bundle {
    /// A new server CA for one disk, signed by the root, with the root certificate: the
    /// guest's part, as user-data files.
    pub fn user_data(&self) -> Result<Vec<UserFile>, TlsError> {
        let root_cert = read(&self.dir.join("ca.pem"))?;
        let root_key_path = self.dir.join("ca-key.pem");
        let root_key_pem = String::from_utf8_lossy(&read(&root_key_path)?).into_owned();
        let root_key = KeyPair::from_pem(&root_key_pem)
            .map_err(|_| TlsError::NotPem { path: root_key_path.display().to_string(), expected: "PRIVATE KEY" })?;
        let root = Issuer::new(params(ROOT_NAME, CA_DAYS)?, &root_key);
        let key = KeyPair::generate()?;
        let mut server_ca = params("hyve Docker server CA", CA_DAYS)?;
        server_ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        server_ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        server_ca.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server_ca.signed_by(&key, &root)?;
        let file =
            |name: &str, content: Vec<u8>, mode: u32| UserFile::new(&format!("{USER_DATA_DIR}/{name}"), content, mode);
        Ok(vec![
            file("ca.pem", root_cert, 0o644)?,
            file("server-ca.pem", cert.pem().into_bytes(), 0o644)?,
            file("server-ca-key.pem", key.serialize_pem().into_bytes(), 0o600)?,
        ])
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    Ok(std::fs::read(path).map_err(fsutil::at(path))?)
}

/// The bundle in `dir`: checked when all its files are there, made when none is.
pub fn ensure(dir: &Path) -> Result<Bundle, TlsError> {
    let (present, missing): (Vec<&str>, Vec<&str>) =
        FILES.iter().map(|(n, _, _)| *n).partition(|n| dir.join(n).exists());
    if missing.is_empty() {
        for (name, _, label) in FILES {
            let text = read(&dir.join(name))?;
            if !String::from_utf8_lossy(&text).contains(&format!("-----BEGIN {label}-----")) {
                return Err(TlsError::NotPem { path: dir.join(name).display().to_string(), expected: label });
            }
        }
        return Ok(Bundle { dir: dir.to_path_buf(), created: false });
    }
    if !present.is_empty() {
        return Err(TlsError::Incomplete {
            dir: dir.display().to_string(),
            present: present.join(", "),
            missing: missing.join(", "),
        });
    }
    let io = fsutil::at(dir);
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
    for ((name, mode, _), text) in FILES.iter().zip(generate()?) {
        let path = dir.join(name);
        fsutil::write_atomic(&path, text.as_bytes(), *mode).map_err(fsutil::at(&path))?;
    }
    Ok(Bundle { dir: dir.to_path_buf(), created: true })
}

/// Certificate parameters valid from an hour ago (guest clocks lag) for `days`.
fn params(common_name: &str, days: i64) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    // A positive 128-bit serial with no leading zero byte (RFC 5280 4.1.2.2).
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(p)
}

/// A new root CA and a client certificate signed by it, in the order of [`FILES`].
fn generate() -> Result<[String; 4], TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = params(ROOT_NAME, CA_DAYS)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let client_key = KeyPair::generate()?;
    let mut client = params("hyve docker client", CLIENT_DAYS)?;
    client.is_ca = IsCa::ExplicitNoCa;
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;
    Ok([ca_cert.pem(), ca_key.serialize_pem(), client_cert.pem(), client_key.serialize_pem()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `openssl verify` (an independent checker) of `cert` against the root in `dir`, with
    /// `untrusted` intermediates, for `purpose`.
    fn openssl_verifies(dir: &Path, purpose: &str, untrusted: Option<&Path>, cert: &Path) -> bool {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["verify", "-purpose", purpose, "-CAfile"]).arg(dir.join("ca.pem"));
        if let Some(u) = untrusted {
            cmd.arg("-untrusted").arg(u);
        }
        cmd.arg(cert).output().expect("openssl").status.success()
    }

    /// The guest's `tls_fresh FILE` (boot.d/27-docker-early.sh), run by the host's shell with
    /// an `openssl` that only records its calls and answers `openssl_says`: true or false, and
    /// whether openssl was asked.
    fn guest_tls_fresh(cert: &Path, openssl_says: bool) -> (bool, bool) {
        let function = crate::builtin::shell_function("overlay/docker/etc/hyve/boot.d/27-docker-early.sh", "tls_fresh");
        let bin = cert.parent().unwrap().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = bin.join("openssl.log");
        let _ = std::fs::remove_file(&log);
        let fake = bin.join("openssl");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$*\" >>'{}'\nexit {}\n", log.display(), u8::from(!openssl_says)),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{function}\ntls_fresh \"$1\""))
            .arg("sh")
            .arg(cert)
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .output()
            .unwrap();
        assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
        let asked = std::fs::read_to_string(&log).ok();
        if let Some(args) = &asked {
            assert_eq!(args.trim(), format!("x509 -in {} -noout -checkend 2592000", cert.display()));
        }
        (o.status.success(), asked.is_some())
    }

    #[test]
    fn the_guest_reads_a_certificates_end_from_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let cert = d.path().join("server-cert.pem");
        let expires = d.path().join("server-cert.pem.expires");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let days = |n: u64| (now + n * 86400).to_string();
        assert_eq!(guest_tls_fresh(&cert, true), (false, false), "no certificate");
        std::fs::write(&cert, "a certificate").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&cert).unwrap().set_modified(old).unwrap();
        std::fs::write(&expires, days(40)).unwrap();
        assert_eq!(guest_tls_fresh(&cert, false), (true, false), "40 days left, written when it was made");
        std::fs::write(&expires, days(29)).unwrap();
        assert_eq!(guest_tls_fresh(&cert, true), (false, false), "29 days left: renew");
        std::fs::write(&expires, "not a number").unwrap();
        assert_eq!(guest_tls_fresh(&cert, true), (false, false), "an unreadable end: renew");
        std::fs::write(&expires, days(40)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&cert)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(guest_tls_fresh(&cert, false), (false, true), "a certificate replaced since: openssl reads it");
        std::fs::remove_file(&expires).unwrap();
        assert_eq!(guest_tls_fresh(&cert, true), (true, true), "no end beside it: openssl reads it");
    }

    #[test]
    fn made_once_then_reused_and_never_mixed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("certs");
        let made = ensure(&dir).unwrap();
        assert!(made.created);
        for (name, mode, _) in FILES {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(openssl_verifies(&dir, "sslclient", None, &dir.join("cert.pem")), "the client certificate");
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        let again = ensure(&dir).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca, "an existing bundle is kept");

        std::fs::remove_file(dir.join("key.pem")).unwrap();
        let e = ensure(&dir).unwrap_err().to_string();
        assert!(e.contains("has ca.pem, ca-key.pem, cert.pem but not key.pem"), "{e}");
        std::fs::write(dir.join("key.pem"), "not a key").unwrap();
        let e = ensure(&dir).unwrap_err().to_string();
        assert!(e.contains("key.pem: expected a PEM PRIVATE KEY"), "{e}");
    }

    #[test]
    fn each_disk_gets_a_server_ca_that_cannot_make_clients() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("certs");
        let bundle = ensure(&dir).unwrap();
        let files = bundle.user_data().unwrap();
        let dests: Vec<&str> = files.iter().map(|f| f.dest.as_str()).collect();
        assert_eq!(dests, ["docker-tls/ca.pem", "docker-tls/server-ca.pem", "docker-tls/server-ca-key.pem"]);
        assert_eq!(files[0].content, std::fs::read(dir.join("ca.pem")).unwrap(), "the root, for client checks");
        assert_eq!(files[2].mode, 0o600);
        let root_key = std::fs::read(dir.join("ca-key.pem")).unwrap();
        assert!(files.iter().all(|f| f.content != root_key), "the root's key stays on the host");
        assert_ne!(bundle.user_data().unwrap()[1].content, files[1].content, "a new server CA for every disk");
        let intermediate = d.path().join("server-ca.pem");
        std::fs::write(&intermediate, &files[1].content).unwrap();
        // What a guest can do with its key: a server certificate the host accepts, but no
        // client certificate any guest would take.
        let key = KeyPair::from_pem(&String::from_utf8_lossy(&files[2].content)).unwrap();
        let mut ca_params = params("hyve Docker server CA", 1).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let issuer = Issuer::new(ca_params, &key);
        for (name, usage, purpose, accepted) in [
            ("server.pem", ExtendedKeyUsagePurpose::ServerAuth, "sslserver", true),
            ("forged-client.pem", ExtendedKeyUsagePurpose::ClientAuth, "sslclient", false),
        ] {
            let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            leaf.extended_key_usages = vec![usage];
            let cert = leaf.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
            std::fs::write(d.path().join(name), cert.pem()).unwrap();
            let verified = openssl_verifies(&dir, purpose, Some(&intermediate), &d.path().join(name));
            assert_eq!(verified, accepted, "{name}");
        }
    }
}
