//! Kernel modules: finding them in a modules dir, reading `.modinfo`, dependency closures, and
//! the virtio drivers the harness needs when a kernel builds them as modules.
//!
//! Debian's packages ship no `modules.dep` (depmod runs at install time), so dependencies come
//! from each module's `.modinfo` section (`depends=a,b`), read on the host after decompressing
//! `.ko.xz` / `.ko.zst` / `.ko.gz`.
//!
//! Reading `.modinfo` of every module (for the alias index) would mean decompressing hundreds
//! of megabytes; [`read_modinfo_quick`] decompresses a module only up to the end of its
//! `.modinfo`, which sits a fifth of the way into a typical module.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::decompress::{self, xz_lzma2, Format};
use super::KernelError;

/// A module file to load in the guest (by path, with `finit_module`; compressed files are fine
/// for kernels with `CONFIG_MODULE_DECOMPRESS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModuleFile {
    /// The module's name (`virtio_pci`), with `-` normalised to `_`.
    pub name: String,
    /// Where the file is on the host.
    pub host_path: PathBuf,
}

/// The drivers the harness needs in the guest, with the config symbol that builds each.
pub(crate) const HARNESS_MODULES: &[(&str, &str)] = &[
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
                let ty = entry.file_type().map_err(|e| KernelError::io("stat", &path, e))?;
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

    /// Every module, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &PathBuf)> {
        self.files.iter()
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
        self.closure_without(kernel, names, &[])
    }

    /// [`closure`](Self::closure), leaving out the modules in `loaded` (and so what only they
    /// depend on).
    pub(crate) fn closure_without(
        &self,
        kernel: &str,
        names: &[&str],
        loaded: &[String],
    ) -> Result<Vec<ModuleFile>, KernelError> {
        let mut order = Vec::new();
        let mut done: HashSet<String> = loaded.iter().map(|n| normalize(n)).collect();
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
            self.visit(&name, &mut Vec::new(), &mut done, &mut deps_cache, &mut order)?;
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
        order.push(ModuleFile { name: name.to_owned(), host_path: file.clone() });
        Ok(())
    }
}

/// The fields of a module's `.modinfo` section that vmtest uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Modinfo {
    pub(crate) name: Option<String>,
    pub(crate) depends: Vec<String>,
    pub(crate) vermagic: Option<String>,
    /// `alias=` values, as written (glob patterns).
    pub(crate) aliases: Vec<String>,
}

impl Modinfo {
    /// The kernel release the module was built for: the first word of its `vermagic`.
    pub(crate) fn release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}

/// Reads `.modinfo` from a module file, decompressing it first if needed.
pub(crate) fn read_modinfo(path: &Path) -> Result<Modinfo, KernelError> {
    let bytes = read_module(path)?;
    modinfo_of(&bytes).map_err(|reason| KernelError::Modinfo { path: path.to_owned(), reason })
}

/// The `.modinfo` of a module's (decompressed) image; `Err` says what is wrong with it.
pub(crate) fn modinfo_of(image: &[u8]) -> Result<Modinfo, String> {
    let obj = object::File::parse(image).map_err(|e| format!("not an ELF object: {e}"))?;
    let section =
        obj.section_by_name(".modinfo").ok_or_else(|| "it has no .modinfo section".to_owned())?;
    let data = section.data().map_err(|e| format!("unreadable .modinfo: {e}"))?;
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
            "alias" if !value.is_empty() => info.aliases.push(value.to_owned()),
            "depends" => info
                .depends
                .extend(value.split(',').map(str::trim).filter(|d| !d.is_empty()).map(normalize)),
            _ => {}
        }
    }
    info
}

/// Reads `.modinfo` like [`read_modinfo`], reading as little of the file as it can: a plain
/// `.ko` through its section headers, a compressed one decompressed only up to the end of its
/// `.modinfo` (see [`find_modinfo`]), falling back to all of it when that is not found.
pub(crate) fn read_modinfo_quick(path: &Path) -> Result<Modinfo, KernelError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(name) = module_name(&file_name) else { return read_modinfo(path) };
    let bad = |reason: String| KernelError::Modinfo { path: path.to_owned(), reason };
    let file = fs::File::open(path).map_err(|e| KernelError::io("read module", path, e))?;
    let input = std::io::BufReader::new(file);
    let stream: Box<dyn Read> = match Format::of_file_name(&file_name) {
        Some(Format::Xz) => match xz_lzma2(input) {
            Ok(Some(stream)) => stream,
            // Another filter chain than plain LZMA2, or a damaged header.
            Ok(None) | Err(_) => return read_modinfo(path),
        },
        Some(format) => decompress::reader(format, input)
            .map_err(|e| bad(format!("failed to decompress {}: {e}", format.name())))?,
        None => return read_plain_modinfo(path, input.into_inner()),
    };
    match find_modinfo(stream, &name) {
        Ok(Some(data)) => Ok(parse_modinfo(&data)),
        Ok(None) => read_modinfo(path),
        Err(e) => Err(bad(format!("failed to decompress: {e}"))),
    }
}

