//! A stored Debian kernel's build tree, for building out-of-tree modules against exactly that
//! kernel: `make -C "$(cargo vmtest kernel path 6.12 --build)" M=$PWD modules`.
//!
//! Debian splits it in three packages: `linux-headers-<release>` (the flavour's `.config`,
//! `Module.symvers`, generated headers), `linux-headers-<version>-common` (the source headers
//! and the top Makefile) and `linux-kbuild-<version>` (kbuild's scripts and host programs, such
//! as `modpost`). They are unpacked side by side into the entry's `build/` dir, where their
//! relative symlinks keep working; the one absolute path (the flavour's Makefile includes the
//! common one at `/usr/src/...`) is made relative. kbuild's host programs are taken for the
//! machine that builds (its Debian arch), not the kernel's, so an arm64 tree works on an amd64
//! host with an aarch64 cross compiler (Debian's `gcc-12-aarch64-linux-gnu`).
//!
//! The tree is assembled in a temp dir and renamed into the entry as a whole, under the
//! kernel's lock; it is not part of the entry's checksums (`kernel.sums`) and goes when the
//! entry is replaced (a newer kernel needs its own headers).

use std::fs;
use std::path::{Path, PathBuf};

use super::apt::{self, Apt, Package};
use super::{layout, Kernel, KernelError, Store};
use crate::arch::Arch;

/// The dir in a store entry that holds the build tree.
const BUILD_DIR: &str = "build";

impl Kernel {
    /// The dir to build modules against (`make -C <dir> M=... modules`), when the store holds
    /// this kernel's build tree (`cargo vmtest kernel fetch <series> --headers`).
    pub fn build_dir(&self) -> Option<PathBuf> {
        let dir = self.store_dir.as_ref()?.join(BUILD_DIR).join(headers_dir(&self.name));
        dir.join("Makefile").is_file().then_some(dir)
    }
}

/// Where the flavour's headers package puts its tree, under `build/`.
fn headers_dir(release: &str) -> String {
    format!("usr/src/linux-headers-{release}")
}

/// What [`Store::fetch_headers`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadersFetched {
    /// The build tree was downloaded; it is at this dir.
    Added(PathBuf),
    /// The store already had it, at this dir.
    AlreadyPresent(PathBuf),
}

impl HeadersFetched {
    /// The kernel's build dir.
    pub fn dir(&self) -> &Path {
        match self {
            HeadersFetched::Added(dir) | HeadersFetched::AlreadyPresent(dir) => dir,
        }
    }
}

impl Store {
    /// Brings the build tree of `kernel`, a Debian kernel in this store, into its entry,
    /// reporting each step to `progress`.
    pub fn fetch_headers(
        &self,
        kernel: &Kernel,
        progress: &mut dyn FnMut(&str),
    ) -> Result<HeadersFetched, KernelError> {
        let no_headers =
            |reason: String| KernelError::NoHeaders { kernel: kernel.name.clone(), reason };
        let (Some(entry), Some(_)) = (&kernel.store_dir, &kernel.package) else {
            return Err(no_headers(
                "it is not a Debian kernel fetched into the store (for your own build, build \
                 modules against its own tree)"
                    .to_owned(),
            ));
        };
        if let Some(dir) = kernel.build_dir() {
            progress(&format!("the build tree of {} is already in the store", kernel.name));
            return Ok(HeadersFetched::AlreadyPresent(dir));
        }
        let _lock = self.lock(kernel.arch, &kernel.name, &mut || {
            progress(&format!("waiting for another fetch of {} to finish", kernel.name))
        })?;
        if let Some(dir) = kernel.build_dir() {
            return Ok(HeadersFetched::AlreadyPresent(dir));
        }
        let version = layout::meta_field(entry, "package_version");
        let apt = Apt::for_store(self, kernel.arch)?;
        refresh(&apt, progress)?;
        let headers = candidate(&apt, &format!("linux-headers-{}", kernel.name))?
            .ok_or_else(|| no_headers("apt knows no such package".to_owned()))?;
        if version.as_deref().is_some_and(|v| v != headers.package.version) {
            return Err(no_headers(format!(
                "apt offers linux-headers-{} {}, the stored kernel is {}; fetch the kernel \
                 again first",
                kernel.name,
                headers.package.version,
                version.unwrap_or_default()
            )));
        }
        let (common, kbuild) = build_dependencies(&headers.depends).ok_or_else(|| {
            no_headers(format!(
                "linux-headers-{} names no -common and kbuild packages (Depends: {})",
                kernel.name, headers.depends
            ))
        })?;
        let common = candidate(&apt, &common)?
            .ok_or_else(|| no_headers(format!("apt knows no package {common}")))?;
        // kbuild's programs run on this machine.
        let host_apt;
        let kbuild_apt = if kernel.arch == Arch::host() {
            &apt
        } else {
            host_apt = Apt::for_store(self, Arch::host())?;
            refresh(&host_apt, progress)?;
            &host_apt
        };
        let kbuild = candidate(kbuild_apt, &kbuild)?
            .ok_or_else(|| no_headers(format!("apt knows no package {kbuild}")))?;

        let tmp = self.temp_dir(kernel.arch, &format!("{}.build", kernel.name))?;
        let tree = tmp.join("tree");
        for (apt, package) in
            [(&apt, &headers.package), (&apt, &common.package), (kbuild_apt, &kbuild.package)]
        {
            let deb = apt.download_into(package, &tmp.join(&package.name), progress)?;
            progress(&format!("unpacking {}", deb.display()));
            apt::unpack(&deb, &tree)?;
        }
        let dir = headers_dir(&kernel.name);
        relocate_makefile(&tree.join(&dir).join("Makefile"))?;
        let share = tree.join("usr/share");
        if share.is_dir() {
            fs::remove_dir_all(&share).map_err(|e| KernelError::io("remove", &share, e))?;
        }
        let dest = entry.join(BUILD_DIR);
        if dest.exists() {
            // Incomplete (no Makefile): left by an older layout or a damaged tree.
            fs::remove_dir_all(&dest).map_err(|e| KernelError::io("remove", &dest, e))?;
        }
        fs::rename(&tree, &dest).map_err(|e| KernelError::io("move into place", &dest, e))?;
        fs::remove_dir_all(&tmp).map_err(|e| KernelError::io("remove", &tmp, e))?;
        progress(&format!("added the build tree at {}", dest.join(&dir).display()));
        Ok(HeadersFetched::Added(dest.join(dir)))
    }
}

