//! RSA PKCS#1 v1.5 signatures as apk-tools and abuild use them, and the trusted keyring.
//!
//! A signature travels as a tar entry named `.SIGN.<TYPE>.<keyname>` whose content is the raw
//! signature; `RSA` means SHA-1, `RSA256` SHA-256, `RSA512` SHA-512. `keyname` is the file
//! name of the public key (`alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub`), which is
//! how the keyring finds the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use super::Arch;

/// The digest a signature was made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum SigAlgo {
    /// `.SIGN.RSA.` — SHA-1, what Alpine's own indexes and packages use.
    #[serde(rename = "RSA")]
    RsaSha1,
    /// `.SIGN.RSA256.`
    #[serde(rename = "RSA256")]
    RsaSha256,
    /// `.SIGN.RSA512.`
    #[serde(rename = "RSA512")]
    RsaSha512,
}

impl SigAlgo {
    pub fn tag(self) -> &'static str {
        match self {
            SigAlgo::RsaSha1 => "RSA",
            SigAlgo::RsaSha256 => "RSA256",
            SigAlgo::RsaSha512 => "RSA512",
        }
    }

    pub fn from_tag(tag: &str) -> Option<SigAlgo> {
        match tag {
            "RSA" => Some(SigAlgo::RsaSha1),
            "RSA256" => Some(SigAlgo::RsaSha256),
            "RSA512" => Some(SigAlgo::RsaSha512),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> (Pkcs1v15Sign, Vec<u8>) {
        match self {
            SigAlgo::RsaSha1 => (Pkcs1v15Sign::new::<Sha1>(), Sha1::digest(data).to_vec()),
            SigAlgo::RsaSha256 => (Pkcs1v15Sign::new::<Sha256>(), Sha256::digest(data).to_vec()),
            SigAlgo::RsaSha512 => (Pkcs1v15Sign::new::<Sha512>(), Sha512::digest(data).to_vec()),
        }
    }
}

impl fmt::Display for SigAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// One signature entry found in a package or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub algo: SigAlgo,
    pub key_name: String,
    pub bytes: Vec<u8>,
}

impl Signature {
    /// Parses a `.SIGN.<TYPE>.<keyname>` entry name; `None` if it is not a signature entry.
    pub fn parse_entry_name(name: &str) -> Option<(SigAlgo, &str)> {
        let rest = name.strip_prefix(".SIGN.")?;
        let (tag, key) = rest.split_once('.')?;
        Some((SigAlgo::from_tag(tag)?, key))
    }

    pub fn entry_name(&self) -> String {
        format!(".SIGN.{}.{}", self.algo.tag(), self.key_name)
    }
}

/// Largest signature member read (decompressed); a real one is a few hundred bytes.
pub const MAX_SIGNATURE_MEMBER: u64 = 1 << 20;

/// Whether a first gzip member's tar entries are a signature member (else the file is
/// unsigned and the member is the control or index member itself).
pub fn is_signature_member(entries: &[(String, u8, Vec<u8>)]) -> bool {
    entries.first().is_some_and(|(n, _, _)| n.starts_with(".SIGN."))
}

/// The signatures of a signature member (its tar entries, `decompressed` bytes in all), read
/// the same way for packages and indexes: `.SIGN.RSA*.<key>` entries are signatures, other
/// `.SIGN.` types (DSA, future ones) are skipped as apk does, anything else is an error.
pub fn read_signature_member(
    entries: Vec<(String, u8, Vec<u8>)>,
    decompressed: usize,
    origin: &str,
) -> super::Result<Vec<Signature>> {
    if decompressed as u64 > MAX_SIGNATURE_MEMBER {
        return Err(super::Error::TooLarge {
            origin: origin.to_string(),
            member: "signature member",
            limit: MAX_SIGNATURE_MEMBER,
        });
    }
    let mut signatures = Vec::new();
    for (name, _, bytes) in entries {
        match Signature::parse_entry_name(&name) {
            Some((algo, key)) => signatures.push(Signature { algo, key_name: key.to_string(), bytes }),
            None if name.starts_with(".SIGN.") => {}
            None => {
                return Err(super::Error::Format {
                    origin: origin.to_string(),
                    detail: format!("unexpected entry {name:?} in the signature member"),
                })
            }
        }
    }
    Ok(signatures)
}

/// How a set of signatures fared against the keyring.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// A trusted key verified its signature.
    Verified { key_name: String, algo: SigAlgo },
    /// A trusted key's signature did not verify: the signed bytes were changed.
    Invalid { key_name: String, algo: SigAlgo },
    /// Signatures exist, but none by a key in the keyring.
    Untrusted { key_names: Vec<String> },
    /// No signature at all.
    Unsigned,
}