/// `.modinfo` of an uncompressed module, reading only its headers and that section.
fn read_plain_modinfo(path: &Path, file: fs::File) -> Result<Modinfo, KernelError> {
    let bad = |reason: String| KernelError::Modinfo { path: path.to_owned(), reason };
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| bad(format!("not an ELF object: {e}")))?;
    let section =
        obj.section_by_name(".modinfo").ok_or_else(|| bad("it has no .modinfo section".into()))?;
    let data = section.data().map_err(|e| bad(format!("unreadable .modinfo: {e}")))?;
    Ok(parse_modinfo(data))
}

/// Reads the decompressed module `stream` up to the end of its `.modinfo` and returns the
/// section's fields (`key=value` strings, each ending in NUL). The section is found by the field
/// every module has, `name=<module name>`: the run of `key=value` strings around it, which
/// ends where something else (an empty string, a string that is no field) begins. `None` when
/// the stream ends without such a field.
pub(crate) fn find_modinfo(mut stream: impl Read, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let anchor = format!("\0name={name}\0").into_bytes();
    let mut buf = Vec::new();
    // Small reads: what is decompressed past the section's end is wasted.
    let mut chunk = vec![0u8; 4 << 10];
    let mut found: Option<usize> = None;
    let mut searched = 0;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        let at_end = n == 0;
        if found.is_none() {
            found = buf[searched..]
                .windows(anchor.len())
                .position(|w| w == anchor)
                .map(|at| searched + at);
            searched = buf.len().saturating_sub(anchor.len() - 1);
        }
        if let Some(at) = found {
            if let Some(run) = modinfo_run(&buf, at, at_end) {
                return Ok(Some(run.to_vec()));
            }
        }
        if at_end {
            return Ok(None);
        }
    }
}

/// The keys `.modinfo` fields have (`MODULE_INFO(tag, ...)` tags that the kernel and modpost
/// use).
const MODINFO_KEYS: &[&[u8]] = &[
    b"alias",
    b"author",
    b"depends",
    b"description",
    b"file",
    b"firmware",
    b"import_ns",
    b"intree",
    b"license",
    b"livepatch",
    b"name",
    b"parm",
    b"parmtype",
    b"retpoline",
    b"scmversion",
    b"softdep",
    b"srcversion",
    b"staging",
    b"vermagic",
    b"version",
    b"weakdep",
];

