//! Fetching Debian's kernels with apt (see [`super::apt`]), without touching the system's apt
//! configuration. The package is resolved from the current lists each time (versions move): the
//! series' meta package (`linux-image-6.12-amd64`) when there is one, else the newest
//! `linux-image-<series>.*-<flavour>-<arch>` (6.1 has no series meta package).
//!
//! It sits above the store ([`Store::fetch`] is defined here), so the store never imports it.

use std::fs;
use std::path::Path;

use super::apt::{self, Apt, Package, Stanza};
use super::entry::{self, EntryError};
use super::image::image_info;
use super::layout;
use super::manifest::Depth;
use super::resolve::{compare_versions, Series};
use super::store::{self, Store};
use super::{human_size, Kernel, KernelError};
use crate::arch::Arch;

/// What [`Store::fetch`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Fetches the current Debian kernel of a series (`6.12`, `6.1-cloud`) for `arch` into the
    /// store, reporting each step to `progress`.
    pub fn fetch(
        &self,
        spec: &str,
        arch: Arch,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Fetched, KernelError> {
        let fetched = fetch(self, spec, arch, progress)?;
        // Now rather than in the first test run.
        fetched.kernel().pvh_image();
        Ok(fetched)
    }
}

/// The kernel release a `linux-image-<release>` package installs.
fn release(package: &Package) -> &str {
    package.name.strip_prefix("linux-image-").unwrap_or(&package.name)
}

/// Checks a release name taken from apt's output before it becomes a store dir's name and a
/// path inside the unpacked package: a digit, then letters, digits and `.+~_-` (as Debian's
/// `6.12.57+deb13-amd64`), at most 100 bytes, no `..`.
pub(crate) fn check_release(release: &str) -> Result<(), String> {
    let plain = release.starts_with(|c: char| c.is_ascii_digit())
        && release.len() <= 100
        && !release.contains("..")
        && release.chars().all(|c| c.is_ascii_alphanumeric() || ".+~_-".contains(c));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "its kernel release {release:?} is not a plain release name (a digit, then letters, \
             digits and `.+~_-`, at most 100 bytes, no `..`); refusing to use it as a path"
        ))
    }
}

pub(crate) fn fetch(
    store: &Store,
    spec: &str,
    arch: Arch,
    progress: &mut dyn FnMut(&str),
) -> Result<Fetched, KernelError> {
    let series =
        Series::parse(spec).ok_or_else(|| KernelError::BadFetchSpec { spec: spec.to_owned() })?;
    let apt = Apt::for_store(store, arch)?;
    let package = {
        let _lock = apt.lock(true)?;
        apt.refresh(progress)?;
        resolve(&apt, arch, &series, spec)?
    };
    let release = release(&package).to_owned();
    check_release(&release)
        .map_err(|reason| KernelError::BadPackage { package: package.name.clone(), reason })?;
    let size = package.size.map(|s| format!(", {}", human_size(s))).unwrap_or_default();
    progress(&format!("{spec} for {arch}: {} {}{size}", package.name, package.version));

    let _kernel_lock = store.lock(arch, &release, &mut || {
        progress(&format!("waiting for another fetch of {release} ({arch}) to finish"))
    })?;
    let dest = store.arch_dir(arch).join(&release);
    if dest.exists() {
        // Every file is hashed: a fetch is what repairs an entry `kernel verify` found damaged.
        match entry::open(&dest, Depth::Full) {
            Ok(opened)
                if layout::meta_field(&dest, "package_version").as_deref()
                    == Some(&package.version) =>
            {
                progress(&format!(
                    "{release} ({arch}) is already in the store, intact and current: nothing to do"
                ));
                return Ok(Fetched::AlreadyPresent(opened.kernel));
            }
            Ok(_) => {}
            Err(EntryError::Damaged(reason)) => progress(&format!(
                "{release} ({arch}) in the store is damaged ({reason}): fetching it again"
            )),
            Err(EntryError::Store(e)) => return Err(e),
        }
    }

    let tmp = store.temp_dir(arch, &release)?;
    let deb = apt.download_into(&package, &tmp, progress)?;

    let unpacked = tmp.join("unpacked");
    progress(&format!("unpacking {}", deb.display()));
    apt::unpack(&deb, &unpacked)?;
    let kernel_dir = tmp.join("kernel");
    let kernel = assemble(&unpacked, &kernel_dir, &dest, &package, &series, arch)?;
    fs::remove_file(&deb).map_err(|e| KernelError::io("remove", &deb, e))?;
    store.install(&kernel_dir, &dest, &mut || {
        progress(&format!("waiting for the runs using {release} ({arch}) to finish"))
    })?;
    fs::remove_dir_all(&tmp).map_err(|e| KernelError::io("remove", &tmp, e))?;
    progress(&format!(
        "added {release} ({arch}, {}) to {}",
        human_size(store.size_of(&kernel)),
        dest.display()
    ));
    Ok(Fetched::Added(kernel))
}

