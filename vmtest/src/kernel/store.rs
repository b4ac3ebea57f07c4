//! The kernel store: per user, shared by every crate on the machine.
//!
//! ```text
//! <root>/                        VMTEST_KERNELS, else $XDG_CACHE_HOME/vmtest/kernels,
//!   x86_64/                      else ~/.cache/vmtest/kernels
//!     6.12.117+deb12-amd64/      one dir per kernel, named by its release (or the user's name)
//!       kernel.meta              name, arch, version, flavour, package; written last
//!       vmlinuz  config  modules/
//!     .tmp-<name>/               a fetch or add in progress (renamed into place when complete)
//!     .locks/<name>.lock         flock held while a kernel is written
//!   aarch64/...
//!   apt/<debian arch>/           apt's lists and cache for fetching, apart from the system's
//!   userland/<arch>/busybox/     the guest's busybox (see `crate::userland`)
//! ```
//! A kernel dir counts as present only when it holds `kernel.meta`, and it appears only by a
//! rename of a complete dir: an interrupted fetch leaves at most a `.tmp-*` dir, which the next
//! fetch of that kernel removes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::image::image_info;
use super::{resolve, Kernel, KernelError};
use crate::arch::Arch;

/// The name of the metadata file in each kernel's dir.
pub(crate) const META: &str = "kernel.meta";
pub(crate) const IMAGE: &str = "vmlinuz";
pub(crate) const CONFIG: &str = "config";
pub(crate) const MODULES: &str = "modules";

/// A kernel store on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// What [`Store::fetch`] did.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// The kernel was downloaded and added.
    Added(Kernel),
    /// The newest package was already in the store: nothing was downloaded.
    AlreadyPresent(Kernel),
}

impl Fetched {
    /// The kernel in the store.
    pub fn kernel(&self) -> &Kernel {
        match self {
            Fetched::Added(k) | Fetched::AlreadyPresent(k) => k,
        }
    }
}

