//! The guest userland in the kernel store: Debian's `busybox-static` for each arch, fetched with
//! apt as kernels are ([`crate::kernel`]'s apt state, locks and atomic installs).
//!
//! ```text
//! <store>/userland/<arch>/
//!   busybox/                 the current one; appears only by a rename of a complete dir
//!     busybox                the static binary, as the package ships it
//!     applets                its applets and their dirs, read from the binary at fetch time
//!     userland.meta          arch, package, package_version; written last
//!   .tmp-busybox/            a fetch in progress
//!   .locks/busybox.lock      flock held while it is written
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use super::applets::{self, Applet};
use crate::arch::Arch;
use crate::kernel::apt::{self, Apt, Stanza};
use crate::kernel::store::{entry_temp_dir, lock_entry};
use crate::kernel::{human_size, KernelError, Store};

/// The Debian package the userland comes from.
pub(crate) const PACKAGE: &str = "busybox-static";
/// The entry's name in its arch's dir.
const ENTRY: &str = "busybox";
const META: &str = "userland.meta";
const BINARY: &str = "busybox";
const APPLETS: &str = "applets";

/// A guest userland in the store: a static busybox for one arch and its applets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Userland {
    /// The arch it runs on.
    pub arch: Arch,
    /// The Debian package it came from.
    pub package: String,
    /// That package's version.
    pub version: String,
    /// The busybox binary.
    pub busybox: PathBuf,
    /// How many applets it has.
    pub applet_count: usize,
    /// Whether the binary said where each applet is installed (else links go to both bin dirs).
    pub located: bool,
    /// Its dir in the store.
    pub dir: PathBuf,
}

impl Userland {
    /// The applets, as read from the binary when it was fetched.
    pub(crate) fn applets(&self) -> Result<Vec<Applet>, KernelError> {
        read_applets(&self.dir)
    }
}

fn arch_dir(store: &Store, arch: Arch) -> PathBuf {
    store.root().join("userland").join(arch.name())
}

fn read_applets(dir: &Path) -> Result<Vec<Applet>, KernelError> {
    let path = dir.join(APPLETS);
    let text = fs::read_to_string(&path).map_err(|e| KernelError::io("read", &path, e))?;
    applets::from_text(&text).map_err(|reason| KernelError::Metadata { path, reason })
}

/// The userland at `dir`, if one is complete there.
fn read_entry(dir: &Path) -> Result<Option<Userland>, KernelError> {
    let meta = dir.join(META);
    let text = match fs::read_to_string(&meta) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KernelError::io("read", &meta, e)),
    };
    let field = |key: &str| crate::kernel::layout::meta_value(&text, key);
    let bad = |reason: String| KernelError::Metadata { path: meta.clone(), reason };
    let arch = field("arch")
        .ok_or_else(|| bad("it has no `arch=`".into()))?
        .parse::<Arch>()
        .map_err(|e| bad(e.to_string()))?;
    let applets = read_applets(dir)?;
    Ok(Some(Userland {
        arch,
        package: field("package").unwrap_or_else(|| PACKAGE.to_owned()),
        version: field("package_version")
            .ok_or_else(|| bad("it has no `package_version=`".into()))?,
        busybox: dir.join(BINARY),
        applet_count: applets.len(),
        located: applets.iter().all(|a| a.dir.is_some()),
        dir: dir.to_owned(),
    }))
}

impl Store {
    /// The guest userland stored for `arch`, if any.
    pub fn userland(&self, arch: Arch) -> Result<Option<Userland>, KernelError> {
        read_entry(&arch_dir(self, arch).join(ENTRY))
    }

