//! The kernel in the form each VMM boots, and the module subset the guest needs.
//!
//! x86_64: `/boot/vmlinuz-*` is a bzImage and is used as is. aarch64: Alpine's `vmlinuz-virt`
//! is an EFI zboot image (a PE wrapper around a gzip or zstd payload); Virtualization.framework
//! and vfkit boot only the raw arm64 `Image`, so the payload is unwrapped and checked for
//! `ARM\x64` at 0x38. Modules: only those the profile lists, plus what they depend on (from
//! `modules.dep`, or from each module's `.modinfo depends=` when the package ships none), with
//! a `modules.dep` that describes exactly what is included.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use crate::apk::Arch;
use crate::tree::{ContentStore, Node, NodeKind, Overwrite, Tree};

#[derive(Debug, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelError {
    #[error("the kernel package {package} has no /boot/vmlinuz-*; is it a kernel package?")]
    NoImage { package: String },
    #[error("{path}: not an x86_64 bzImage (no \"HdrS\" at 0x202)")]
    NotBzImage { path: String },
    #[error("{path}: {detail}")]
    BadArm64 { path: String, detail: String },
    #[error("kernel module {module:?} is neither in {package} nor built into it; check the name (modules like {examples} exist)")]
    NoModule { module: String, package: String, examples: String },
    #[error(transparent)]
    #[serde(untagged)]
    Io(#[from] crate::fsutil::IoError),
}

type Result<T> = std::result::Result<T, KernelError>;

/// The kernel, ready to write as `out/.../kernel`.
pub struct Kernel {
    pub image: Vec<u8>,
    /// e.g. `6.6.31-0-virt`, from `/lib/modules/<release>`.
    pub release: Option<String>,
    /// Requested modules that are built in.
    pub builtin: Vec<String>,
    /// Optional modules this kernel has neither as a module nor built in.
    pub skipped: Vec<String>,
    /// Each included module: its file in the tree and the modules it needs.
    pub graph: BTreeMap<String, IncludedModule>,
}

/// A module the guest gets.
#[derive(Debug, Clone)]
pub struct IncludedModule {
    /// Under `lib/modules/<release>/`.
    pub path: String,
    /// Names of the modules it needs loaded first.
    pub deps: Vec<String>,
}

impl Kernel {
    /// `names` that are modules here (built-in ones need no loading) with what they need,
    /// each after its dependencies: the order `insmod` must load them in.
    pub fn load_order(&self, names: &[&str]) -> Vec<String> {
        dependency_order(&self.graph, names.iter().map(|n| module_name(n)))
    }

    /// The modules included (names), sorted.
    pub fn modules(&self) -> Vec<String> {
        self.graph.keys().cloned().collect()
    }
}