impl Store {
    /// Opens the user's store: `VMTEST_KERNELS`, else `$XDG_CACHE_HOME/vmtest/kernels`, else
    /// `~/.cache/vmtest/kernels`. The dir need not exist yet.
    pub fn open() -> Result<Store, KernelError> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = if let Some(root) = var("VMTEST_KERNELS") {
            root
        } else if let Some(cache) = var("XDG_CACHE_HOME") {
            cache.join("vmtest/kernels")
        } else if let Some(home) = var("HOME") {
            home.join(".cache/vmtest/kernels")
        } else {
            return Err(KernelError::NoStore);
        };
        Ok(Store { root })
    }

    /// A store at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store's root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn arch_dir(&self, arch: Arch) -> PathBuf {
        self.root.join(arch.name())
    }

    /// Every stored kernel, by arch then name.
    pub fn list(&self) -> Result<Vec<Kernel>, KernelError> {
        let mut all = Vec::new();
        for arch in Arch::ALL {
            all.extend(self.list_arch(arch)?);
        }
        Ok(all)
    }

    /// The stored kernels for `arch`, by name.
    pub fn list_arch(&self, arch: Arch) -> Result<Vec<Kernel>, KernelError> {
        let dir = self.arch_dir(arch);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io("read kernel store dir", &dir, e)),
        };
        let mut kernels = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| KernelError::io("read kernel store dir", &dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || !entry.path().join(META).is_file() {
                continue;
            }
            kernels.push(read_meta(&entry.path())?);
        }
        kernels.sort_by(|a, b| resolve::compare_versions(&a.name, &b.name));
        Ok(kernels)
    }

    /// The stored kernel `spec` names for `arch` (see [`resolve`](super::resolve)).
    pub fn find(&self, spec: &str, arch: Arch) -> Result<Kernel, KernelError> {
        let kernels = self.list_arch(arch)?;
        if let Some(kernel) = resolve::select(spec, &kernels) {
            return Ok(kernel.clone());
        }
        Err(KernelError::UnknownKernel {
            spec: spec.to_owned(),
            arch,
            store: self.root.clone(),
            stored: kernels.iter().map(Kernel::describe).collect(),
            fetchable: resolve::Series::parse(spec).is_some(),
        })
    }

    /// Fetches the current Debian kernel of a series (`6.12`, `6.1-cloud`) for `arch` into the
    /// store, reporting each step to `progress`.
    pub fn fetch(
        &self,
        spec: &str,
        arch: Arch,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Fetched, KernelError> {
        let fetched = super::fetch::fetch(self, spec, arch, progress)?;
        // Now rather than in the first test run.
        fetched.kernel().boot_image(crate::accel::Accel::Tcg);
        Ok(fetched)
    }

    /// Registers a kernel of the user's own: validates the image's header and copies the
    /// image, its modules dir (`lib/modules/<release>`, or an `INSTALL_MOD_PATH` holding one)
    /// and config into the store under `name`, for the arch the header says.
    pub fn add(
        &self,
        name: &str,
        image: &Path,
        modules: Option<&Path>,
        config: Option<&Path>,
    ) -> Result<Kernel, KernelError> {
        validate_name(name)?;
        let info = image_info(image)?;
        let modules = modules.map(find_release_dir).transpose()?;
        let arch_dir = self.arch_dir(info.arch);
        let _lock = self.lock(info.arch, name, &mut || {})?;
        let dest = arch_dir.join(name);
        if dest.exists() {
            return Err(KernelError::AlreadyStored { name: name.to_owned(), path: dest });
        }
        let tmp = self.temp_dir(info.arch, name)?;
        copy_file(image, &tmp.join(IMAGE))?;
        if let Some(config) = config {
            copy_file(config, &tmp.join(CONFIG))?;
        }
        if let Some(modules) = &modules {
            copy_tree(modules, &tmp.join(MODULES))?;
        }
        let kernel = Kernel {
            name: name.to_owned(),
            arch: info.arch,
            version: info.version,
            image: dest.join(IMAGE),
            modules_dir: modules.as_ref().map(|_| dest.join(MODULES)),
            config: config.map(|_| dest.join(CONFIG)),
            flavour: None,
            package: None,
            store_dir: Some(dest.clone()),
        };
        write_meta(&tmp, &kernel, None)?;
        self.install(&tmp, &dest)?;
        // Now rather than in the first test run.
        kernel.boot_image(crate::accel::Accel::Tcg);
        Ok(kernel)
    }

    /// Takes the lock for writing kernel `name` of `arch`; if another process holds it, calls
    /// `on_wait` and waits.
    pub(crate) fn lock(
        &self,
        arch: Arch,
        name: &str,
        on_wait: &mut dyn FnMut(),
    ) -> Result<File, KernelError> {
        lock_entry(&self.arch_dir(arch), name, on_wait)
    }

    /// A fresh, empty `.tmp-<name>` dir (removing one an interrupted run left). Call with the
    /// kernel's lock held.
    pub(crate) fn temp_dir(&self, arch: Arch, name: &str) -> Result<PathBuf, KernelError> {
        entry_temp_dir(&self.arch_dir(arch), name)
    }

    /// Moves a complete kernel dir into place, replacing an older one at `dest`.
    pub(crate) fn install(&self, tmp: &Path, dest: &Path) -> Result<(), KernelError> {
        if dest.exists() {
            let mut old = tmp.as_os_str().to_owned();
            old.push(".old");
            let old = PathBuf::from(old);
            let _ = fs::remove_dir_all(&old);
            fs::rename(dest, &old).map_err(|e| KernelError::io("move aside", dest, e))?;
            fs::remove_dir_all(&old).map_err(|e| KernelError::io("remove", &old, e))?;
        }
        fs::rename(tmp, dest).map_err(|e| KernelError::io("move into place", dest, e))
    }

    /// Bytes used by a stored kernel.
    pub fn size_of(&self, kernel: &Kernel) -> u64 {
        kernel.store_dir.as_deref().map_or(0, dir_size)
    }
}

