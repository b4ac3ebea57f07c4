//! Kernel modules: finding them in a modules dir, reading `.modinfo`, dependency closures, and
//! the virtio drivers the harness needs when a kernel builds them as modules.
//!
//! Debian's packages ship no `modules.dep` (depmod runs at install time), so dependencies come
//! from each module's `.modinfo` section (`depends=a,b`), read on the host after decompressing
//! `.ko.xz` / `.ko.zst` / `.ko.gz`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::KernelError;

/// A module file to load in the guest (by path, with `finit_module`; compressed files are fine
/// for kernels with `CONFIG_MODULE_DECOMPRESS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module's name (`virtio_pci`), with `-` normalised to `_`.
    pub name: String,
    /// Where the file is on the host.
    pub host_path: PathBuf,
}

/// The drivers the harness needs in the guest, with the config symbol that builds each.
pub const HARNESS_MODULES: &[(&str, &str)] = &[
    ("virtio", "CONFIG_VIRTIO"),
    ("virtio_ring", "CONFIG_VIRTIO"),
    ("virtio_pci", "CONFIG_VIRTIO_PCI"),
    ("virtio_console", "CONFIG_VIRTIO_CONSOLE"),
];

/// A module's name as the kernel spells it: the file name without `.ko*`, `-` as `_`.
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    Some(normalize(stem))
}

/// Every module file under a modules dir, by name.
pub(crate) struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
}

impl ModuleIndex {
    pub(crate) fn scan(dir: &Path) -> Result<ModuleIndex, KernelError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            let entries =
                fs::read_dir(&dir).map_err(|e| KernelError::io("read modules dir", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| KernelError::io("read modules dir", &dir, e))?;
                let path = entry.path();
                let ty = entry
                    .file_type()
                    .map_err(|e| KernelError::io("stat", &path, e))?;
                if ty.is_dir() {
                    stack.push(path);
                } else if ty.is_file() {
                    if let Some(name) = entry.file_name().to_str().and_then(module_name) {
                        files.entry(name).or_insert(path);
                    }
                }
            }
        }
        Ok(ModuleIndex { files })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&PathBuf> {
        self.files.get(name)
    }

    /// Names close to `name`: containing it, or within a small edit distance.
    pub(crate) fn close_matches(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &String)> = self
            .files
            .keys()
            .filter_map(|k| {
                let d = edit_distance(name, k);
                if d <= 2 || (name.len() >= 3 && k.contains(name)) {
                    Some((d, k))
                } else {
                    None
                }
            })
            .collect();
        scored.sort();
        scored.into_iter().take(6).map(|(_, k)| k.clone()).collect()
    }

    /// `names` and everything they depend on, dependencies first.
    pub(crate) fn closure(
        &self,
        kernel: &str,
        names: &[&str],
    ) -> Result<Vec<ModuleFile>, KernelError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut deps_cache = HashMap::new();
        for name in names {
            let name = normalize(name);
            if self.get(&name).is_none() {
                return Err(KernelError::UnknownModule {
                    module: name.clone(),
                    kernel: kernel.to_owned(),
                    close: self.close_matches(&name),
                });
            }
            self.visit(
                &name,
                &mut Vec::new(),
                &mut done,
                &mut deps_cache,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        path_stack: &mut Vec<String>,
        done: &mut HashSet<String>,
        cache: &mut HashMap<String, Vec<String>>,
        order: &mut Vec<ModuleFile>,
    ) -> Result<(), KernelError> {
        if done.contains(name) || path_stack.iter().any(|n| n == name) {
            return Ok(()); // already placed, or a cycle (the kernel refuses those anyway)
        }
        let Some(file) = self.get(name) else {
            // A dependency that is not a file here: built in, so nothing to load.
            return Ok(());
        };
        let deps = match cache.get(name) {
            Some(deps) => deps.clone(),
            None => {
                let deps = read_modinfo(file)?.depends;
                cache.insert(name.to_owned(), deps.clone());
                deps
            }
        };
        path_stack.push(name.to_owned());
        for dep in &deps {
            self.visit(dep, path_stack, done, cache, order)?;
        }
        path_stack.pop();
        done.insert(name.to_owned());
        order.push(ModuleFile {
            name: name.to_owned(),
            host_path: file.clone(),
        });
        Ok(())
    }
}

/// The fields of a module's `.modinfo` section that vmtest uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Modinfo {
    pub(crate) name: Option<String>,
    pub(crate) depends: Vec<String>,
    pub(crate) vermagic: Option<String>,
}