/// `names` and every module they need, each after the modules it needs: depth first, in the
/// order of each module's `deps` (names not in `graph` are skipped; a cycle is cut where it
/// closes).
fn dependency_order(graph: &BTreeMap<String, IncludedModule>, names: impl IntoIterator<Item = String>) -> Vec<String> {
    fn visit(
        name: &str,
        graph: &BTreeMap<String, IncludedModule>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        let Some(module) = graph.get(name) else { return };
        if !seen.insert(name.to_string()) {
            return;
        }
        for d in &module.deps {
            visit(d, graph, seen, order);
        }
        order.push(name.to_string());
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for name in names {
        visit(&name, graph, &mut seen, &mut order);
    }
    order
}

fn read_node(tree: &Tree, store: &ContentStore, path: &str) -> Result<Vec<u8>> {
    match tree.file(path) {
        Some(blob) => Ok(store.read_all(blob).map_err(crate::fsutil::at_named(path))?),
        None => {
            Err(crate::fsutil::at_named(path)(std::io::Error::new(std::io::ErrorKind::NotFound, "not a regular file"))
                .into())
        }
    }
}

/// The raw arm64 `Image` inside an EFI zboot PE ("MZ" at 0, "zimg" at 4, payload offset
/// and size as u32 LE at 8 and 12, compression name at 0x18), or the image itself if it is
/// already raw.
pub fn unwrap_arm64(bytes: &[u8], path: &str) -> Result<Vec<u8>> {
    let bad = |detail: String| KernelError::BadArm64 { path: path.into(), detail };
    let is_image = |b: &[u8]| b.len() > 0x3c && &b[0x38..0x3c] == b"ARM\x64";
    if is_image(bytes) {
        return Ok(bytes.to_vec());
    }
    if bytes.len() < 0x40 || &bytes[0..2] != b"MZ" || &bytes[4..8] != b"zimg" {
        return Err(bad("neither a raw arm64 Image (ARM\\x64 at 0x38) nor an EFI zboot image (MZ + zimg)".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes")) as usize;
    let (offset, size) = (u32_at(8), u32_at(12));
    let payload = bytes
        .get(offset..offset.saturating_add(size))
        .ok_or_else(|| bad(format!("payload {offset}+{size} lies outside the {}-byte file", bytes.len())))?;
    let name_end = bytes[0x18..0x20].iter().position(|&b| b == 0).unwrap_or(8);
    let comp = std::str::from_utf8(&bytes[0x18..0x18 + name_end]).unwrap_or("?");
    let mut image = Vec::new();
    let result = match comp {
        "gzip" => flate2::read::GzDecoder::new(payload).read_to_end(&mut image),
        "zstd" => zstd::stream::read::Decoder::new(payload).and_then(|mut d| d.read_to_end(&mut image)),
        other => return Err(bad(format!("zboot payload compressed with {other:?}; hyve unwraps gzip and zstd"))),
    };
    result.map_err(|e| bad(format!("cannot decompress the {comp} payload: {e}")))?;
    if !is_image(&image) {
        return Err(bad("the unwrapped payload has no ARM\\x64 magic at 0x38".into()));
    }
    Ok(image)
}

/// The UART console of the machine each arch's VMMs emulate: the PC's 16550 (QEMU `q35`,
/// hyperkit's and xhyve's LPC com1) or the Arm `virt` machine's PL011.
pub fn serial_console(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => "ttyAMA0",
    }
}

/// Normalised module name: `foo-bar.ko.gz` -> `foo_bar`.
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

fn is_module_file(path: &str) -> bool {
    [".ko", ".ko.gz", ".ko.xz", ".ko.zst"].iter().any(|s| path.ends_with(s))
}

/// A module file's ELF bytes, decompressed by its extension (`.ko.gz`, `.ko.xz`, `.ko.zst`).
pub fn decompress_module(bytes: &[u8], path: &str) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    let err = |source| crate::fsutil::at_named(path)(source);
    if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw).map_err(err)?;
    } else if path.ends_with(".xz") {
        xz2::read::XzDecoder::new(bytes).read_to_end(&mut raw).map_err(err)?;
    } else if path.ends_with(".zst") {
        zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut raw)).map_err(err)?;
    } else {
        raw = bytes.to_vec();
    }
    Ok(raw)
}