/// Takes the lock `<dir>/.locks/<name>.lock` for writing the entry `<dir>/<name>`; if another
/// process holds it, calls `on_wait` and waits.
pub(crate) fn lock_entry(
    dir: &Path,
    name: &str,
    on_wait: &mut dyn FnMut(),
) -> Result<File, KernelError> {
    use rustix::fs::{flock, FlockOperation};
    let path = dir.join(".locks").join(format!("{name}.lock"));
    let file = open_lock_file(&path)?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        on_wait();
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| KernelError::io("lock", &path, e.into()))?;
    }
    Ok(file)
}

/// A fresh, empty `<dir>/.tmp-<name>` (removing one an interrupted run left). Call with the
/// entry's lock held.
pub(crate) fn entry_temp_dir(dir: &Path, name: &str) -> Result<PathBuf, KernelError> {
    let tmp = dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| KernelError::io("remove stale", &tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| KernelError::io("create", &tmp, e))?;
    Ok(tmp)
}

/// Opens (creating) `path` and takes an flock on it, waiting for other holders.
pub(crate) fn lock_file(path: &Path, exclusive: bool) -> Result<File, KernelError> {
    use rustix::fs::{flock, FlockOperation};
    let file = open_lock_file(path)?;
    let op = if exclusive { FlockOperation::LockExclusive } else { FlockOperation::LockShared };
    flock(&file, op).map_err(|e| KernelError::io("lock", path, e.into()))?;
    Ok(file)
}

fn open_lock_file(path: &Path) -> Result<File, KernelError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| KernelError::io("create", dir, e))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| KernelError::io("open lock file", path, e))?;
    Ok(file)
}

fn validate_name(name: &str) -> Result<(), KernelError> {
    let bad =
        |reason: &str| KernelError::InvalidName { name: name.to_owned(), reason: reason.into() };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("it starts with `.` or `-`"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c)) {
        return Err(bad("use only letters, digits and `._+-~`"));
    }
    Ok(())
}