/// Reads `.modinfo` from a module file, decompressing it first if needed.
pub(crate) fn read_modinfo(path: &Path) -> Result<Modinfo, KernelError> {
    let bytes = read_module(path)?;
    let bad = |reason: String| KernelError::Modinfo {
        path: path.to_owned(),
        reason,
    };
    let obj = object::File::parse(&*bytes).map_err(|e| bad(format!("not an ELF object: {e}")))?;
    let section = obj
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("it has no .modinfo section".into()))?;
    let data = section
        .data()
        .map_err(|e| bad(format!("unreadable .modinfo: {e}")))?;
    Ok(parse_modinfo(data))
}

pub(crate) fn parse_modinfo(data: &[u8]) -> Modinfo {
    let mut info = Modinfo::default();
    for field in data.split(|&b| b == 0) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(value.to_owned()),
            "vermagic" => info.vermagic = Some(value.to_owned()),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(normalize),
            ),
            _ => {}
        }
    }
    info
}

/// A module file's contents, decompressed.
fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let file = fs::File::open(path).map_err(|e| KernelError::io("read module", path, e))?;
    let mut input = std::io::BufReader::new(file);
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    let bad = |reason: String| KernelError::Modinfo {
        path: path.to_owned(),
        reason,
    };
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut input, &mut out)
            .map_err(|e| bad(format!("failed to decompress xz: {e}")))?;
    } else if name.ends_with(".zst") {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut input)
            .map_err(|e| bad(format!("failed to decompress zstd: {e}")))?;
        dec.read_to_end(&mut out)
            .map_err(|e| bad(format!("failed to decompress zstd: {e}")))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(input)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("failed to decompress gzip: {e}")))?;
    } else {
        input
            .read_to_end(&mut out)
            .map_err(|e| KernelError::io("read module", path, e))?;
    }
    Ok(out)
}

/// What a kernel's config says (`CONFIG_X=y|m|...`); absent symbols are "not set".
pub(crate) fn read_config(path: &Path) -> Result<HashMap<String, String>, KernelError> {
    let text =
        fs::read_to_string(path).map_err(|e| KernelError::io("read kernel config", path, e))?;
    Ok(parse_config(&text))
}

pub(crate) fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Names of the modules listed in `modules.builtin` (`kernel/drivers/virtio/virtio.ko`).
pub(crate) fn read_builtin(modules_dir: &Path) -> Result<Option<HashSet<String>>, KernelError> {
    let path = modules_dir.join("modules.builtin");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            text.lines()
                .filter_map(|l| l.rsplit('/').next())
                .filter_map(module_name)
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KernelError::io("read", &path, e)),
    }
}

/// How a kernel provides one driver the harness needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Provision {
    BuiltIn,
    Module,
    Missing(&'static str),
}