/// `depends=` from a module's `.modinfo` (after decompressing by extension).
fn modinfo_depends(bytes: &[u8], path: &str) -> Result<Vec<String>> {
    let raw = decompress_module(bytes, path)?;
    // .modinfo is a run of NUL-terminated key=value strings.
    let needle = b"\0depends=";
    let Some(at) = raw.windows(needle.len()).position(|w| w == needle) else { return Ok(vec![]) };
    let value = &raw[at + needle.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Ok(String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect())
}

/// Extracts the kernel image from the tree (removing `/boot` files of `package` from the
/// initramfs) and cuts `/lib/modules` down to `wanted` and its dependencies.
pub fn prepare(
    tree: &mut Tree,
    store: &mut ContentStore,
    arch: Arch,
    package: &str,
    wanted: &[String],
    optional: &[String],
) -> Result<Kernel> {
    let boot: Vec<String> =
        tree.iter().filter(|(p, n)| p.starts_with("boot/") && n.owner == package).map(|(p, _)| p.clone()).collect();
    let vmlinuz = boot
        .iter()
        .filter(|p| p.starts_with("boot/vmlinuz"))
        .min_by_key(|p| (p.as_str() != "boot/vmlinuz-virt", p.len()))
        .cloned()
        .ok_or_else(|| KernelError::NoImage { package: package.into() })?;
    let raw = read_node(tree, store, &vmlinuz)?;
    let image = match arch {
        Arch::X86_64 => {
            if raw.len() < 0x206 || &raw[0x202..0x206] != b"HdrS" {
                return Err(KernelError::NotBzImage { path: vmlinuz });
            }
            raw
        }
        Arch::Aarch64 => unwrap_arm64(&raw, &vmlinuz)?,
    };
    for p in &boot {
        if matches!(tree.get(p).map(|n| &n.kind), Some(NodeKind::File(_)) | Some(NodeKind::Symlink(_))) {
            tree.remove(p);
        }
    }
    let releases: BTreeSet<String> = tree
        .iter()
        .filter(|(_, n)| n.owner == package)
        .filter_map(|(p, _)| p.strip_prefix("lib/modules/").and_then(|r| r.split('/').next()).map(str::to_string))
        .collect();
    let Some(release) = releases.into_iter().next() else {
        if let Some(m) = wanted.first() {
            return Err(KernelError::NoModule {
                module: m.clone(),
                package: package.into(),
                examples: "(none: the package ships no modules)".into(),
            });
        }
        return Ok(Kernel {
            image,
            release: None,
            builtin: vec![],
            skipped: optional.to_vec(),
            graph: BTreeMap::new(),
        });
    };
    let (graph, builtin, skipped) = select_modules(tree, store, package, &release, wanted, optional)?;
    Ok(Kernel { image, release: Some(release), builtin, skipped, graph })
}

/// The modules included, those requested that are built in, and the optional ones skipped.
type Selected = (BTreeMap<String, IncludedModule>, Vec<String>, Vec<String>);

fn select_modules(
    tree: &mut Tree,
    store: &mut ContentStore,
    package: &str,
    release: &str,
    wanted: &[String],
    optional: &[String],
) -> Result<Selected> {
    let base = format!("lib/modules/{release}");
    let files: BTreeMap<String, String> = tree
        .children_of(&base)
        .filter(|(p, n)| is_module_file(p) && matches!(n.kind, NodeKind::File(_)))
        .map(|(p, _)| (module_name(p), p.clone()))
        .collect();
    let builtin: BTreeSet<String> = read_node(tree, store, &format!("{base}/modules.builtin"))
        .map(|b| String::from_utf8_lossy(&b).lines().map(module_name).collect())
        .unwrap_or_default();
    // Dependencies by name, from modules.dep when shipped, else from .modinfo.
    let dep_file = read_node(tree, store, &format!("{base}/modules.dep")).ok();
    let deps_of = |name: &str, tree: &Tree, store: &ContentStore| -> Result<Vec<String>> {
        let path = &files[name];
        match &dep_file {
            Some(text) => {
                let rel = path.strip_prefix(&format!("{base}/")).unwrap_or(path);
                Ok(String::from_utf8_lossy(text)
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(m, _)| *m == rel)
                            .map(|(_, d)| d.split_whitespace().map(module_name).collect())
                    })
                    .unwrap_or_default())
            }
            None => modinfo_depends(&read_node(tree, store, path)?, path),
        }
    };
    let mut included: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut builtin_requested = Vec::new();
    let mut queue: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    let requests = wanted.iter().map(|w| (w, false)).chain(optional.iter().map(|o| (o, true)));
    for (w, is_optional) in requests {
        let name = module_name(w);
        if files.contains_key(&name) {
            queue.push(name);
        } else if builtin.contains(&name) {
            builtin_requested.push(name);
        } else if is_optional {
            skipped.push(name);
        } else {
            let examples: Vec<&String> =
                files.keys().filter(|k| k.contains(&name[..name.len().min(4)])).take(5).collect();
            let examples = if examples.is_empty() {
                files.keys().take(5).cloned().collect::<Vec<_>>().join(", ")
            } else {
                examples.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            };
            return Err(KernelError::NoModule { module: w.clone(), package: package.into(), examples });
        }
    }
    while let Some(name) = queue.pop() {
        if included.contains_key(&name) {
            continue;
        }
        let deps: Vec<String> = deps_of(&name, tree, store)?.into_iter().filter(|d| files.contains_key(d)).collect();
        queue.extend(deps.iter().cloned());
        included.insert(name, deps);
    }
    // Drop every other module and the index files that would describe them.
    let keep: BTreeSet<&String> = included.keys().map(|n| &files[n]).collect();
    let doomed: Vec<String> = tree
        .children_of(&base)
        .filter(|(p, n)| {
            (is_module_file(p) && matches!(n.kind, NodeKind::File(_)) && !keep.contains(p))
                || (p.rsplit('/').next().is_some_and(|f| {
                    f.starts_with("modules.")
                        && !matches!(f, "modules.builtin" | "modules.builtin.modinfo" | "modules.order")
                }))
        })
        .map(|(p, _)| p.clone())
        .collect();
    for p in doomed {
        tree.remove(&p);
    }
    prune_empty_dirs(tree, &format!("{base}/kernel"));
    let graph: BTreeMap<String, IncludedModule> = included
        .into_iter()
        .map(|(name, deps)| {
            let path = files[&name].strip_prefix(&format!("{base}/")).unwrap_or(&files[&name]).to_string();
            (name, IncludedModule { path, deps })
        })
        .collect();
    // modules.dep: "<path>: <deps, each before its own deps>" like depmod writes.
    let mut text = String::new();
    for path in keep.iter() {
        let name = module_name(path);
        // The module itself comes last in its load order.
        let mut deps = dependency_order(&graph, [name.clone()]);
        deps.pop();
        text.push_str(&format!(
            "{}:{}\n",
            graph[&name].path,
            deps.iter().rev().map(|d| format!(" {}", graph[d].path)).collect::<String>()
        ));
    }
    let blob = store.add_bytes(text.as_bytes()).map_err(crate::fsutil::at_named(format!("{base}/modules.dep")))?;
    let node = Node {
        kind: NodeKind::File(blob),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: vec![],
        owner: "hyve".into(),
    };
    tree.insert(&format!("{base}/modules.dep"), node, Overwrite::Allowed)
        .expect("lib/modules/<release> is a directory");
    Ok((graph, builtin_requested, skipped))
}