/// `dir` itself, or its only `lib/modules/<release>` (an `INSTALL_MOD_PATH`).
fn find_release_dir(dir: &Path) -> Result<PathBuf, KernelError> {
    if !dir.is_dir() {
        return Err(KernelError::io(
            "read modules dir",
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    for lib in ["lib/modules", "usr/lib/modules"] {
        let parent = dir.join(lib);
        if let Ok(entries) = fs::read_dir(&parent) {
            let dirs: Vec<PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
            if let [only] = dirs.as_slice() {
                return Ok(only.clone());
            }
        }
    }
    Ok(dir.to_owned())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), KernelError> {
    fs::copy(from, to).map(drop).map_err(|e| KernelError::io("copy", from, e))
}

/// Copies files and dirs (not symlinks such as `build` and `source`) from `from` into `to`.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), KernelError> {
    fs::create_dir_all(to).map_err(|e| KernelError::io("create", to, e))?;
    for entry in fs::read_dir(from).map_err(|e| KernelError::io("read", from, e))? {
        let entry = entry.map_err(|e| KernelError::io("read", from, e))?;
        let ty = entry.file_type().map_err(|e| KernelError::io("stat", &entry.path(), e))?;
        let target = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if ty.is_file() {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Writes `kernel.meta` into a kernel dir (the last file written before it is moved in place).
pub(crate) fn write_meta(
    dir: &Path,
    kernel: &Kernel,
    package_version: Option<&str>,
) -> Result<(), KernelError> {
    let opt = |v: Option<&str>| v.unwrap_or("").to_owned();
    let text = format!(
        "# vmtest kernel store entry\nname={}\narch={}\nversion={}\nflavour={}\npackage={}\n\
         package_version={}\nimage={IMAGE}\nconfig={}\nmodules={}\n",
        kernel.name,
        kernel.arch,
        opt(kernel.version.as_deref()),
        opt(kernel.flavour.as_deref()),
        opt(kernel.package.as_deref()),
        opt(package_version),
        if kernel.config.is_some() { CONFIG } else { "" },
        if kernel.modules_dir.is_some() { MODULES } else { "" },
    );
    let path = dir.join(META);
    fs::write(&path, text).map_err(|e| KernelError::io("write", &path, e))
}

/// One field of a stored kernel's `kernel.meta`.
pub(crate) fn meta_field(dir: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join(META)).ok()?;
    meta_value(&text, key)
}

/// The value of `key` in a store entry's `key=value` metadata text, trimmed; `None` when it is
/// missing or empty.
pub(crate) fn meta_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

pub(crate) fn read_meta(dir: &Path) -> Result<Kernel, KernelError> {
    let path = dir.join(META);
    let text = fs::read_to_string(&path).map_err(|e| KernelError::io("read", &path, e))?;
    let field = |key: &str| meta_value(&text, key);
    let bad = |reason: String| KernelError::Metadata { path: path.clone(), reason };
    let name = field("name").ok_or_else(|| bad("it has no `name=`".into()))?;
    let arch = field("arch")
        .ok_or_else(|| bad("it has no `arch=`".into()))?
        .parse::<Arch>()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Kernel {
        name,
        arch,
        version: field("version"),
        image: dir.join(field("image").unwrap_or_else(|| IMAGE.into())),
        modules_dir: field("modules").map(|m| dir.join(m)),
        config: field("config").map(|c| dir.join(c)),
        flavour: field("flavour"),
        package: field("package"),
        store_dir: Some(dir.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::image::tests::{fake_arm64_image, fake_bzimage};
    use crate::kernel::tests::scratch_dir;

    #[test]
    fn add_list_find() {
        let dir = scratch_dir("store-add");
        let store = Store::at(dir.join("store"));
        let image = dir.join("bzImage");
        fs::write(&image, fake_bzimage("6.15.0-rc3+")).unwrap();
        let mods = dir.join("install/lib/modules/6.15.0-rc3+");
        crate::kernel::modules::tests::fake_module(&mods.join("kernel"), "net/dummy.ko", &[]);
        std::os::unix::fs::symlink("/nonexistent", mods.join("build")).unwrap();
        let config = dir.join(".config");
        fs::write(&config, "CONFIG_VIRTIO=y\n").unwrap();

        let k = store.add("bpf-next", &image, Some(&dir.join("install")), Some(&config)).unwrap();
        assert_eq!(k.arch, Arch::X86_64);
        assert_eq!(k.version.as_deref(), Some("6.15.0-rc3+"));
        assert!(k.modules_dir.as_ref().unwrap().join("kernel/net/dummy.ko").is_file());
        assert!(!k.modules_dir.as_ref().unwrap().join("build").exists());

        let arm = dir.join("Image");
        fs::write(&arm, fake_arm64_image("6.14.2")).unwrap();
        let a = store.add("mine", &arm, None, None).unwrap();
        assert_eq!((a.arch, a.version.as_deref()), (Arch::Aarch64, Some("6.14.2")));

        let listed = store.list().unwrap();
        let names: Vec<_> = listed.iter().map(|k| (k.arch, k.name.as_str())).collect();
        assert_eq!(names, [(Arch::X86_64, "bpf-next"), (Arch::Aarch64, "mine")]);
        assert_eq!(listed[0], k);
        assert!(store.size_of(&k) > 0);

        assert_eq!(store.find("bpf-next", Arch::X86_64).unwrap(), k);
        assert_eq!(store.find("6.15", Arch::X86_64).unwrap(), k);
        let err = store.find("mine", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("bpf-next"), "{err}");

        let err = store.add("bpf-next", &image, None, None).unwrap_err().to_string();
        assert!(err.contains("already"), "{err}");
        let err = store.add("a/b", &image, None, None).unwrap_err().to_string();
        assert!(err.contains("`a/b`"), "{err}");
        let err = store.add("x", &config, None, None).unwrap_err().to_string();
        assert!(err.contains("not a kernel image"), "{err}");
    }

    #[test]
    fn half_written_kernels_do_not_count() {
        let dir = scratch_dir("store-partial");
        let store = Store::at(&*dir);
        fs::create_dir_all(dir.join("x86_64/.tmp-6.12.1+deb12-amd64")).unwrap();
        fs::create_dir_all(dir.join("x86_64/6.12.2+deb12-amd64")).unwrap(); // no kernel.meta
        assert!(store.list().unwrap().is_empty());
    }
}
