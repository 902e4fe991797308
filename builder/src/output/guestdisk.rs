//! `disk.img` of a guest: a GPT disk (`disk`) whose ESP (`fat`) holds the files `esp` names,
//! the Unified Kernel Image built (`uki`) on the systemd EFI stub the packages installed.
//! GUIDs and the FAT serial come from a hash of the inputs, FAT times from
//! SOURCE_DATE_EPOCH, so the image is as reproducible as the rest.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::disk::{self, DiskSpec};
use super::esp::{self, EspFile, GuestFiles};
use super::uki::UkiLayout;
use crate::report::{Reporter, Reporting};

/// What the image is made of besides the guest's files.
pub struct ImageSpec<'a> {
    /// `None`: the least that holds the partitions.
    pub size_mib: Option<u64>,
    /// The read-only root image file, for its own partition.
    pub root: Option<(&'a Path, u64)>,
    pub data_mib: Option<u64>,
    /// The systemd EFI stub's bytes (`esp::stub_path`).
    pub stub: &'a [u8],
    /// Hashed (with the guest's files' hashes) into the GUIDs and the FAT serial.
    pub seed_parts: &'a [&'a str],
    pub epoch: u64,
}

/// A guest's disk image, laid out and ready to write.
pub struct Plan<'a> {
    guest: &'a GuestFiles<'a>,
    spec: &'a ImageSpec<'a>,
    uki: UkiLayout,
}

impl<'a> Plan<'a> {
    /// Lays out the UKI on the stub (checking the stub).
    pub fn new(guest: &'a GuestFiles<'a>, spec: &'a ImageSpec<'a>) -> Result<Self, super::uki::UkiError> {
        let uki = UkiLayout::new(spec.stub, &esp::stub_path(guest.arch), &guest.uki_sections())?;
        Ok(Plan { guest, spec, uki })
    }

    /// The bytes the ESP's files add up to, for the phase's progress.
    pub fn esp_bytes(&self) -> u64 {
        self.guest.esp_files(&self.uki).iter().map(|f| f.size).sum()
    }

    /// Writes the image to `path`; the ESP's bytes count toward the disk phase.
    pub fn write(&self, path: &Path, reporter: &dyn Reporter) -> Result<(), disk::DiskError> {
        let files: Vec<EspFile> = self
            .guest
            .esp_files(&self.uki)
            .into_iter()
            .map(|f| EspFile {
                path: f.path,
                size: f.size,
                write: Box::new(move |w: &mut dyn Write| (f.write)(&mut Reporting::phase(w, reporter))),
            })
            .collect();
        let seed = self.spec.seed_parts.iter().fold(Sha256::new(), |h, p| h.chain_update(p.as_bytes())).finalize();
        let root_type = match self.guest.arch {
            crate::apk::Arch::X86_64 => disk::ROOT_X86_64_TYPE,
            crate::apk::Arch::Aarch64 => disk::ROOT_ARM64_TYPE,
        };
        let spec = DiskSpec {
            size: self.spec.size_mib.map(|mib| mib * disk::MIB),
            root: self.spec.root.map(|(path, len)| disk::RootImage { path, len, type_guid: root_type }),
            data_mib: self.spec.data_mib,
            seed: &seed,
            epoch: self.spec.epoch,
        };
        disk::write_disk(path, &spec, files)
    }
}
