//! A store entry's files: their names, its `kernel.meta` (written, read and parsed) and the
//! lock files of the store. Beneath both the store ([`super::store`]) and an entry in use
//! ([`super::entry`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::manifest::{self, SUMS};
use super::{Kernel, KernelError};
use crate::arch::Arch;

/// The name of the metadata file in each kernel's dir (written last).
pub(crate) const META: &str = "kernel.meta";
/// The image's file name in an entry.
pub(crate) const IMAGE: &str = "vmlinuz";
/// The kernel config's file name in an entry.
pub(crate) const CONFIG: &str = "config";
/// The modules dir's name in an entry.
pub(crate) const MODULES: &str = "modules";

/// Opens (creating) `path` and takes an flock on it, waiting for other holders.
pub(crate) fn lock_file(path: &Path, exclusive: bool) -> Result<File, KernelError> {
    use rustix::fs::{flock, FlockOperation};
    let file = open_lock_file(path)?;
    let op = if exclusive { FlockOperation::LockExclusive } else { FlockOperation::LockShared };
    flock(&file, op).map_err(|e| KernelError::io("lock", path, e.into()))?;
    Ok(file)
}

/// Opens (creating, with its dir) the lock file `path`, without locking it.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, KernelError> {
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

/// Writes `kernel.meta` into a kernel dir (the last file written before it is moved in place).
pub(crate) fn write_meta(
    dir: &Path,
    kernel: &Kernel,
    package_version: Option<&str>,
) -> Result<(), KernelError> {
    let opt = |v: Option<&str>| v.unwrap_or("").to_owned();
    let text = format!(
        "# vmtest kernel store entry\nname={}\narch={}\nversion={}\nflavour={}\npackage={}\n\
         package_version={}\nimage={IMAGE}\nconfig={}\nmodules={}\nsums={SUMS}\n",
        kernel.name,
        kernel.arch,
        opt(kernel.version.as_deref()),
        opt(kernel.flavour.as_deref()),
        opt(kernel.package.as_deref()),
        opt(package_version),
        if kernel.config.is_some() { CONFIG } else { "" },
        if kernel.modules_dir.is_some() { MODULES } else { "" },
    );
    manifest::write_durably(&dir.join(META), text.as_bytes())
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

/// The kernel `dir`'s `kernel.meta` describes.
pub(crate) fn read_meta(dir: &Path) -> Result<Kernel, KernelError> {
    let path = dir.join(META);
    let text = fs::read_to_string(&path).map_err(|e| KernelError::io("read", &path, e))?;
    parse_meta(dir, &text).map_err(|reason| KernelError::Metadata { path, reason })
}

/// The kernel an entry's `kernel.meta` text describes; its file names must be plain names in
/// the entry's dir.
pub(crate) fn parse_meta(dir: &Path, text: &str) -> Result<Kernel, String> {
    let field = |key: &str| meta_value(text, key);
    let name = field("name").ok_or("it has no `name=`")?;
    let arch =
        field("arch").ok_or("it has no `arch=`")?.parse::<Arch>().map_err(|e| e.to_string())?;
    let file = |key: &str| -> Result<Option<PathBuf>, String> {
        match field(key) {
            Some(v) if v.contains('/') || v.starts_with('.') || v.chars().any(char::is_control) => {
                Err(format!("`{key}={v}` is not a plain file name in the entry"))
            }
            v => Ok(v.map(|v| dir.join(v))),
        }
    };
    Ok(Kernel {
        name,
        arch,
        version: field("version"),
        image: file("image")?.unwrap_or_else(|| dir.join(IMAGE)),
        modules_dir: file("modules")?,
        config: file("config")?,
        flavour: field("flavour"),
        package: field("package"),
        store_dir: Some(dir.to_owned()),
    })
}