/// Moves image, config and modules from an unpacked package into `kernel_dir` and writes its
/// metadata. The kernel will live at `dest`.
fn assemble(
    unpacked: &Path,
    kernel_dir: &Path,
    dest: &Path,
    package: &Package,
    series: &Series,
    arch: Arch,
) -> Result<Kernel, KernelError> {
    let release = release(package);
    let unpack_err = |what: &str| KernelError::BadPackage {
        package: package.name.clone(),
        reason: format!("it has no {what}"),
    };
    let boot = unpacked.join("boot");
    let image = ["vmlinuz", "vmlinux", "Image"]
        .iter()
        .map(|n| boot.join(format!("{n}-{release}")))
        .find(|p| p.is_file())
        .ok_or_else(|| unpack_err(&format!("boot/vmlinuz-{release}")))?;
    let config = boot.join(format!("config-{release}"));
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(release))
        .find(|p| p.is_dir());

    fs::create_dir_all(kernel_dir).map_err(|e| KernelError::io("create", kernel_dir, e))?;
    let mv = |from: &Path, to: &str| {
        fs::rename(from, kernel_dir.join(to)).map_err(|e| KernelError::io("move", from, e))
    };
    mv(&image, layout::IMAGE)?;
    let info = image_info(&kernel_dir.join(layout::IMAGE))?;
    if info.arch != arch {
        return Err(KernelError::BadPackage {
            package: package.name.clone(),
            reason: format!("its image is for {}, not {arch}", info.arch),
        });
    }
    let has_config = config.is_file();
    if has_config {
        mv(&config, layout::CONFIG)?;
    }
    if let Some(modules) = &modules {
        mv(modules, layout::MODULES)?;
    }
    let kernel = Kernel {
        name: release.to_owned(),
        arch,
        version: Some(info.version.unwrap_or_else(|| release.to_owned())),
        image: dest.join(layout::IMAGE),
        modules_dir: modules.map(|_| dest.join(layout::MODULES)),
        config: has_config.then(|| dest.join(layout::CONFIG)),
        flavour: series.flavour.clone(),
        package: Some(package.name.clone()),
        store_dir: Some(dest.to_owned()),
    };
    store::seal(kernel_dir, &kernel, Some(&package.version))?;
    Ok(kernel)
}

/// The package of `series` for `arch` in apt's current lists.
fn resolve(apt: &Apt, arch: Arch, series: &Series, spec: &str) -> Result<Package, KernelError> {
    let names = apt.names("linux-image-")?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let deb = arch.debian_name();
    let (metas, concrete) = match_packages(&names, series, deb);
    let not_found = || KernelError::NoPackage {
        spec: spec.to_owned(),
        arch,
        available: available_series(&names, series.flavour.as_deref(), deb),
    };
    if let Some(meta) = metas.first() {
        let stanzas = apt.show(&[meta])?;
        let target = stanzas
            .first()
            .and_then(|s| s.field("Depends"))
            .and_then(|deps| {
                deps.split([',', '|'])
                    .map(|d| d.split_whitespace().next().unwrap_or(""))
                    .find(|d| d.starts_with("linux-image-"))
                    .map(str::to_owned)
            })
            .ok_or_else(not_found)?;
        let stanzas = apt.show(&[&target])?;
        return stanzas.first().and_then(Stanza::package).ok_or_else(not_found);
    }
    if concrete.is_empty() {
        return Err(not_found());
    }
    apt.show(&concrete)?
        .iter()
        .filter_map(Stanza::package)
        .max_by(|a, b| compare_versions(&a.version, &b.version))
        .ok_or_else(not_found)
}