/// Removes directories under `root` that hold nothing any more (deepest first).
fn prune_empty_dirs(tree: &mut Tree, root: &str) {
    let dirs: Vec<String> =
        tree.children_of(root).filter(|(_, n)| n.kind == NodeKind::Dir).map(|(p, _)| p.clone()).collect();
    for d in dirs.iter().rev() {
        if tree.children_of(d).next().is_none() {
            tree.remove(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zboot image laid out per the header description in shared/alpine/README.md.
    pub(crate) fn zboot(image: &[u8], comp: &str) -> Vec<u8> {
        let payload = match comp {
            "gzip" => crate::apk::archive::gzip_best(image),
            "zstd" => zstd::encode_all(image, 3).unwrap(),
            _ => image.to_vec(),
        };
        let mut pe = vec![0u8; 0x200];
        pe[0..2].copy_from_slice(b"MZ");
        pe[4..8].copy_from_slice(b"zimg");
        pe[8..12].copy_from_slice(&0x200u32.to_le_bytes());
        pe[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        pe[0x18..0x18 + comp.len()].copy_from_slice(comp.as_bytes());
        pe.extend_from_slice(&payload);
        pe.extend_from_slice(&[0u8; 64]); // trailing PE sections
        pe
    }

    pub(crate) fn arm64_image(len: usize) -> Vec<u8> {
        let mut img: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        img[0x38..0x3c].copy_from_slice(b"ARM\x64");
        img
    }

    #[test]
    fn unwraps_zboot_to_the_exact_image() {
        let image = arm64_image(300_000);
        for comp in ["gzip", "zstd"] {
            assert_eq!(unwrap_arm64(&zboot(&image, comp), "vmlinuz-virt").unwrap(), image, "{comp}");
        }
        assert_eq!(unwrap_arm64(&image, "Image").unwrap(), image, "a raw Image passes through");
        let e = unwrap_arm64(&zboot(&image, "lz4"), "vmlinuz-virt").unwrap_err().to_string();
        assert!(e.contains("lz4"), "{e}");
        let e =
            unwrap_arm64(&zboot(b"not an arm64 kernel at all, certainly not with the magic in place....", "gzip"), "v")
                .unwrap_err()
                .to_string();
        assert!(e.contains("ARM\\x64"), "{e}");
    }

    #[test]
    fn modinfo_and_names() {
        assert_eq!(module_name("kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.gz"), "vmw_vsock_virtio_transport");
        assert_eq!(module_name("kernel/drivers/block/virtio-blk.ko"), "virtio_blk");
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0".to_vec();
        assert_eq!(modinfo_depends(&ko, "x.ko").unwrap(), ["virtio", "virtio_ring"]);
        let gz = crate::apk::archive::gzip_best(&ko);
        assert_eq!(modinfo_depends(&gz, "x.ko.gz").unwrap(), ["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0", "y.ko").unwrap().is_empty());
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let module = |deps: &[&str]| IncludedModule {
            path: "kernel/x.ko".into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
        };
        let graph = BTreeMap::from([
            ("virtio_blk".to_string(), module(&["virtio", "virtio_ring"])),
            ("virtio_ring".to_string(), module(&["virtio"])),
            ("virtio".to_string(), module(&[])),
            ("squashfs".to_string(), module(&["zstd_decompress"])),
            ("zstd_decompress".to_string(), module(&[])),
        ]);
        let kernel = Kernel { image: vec![], release: None, builtin: vec![], skipped: vec![], graph };
        assert_eq!(
            kernel.load_order(&["virtio_pci", "virtio-blk", "squashfs", "virtio"]),
            ["virtio", "virtio_ring", "virtio_blk", "zstd_decompress", "squashfs"],
            "built-in (absent) modules are skipped, names normalised"
        );
    }
}
