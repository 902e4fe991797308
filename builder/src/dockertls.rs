//! The Docker API's TLS identities, made on the host so that no private key ever has to cross
//! a console or a log (vfkit, Lima and CI jobs keep console output in files).
//!
//! `hyve disk create --docker-certs DIR` makes, once per DIR: a CA (`ca.pem`, `ca-key.pem`)
//! and a client certificate signed by it (`cert.pem`, `key.pem`) — DIR is then a complete
//! `DOCKER_CERT_PATH`. The CA also goes into the data disk's user data (`docker-tls/`), from
//! which the guest issues its own server certificate for the names and addresses it has at
//! boot, and with which dockerd checks client certificates. The same DIR may serve several
//! disks. EC P-256 keys (rcgen), like the guest's openssl makes.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::datadisk::UserFile;
use crate::fsutil;

/// The files of a complete `DOCKER_CERT_PATH` made by hyve, and their modes.
pub const FILES: [(&str, u32); 4] = [("ca.pem", 0o644), ("ca-key.pem", 0o600), ("cert.pem", 0o644), ("key.pem", 0o600)];
/// Where the user data puts the CA for the guest (relative to its data disk).
pub const USER_DATA_DIR: &str = "docker-tls";

/// How long the CA and the client certificate are valid.
const CA_DAYS: i64 = 3650;
const CLIENT_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// DIR holds part of a bundle: using it could pair a client with the wrong CA.
    #[error("{dir} has {present} but not {missing}; point --docker-certs at an empty or new directory, or restore the missing files")]
    Incomplete { dir: String, present: String, missing: String },
    /// A file of the bundle is not what hyve wrote there.
    #[error("{path}: expected a PEM {expected}; point --docker-certs at an empty or new directory")]
    NotPem { path: String, expected: &'static str },
    #[error("making the Docker TLS certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A `DOCKER_CERT_PATH` directory with a CA and a client certificate.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Whether this call made it (else it was there already).
    pub created: bool,
}

impl Bundle {
    /// The CA (certificate and key) for the guest, as user-data files.
    pub fn user_data(&self) -> Result<Vec<UserFile>, TlsError> {
        ["ca.pem", "ca-key.pem"]
            .into_iter()
            .map(|name| {
                let mode = FILES.iter().find(|(n, _)| *n == name).map_or(0o600, |(_, m)| *m);
                let content = read(&self.dir.join(name))?;
                Ok(UserFile { dest: format!("{USER_DATA_DIR}/{name}"), content, mode })
            })
            .collect()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.display().to_string(), source })
}

/// The bundle in `dir`: checked when all its files are there, made when none is.
pub fn ensure(dir: &Path) -> Result<Bundle, TlsError> {
    let (present, missing): (Vec<&str>, Vec<&str>) = FILES.iter().map(|(n, _)| *n).partition(|n| dir.join(n).exists());
    if missing.is_empty() {
        for (name, expected) in [
            ("ca.pem", "CERTIFICATE"),
            ("ca-key.pem", "PRIVATE KEY"),
            ("cert.pem", "CERTIFICATE"),
            ("key.pem", "PRIVATE KEY"),
        ] {
            let text = read(&dir.join(name))?;
            if !String::from_utf8_lossy(&text).contains(&format!("-----BEGIN {expected}-----")) {
                return Err(TlsError::NotPem { path: dir.join(name).display().to_string(), expected });
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
    let io = |source| TlsError::Io { path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
    for (name, text) in generate()? {
        let mode = FILES.iter().find(|(n, _)| *n == name).map_or(0o600, |(_, m)| *m);
        let path = dir.join(name);
        fsutil::write_atomic(&path, text.as_bytes(), mode)
            .map_err(|source| TlsError::Io { path: path.display().to_string(), source })?;
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

/// A new CA and a client certificate signed by it, as (file name, PEM text).
fn generate() -> Result<Vec<(&'static str, String)>, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = params("hyve Docker CA", CA_DAYS)?;
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
    Ok(vec![
        ("ca.pem", ca_cert.pem()),
        ("ca-key.pem", ca_key.serialize_pem()),
        ("cert.pem", client_cert.pem()),
        ("key.pem", client_key.serialize_pem()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_reused_and_never_mixed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("certs");
        let made = ensure(&dir).unwrap();
        assert!(made.created);
        for (name, mode) in FILES {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        let again = ensure(&dir).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca, "an existing bundle is kept");
        let files = again.user_data().unwrap();
        assert_eq!(
            files.iter().map(|f| f.dest.as_str()).collect::<Vec<_>>(),
            ["docker-tls/ca.pem", "docker-tls/ca-key.pem"]
        );
        assert_eq!((files[0].mode, files[1].mode), (0o644, 0o600));
        assert!(String::from_utf8_lossy(&files[1].content).contains("-----BEGIN PRIVATE KEY-----"));

        std::fs::remove_file(dir.join("key.pem")).unwrap();
        let e = ensure(&dir).unwrap_err().to_string();
        assert!(e.contains("has ca.pem, ca-key.pem, cert.pem but not key.pem"), "{e}");
        std::fs::write(dir.join("key.pem"), "not a key").unwrap();
        let e = ensure(&dir).unwrap_err().to_string();
        assert!(e.contains("key.pem: expected a PEM PRIVATE KEY"), "{e}");
    }
}
