//! A stored Debian kernel's debug image: the `vmlinux` with symbols and DWARF that gdb reads
//! while it debugs the kernel through QEMU's gdb stub (`VMTEST_GDB=kernel`).
//!
//! Debian ships it in `linux-image-<release>-dbg` (about 1 GB to download, 6-7 GB unpacked,
//! almost all of it the modules' debug files). Only the `vmlinux` is kept: it is streamed out
//! of the package (`dpkg-deb --fsys-tarfile | tar`, stopping at the first match, which comes
//! early in the archive) into a temp file beside the entry and renamed into place as
//! `vmlinux-debug`, under the kernel's lock. Like the build tree it is not part of the entry's
//! checksums (`kernel.sums`) and goes when the entry is replaced (a newer kernel needs its own).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::apt::Apt;
use super::{layout, Kernel, KernelError, Store};

/// The debug image's name in a store entry.
const DEBUG_IMAGE: &str = "vmlinux-debug";

impl Kernel {
    /// The kernel's `vmlinux` with debug symbols, when the store holds it (`cargo vmtest kernel
    /// fetch <series> --debug-symbols`).
    pub fn debug_image(&self) -> Option<PathBuf> {
        let path = self.store_dir.as_ref()?.join(DEBUG_IMAGE);
        path.is_file().then_some(path)
    }
}

/// The package that holds the debug image of the Debian kernel `release`.
pub(crate) fn package_name(release: &str) -> String {
    format!("linux-image-{release}-dbg")
}

/// Where that package puts the `vmlinux`, as its data archive names it.
fn member(release: &str) -> String {
    format!("./usr/lib/debug/boot/vmlinux-{release}")
}

/// What [`Store::fetch_debug_symbols`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DebugSymbolsFetched {
    /// The debug image was downloaded; it is at this path.
    Added(PathBuf),
    /// The store already had it, at this path.
    AlreadyPresent(PathBuf),
}

impl DebugSymbolsFetched {
    /// The debug image.
    pub fn path(&self) -> &Path {
        match self {
            DebugSymbolsFetched::Added(path) | DebugSymbolsFetched::AlreadyPresent(path) => path,
        }
    }
}

impl Store {
    /// Brings the debug image (`vmlinux` with symbols) of `kernel`, a Debian kernel in this
    /// store, into its entry, reporting each step to `progress`.
    pub fn fetch_debug_symbols(
        &self,
        kernel: &Kernel,
        progress: &mut dyn FnMut(&str),
    ) -> Result<DebugSymbolsFetched, KernelError> {
        let no_symbols =
            |reason: String| KernelError::NoDebugSymbols { kernel: kernel.name.clone(), reason };
        let (Some(entry), Some(_)) = (&kernel.store_dir, &kernel.package) else {
            return Err(no_symbols(
                "it is not a Debian kernel fetched into the store (for your own build, use the \
                 vmlinux of its build tree)"
                    .to_owned(),
            ));
        };
        if let Some(path) = kernel.debug_image() {
            progress(&format!("the debug image of {} is already in the store", kernel.name));
            return Ok(DebugSymbolsFetched::AlreadyPresent(path));
        }
        let _lock = self.lock(kernel.arch, &kernel.name, &mut || {
            progress(&format!("waiting for another fetch of {} to finish", kernel.name))
        })?;
        if let Some(path) = kernel.debug_image() {
            return Ok(DebugSymbolsFetched::AlreadyPresent(path));
        }
        let version = layout::meta_field(entry, "package_version");
        let apt = Apt::for_store(self, kernel.arch)?;
        {
            let _lock = apt.lock(true)?;
            apt.refresh(progress)?;
        }
        let name = package_name(&kernel.name);
        let package = apt
            .show(&[&name])?
            .into_iter()
            .find_map(|stanza| stanza.package().filter(|p| p.name == name))
            .ok_or_else(|| {
                no_symbols(format!(
                    "apt knows no package {name} (the kernel may have moved on: fetch it again)"
                ))
            })?;
        if version.as_deref().is_some_and(|v| v != package.version) {
            return Err(no_symbols(format!(
                "apt offers {name} {}, the stored kernel is {}; fetch the kernel again first",
                package.version,
                version.unwrap_or_default()
            )));
        }
        let tmp = self.temp_dir(kernel.arch, &format!("{}.debug", kernel.name))?;
        let result = (|| {
            let deb = apt.download_into(&package, &tmp, progress)?;
            progress(&format!("taking the vmlinux out of {}", deb.display()));
            let unpacked = tmp.join("unpacked");
            extract(&deb, &member(&kernel.name), &unpacked)?;
            let image = unpacked.join(member(&kernel.name));
            if !image.is_file() {
                return Err(no_symbols(format!(
                    "{} has no {}",
                    deb.display(),
                    member(&kernel.name).trim_start_matches('.')
                )));
            }
            let file = fs::File::open(&image).map_err(|e| KernelError::io("open", &image, e))?;
            file.sync_all().map_err(|e| KernelError::io("flush", &image, e))?;
            let dest = entry.join(DEBUG_IMAGE);
            fs::rename(&image, &dest).map_err(|e| KernelError::io("move into place", &dest, e))?;
            Ok(dest)
        })();
        let _ = fs::remove_dir_all(&tmp);
        let dest = result?;
        let size = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        progress(&format!(
            "added the debug image at {} ({})",
            dest.display(),
            super::human_size(size)
        ));
        Ok(DebugSymbolsFetched::Added(dest))
    }
}