/// A package's candidate version and its `Depends`.
struct Candidate {
    package: Package,
    depends: String,
}

/// Brings `apt`'s package lists up to date (unless they are fresh), under its lock.
fn refresh(apt: &Apt, progress: &mut dyn FnMut(&str)) -> Result<(), KernelError> {
    let _lock = apt.lock(true)?;
    apt.refresh(progress)
}

/// `name`'s candidate in `apt`'s current lists.
fn candidate(apt: &Apt, name: &str) -> Result<Option<Candidate>, KernelError> {
    Ok(apt.show(&[name])?.into_iter().find_map(|stanza| {
        let package = stanza.package().filter(|p| p.name == name)?;
        let depends = stanza.field("Depends").unwrap_or_default().to_owned();
        Some(Candidate { package, depends })
    }))
}

/// The `-common` headers and the kbuild package a flavour's headers package depends on, from
/// its `Depends` field.
fn build_dependencies(depends: &str) -> Option<(String, String)> {
    let names: Vec<&str> = depends
        .split(',')
        .flat_map(|alternatives| alternatives.split('|'))
        .filter_map(|dep| dep.split_whitespace().next())
        .collect();
    let common = names.iter().find(|n| n.starts_with("linux-headers-") && n.ends_with("-common"));
    let kbuild = names.iter().find(|n| n.starts_with("linux-kbuild-"));
    Some((common?.to_string(), kbuild?.to_string()))
}

/// Makes the flavour's Makefile include the common one relative to itself rather than at
/// `/usr/src/`, where the packages would be installed.
fn relocate_makefile(makefile: &Path) -> Result<(), KernelError> {
    let text = fs::read_to_string(makefile).map_err(|e| KernelError::io("read", makefile, e))?;
    let relocated = relocate(&text);
    fs::write(makefile, relocated).map_err(|e| KernelError::io("write", makefile, e))
}

fn relocate(makefile: &str) -> String {
    makefile.replace("include /usr/src/", "include $(dir $(lastword $(MAKEFILE_LIST)))../")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_common_headers_and_kbuild_among_the_dependencies() {
        let debian_6_12 = "linux-base (>= 4.12~), linux-headers-6.12.117+deb12-common \
             (= 6.12.117-1~deb12u1), linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1) | \
             linux-image-6.12.117+deb12-amd64-unsigned (= 6.12.117-1~deb12u1), \
             linux-kbuild-6.12.117+deb12, gcc-12";
        assert_eq!(
            build_dependencies(debian_6_12),
            Some((
                "linux-headers-6.12.117+deb12-common".to_owned(),
                "linux-kbuild-6.12.117+deb12".to_owned()
            ))
        );
        let debian_6_1 = "linux-headers-6.1.0-41-common (= 6.1.158-1), linux-kbuild-6.1 \
             (>= 6.1.158-1), linux-compiler-gcc-12-x86";
        assert_eq!(
            build_dependencies(debian_6_1),
            Some(("linux-headers-6.1.0-41-common".to_owned(), "linux-kbuild-6.1".to_owned()))
        );
        assert_eq!(build_dependencies("gcc-12, linux-base"), None);
    }

    #[test]
    fn the_flavours_makefile_includes_the_common_one_relative_to_itself() {
        assert_eq!(
            relocate("include /usr/src/linux-headers-6.12.117+deb12-common/Makefile\n"),
            "include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-6.12.117+deb12-common/Makefile\n"
        );
    }
}
