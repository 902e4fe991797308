//! Writers for the build's artifacts.

pub mod compress;
pub mod cpio;
