//! `lima.yaml`: a Lima template that boots this build's `disk.img`, so that
//! `limactl start out/<profile>-<arch>/lima.yaml` is the whole instruction.
//!
//! Written for Lima v2.2.0's template format (lima-vm/lima `templates/default.yaml`,
//! `pkg/limatype/lima_yaml.go`). The image is the EFI disk: Lima boots it through UEFI under
//! both of its VMMs (QEMU with edk2; vz with `VZEFIBootLoader`), turns it into its instance's
//! disk (a copy for vz, a qcow2 overlay for QEMU) and enlarges that to `disk:` (100 GiB by
//! default), into which the guest grows its `hyve-data` partition. Lima resolves a relative
//! image `location` against its own working directory, not the template's
//! (`pkg/downloader` `canonicalLocalPath`; only `base`, `probes` and `provision` locators are
//! template-relative, `pkg/limatmpl/abs.go`), so the location is this directory's absolute
//! path. That makes the file machine-local: it is not in `SHA256SUMS`, and `hyve verify`
//! leaves it out — the image it names is compared by its digest, which is.

use std::path::Path;

use crate::apk::Arch;

/// The template's file name in an output directory.
pub const LIMA_TEMPLATE: &str = "lima.yaml";

/// A YAML double-quoted scalar (YAML 1.2 §7.3.1 escapes).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The template for `profile`'s `disk.img` at `disk` (absolute) with SHA-256 `disk_sha256`.
pub fn template(profile: &str, arch: Arch, disk: &Path, disk_sha256: &str) -> String {
    // Lima names architectures as Alpine does (`limatype.X8664`, `limatype.AARCH64`).
    let arch = arch.as_str();
    format!(
        "# Lima template for hyve's {profile} profile ({arch}), written by `hyve build`.\n\
         # Start it with:  limactl start --name=hyve <this file>\n\
         # It names the disk image beside it by its absolute path: rebuild (or edit `location`)\n\
         # after moving the directory.\n\
         minimumLimaVersion: \"2.0.0\"\n\
         os: Linux\n\
         arch: {arch}\n\
         images:\n\
         - location: {location}\n\
         \x20 arch: {arch}\n\
         \x20 digest: \"sha256:{disk_sha256}\"\n\
         # The guest runs dockerd itself; Lima's own containerd and nerdctl are not installed.\n\
         containerd:\n\
         \x20 system: false\n\
         \x20 user: false\n\
         # Your home directory, read-only, as Lima's default template mounts it (virtiofs\n\
         # under vz, 9p under QEMU; the guest mounts both kinds, not reverse-sshfs).\n\
         mounts:\n\
         - location: \"~\"\n\
         # The Docker API: the guest's socket, forwarded over ssh (the Lima user is in the\n\
         # docker group).\n\
         portForwards:\n\
         - guestSocket: /var/run/docker.sock\n\
         \x20 hostSocket: \"{{{{.Dir}}}}/sock/docker.sock\"\n\
         message: |\n\
         \x20 The Docker API of this VM:\n\
         \x20   export DOCKER_HOST=unix://{{{{.Dir}}}}/sock/docker.sock\n",
        location = quoted(&disk.display().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_disk_its_digest_and_the_docker_socket() {
        let t = template("lima", Arch::Aarch64, Path::new("/Users/me/out/lima-aarch64/disk.img"), "ab12");
        assert!(
            t.contains(
                "- location: \"/Users/me/out/lima-aarch64/disk.img\"\n  arch: aarch64\n  digest: \"sha256:ab12\"\n"
            ),
            "{t}"
        );
        assert!(t.contains("containerd:\n  system: false\n  user: false\n"), "{t}");
        assert!(
            t.contains("- guestSocket: /var/run/docker.sock\n  hostSocket: \"{{.Dir}}/sock/docker.sock\"\n"),
            "{t}"
        );
        assert!(t.starts_with('#') && t.ends_with('\n'));
    }

    #[test]
    fn quotes_paths_as_yaml_scalars() {
        assert_eq!(quoted("/a b/\"c\"\\d"), "\"/a b/\\\"c\\\"\\\\d\"");
        assert_eq!(quoted("x\ty"), "\"x\\x09y\"");
    }
}