impl Verdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, Verdict::Verified { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Verified { key_name, algo } => write!(f, "verified ({algo}) by {key_name}"),
            Verdict::Invalid { key_name, algo } => {
                write!(f, "INVALID: the {algo} signature by trusted key {key_name} does not match the signed bytes")
            }
            Verdict::Untrusted { key_names } => write!(
                f,
                "UNTRUSTED: signed by {}, which is not in the keyring (pass --key FILE to trust a public key)",
                key_names.join(", ")
            ),
            Verdict::Unsigned => write!(f, "UNSIGNED: no .SIGN.* entry found"),
        }
    }
}

/// Key file errors.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        #[serde(serialize_with = "crate::serialize_display")]
        source: std::io::Error,
    },
    /// The file is not a PEM RSA key of the expected kind.
    #[error(
        "{path} is not a PEM RSA {kind} key ({detail}); expected a file made by `hyve repo keygen` or `abuild-keygen`"
    )]
    Parse {
        path: String,
        #[serde(rename = "key_kind")]
        kind: &'static str,
        detail: String,
    },
    /// The key name cannot appear in a `.SIGN.*` tar entry.
    #[error("key name {name:?} is not usable as a signature name: it must be a plain file name ending in .pub")]
    BadName { name: String },
    /// Key generation or signing failed inside the RSA implementation.
    #[error("RSA operation failed: {source}")]
    Rsa {
        #[from]
        #[serde(serialize_with = "crate::serialize_display")]
        source: rsa::Error,
    },
    /// Writing a key file failed.
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        #[serde(serialize_with = "crate::serialize_display")]
        source: std::io::Error,
    },
}

/// Alpine's signing keys, built in: (file name, PEM, arches it signs).
const ALPINE_KEYS: &[(&str, &str, &[Arch])] = &[
    (
        "alpine-devel@lists.alpinelinux.org-4a6a0840.rsa.pub",
        include_str!("../../keys/alpine-devel@lists.alpinelinux.org-4a6a0840.rsa.pub"),
        &[Arch::X86_64],
    ),
    (
        "alpine-devel@lists.alpinelinux.org-5261cecb.rsa.pub",
        include_str!("../../keys/alpine-devel@lists.alpinelinux.org-5261cecb.rsa.pub"),
        &[Arch::X86_64],
    ),
    (
        "alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub",
        include_str!("../../keys/alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub"),
        &[Arch::X86_64],
    ),
    (
        "alpine-devel@lists.alpinelinux.org-58199dcc.rsa.pub",
        include_str!("../../keys/alpine-devel@lists.alpinelinux.org-58199dcc.rsa.pub"),
        &[Arch::Aarch64],
    ),
    (
        "alpine-devel@lists.alpinelinux.org-616ae350.rsa.pub",
        include_str!("../../keys/alpine-devel@lists.alpinelinux.org-616ae350.rsa.pub"),
        &[Arch::Aarch64],
    ),
];

/// Public keys trusted to sign indexes and packages, looked up by key name.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, RsaPublicKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl Keyring {
    pub fn empty() -> Self {
        Keyring::default()
    }

    /// Alpine's keys for `arch` (all of them when `arch` is `None`).
    pub fn alpine(arch: Option<Arch>) -> Self {
        let mut ring = Keyring::empty();
        for (name, pem, arches) in ALPINE_KEYS {
            if arch.is_none_or(|a| arches.contains(&a)) {
                let key = RsaPublicKey::from_public_key_pem(pem).expect("built-in Alpine key is valid PEM");
                ring.keys.insert((*name).to_string(), key);
            }
        }
        ring
    }

    /// Alpine's keys for `arch` (all arches when `None`) plus the public keys in `files`.
    pub fn with_files(arch: Option<Arch>, files: &[std::path::PathBuf]) -> Result<Self, KeyError> {
        let mut ring = Keyring::alpine(arch);
        for f in files {
            ring.add_file(f)?;
        }
        Ok(ring)
    }

    /// Trusts the public key in `path`; its file name is its key name.
    pub fn add_file(&mut self, path: &Path) -> Result<String, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let key = parse_public_pem(&pem).map_err(|detail| KeyError::Parse { path: shown, kind: "public", detail })?;
        let name = key_name_of(path)?;
        self.keys.insert(name.clone(), key);
        Ok(name)
    }

    pub fn add(&mut self, name: &str, key: RsaPublicKey) {
        self.keys.insert(name.to_string(), key);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// apk's rule: the first signature whose key is trusted decides.
    pub fn verify(&self, signatures: &[Signature], signed: &[u8]) -> Verdict {
        let Some(sig) = signatures.iter().find(|s| self.keys.contains_key(&s.key_name)) else {
            if signatures.is_empty() {
                return Verdict::Unsigned;
            }
            return Verdict::Untrusted { key_names: signatures.iter().map(|s| s.key_name.clone()).collect() };
        };
        let key = &self.keys[&sig.key_name];
        let (scheme, digest) = sig.algo.digest(signed);
        let (key_name, algo) = (sig.key_name.clone(), sig.algo);
        match key.verify(scheme, &digest, &sig.bytes) {
            Ok(()) => Verdict::Verified { key_name, algo },
            Err(_) => Verdict::Invalid { key_name, algo },
        }
    }
}