/// Splits `linux-image-*` names into the series' meta packages and its versioned packages,
/// for the flavour asked for (none = the default flavour) and the Debian arch `deb`.
pub(crate) fn match_packages<'a>(
    names: &[&'a str],
    series: &Series,
    deb: &str,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut metas, mut concrete) = (Vec::new(), Vec::new());
    for &name in names {
        let Some(version) = package_version_part(name, series.flavour.as_deref(), deb) else {
            continue;
        };
        if version == series.series {
            metas.push(name);
        } else if series.contains_version(version) {
            concrete.push(name);
        }
    }
    (metas, concrete)
}

/// `6.12.117+deb12` from `linux-image-6.12.117+deb12-<flavour>-<arch>`, if the name has
/// exactly that flavour and arch.
fn package_version_part<'a>(name: &'a str, flavour: Option<&str>, deb: &str) -> Option<&'a str> {
    let rest = name.strip_prefix("linux-image-")?.strip_suffix(deb)?.strip_suffix('-')?;
    let rest = match flavour {
        Some(f) => rest.strip_suffix(f)?.strip_suffix('-')?,
        None => rest,
    };
    let version_like = rest.split('-').all(|p| p.starts_with(|c: char| c.is_ascii_digit()));
    version_like.then_some(rest)
}

/// The `major.minor` series apt knows for a flavour and arch, for error messages.
fn available_series(names: &[&str], flavour: Option<&str>, deb: &str) -> Vec<String> {
    let mut series: Vec<String> = names
        .iter()
        .filter_map(|n| package_version_part(n, flavour, deb))
        .filter_map(|v| {
            let mut parts = v.split(['.', '-', '+']);
            Some(format!("{}.{}", parts.next()?, parts.next()?))
        })
        .collect();
    series.sort_by(|a, b| compare_versions(a, b));
    series.dedup();
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "linux-image-amd64",
        "linux-image-cloud-amd64",
        "linux-image-6.12-amd64",
        "linux-image-6.12-cloud-amd64",
        "linux-image-6.12.117+deb12-amd64",
        "linux-image-6.12.117+deb12-amd64-unsigned",
        "linux-image-6.12.117+deb12-amd64-dbg",
        "linux-image-6.12.117+deb12-cloud-amd64",
        "linux-image-6.12.117+deb12-rt-amd64",
        "linux-image-6.1.0-50-amd64",
        "linux-image-6.1.0-56-amd64",
        "linux-image-6.1.0-56-cloud-amd64",
        "linux-image-6.1.0-56-rt-amd64",
        "linux-image-6.12.117+deb12-arm64",
    ];

    #[test]
    fn package_matching() {
        let s = |spec| Series::parse(spec).unwrap();
        assert_eq!(
            match_packages(NAMES, &s("6.12"), "amd64"),
            (vec!["linux-image-6.12-amd64"], vec!["linux-image-6.12.117+deb12-amd64"])
        );
        assert_eq!(
            match_packages(NAMES, &s("6.1"), "amd64"),
            (vec![], vec!["linux-image-6.1.0-50-amd64", "linux-image-6.1.0-56-amd64"])
        );
        assert_eq!(
            match_packages(NAMES, &s("6.1-cloud"), "amd64"),
            (vec![], vec!["linux-image-6.1.0-56-cloud-amd64"])
        );
        assert_eq!(
            match_packages(NAMES, &s("6.12"), "arm64"),
            (vec![], vec!["linux-image-6.12.117+deb12-arm64"])
        );
        assert_eq!(available_series(NAMES, None, "amd64"), ["6.1", "6.12"]);
    }

    #[test]
    fn release_names_from_apt_are_checked_before_they_become_paths() {
        for good in
            ["6.12.57+deb13-amd64", "6.1.0-57-cloud-amd64", "6.12.117+deb12-arm64", "6.0~rc1_x"]
        {
            check_release(good).unwrap();
        }
        for bad in [
            "",
            "../../etc",
            "6.1/../../x",
            "6.1/x",
            "..",
            "6.1..2-amd64",
            "6.1\n-amd64",
            "6.1\u{1b}[31m",
            "linux-6.1",
            "-6.1",
            ".6.1",
            "6.1 amd64",
            &"6".repeat(101),
        ] {
            let err = check_release(bad).unwrap_err();
            assert!(err.contains("not a plain release name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn fetch_wants_a_series() {
        let dir = crate::kernel::tests::scratch_dir("fetch-spec");
        let store = Store::at(&*dir);
        let err = store.fetch("bpf-next", Arch::X86_64, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("failed to fetch `bpf-next`") && err.contains("`6.1-cloud`"), "{err}");
        assert!(!dir.join("apt").exists(), "nothing is set up for a bad name");
    }
}
