//! Alpine's v2 package and index formats: read, verify and write them as apk-tools and
//! abuild do. Every byte that comes from a mirror passes through here first.

pub mod archive;
pub mod dep;
pub mod index;
pub mod package;
pub mod pkginfo;
pub mod sign;
pub mod srcdir;
mod stream;
pub mod version;

use std::fmt;

pub use dep::Dep;
pub use sign::{Keyring, SigAlgo, Signature, SigningKey, Verdict};
pub use version::Version;

/// A guest architecture hyve builds for, named as Alpine names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(format!("unknown architecture {s:?}: expected x86_64 or aarch64")),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An apk identity checksum: `Q1` + base64(SHA-1 of the package's control gzip member).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Q1(pub [u8; 20]);

impl Q1 {
    pub fn parse(s: &str) -> Option<Q1> {
        use base64::Engine;
        let b64 = s.strip_prefix("Q1")?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        Some(Q1(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Q1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine;
        write!(f, "Q1{}", base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Q1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Q1 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Everything that can go wrong reading Alpine files. `origin` names the file or URL.
#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Error {
    /// The input could not be read.
    #[error("{origin}: read failed: {source}")]
    Io {
        origin: String,
        #[serde(serialize_with = "crate::serialize_display")]
        source: std::io::Error,
    },
    /// A gzip member is corrupt or cut short.
    #[error(
        "{origin}: the {member} is not valid gzip ({detail}); the file is truncated or corrupt — download it again"
    )]
    Gzip { origin: String, member: &'static str, detail: String },
    /// A tar stream inside a member is malformed.
    #[error("{origin}: the {member} holds a malformed tar stream: {detail}")]
    Tar { origin: String, member: &'static str, detail: String },
    /// A member decompressed past its size limit.
    #[error(
        "{origin}: the {member} decompresses to more than {limit} bytes; refusing it as a possible decompression bomb"
    )]
    TooLarge { origin: String, member: &'static str, limit: u64 },
    /// The file's structure is not that of an apk v2 package or index.
    #[error("{origin}: {detail}")]
    Format { origin: String, detail: String },
    /// An apk v3 (ADB) file, which hyve does not read yet.
    #[error("{origin} is an apk v3 (ADB) {what}; hyve reads only v2 indexes and packages so far (Alpine v3.24 still publishes v2 APKINDEX.tar.gz — point hyve at that)")]
    V3Unsupported { origin: String, what: &'static str },
    /// The signature did not verify against the trusted keyring.
    #[error("{origin}: signature check failed: {verdict}")]
    Signature { origin: String, verdict: Verdict },
    /// The control member is not the one the index describes.
    #[error("{origin}: identity mismatch: the index says {expected}, but the package's control member hashes to {actual}; this is not the package the signed index describes")]
    Q1Mismatch { origin: String, expected: Q1, actual: Q1 },
    /// The data member is not the one `.PKGINFO` commits to.
    #[error("{origin}: datahash mismatch: .PKGINFO says {expected}, but the data member hashes to {actual}; {why}")]
    DataHashMismatch { origin: String, expected: String, actual: String, why: &'static str },
    /// A file's content does not match its PAX checksum.
    #[error("{origin}: {path}: SHA-1 mismatch: the tar header says {expected}, the content hashes to {actual}; the file was altered")]
    FileChecksumMismatch { origin: String, path: String, expected: String, actual: String },
    /// A file lacks the checksum every apk data entry carries.
    #[error("{origin}: {path}: no APK-TOOLS.checksum.SHA1 record; apk data entries must carry one")]
    MissingFileChecksum { origin: String, path: String },
    /// A data entry that would escape or corrupt the target tree.
    #[error("{origin}: refusing data entry {path:?}: {reason}")]
    UnsafeEntry { origin: String, path: String, reason: String },
    /// A `.PKGINFO` line is invalid.
    #[error("{origin}: .PKGINFO line {line}: {detail}")]
    PkgInfo { origin: String, line: usize, detail: String },
    /// An APKINDEX record is invalid.
    #[error("{origin}: APKINDEX line {line}: {detail}")]
    IndexRecord { origin: String, line: usize, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q1_round_trip() {
        let q = Q1::parse("Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=").unwrap();
        assert_eq!(q.to_string(), "Q1tL491cf/hUqLQi7fZ4MhT9Qmi9U=");
        assert!(Q1::parse("Q2tL491cf/hUqLQi7fZ4MhT9Qmi9U=").is_none());
        assert!(Q1::parse("Q1AAAA").is_none());
    }

    #[test]
    fn arch_names() {
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
        assert_eq!(Arch::X86_64.to_string(), "x86_64");
        assert!("riscv64".parse::<Arch>().unwrap_err().contains("riscv64"));
    }
}
