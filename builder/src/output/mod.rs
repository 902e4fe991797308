//! Writers for the build's artifacts.

pub mod blockcache;
pub mod bootinitrd;
pub mod compress;
pub mod cpio;
pub mod disk;
pub mod esp;
pub mod fat;
pub mod guestdisk;
pub mod initrd;
pub mod lima;
pub mod manifest;
pub mod osrelease;
pub mod pargzip;
pub mod spdx;
pub mod squashfs;
pub mod sums;
pub mod uki;
