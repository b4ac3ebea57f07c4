//! The kernel store: per user, shared by every crate on the machine.
//!
//! ```text
//! <root>/                        VMTEST_KERNELS, else $XDG_CACHE_HOME/vmtest/kernels,
//!   x86_64/                      else ~/.cache/vmtest/kernels
//!     6.12.117+deb12-amd64/      one dir per kernel, named by its release (or the user's name)
//!       kernel.meta              name, arch, version, flavour, package, sums; written last
//!       kernel.sums              size, mtime and SHA-256 of each file below (see `manifest`)
//!       vmlinuz  config  modules/
//!       vmlinux-pvh  modules.alias   derived by runs, checked before use (see `entry`)
//!     .tmp-<name>/               a fetch or add in progress (renamed into place when complete)
//!     .locks/<name>.lock         flock held while a kernel is fetched or added
//!     .locks/<name>.use          flock shared by the runs using the kernel, exclusive to replace it
//!   aarch64/...
//!   apt/<debian arch>/           apt's lists and cache for fetching, apart from the system's
//!   userland/<arch>/busybox/     the guest's busybox (see `crate::userland`)
//! ```
//! A kernel dir counts as present only when it holds `kernel.meta`, and it appears only by a
//! rename of a complete dir whose files were flushed to disk first (`syncfs`), replacing an
//! older one in one atomic exchange: an interrupted or crashed fetch leaves at most a `.tmp-*`
//! dir, which the next fetch of that kernel removes. An entry whose metadata or files are
//! damaged is skipped with one warning naming it and the command that repairs it.
//!
//! The store does not know where kernels come from: the Debian source (`super::fetch`,
//! [`Store::fetch`]) and [`Store::add`] install into it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::entry::{self, EntryError};
use super::image::image_info;
use super::layout::{open_lock_file, read_meta, write_meta, CONFIG, IMAGE, META, MODULES};
use super::manifest::{self, Depth, Manifest, SUMS};
use super::{resolve, Kernel, KernelError};
use crate::arch::Arch;

