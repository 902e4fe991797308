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
pub mod resolve;
pub mod session;
pub mod tree;
pub mod verify;
pub mod vmm;