fn parse_public_pem(pem: &str) -> Result<RsaPublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    RsaPublicKey::from_public_key_pem(pem).or_else(|e| RsaPublicKey::from_pkcs1_pem(pem).map_err(|_| e.to_string()))
}

/// The key name a signature made with this key file carries: its file name.
fn key_name_of(path: &Path) -> Result<String, KeyError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    if name.is_empty() || name.contains('/') || name.len() > 80 {
        return Err(KeyError::BadName { name });
    }
    Ok(name)
}

/// A private key and the public key name its signatures announce.
pub struct SigningKey {
    key: RsaPrivateKey,
    /// Name of the public key file (`<private key file>.pub`, as abuild-sign assumes).
    pub key_name: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("key_name", &self.key_name).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PEM private key (PKCS#8 or PKCS#1). The signature name is the private key's
    /// file name plus `.pub`, matching the public key `hyve repo keygen` writes beside it.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let key = RsaPrivateKey::from_pkcs8_pem(&pem)
            .or_else(|e| RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|_| e.to_string()))
            .map_err(|detail| KeyError::Parse { path: shown, kind: "private", detail })?;
        let key_name = format!("{}.pub", key_name_of(path)?);
        Ok(SigningKey { key, key_name })
    }

    pub fn public_key(&self) -> RsaPublicKey {
        self.key.to_public_key()
    }

    pub fn sign(&self, algo: SigAlgo, data: &[u8]) -> Result<Signature, KeyError> {
        let (scheme, digest) = algo.digest(data);
        let bytes = self.key.sign(scheme, &digest)?;
        Ok(Signature { algo, key_name: self.key_name.clone(), bytes })
    }

    /// Generates a new key. Alpine uses 4096 bits; tests may use fewer to save time.
    pub fn generate(key_name: &str, bits: usize) -> Result<Self, KeyError> {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)?;
        Ok(SigningKey { key, key_name: key_name.to_string() })
    }

    /// Writes `<dir>/<name>.rsa` (PKCS#8, mode 0600) and `<dir>/<name>.rsa.pub` (SPKI),
    /// each through a temporary file renamed into place. Refuses to overwrite.
    pub fn keygen(dir: &Path, name: &str, bits: usize) -> Result<(std::path::PathBuf, std::path::PathBuf), KeyError> {
        let private_path = dir.join(format!("{name}.rsa"));
        let public_path = dir.join(format!("{name}.rsa.pub"));
        let key_name = key_name_of(&public_path)?;
        for p in [&private_path, &public_path] {
            if p.exists() {
                return Err(KeyError::Write {
                    path: p.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "refusing to overwrite an existing key",
                    ),
                });
            }
        }
        let key = Self::generate(&key_name, bits)?;
        let private_pem = key.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::from(rsa::Error::from(e)))?;
        let public_pem = key.public_key().to_public_key_pem(LineEnding::LF).map_err(|e| KeyError::Parse {
            path: public_path.display().to_string(),
            kind: "public",
            detail: e.to_string(),
        })?;
        crate::fsutil::write_atomic(&private_path, private_pem.as_bytes(), 0o600)
            .map_err(|source| KeyError::Write { path: private_path.display().to_string(), source })?;
        crate::fsutil::write_atomic(&public_path, public_pem.as_bytes(), 0o644)
            .map_err(|source| KeyError::Write { path: public_path.display().to_string(), source })?;
        Ok((private_path, public_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_members_read_alike_for_packages_and_indexes() {
        let entry = |n: &str| (n.to_string(), b'0', vec![1, 2, 3]);
        let sigs = read_signature_member(
            vec![entry(".SIGN.RSA256.a.rsa.pub"), entry(".SIGN.DSA.old.pub"), entry(".SIGN.RSA.b.rsa.pub")],
            3000,
            "x",
        )
        .unwrap();
        let names: Vec<_> = sigs.iter().map(|s| (s.algo, s.key_name.as_str())).collect();
        assert_eq!(names, [(SigAlgo::RsaSha256, "a.rsa.pub"), (SigAlgo::RsaSha1, "b.rsa.pub")]);
        let e = read_signature_member(vec![entry(".SIGN.RSA.a.rsa.pub"), entry(".PKGINFO")], 3000, "p.apk");
        assert!(e.unwrap_err().to_string().contains("p.apk"), "an entry that is no signature is refused");
        let e = read_signature_member(vec![entry(".SIGN.RSA.a.rsa.pub")], 2 << 20, "big");
        assert!(matches!(e, Err(super::super::Error::TooLarge { .. })));
        assert!(is_signature_member(&[entry(".SIGN.RSA.a")]) && !is_signature_member(&[entry(".PKGINFO")]));
    }

    #[test]
    fn builtin_keys_by_arch() {
        let x86: Vec<_> = Keyring::alpine(Some(Arch::X86_64)).names().map(str::to_owned).collect();
        assert_eq!(x86.len(), 3);
        assert!(x86.iter().any(|n| n.contains("6165ee59")));
        let arm: Vec<_> = Keyring::alpine(Some(Arch::Aarch64)).names().map(str::to_owned).collect();
        assert_eq!(arm.len(), 2);
        assert!(arm.iter().any(|n| n.contains("616ae350")));
        assert_eq!(Keyring::alpine(None).names().count(), 5);
    }

    #[test]
    fn entry_names() {
        let (algo, key) = Signature::parse_entry_name(".SIGN.RSA256.me.rsa.pub").unwrap();
        assert_eq!((algo, key), (SigAlgo::RsaSha256, "me.rsa.pub"));
        assert_eq!(Signature::parse_entry_name(".SIGN.RSA.k.rsa.pub").unwrap().0, SigAlgo::RsaSha1);
        assert_eq!(Signature::parse_entry_name(".SIGN.RSA512.k").unwrap().0, SigAlgo::RsaSha512);
        assert!(Signature::parse_entry_name(".SIGN.DSA.k").is_none());
        assert!(Signature::parse_entry_name(".PKGINFO").is_none());
    }

    #[test]
    fn sign_and_verify_every_algo() {
        let key = SigningKey::generate("test.rsa.pub", 1024).unwrap();
        let mut ring = Keyring::empty();
        ring.add("test.rsa.pub", key.public_key());
        for algo in [SigAlgo::RsaSha1, SigAlgo::RsaSha256, SigAlgo::RsaSha512] {
            let sig = key.sign(algo, b"hello").unwrap();
            assert_eq!(
                ring.verify(std::slice::from_ref(&sig), b"hello"),
                Verdict::Verified { key_name: "test.rsa.pub".into(), algo }
            );
            assert_eq!(
                ring.verify(std::slice::from_ref(&sig), b"hellO"),
                Verdict::Invalid { key_name: "test.rsa.pub".into(), algo }
            );
        }
        let sig = key.sign(SigAlgo::RsaSha1, b"x").unwrap();
        assert!(matches!(Keyring::alpine(None).verify(&[sig], b"x"), Verdict::Untrusted { .. }));
        assert_eq!(ring.verify(&[], b"x"), Verdict::Unsigned);
    }

    #[test]
    fn first_trusted_signature_decides() {
        let trusted = SigningKey::generate("a.rsa.pub", 1024).unwrap();
        let stranger = SigningKey::generate("b.rsa.pub", 1024).unwrap();
        let mut ring = Keyring::empty();
        ring.add("a.rsa.pub", trusted.public_key());
        let sigs = [stranger.sign(SigAlgo::RsaSha256, b"d").unwrap(), trusted.sign(SigAlgo::RsaSha256, b"d").unwrap()];
        assert!(ring.verify(&sigs, b"d").is_verified());
    }

    #[test]
    fn keygen_writes_loadable_pair_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = SigningKey::keygen(dir.path(), "me", 1024).unwrap();
        assert_eq!(public.file_name().unwrap(), "me.rsa.pub");
        let key = SigningKey::from_file(&private).unwrap();
        assert_eq!(key.key_name, "me.rsa.pub");
        let mut ring = Keyring::empty();
        assert_eq!(ring.add_file(&public).unwrap(), "me.rsa.pub");
        let sig = key.sign(SigAlgo::RsaSha1, b"data").unwrap();
        assert!(ring.verify(&[sig], b"data").is_verified());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(SigningKey::keygen(dir.path(), "me", 1024).is_err());
    }

    #[test]
    fn bad_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.rsa.pub");
        std::fs::write(&p, "not a key").unwrap();
        let e = Keyring::empty().add_file(&p).unwrap_err().to_string();
        assert!(e.contains("junk.rsa.pub") && e.contains("not a PEM RSA public key"), "{e}");
        let e = SigningKey::from_file(&dir.path().join("missing.rsa")).unwrap_err().to_string();
        assert!(e.contains("missing.rsa"), "{e}");
    }
}