/// A kernel store on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
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
            match read_meta(&entry.path()) {
                Ok(kernel) => kernels.push(kernel),
                Err(e) => {
                    let path = entry.path();
                    entry::warn_skipped(
                        &path,
                        &e.to_string(),
                        &entry::repair_hint(&path, arch, None),
                    );
                }
            }
        }
        kernels.sort_by(|a, b| resolve::compare_versions(&a.name, &b.name));
        Ok(kernels)
    }

    /// The dirs of every entry for `arch` that has metadata (readable or not), by name.
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    pub(crate) fn entry_dirs(&self, arch: Arch) -> Result<Vec<PathBuf>, KernelError> {
        let dir = self.arch_dir(arch);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io("read kernel store dir", &dir, e)),
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.join(META).is_file())
            .collect();
        dirs.sort_by(|a, b| resolve::compare_versions(&a.to_string_lossy(), &b.to_string_lossy()));
        Ok(dirs)
    }

    /// The stored kernel `spec` names for `arch` (see [`resolve`](super::resolve)), checked
    /// against its manifest. A damaged entry is skipped with a warning naming it; when nothing
    /// else matches, the error names it and how to repair it. The process keeps a shared lock
    /// on the entry until it exits, so the kernel is not replaced under its runs.
    pub fn find(&self, spec: &str, arch: Arch) -> Result<Kernel, KernelError> {
        let mut kernels = self.list_arch(arch)?;
        let mut damaged = None;
        while let Some(kernel) = resolve::select(spec, &kernels).cloned() {
            let dir = kernel.store_dir.clone().unwrap_or_default();
            match entry::open(&dir, Depth::Quick) {
                Ok(opened) => return Ok(opened.kernel),
                Err(EntryError::Store(e)) => return Err(e),
                Err(EntryError::Damaged(reason)) => {
                    let repair = entry::repair_hint(&dir, arch, kernel.package.as_deref());
                    entry::warn_skipped(&dir, &reason, &repair);
                    damaged.get_or_insert(KernelError::Damaged {
                        name: kernel.name.clone(),
                        entry: dir.clone(),
                        reason,
                        repair,
                    });
                    kernels.retain(|k| k.store_dir.as_ref() != Some(&dir));
                }
            }
        }
        if let Some(damaged) = damaged {
            return Err(damaged);
        }
        Err(KernelError::UnknownKernel {
            spec: spec.to_owned(),
            arch,
            store: self.root.clone(),
            stored: kernels.iter().map(Kernel::describe).collect(),
            fetchable: resolve::Series::parse(spec).is_some(),
        })
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
        seal(&tmp, &kernel, None)?;
        self.install(&tmp, &dest, &mut || {})?;
        // Now rather than in the first test run.
        kernel.pvh_image();
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

    /// Moves a complete, sealed kernel dir into place. An older one at `dest` is replaced in
    /// one atomic exchange, with its use lock held exclusively (after calling `on_wait` when
    /// runs are using it), and then removed.
    pub(crate) fn install(
        &self,
        tmp: &Path,
        dest: &Path,
        on_wait: &mut dyn FnMut(),
    ) -> Result<(), KernelError> {
        entry::exclusive(dest, on_wait, || {
            let parent = dest.parent().unwrap_or(Path::new("."));
            if !dest.exists() {
                fs::rename(tmp, dest).map_err(|e| KernelError::io("move into place", dest, e))?;
                return manifest::sync_dir(parent);
            }
            use rustix::fs::{renameat_with, RenameFlags, CWD};
            match renameat_with(CWD, tmp, CWD, dest, RenameFlags::EXCHANGE) {
                Ok(()) => {}
                // A filesystem without RENAME_EXCHANGE: move aside, then into place. Runs
                // wait on the lock meanwhile, so none sees the gap.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                    let mut old = tmp.as_os_str().to_owned();
                    old.push(".old");
                    let old = PathBuf::from(old);
                    let _ = fs::remove_dir_all(&old);
                    fs::rename(dest, &old).map_err(|e| KernelError::io("move aside", dest, e))?;
                    fs::rename(tmp, dest)
                        .map_err(|e| KernelError::io("move into place", dest, e))?;
                    fs::rename(&old, tmp).map_err(|e| KernelError::io("move", &old, e))?;
                }
                Err(e) => return Err(KernelError::io("move into place", dest, e.into())),
            }
            manifest::sync_dir(parent)?;
            // `tmp` now holds the old entry.
            fs::remove_dir_all(tmp).map_err(|e| KernelError::io("remove", tmp, e))
        })
    }

    /// Bytes used by a stored kernel.
    pub(crate) fn size_of(&self, kernel: &Kernel) -> u64 {
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

/// Seals a kernel dir before it is moved into place: records the manifest of its files
/// (`kernel.sums`), then its metadata (`kernel.meta`, last), each durably, and flushes the
/// whole dir to disk.
pub(crate) fn seal(
    dir: &Path,
    kernel: &Kernel,
    package_version: Option<&str>,
) -> Result<(), KernelError> {
    let roots: Vec<&str> = [Some(IMAGE)]
        .into_iter()
        .chain([
            kernel.config.as_ref().map(|_| CONFIG),
            kernel.modules_dir.as_ref().map(|_| MODULES),
        ])
        .flatten()
        .collect();
    let sums = Manifest::compute(dir, &roots)?;
    manifest::write_durably(&dir.join(SUMS), sums.to_text().as_bytes())?;
    write_meta(dir, kernel, package_version)?;
    manifest::sync_filesystem(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::image::tests::{fake_arm64_image, fake_bzimage};
    use crate::kernel::layout::meta_field;
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

    /// A store with one x86_64 kernel added under `name` (with a config and a module).
    fn store_with(dir: &Path, names: &[&str]) -> Store {
        let store = Store::at(dir.join("store"));
        for name in names {
            let src = dir.join(format!("src-{name}"));
            let mods = src.join("lib/modules/6.15.0");
            crate::kernel::modules::tests::fake_module(&mods.join("kernel"), "net/dummy.ko", &[]);
            fs::write(src.join("bzImage"), fake_bzimage(&format!("{name}-rc1"))).unwrap();
            fs::write(src.join("config"), "CONFIG_VIRTIO=y\n").unwrap();
            store.add(name, &src.join("bzImage"), Some(&src), Some(&src.join("config"))).unwrap();
        }
        store
    }

    #[test]
    fn a_corrupt_meta_skips_only_that_entry() {
        let dir = scratch_dir("store-corrupt-meta");
        let store = store_with(&dir, &["6.15.1", "6.15.2", "mine"]);
        let entry = store.arch_dir(Arch::X86_64).join("6.15.2");
        fs::write(entry.join(META), "\0\0garbage").unwrap();
        let mine = store.arch_dir(Arch::X86_64).join("mine");
        fs::write(mine.join(META), "name=mine\narch=x86_64\nimage=../../../etc/passwd\n").unwrap();

        let names: Vec<String> = store.list().unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["6.15.1"]);
        assert_eq!(store.find("6.15", Arch::X86_64).unwrap().name, "6.15.1");
        let err = store.find("mine", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("failed to find kernel `mine`"), "{err}");

        let reason = read_meta(&mine).unwrap_err().to_string();
        assert!(
            reason.contains("`image=../../../etc/passwd` is not a plain file name"),
            "{reason}"
        );
    }

    #[test]
    fn damaged_entries_are_skipped_and_named_with_their_repair() {
        let dir = scratch_dir("store-damaged");
        let store = store_with(&dir, &["6.15.1", "6.15.2"]);
        let newest = store.arch_dir(Arch::X86_64).join("6.15.2");
        assert!(newest.join(SUMS).is_file());
        assert_eq!(meta_field(&newest, "sums").as_deref(), Some(SUMS));

        // Truncated: caught by its size, the older 6.15 is used instead.
        let image = newest.join(IMAGE);
        let good = fs::read(&image).unwrap();
        fs::write(&image, b"").unwrap();
        assert_eq!(store.find("6.15", Arch::X86_64).unwrap().name, "6.15.1");
        let err = store.find("6.15.2", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains(&format!("the entry {} is damaged", newest.display())), "{err}");
        assert!(err.contains("`vmlinuz` is 0 bytes"), "{err}");
        assert!(err.contains(&format!("`rm -r {}`", newest.display())), "{err}");
        assert!(err.contains("`cargo vmtest kernel add 6.15.2 --image"), "{err}");

        // Same size, other bytes, a new mtime: caught by its hash.
        let mut flipped = good.clone();
        flipped[0x300] ^= 0xff;
        fs::write(&image, &flipped).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        File::options().write(true).open(&image).unwrap().set_modified(later).unwrap();
        let err = Store::at(store.root()).find("6.15.2", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("`vmlinuz` does not match its SHA-256"), "{err}");

        // Restored: usable again, and its new mtime is recorded.
        fs::write(&image, &good).unwrap();
        File::options().write(true).open(&image).unwrap().set_modified(later).unwrap();
        let opened = entry::check(&newest, Depth::Quick).unwrap();
        assert_eq!(opened.kernel.name, "6.15.2");
        // A module that vanished.
        let module = newest.join("modules/kernel/net/dummy.ko");
        fs::remove_file(&module).unwrap();
        let err = entry::check(&newest, Depth::Quick).unwrap_err();
        assert!(format!("{err:?}").contains("dummy.ko` cannot be read"), "{err:?}");
    }

    #[test]
    fn an_entry_without_checksums_gets_them_on_first_use() {
        let dir = scratch_dir("store-legacy");
        let store = store_with(&dir, &["6.15.1", "6.15.2"]);
        // As vmtest wrote entries before it kept checksums.
        for name in ["6.15.1", "6.15.2"] {
            let entry = store.arch_dir(Arch::X86_64).join(name);
            fs::remove_file(entry.join(SUMS)).unwrap();
            let meta = fs::read_to_string(entry.join(META)).unwrap();
            fs::write(entry.join(META), meta.replace("sums=kernel.sums\n", "")).unwrap();
        }
        let damaged = store.arch_dir(Arch::X86_64).join("6.15.2");
        fs::write(damaged.join(CONFIG), b"").unwrap();

        let k = store.find("6.15", Arch::X86_64).unwrap();
        assert_eq!(k.name, "6.15.1", "the legacy entry with an empty config is skipped");
        let entry = k.store_dir.unwrap();
        assert_eq!(meta_field(&entry, "sums").as_deref(), Some(SUMS));
        let sums = fs::read_to_string(entry.join(SUMS)).unwrap();
        assert!(sums.contains(" vmlinuz\n") && sums.contains(" modules/kernel/net/dummy.ko\n"));
        assert!(!damaged.join(SUMS).exists(), "no checksums are recorded for a damaged entry");
        let err = entry::check(&damaged, Depth::Quick).unwrap_err();
        assert!(format!("{err:?}").contains("`config` is empty"), "{err:?}");
    }

    #[test]
    fn damaged_derived_files_are_removed_and_made_again() {
        let dir = scratch_dir("store-derived");
        let store = store_with(&dir, &["6.15.1"]);
        let entry = store.arch_dir(Arch::X86_64).join("6.15.1");
        fs::write(entry.join("vmlinux-pvh"), b"").unwrap();
        fs::write(entry.join("modules.alias"), b"").unwrap();
        let k = store.find("6.15.1", Arch::X86_64).unwrap();
        assert!(!entry.join("vmlinux-pvh").exists() && !entry.join("modules.alias").exists());
        // The fake bzImage has no payload: the boot image is the bzImage, noted as such.
        assert_eq!(k.pvh_image(), None);

        // An ELF shorter than its segments (a write cut short).
        let elf = entry.join("vmlinux-pvh");
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[6] = 1;
        bytes[18] = 62;
        bytes[32] = 64; // e_phoff
        bytes[52] = 64; // e_ehsize
        bytes[54] = 56; // e_phentsize
        bytes[56] = 1; // e_phnum
        bytes[64] = 1; // PT_LOAD
        bytes[64 + 8..64 + 16].copy_from_slice(&4096u64.to_le_bytes()); // p_offset
        bytes[64 + 32..64 + 40].copy_from_slice(&4096u64.to_le_bytes()); // p_filesz
        fs::write(&elf, &bytes).unwrap();
        entry::check(&entry, Depth::Quick).unwrap();
        assert!(!elf.exists(), "a truncated ELF is removed");
        bytes.resize(8192, 0);
        fs::write(&elf, &bytes).unwrap();
        entry::check(&entry, Depth::Quick).unwrap();
        assert!(elf.exists(), "a whole one is kept");
    }

    #[test]
    fn a_replacement_waits_for_the_runs_using_the_entry() {
        use rustix::fs::{flock, FlockOperation};
        let dir = scratch_dir("store-replace");
        let store = store_with(&dir, &["6.15.1"]);
        let dest = store.arch_dir(Arch::X86_64).join("6.15.1");
        let lock = store.arch_dir(Arch::X86_64).join(".locks/6.15.1.use");
        // Another process's run (an open file description of its own).
        let reader = open_lock_file(&lock).unwrap();
        flock(&reader, FlockOperation::LockShared).unwrap();

        let tmp = store.temp_dir(Arch::X86_64, "6.15.1").unwrap();
        fs::write(tmp.join("marker"), b"new").unwrap();
        let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let installer = {
            let (store, tmp, dest, waited) =
                (store.clone(), tmp.clone(), dest.clone(), waited.clone());
            std::thread::spawn(move || {
                store.install(&tmp, &dest, &mut || {
                    waited.store(true, std::sync::atomic::Ordering::SeqCst)
                })
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst), "the installer said it waits");
        assert!(dest.join(META).is_file() && !dest.join("marker").exists(), "not replaced yet");
        drop(reader);
        installer.join().unwrap().unwrap();
        assert!(dest.join("marker").is_file() && !tmp.exists());

        // And a run waits while an entry is being replaced.
        let writer = open_lock_file(&lock).unwrap();
        flock(&writer, FlockOperation::LockExclusive).unwrap();
        let finder = {
            let dest = dest.clone();
            std::thread::spawn(move || entry::open(&dest, Depth::Quick).map(|_| ()))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!finder.is_finished(), "a run does not read an entry being replaced");
        drop(writer);
        let err = finder.join().unwrap().unwrap_err();
        assert!(format!("{err:?}").contains("kernel.meta cannot be read"), "{err:?}");
    }

    #[test]
    fn repair_hints_name_the_series_or_the_add_command() {
        let hint = |name: &str, arch, pkg| {
            entry::repair_hint(&Path::new("/s/x86_64").join(name), arch, pkg)
        };
        assert!(hint("6.12.117+deb12-amd64", Arch::X86_64, None)
            .contains("kernel fetch 6.12 --arch x86_64"));
        assert!(hint("6.1.0-57-cloud-amd64", Arch::X86_64, None)
            .contains("kernel fetch 6.1-cloud --arch x86_64"));
        assert!(
            hint("6.1.0-57-amd64", Arch::X86_64, None).contains("kernel fetch 6.1 --arch x86_64")
        );
        assert!(hint("6.12.117+deb12-arm64", Arch::Aarch64, None)
            .contains("kernel fetch 6.12 --arch aarch64"));
        let own = hint("bpf-next", Arch::X86_64, None);
        assert!(
            own.contains("`rm -r /s/x86_64/bpf-next`") && own.contains("kernel add bpf-next"),
            "{own}"
        );
    }

    /// Set in the child that `an_added_entry_reaches_the_disk_before_its_name` traces.
    const TRACED_ADD: &str = "VMTEST_STORE_TRACED_ADD";

    #[test]
    fn an_added_entry_reaches_the_disk_before_its_name() {
        if let Some(dir) = std::env::var_os(TRACED_ADD) {
            store_with(Path::new(&dir), &["6.15.1"]);
            return;
        }
        let dir = scratch_dir("store-traced");
        let log = dir.join("strace.log");
        let status = std::process::Command::new("strace")
            .args([
                "-f",
                "-y",
                "-qq",
                "-e",
                "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2",
            ])
            .arg("-o")
            .arg(&log)
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kernel::store::tests::an_added_entry_reaches_the_disk_before_its_name",
            ])
            .env(TRACED_ADD, &*dir)
            .stdout(std::process::Stdio::null())
            .status();
        match status {
            Err(e) => {
                return crate::__testing::missing(&format!(
                    "cannot run strace ({e}); `apt-get install strace`"
                ))
            }
            Ok(s) if !s.success() && !log.exists() => {
                return crate::__testing::missing(&format!("strace cannot trace here ({s})"))
            }
            Ok(s) => assert!(s.success(), "the traced add failed: {s}"),
        }
        let trace = fs::read_to_string(&log).unwrap();
        let arch_dir = dir.join("store/x86_64");
        let at = |what: &str, needle: &str| {
            trace
                .lines()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {what}:\n{trace}"))
        };
        let tmp = arch_dir.join(".tmp-6.15.1");
        let sums = at("rename to kernel.sums", &format!("{}\")", tmp.join(SUMS).display()));
        let meta = at("rename to kernel.meta", &format!("{}\")", tmp.join(META).display()));
        let fsynced_meta = at("fsync of the temp kernel.meta", ".kernel.meta.tmp-");
        let syncfs = at("syncfs", "syncfs(");
        let install =
            at("rename into place", &format!("\"{}\"", arch_dir.join("6.15.1").display()));
        let synced_dir = format!("<{}>)", arch_dir.display());
        let dir_synced = trace
            .lines()
            .skip(install)
            .any(|l| l.contains("fsync(") && l.ends_with(&format!("{synced_dir} = 0")));
        assert!(
            sums < meta && fsynced_meta < meta,
            "kernel.meta is written last, durably:\n{trace}"
        );
        assert!(
            meta < syncfs && syncfs < install,
            "flushed before it is renamed into place:\n{trace}"
        );
        assert!(dir_synced, "the rename is made durable:\n{trace}");
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
