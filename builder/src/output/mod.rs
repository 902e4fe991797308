//! Writers for the build's artifacts.

pub mod compress;
pub mod cpio;
pub mod disk;
pub mod fat;
pub mod manifest;
pub mod pargzip;
pub mod spdx;
pub mod sums;
pub mod uki;
