//! hyve: reproducible boot2docker-style guest images from pinned, verified Alpine packages.

pub mod apk;
pub mod build;
pub mod builtin;
pub mod cancel;
pub mod datadisk;
pub mod diff;
pub mod dockertls;
pub mod epoch;
pub mod fetch;
pub mod fsutil;
pub mod install;
pub mod kernel;
pub mod lock;
pub mod output;
pub mod overlay;
pub mod profile;
pub mod report;
pub mod resolve;
pub mod session;
pub mod tree;
pub mod verify;
pub mod vmm;

/// Serializes an error's cause (an `io::Error`, `rsa::Error`…) by its message, for the
/// `--json` error object.
pub(crate) fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
