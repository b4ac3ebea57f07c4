//! Debian's `gdbserver` for the guest's arch in the kernel store, for `VMTEST_GDB=test`: fetched
//! with the store's apt (its version resolved from the current lists, never pinned) and kept
//! beside the busybox userland.
//!
//! ```text
//! <store>/userland/<arch>/
//!   gdbserver/               appears only by a rename of a complete dir
//!     gdbserver              the binary, as the package ships it (dynamically linked)
//!     gdbserver.meta         arch, package, package_version; written last
//!   .tmp-gdbserver/          a fetch in progress
//!   .locks/gdbserver.lock    flock held while it is written
//! ```
//!
//! Debian's gdbserver is linked against glibc and libstdc++: the guest image gets it with the
//! host's copies of those libraries, as it gets the test binary's, so it serves guests of the
//! host's arch.

use std::fs;
use std::path::{Path, PathBuf};

use super::store::install_package;
use crate::arch::Arch;
use crate::kernel::apt::Apt;
use crate::kernel::store::lock_entry;
use crate::kernel::{human_size, KernelError, Store};

/// The Debian package.
pub(crate) const PACKAGE: &str = "gdbserver";
/// The entry's name in its arch's dir, and the binary's name in it.
const ENTRY: &str = "gdbserver";
const META: &str = "gdbserver.meta";

fn entry_dir(store: &Store, arch: Arch) -> PathBuf {
    store.root().join("userland").join(arch.name()).join(ENTRY)
}

/// The stored gdbserver for `arch`, if a complete entry is there.
fn stored(store: &Store, arch: Arch) -> Option<PathBuf> {
    let dir = entry_dir(store, arch);
    (dir.join(META).is_file() && dir.join(ENTRY).is_file()).then(|| dir.join(ENTRY))
}

impl Store {
    /// Fetches Debian's current `gdbserver` for `arch` into the store (nothing is downloaded
    /// when the stored one is current), reporting each step to `progress`; returns the binary.
    pub fn fetch_gdbserver(
        &self,
        arch: Arch,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, KernelError> {
        fetch(self, arch, true, progress)
    }
}

/// The gdbserver for a run's guests of `arch`: the stored one, else fetched when apt is
/// installed (progress as notes). The error says what is missing. (It serves guests of the
/// host's arch only: the guest gets the host's copies of its libraries.)
pub(crate) fn for_run(arch: Arch) -> Result<PathBuf, String> {
    let store = Store::open().map_err(|e| e.to_string())?;
    if let Some(binary) = stored(&store, arch) {
        return Ok(binary);
    }
    fetch(&store, arch, false, &mut |line| crate::notice::note(&format!("gdbserver: {line}")))
        .map_err(|e| format!("the store has none and fetching it failed: {e}"))
}

/// Fetches gdbserver for `arch`; with `refresh` false, one already stored (say, by a run that
/// held the lock before us) is kept without asking apt.
fn fetch(
    store: &Store,
    arch: Arch,
    refresh: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, KernelError> {
    let apt = Apt::for_store(store, arch)?;
    let dest = entry_dir(store, arch);
    let dir = dest.parent().expect("the entry is in its arch's dir").to_owned();
    let _lock = lock_entry(&dir, ENTRY, &mut || {
        progress(&format!("waiting for another fetch of gdbserver ({arch}) to finish"))
    })?;
    let stored_version = fs::read_to_string(dest.join(META))
        .ok()
        .and_then(|text| crate::kernel::layout::meta_value(&text, "package_version"));
    if let (Some(binary), false) = (stored(store, arch), refresh) {
        return Ok(binary);
    }
    let package = {
        let _lock = apt.lock(true)?;
        apt.refresh(progress)?;
        apt.show(&[PACKAGE])?
            .iter()
            .find_map(|stanza| stanza.package().filter(|p| p.name == PACKAGE))
            .ok_or_else(|| KernelError::BadPackage {
                package: PACKAGE.to_owned(),
                reason: format!("apt knows no {PACKAGE} for {arch}"),
            })?
    };
    let size = package.size.map(|s| format!(", {}", human_size(s))).unwrap_or_default();
    progress(&format!("current package: {} {}{size}", package.name, package.version));
    if let (Some(binary), Some(version)) = (stored(store, arch), &stored_version) {
        if *version == package.version {
            progress(&format!("gdbserver ({arch}) is already in the store and current"));
            return Ok(binary);
        }
    }
    install_package(store, &apt, &package, &dir, ENTRY, progress, |unpacked, entry| {
        assemble(unpacked, entry, arch, &package.name, &package.version)
    })?;
    progress(&format!("added gdbserver {} ({arch}) to {}", package.version, dest.display()));
    Ok(dest.join(ENTRY))
}

/// Checks the gdbserver of an unpacked package and writes the store entry into `entry`.
fn assemble(
    unpacked: &Path,
    entry: &Path,
    arch: Arch,
    package: &str,
    version: &str,
) -> Result<(), KernelError> {
    let bad = |reason: String| KernelError::BadPackage { package: package.to_owned(), reason };
    let binary = unpacked.join("usr/bin/gdbserver");
    let info = crate::image::elf::read_elf(&binary).map_err(|e| bad(e.to_string()))?;
    if Arch::from_elf_machine(info.machine) != Some(arch) {
        return Err(bad(format!("{} is not a {arch} program", binary.display())));
    }
    fs::create_dir_all(entry).map_err(|e| KernelError::io("create", entry, e))?;
    let target = entry.join(ENTRY);
    fs::rename(&binary, &target).map_err(|e| KernelError::io("move", &binary, e))?;
    let meta = entry.join(META);
    let text = format!(
        "# vmtest gdbserver store entry\narch={arch}\npackage={package}\npackage_version={version}\n"
    );
    fs::write(&meta, text).map_err(|e| KernelError::io("write", &meta, e))
}