/// Decides, per harness driver, whether it is built in, a module, or missing.
pub(crate) fn harness_provision(
    config: Option<&HashMap<String, String>>,
    builtin: Option<&HashSet<String>>,
    index: Option<&ModuleIndex>,
) -> Vec<(&'static str, Provision)> {
    HARNESS_MODULES
        .iter()
        .map(|&(module, symbol)| {
            let in_builtin = builtin.is_some_and(|b| b.contains(module));
            let has_file = index.is_some_and(|i| i.get(module).is_some());
            let setting = config.and_then(|c| c.get(symbol)).map(String::as_str);
            let provision = if in_builtin || setting == Some("y") {
                Provision::BuiltIn
            } else if has_file {
                Provision::Module
            } else if setting == Some("m") || (config.is_some() && setting.is_none()) {
                Provision::Missing(symbol)
            } else {
                // Nothing says otherwise (no config, no modules): a self-contained build.
                Provision::BuiltIn
            };
            (module, provision)
        })
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a minimal relocatable ELF whose `.modinfo` says `depends=<deps>`.
    pub(crate) fn fake_module(dir: &Path, file_name: &str, deps: &[&str]) -> PathBuf {
        let name = module_name(file_name).unwrap();
        let info = format!(
            "license=GPL\0depends={}\0name={name}\0vermagic=6.1.0 SMP\0",
            deps.join(",")
        );
        let bytes = elf_with_section(".modinfo", info.as_bytes());
        let path = dir.join(file_name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        path
    }

    /// An ELF64 little-endian relocatable file with one data section (and `.shstrtab`).
    fn elf_with_section(section: &str, data: &[u8]) -> Vec<u8> {
        let shstrtab = format!("\0{section}\0.shstrtab\0");
        let data_off = 64u64;
        let str_off = data_off + data.len() as u64;
        let sh_off = (str_off + shstrtab.len() as u64).next_multiple_of(8);
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF\x02\x01\x01");
        out.resize(16, 0);
        out.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
        out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // entry
        out.extend_from_slice(&0u64.to_le_bytes()); // phoff
        out.extend_from_slice(&sh_off.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        for v in [64u16, 0, 0, 64, 3, 2] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(data);
        out.extend_from_slice(shstrtab.as_bytes());
        out.resize(sh_off as usize, 0);
        let mut header = |name: u32, ty: u32, off: u64, size: u64| {
            out.extend_from_slice(&name.to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes()); // flags
            out.extend_from_slice(&0u64.to_le_bytes()); // addr
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&[0u8; 8]); // link, info
            out.extend_from_slice(&1u64.to_le_bytes()); // addralign
            out.extend_from_slice(&0u64.to_le_bytes()); // entsize
        };
        header(0, 0, 0, 0);
        header(1, 1, data_off, data.len() as u64); // SHT_PROGBITS
        header(2 + section.len() as u32, 3, str_off, shstrtab.len() as u64); // SHT_STRTAB
        out
    }

    #[test]
    fn modinfo_fields() {
        let info =
            parse_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_console\0\0");
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.name.as_deref(), Some("virtio_console"));
        assert!(parse_modinfo(b"depends=\0").depends.is_empty());
    }

    #[test]
    fn fixture_closure_in_dependency_order() {
        let dir = super::super::tests::scratch_dir("modules-fixture");
        let k = dir.join("kernel");
        fake_module(&k, "drivers/virtio/virtio.ko", &[]);
        fake_module(&k, "drivers/virtio/virtio_ring.ko", &["virtio"]);
        fake_module(&k, "drivers/virtio/virtio_pci_legacy_dev.ko", &[]);
        fake_module(&k, "drivers/virtio/virtio_pci_modern_dev.ko", &[]);
        fake_module(
            &k,
            "drivers/virtio/virtio_pci.ko",
            &[
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
            ],
        );
        fake_module(
            &k,
            "drivers/char/virtio_console.ko",
            &["virtio", "virtio_ring"],
        );
        fake_module(&k, "net/dummy.ko", &[]);
        fake_module(&k, "net/a-b.ko", &["builtin_thing", "dummy"]);

        let index = ModuleIndex::scan(&dir).unwrap();
        let names = |v: Vec<ModuleFile>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
        let got = names(
            index
                .closure("fixture", &["virtio_pci", "virtio_console"])
                .unwrap(),
        );
        assert_eq!(
            got,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_console"
            ]
        );
        // Dashes normalise; dependencies that are not files here are built in.
        assert_eq!(
            names(index.closure("fixture", &["a-b"]).unwrap()),
            ["dummy", "a_b"]
        );

        let err = index.closure("fixture", &["dumm"]).unwrap_err().to_string();
        assert!(
            err.contains("`dumm`") && err.contains("fixture") && err.contains("dummy"),
            "{err}"
        );
    }

    #[test]
    fn compressed_modules() {
        let dir = super::super::tests::scratch_dir("modules-compressed");
        let plain = fake_module(&dir, "veth.ko", &["dummy"]);
        let bytes = fs::read(&plain).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut bytes.as_slice(), &mut xz).unwrap();
        fs::write(dir.join("veth.ko.xz"), xz).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        fs::write(dir.join("veth.ko.gz"), gz.finish().unwrap()).unwrap();
        for ext in ["ko", "ko.xz", "ko.gz"] {
            let info = read_modinfo(&dir.join(format!("veth.{ext}"))).unwrap();
            assert_eq!(info.depends, ["dummy"], "{ext}");
        }
    }

    #[test]
    fn provision_from_config_and_builtin() {
        let cfg61 = parse_config(
            "CONFIG_VIRTIO=m\nCONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_CONSOLE=m\n# CONFIG_FOO is not set\n",
        );
        let cfg612 =
            parse_config("CONFIG_VIRTIO=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_CONSOLE=y\n");
        let p = harness_provision(Some(&cfg612), None, None);
        assert!(p.iter().all(|(_, p)| *p == Provision::BuiltIn), "{p:?}");
        let p = harness_provision(Some(&cfg61), None, None);
        assert!(
            p.iter().all(|(_, p)| matches!(p, Provision::Missing(_))),
            "{p:?}"
        );
        let builtin: HashSet<String> = ["virtio", "virtio_ring", "virtio_pci", "virtio_console"]
            .map(String::from)
            .into();
        let p = harness_provision(Some(&cfg61), Some(&builtin), None);
        assert!(p.iter().all(|(_, p)| *p == Provision::BuiltIn), "{p:?}");
        let p = harness_provision(None, None, None);
        assert!(p.iter().all(|(_, p)| *p == Provision::BuiltIn), "{p:?}");
        let p = harness_provision(Some(&parse_config("CONFIG_VIRTIO=y\n")), None, None);
        assert_eq!(
            p[3],
            (
                "virtio_console",
                Provision::Missing("CONFIG_VIRTIO_CONSOLE")
            )
        );
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("dumy", "dummy"), 1);
        assert_eq!(edit_distance("veth", "veth"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
