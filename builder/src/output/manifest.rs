//! What a build says about itself: `manifest.json` (also inside the guest as
//! `/etc/hyve/manifest.json`, without the outputs). `sums` writes `SHA256SUMS` and `spdx` the
//! SBOM from it. Everything here is a pure function of the build's inputs, so these files
//! are as reproducible as the images they describe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the SBOM says a package can be downloaded: its path on Alpine's canonical mirror.
/// The mirror a build actually used is not recorded (a rebuild from another mirror must give
/// the same bytes); the package's SHA-256 identifies the file wherever it is fetched from.
pub const CANONICAL_MIRROR: &str = "https://dl-cdn.alpinelinux.org/alpine";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub hyve_version: String,
    pub profile: String,
    pub arch: String,
    pub branch: String,
    pub source_date_epoch: u64,
    pub lock: LockSummary,
    pub kernel: KernelSummary,
    pub cmdline: String,
    pub packages: Vec<PackageSummary>,
    pub overlays: Vec<crate::overlay::OverlaySummary>,
    /// Every output but the manifest, the SBOM and SHA256SUMS; empty inside the guest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, OutputEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSummary {
    /// The profile inputs the lock was resolved for (`Profile::inputs_hash`).
    pub inputs_hash: String,
    /// SHA-256 of the arch's lock section (every pin), as canonical JSON.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSummary {
    pub package: String,
    pub version: String,
    /// `uname -r`, when the package ships modules.
    pub release: Option<String>,
    pub modules: Vec<String>,
    pub optional_modules_missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSummary {
    pub name: String,
    pub version: String,
    pub repository: String,
    /// SHA-256 of the .apk file.
    pub sha256: String,
    /// `Q1…`, the control member's SHA-1 from the signed index.
    pub checksum: String,
    pub datahash: String,
    pub origin: String,
    pub license: String,
    pub maintainer: String,
    pub url: String,
    pub description: String,
    pub build_date: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEntry {
    pub sha256: String,
    pub size: u64,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serializes") + "\n"
    }

    /// Reads a manifest someone hands hyve (a published build, another output): the JSON,
    /// and every SHA-256 in it 64 lower-case hex digits, naming the field that is not.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let check = |field: String, value: &str| {
            if is_sha256_hex(value) {
                Ok(())
            } else {
                Err(format!("{field}: expected a SHA-256 (64 lower-case hex digits), found {value:?}"))
            }
        };
        check("lock.sha256".into(), &m.lock.sha256)?;
        for (i, p) in m.packages.iter().enumerate() {
            check(format!("packages[{i}] ({}).sha256", p.name), &p.sha256)?;
        }
        for (name, o) in &m.outputs {
            check(format!("outputs.{name}.sha256"), &o.sha256)?;
        }
        Ok(m)
    }

    /// `packageFileName` and the canonical download URL of a package.
    pub(crate) fn apk_location(&self, p: &PackageSummary) -> (String, String) {
        let file = format!("{}-{}.apk", p.name, p.version);
        let url = format!("{CANONICAL_MIRROR}/{}/{}/{}/{file}", self.branch, p.repository, self.arch);
        (file, url)
    }
}

/// Whether `s` is a SHA-256 as hyve writes them: 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