    /// Fetches Debian's current `busybox-static` for `arch` into the store (nothing is
    /// downloaded when the stored one is current), reporting each step to `progress`.
    pub fn fetch_userland(
        &self,
        arch: Arch,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Userland, KernelError> {
        fetch(self, arch, true, progress)
    }
}

/// The stored userland for `arch`, fetched first when the store has none (a stored one is used
/// as it is, without asking apt).
pub(crate) fn ensure(
    store: &Store,
    arch: Arch,
    progress: &mut dyn FnMut(&str),
) -> Result<Userland, KernelError> {
    if let Some(userland) = store.userland(arch)? {
        return Ok(userland);
    }
    fetch(store, arch, false, progress)
}

/// Fetches the userland for `arch`; with `refresh` false, one already stored (say, by a run
/// that held the lock before us) is kept without asking apt.
fn fetch(
    store: &Store,
    arch: Arch,
    refresh: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Userland, KernelError> {
    let apt = Apt::for_store(store, arch)?;
    let dir = arch_dir(store, arch);
    let dest = dir.join(ENTRY);
    let _lock = lock_entry(&dir, ENTRY, &mut || {
        progress(&format!("waiting for another fetch of the {arch} userland to finish"))
    })?;
    let stored = read_entry(&dest)?;
    if let (Some(userland), false) = (&stored, refresh) {
        return Ok(userland.clone());
    }
    let package = {
        let _lock = apt.lock(true)?;
        apt.refresh(progress)?;
        apt.show(&[PACKAGE])?
            .first()
            .and_then(Stanza::package)
            .ok_or(KernelError::NoUserlandPackage { arch })?
    };
    let size = package.size.map(|s| format!(", {}", human_size(s))).unwrap_or_default();
    progress(&format!("current package: {} {}{size}", package.name, package.version));
    if let Some(userland) = stored.filter(|u| u.version == package.version) {
        progress(&format!(
            "the {arch} userland is already in the store and current: nothing to do"
        ));
        return Ok(userland);
    }

    install_package(store, &apt, &package, &dir, ENTRY, progress, |unpacked, entry| {
        assemble(unpacked, entry, arch, &package.name, &package.version)
    })?;
    let userland = read_entry(&dest)?.ok_or_else(|| KernelError::Metadata {
        path: dest.join(META),
        reason: "it vanished after the install".into(),
    })?;
    progress(&format!(
        "added busybox {} ({arch}, {} applets{}) to {}",
        userland.version,
        userland.applet_count,
        if userland.located { "" } else { ", their dirs unknown: linked in /bin and /usr/bin" },
        dest.display()
    ));
    Ok(userland)
}

/// Downloads `package` with `apt` into a temp dir of `dir`, unpacks it there, has `assemble`
/// make the store entry from the unpacked tree (its arguments: the tree, the entry to write),
/// and installs that entry as `dir/name`, in place of an older one.
pub(super) fn install_package(
    store: &Store,
    apt: &Apt,
    package: &apt::Package,
    dir: &Path,
    name: &str,
    progress: &mut dyn FnMut(&str),
    assemble: impl FnOnce(&Path, &Path) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let tmp = entry_temp_dir(dir, name)?;
    let deb = apt.download_into(package, &tmp, progress)?;
    let unpacked = tmp.join("unpacked");
    apt::unpack(&deb, &unpacked)?;
    let entry = tmp.join(name);
    assemble(&unpacked, &entry)?;
    store.install(&entry, &dir.join(name), &mut || {})?;
    fs::remove_dir_all(&tmp).map_err(|e| KernelError::io("remove", &tmp, e))
}

/// Checks the busybox of an unpacked package and writes the store entry into `entry`.
fn assemble(
    unpacked: &Path,
    entry: &Path,
    arch: Arch,
    package: &str,
    version: &str,
) -> Result<(), KernelError> {
    let bad = |reason: String| KernelError::BadPackage { package: package.to_owned(), reason };
    let binary = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| unpacked.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| bad("it has no bin/busybox".into()))?;
    let applets = check_busybox(&binary, arch).map_err(bad)?;
    fs::create_dir_all(entry).map_err(|e| KernelError::io("create", entry, e))?;
    let target = entry.join(BINARY);
    fs::rename(&binary, &target).map_err(|e| KernelError::io("move", &binary, e))?;
    let path = entry.join(APPLETS);
    fs::write(&path, applets::to_text(&applets)).map_err(|e| KernelError::io("write", &path, e))?;
    let meta = entry.join(META);
    let text = format!(
        "# vmtest userland store entry\narch={arch}\npackage={package}\npackage_version={version}\n"
    );
    fs::write(&meta, text).map_err(|e| KernelError::io("write", &meta, e))
}

/// Checks that `binary` is a static ELF executable for `arch` and reads its applets; the error
/// says what is wrong with it.
pub(crate) fn check_busybox(binary: &Path, arch: Arch) -> Result<Vec<Applet>, String> {
    let info = crate::image::elf::read_elf(binary).map_err(|e| e.to_string())?;
    let machine = Arch::from_elf_machine(info.machine);
    if machine != Some(arch) {
        let found =
            machine.map_or_else(|| format!("ELF machine {}", info.machine), |a| a.to_string());
        return Err(format!("{} is for {found}, not {arch}", binary.display()));
    }
    if let Some(interp) = info.interp {
        return Err(format!(
            "{} is dynamically linked (interpreter {interp}); the guest needs a static busybox",
            binary.display()
        ));
    }
    let bytes =
        fs::read(binary).map_err(|e| format!("failed to read {}: {e}", binary.display()))?;
    applets::read(&bytes).map_err(|e| format!("{}: {e}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::scratch_dir;

    /// Writes a store entry by hand, as a fetch would leave it.
    fn fake_entry(store: &Store, arch: Arch, applets: &str) -> PathBuf {
        let dest = arch_dir(store, arch).join(ENTRY);
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join(BINARY), b"binary").unwrap();
        fs::write(dest.join(APPLETS), applets).unwrap();
        fs::write(
            dest.join(META),
            format!("arch={arch}\npackage=busybox-static\npackage_version=1:1.35.0-4\n"),
        )
        .unwrap();
        dest
    }

    #[test]
    fn reads_a_stored_userland() {
        let dir = scratch_dir("userland-read");
        let store = Store::at(&*dir);
        assert_eq!(store.userland(Arch::X86_64).unwrap(), None);
        let dest = fake_entry(&store, Arch::Aarch64, "/bin sh\n/sbin ip\n");
        assert_eq!(store.userland(Arch::X86_64).unwrap(), None, "another arch's");
        let userland = store.userland(Arch::Aarch64).unwrap().unwrap();
        assert_eq!(userland.version, "1:1.35.0-4");
        assert_eq!((userland.applet_count, userland.located), (2, true));
        assert_eq!(userland.busybox, dest.join("busybox"));
        assert_eq!(userland.applets().unwrap()[1].name, "ip");

        fs::write(dest.join(APPLETS), "/bin sh\n? ip\n").unwrap();
        assert!(!store.userland(Arch::Aarch64).unwrap().unwrap().located);
        fs::write(dest.join(APPLETS), "/nowhere sh\n").unwrap();
        let err = store.userland(Arch::Aarch64).unwrap_err().to_string();
        assert!(err.contains("applets") && err.contains("/nowhere sh"), "{err}");
    }

    #[test]
    fn a_half_written_entry_does_not_count() {
        let dir = scratch_dir("userland-partial");
        let store = Store::at(&*dir);
        let dest = fake_entry(&store, Arch::X86_64, "/bin sh\n");
        fs::remove_file(dest.join(META)).unwrap();
        fs::create_dir_all(arch_dir(&store, Arch::X86_64).join(".tmp-busybox")).unwrap();
        assert_eq!(store.userland(Arch::X86_64).unwrap(), None);
    }

    #[test]
    fn checks_the_binary_it_stores() {
        let dir = scratch_dir("userland-check");
        // This test binary: an ELF for the host, dynamic or without applets.
        let exe = std::env::current_exe().unwrap();
        let other = if Arch::host() == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        let err = check_busybox(&exe, other).unwrap_err();
        assert!(err.contains(&format!("not {other}")), "{err}");
        assert!(check_busybox(&exe, Arch::host()).is_err());
        let not_elf = dir.join("busybox");
        fs::write(&not_elf, super::applets::tests::fake_busybox(super::applets::tests::SAMPLE))
            .unwrap();
        let err = check_busybox(&not_elf, Arch::host()).unwrap_err();
        assert!(err.contains("busybox"), "{err}");
    }
}