/// Extracts the file `member` of the `.deb` at `deb` into the dir `into`, reading the data
/// archive only as far as that file (`tar --occurrence=1`).
fn extract(deb: &Path, member: &str, into: &Path) -> Result<(), KernelError> {
    fs::create_dir_all(into).map_err(|e| KernelError::io("create", into, e))?;
    let command = format!("dpkg-deb --fsys-tarfile {} | tar -x --occurrence=1", deb.display());
    let failed = |reason: String| KernelError::Command { command: command.clone(), reason };
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(format!("failed to start dpkg-deb: {e}")))?;
    let data = dpkg.stdout.take().expect("dpkg-deb's stdout is piped");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("--occurrence=1")
        .arg("-C")
        .arg(into)
        .arg(member)
        .stdin(data)
        .stderr(Stdio::piped())
        .output();
    // tar stops reading once it has the file: dpkg-deb then ends on a broken pipe, which is
    // expected; whether the file arrived is what counts.
    let _ = dpkg.kill();
    let _ = dpkg.wait();
    let tar = tar.map_err(|e| failed(format!("failed to run tar (apt-get install tar): {e}")))?;
    if !tar.status.success() {
        return Err(failed(format!("{}: {}", tar.status, String::from_utf8_lossy(&tar.stderr))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_and_its_vmlinux_are_named_after_the_release() {
        assert_eq!(package_name("6.12.117+deb12-amd64"), "linux-image-6.12.117+deb12-amd64-dbg");
        assert_eq!(
            member("6.1.0-57-cloud-amd64"),
            "./usr/lib/debug/boot/vmlinux-6.1.0-57-cloud-amd64"
        );
    }

    #[test]
    fn extract_takes_one_file_out_of_a_deb() {
        let dir = crate::kernel::tests::scratch_dir("debug-extract");
        let root = dir.join("root");
        let boot = root.join("usr/lib/debug/boot");
        fs::create_dir_all(&boot).unwrap();
        fs::write(boot.join("vmlinux-6.12.1-amd64"), b"\x7fELF symbols").unwrap();
        fs::write(boot.join("System.map-6.12.1-amd64"), b"map").unwrap();
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::write(
            root.join("DEBIAN/control"),
            "Package: linux-image-6.12.1-amd64-dbg\nVersion: 1\nArchitecture: all\n\
             Maintainer: t <t@t>\nDescription: t\n",
        )
        .unwrap();
        let deb = dir.join("t.deb");
        let built = Command::new("dpkg-deb")
            .args(["-Zxz", "--build", "--root-owner-group"])
            .arg(&root)
            .arg(&deb)
            .output();
        let Ok(built) = built else {
            crate::__testing::missing("dpkg-deb (apt-get install dpkg)");
            return;
        };
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
        let into = dir.join("out");
        extract(&deb, &member("6.12.1-amd64"), &into).unwrap();
        assert_eq!(
            fs::read(into.join("usr/lib/debug/boot/vmlinux-6.12.1-amd64")).unwrap(),
            b"\x7fELF symbols"
        );
        assert!(!into.join("usr/lib/debug/boot/System.map-6.12.1-amd64").exists());
        let err = extract(&deb, &member("6.12.2-amd64"), &dir.join("none")).unwrap_err();
        assert!(err.to_string().contains("tar"), "{err}");
    }
}