/// The key of `key=value` (a C identifier), if `s` has that shape.
fn field_key(s: &[u8]) -> Option<&[u8]> {
    let eq = s.iter().position(|&b| b == b'=')?;
    let key = &s[..eq];
    (eq > 0 && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')).then_some(key)
}

/// Where the field in `s` (the bytes between two NULs) starts: at 0 for a field of a known key
/// or of any identifier; later for a known key glued to the last bytes of the section before
/// `.modinfo` (which has no alignment, so its first field follows them directly).
fn field_start(s: &[u8]) -> Option<usize> {
    match field_key(s) {
        Some(key) if MODINFO_KEYS.contains(&key) => Some(0),
        key => (1..s.len())
            .find(|&at| {
                MODINFO_KEYS
                    .iter()
                    .any(|k| s[at..].starts_with(k) && s.get(at + k.len()) == Some(&b'='))
            })
            .or(key.map(|_| 0)),
    }
}

/// The run of `key=value\0` fields around the NUL at `nul` (which precedes `name=`). `None`
/// while the run's end is not in `buf` yet (unless `at_end`).
fn modinfo_run(buf: &[u8], nul: usize, at_end: bool) -> Option<&[u8]> {
    let mut start = nul + 1;
    // Backwards: the field that ends at `start - 1`, while there is one.
    while start > 0 {
        let end = start - 1;
        let begin = buf[..end].iter().rposition(|&b| b == 0).map_or(0, |at| at + 1);
        let Some(at) = field_start(&buf[begin..end]) else { break };
        start = begin + at;
        if at > 0 {
            // Glued to the section before: nothing of .modinfo precedes it.
            break;
        }
    }
    let mut end = nul + 1;
    loop {
        match buf[end..].iter().position(|&b| b == 0) {
            Some(len) if len > 0 && field_key(&buf[end..end + len]).is_some() => end += len + 1,
            Some(_) => break,
            None if at_end => break,
            None => return None,
        }
    }
    Some(&buf[start..end])
}

/// A module file's contents, decompressed.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let file = fs::File::open(path).map_err(|e| KernelError::io("read module", path, e))?;
    let input = std::io::BufReader::new(file);
    let bad = |reason: String| KernelError::Modinfo { path: path.to_owned(), reason };
    match Format::of_file_name(&path.to_string_lossy()) {
        Some(format) => decompress::decompress(format, input)
            .map_err(|e| bad(format!("failed to decompress {}: {e}", format.name()))),
        None => {
            let mut out = Vec::new();
            let mut input = input;
            input.read_to_end(&mut out).map_err(|e| KernelError::io("read module", path, e))?;
            Ok(out)
        }
    }
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
            text.lines().filter_map(|l| l.rsplit('/').next()).filter_map(module_name).collect(),
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

    #[test]
    fn the_release_is_the_first_word_of_vermagic() {
        let info =
            |vermagic: &str| Modinfo { vermagic: Some(vermagic.to_owned()), ..Modinfo::default() };
        let debian = info("6.12.117+deb12-amd64 SMP preempt mod_unload modversions ");
        assert_eq!(debian.release(), Some("6.12.117+deb12-amd64"));
        assert_eq!(info("").release(), None);
        assert_eq!(Modinfo::default().release(), None);
    }

    /// Writes a minimal relocatable ELF whose `.modinfo` says `depends=<deps>`.
    pub(crate) fn fake_module(dir: &Path, file_name: &str, deps: &[&str]) -> PathBuf {
        fake_module_with(dir, file_name, deps, &[])
    }

    /// [`fake_module`] with `alias=` fields.
    pub(crate) fn fake_module_with(
        dir: &Path,
        file_name: &str,
        deps: &[&str],
        aliases: &[&str],
    ) -> PathBuf {
        let name = module_name(file_name.rsplit('/').next().unwrap()).unwrap();
        let aliases: String = aliases.iter().map(|a| format!("alias={a}\0")).collect();
        let info = format!(
            "{aliases}license=GPL\0depends={}\0name={name}\0vermagic=6.1.0 SMP\0",
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
            &["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio", "virtio_ring"],
        );
        fake_module(&k, "drivers/char/virtio_console.ko", &["virtio", "virtio_ring"]);
        fake_module(&k, "net/dummy.ko", &[]);
        fake_module(&k, "net/a-b.ko", &["builtin_thing", "dummy"]);

        let index = ModuleIndex::scan(&dir).unwrap();
        let names = |v: Vec<ModuleFile>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
        let got = names(index.closure("fixture", &["virtio_pci", "virtio_console"]).unwrap());
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
        assert_eq!(names(index.closure("fixture", &["a-b"]).unwrap()), ["dummy", "a_b"]);

        let err = index.closure("fixture", &["dumm"]).unwrap_err().to_string();
        assert!(
            err.contains("`dumm`") && err.contains("fixture") && err.contains("dummy"),
            "{err}"
        );
    }

    /// Writes `<module>.xz` and `<module>.gz` next to the plain module file `plain`.
    fn write_compressed_copies(plain: &Path) {
        let bytes = fs::read(plain).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut bytes.as_slice(), &mut xz).unwrap();
        fs::write(plain.with_extension("ko.xz"), xz).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        fs::write(plain.with_extension("ko.gz"), gz.finish().unwrap()).unwrap();
    }

    #[test]
    fn compressed_modules() {
        let dir = super::super::tests::scratch_dir("modules-compressed");
        let plain = fake_module(&dir, "veth.ko", &["dummy"]);
        write_compressed_copies(&plain);
        for ext in ["ko", "ko.xz", "ko.gz"] {
            let info = read_modinfo(&dir.join(format!("veth.{ext}"))).unwrap();
            assert_eq!(info.depends, ["dummy"], "{ext}");
        }
    }

    #[test]
    fn quick_modinfo_reads_what_the_full_read_reads() {
        let dir = super::super::tests::scratch_dir("modules-quick");
        let plain = fake_module_with(&dir, "vxlan.ko", &["udp_tunnel"], &["rtnl-link-vxlan"]);
        write_compressed_copies(&plain);
        for ext in ["ko", "ko.xz", "ko.gz"] {
            let path = dir.join(format!("vxlan.{ext}"));
            let quick = read_modinfo_quick(&path).unwrap();
            assert_eq!(quick, read_modinfo(&path).unwrap(), "{ext}");
            assert_eq!(quick.aliases, ["rtnl-link-vxlan"], "{ext}");
            assert_eq!(quick.depends, ["udp_tunnel"], "{ext}");
        }
    }

    #[test]
    fn finds_modinfo_between_other_sections() {
        let section = b"alias=net-pf-38\0license=GPL\0depends=\0name=af_alg\0vermagic=6.12 SMP\0";
        let mut stream = b"\x7fELF\x02\0\0\x01code\0fmt %s=%d\0".to_vec();
        stream.extend_from_slice(section);
        stream.extend_from_slice(b"\0\0\0\x08rest=of\0file");
        let run = find_modinfo(&stream[..], "af_alg").unwrap().unwrap();
        assert_eq!(run, section);
        // Split anywhere, the same.
        for split in [1, 7, 30, 40, 60] {
            let reader = std::io::Read::chain(&stream[..split], &stream[split..]);
            assert_eq!(find_modinfo(reader, "af_alg").unwrap().unwrap(), section, "{split}");
        }
        // A field-like string right before the section is taken in; it is harmless.
        let mut sloppy = b"\x01\x02\0mode=%d\0".to_vec();
        sloppy.extend_from_slice(section);
        let run = find_modinfo(&sloppy[..], "af_alg").unwrap().unwrap();
        assert_eq!(parse_modinfo(&run).aliases, ["net-pf-38"]);
        // The first field glued to the last bytes of the section before (no NUL between).
        for junk in [&b"\x00\x8c\x05"[..], b"\x00\x8c\x05xy", b"\x00ab=c\x01author"] {
            let mut glued = junk.to_vec();
            glued.extend_from_slice(section);
            let run = find_modinfo(&glued[..], "af_alg").unwrap().unwrap();
            assert_eq!(run, section, "{junk:?}");
        }
        // No name field of this module: not found (the caller reads the ELF instead).
        assert_eq!(find_modinfo(&stream[..], "algif_hash").unwrap(), None);
        // The section at the very end of the stream.
        assert_eq!(find_modinfo(&section[..], "af_alg").unwrap().unwrap(), section);
    }

    #[test]
    fn closure_leaves_out_loaded_modules() {
        let dir = super::super::tests::scratch_dir("modules-loaded");
        fake_module(&dir, "udp_tunnel.ko", &[]);
        fake_module(&dir, "ip6_udp_tunnel.ko", &[]);
        fake_module(&dir, "vxlan.ko", &["udp_tunnel", "ip6_udp_tunnel"]);
        let index = ModuleIndex::scan(&dir).unwrap();
        let names = |v: Vec<ModuleFile>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
        let all = index.closure_without("k", &["vxlan"], &[]).unwrap();
        assert_eq!(names(all), ["udp_tunnel", "ip6_udp_tunnel", "vxlan"]);
        let some = index.closure_without("k", &["vxlan"], &["udp-tunnel".into()]).unwrap();
        assert_eq!(names(some), ["ip6_udp_tunnel", "vxlan"]);
        assert!(index.closure_without("k", &["vxlan"], &["vxlan".into()]).unwrap().is_empty());
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
        assert!(p.iter().all(|(_, p)| matches!(p, Provision::Missing(_))), "{p:?}");
        let builtin: HashSet<String> =
            ["virtio", "virtio_ring", "virtio_pci", "virtio_console"].map(String::from).into();
        let p = harness_provision(Some(&cfg61), Some(&builtin), None);
        assert!(p.iter().all(|(_, p)| *p == Provision::BuiltIn), "{p:?}");
        let p = harness_provision(None, None, None);
        assert!(p.iter().all(|(_, p)| *p == Provision::BuiltIn), "{p:?}");
        let p = harness_provision(Some(&parse_config("CONFIG_VIRTIO=y\n")), None, None);
        assert_eq!(p[3], ("virtio_console", Provision::Missing("CONFIG_VIRTIO_CONSOLE")));
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("dumy", "dummy"), 1);
        assert_eq!(edit_distance("veth", "veth"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
