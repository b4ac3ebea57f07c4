//! Fetching Debian's kernels with apt, without touching the system's apt configuration.
//!
//! apt runs with its own lists, cache and (empty) dpkg status under `<store>/apt/<arch>/`, and
//! `APT::Architecture` set to the target's Debian arch, so a foreign arch (arm64 on an amd64
//! host) needs no `dpkg --add-architecture`, and fetching needs no root. The sources are the
//! system's. The package is resolved from the current lists each time (versions move): the
//! series' meta package (`linux-image-6.12-amd64`) when there is one, else the newest
//! `linux-image-<series>.*-<flavour>-<arch>` (6.1 has no series meta package).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::image::image_info;
use super::resolve::{compare_versions, Series};
use super::store::{self, lock_file, Fetched, Store};
use super::{human_size, Kernel, KernelError};
use crate::arch::Arch;

/// A Debian package picked for a series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) size: Option<u64>,
}

impl Package {
    /// The kernel release the package installs (`linux-image-<release>`).
    fn release(&self) -> &str {
        self.name.strip_prefix("linux-image-").unwrap_or(&self.name)
    }
}

pub(crate) fn fetch(
    store: &Store,
    spec: &str,
    arch: Arch,
    progress: &mut dyn FnMut(&str),
) -> Result<Fetched, KernelError> {
    let series = Series::parse(spec).ok_or_else(|| KernelError::BadFetchSpec {
        spec: spec.to_owned(),
    })?;
    require_tools(std::env::var_os("PATH").as_deref())?;
    let apt = Apt::new(store.root().join("apt").join(arch.debian_name()), arch)?;
    let apt_lock = apt.dir.join("vmtest.lock");
    let package = {
        let _lock = lock_file(&apt_lock, true)?;
        if apt.lists_are_fresh() {
            progress(&format!(
                "package lists for {} are fresh",
                arch.debian_name()
            ));
        } else {
            progress(&format!(
                "updating package lists for {} (apt state in {})",
                arch.debian_name(),
                apt.dir.display()
            ));
            apt.update()?;
        }
        apt.resolve(&series, spec)?
    };
    let release = package.release().to_owned();
    let size = package
        .size
        .map(|s| format!(", {}", human_size(s)))
        .unwrap_or_default();
    progress(&format!(
        "{spec} for {arch}: {} {}{size}",
        package.name, package.version
    ));

    let _kernel_lock = store.lock(arch, &release, &mut || {
        progress(&format!(
            "waiting for another fetch of {release} ({arch}) to finish"
        ))
    })?;
    let dest = store.arch_dir(arch).join(&release);
    if dest.join(store::META).is_file()
        && store::meta_field(&dest, "package_version").as_deref() == Some(&package.version)
    {
        progress(&format!(
            "{release} ({arch}) is already in the store and current: nothing to do"
        ));
        return Ok(Fetched::AlreadyPresent(store::read_meta(&dest)?));
    }

    let tmp = store.temp_dir(arch, &release)?;
    let download = tmp.join("download");
    fs::create_dir_all(&download).map_err(|e| KernelError::io("create", &download, e))?;
    progress(&format!(
        "downloading {} {}{size}",
        package.name, package.version
    ));
    let started = Instant::now();
    let deb = {
        let _lock = lock_file(&apt_lock, false)?;
        apt.download(&package, &download)?
    };
    let deb_size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    progress(&format!(
        "downloaded {} in {:.1}s",
        human_size(deb_size),
        started.elapsed().as_secs_f64()
    ));

    let unpacked = tmp.join("unpacked");
    progress(&format!("unpacking {}", deb.display()));
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let kernel_dir = tmp.join("kernel");
    let kernel = assemble(&unpacked, &kernel_dir, &dest, &package, &series, arch)?;
    fs::remove_file(&deb).map_err(|e| KernelError::io("remove", &deb, e))?;
    store.install(&kernel_dir, &dest)?;
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
    let release = package.release();
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
    mv(&image, store::IMAGE)?;
    let info = image_info(&kernel_dir.join(store::IMAGE))?;
    if info.arch != arch {
        return Err(KernelError::BadPackage {
            package: package.name.clone(),
            reason: format!("its image is for {}, not {arch}", info.arch),
        });
    }
    let has_config = config.is_file();
    if has_config {
        mv(&config, store::CONFIG)?;
    }
    if let Some(modules) = &modules {
        mv(modules, store::MODULES)?;
    }
    let kernel = Kernel {
        name: release.to_owned(),
        arch,
        version: Some(info.version.unwrap_or_else(|| release.to_owned())),
        image: dest.join(store::IMAGE),
        modules_dir: modules.map(|_| dest.join(store::MODULES)),
        config: has_config.then(|| dest.join(store::CONFIG)),
        flavour: series.flavour.clone(),
        package: Some(package.name.clone()),
        store_dir: Some(dest.to_owned()),
    };
    store::write_meta(kernel_dir, &kernel, Some(&package.version))?;
    Ok(kernel)
}

/// How long package lists count as current after an update (several fetches in a row update
/// once).
const LISTS_FRESH_FOR: Duration = Duration::from_secs(10 * 60);

/// apt with its own state for one Debian arch.
struct Apt {
    dir: PathBuf,
    arch: Arch,
}

impl Apt {
    fn new(dir: PathBuf, arch: Arch) -> Result<Apt, KernelError> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| KernelError::io("create", &d, e))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "").map_err(|e| KernelError::io("create", &status, e))?;
        }
        Ok(Apt { dir, arch })
    }

    fn command(&self, tool: &str) -> Command {
        let deb = self.arch.debian_name();
        let mut cmd = Command::new(tool);
        cmd.env("LC_ALL", "C");
        let opts = [
            format!("APT::Architecture={deb}"),
            format!("APT::Architectures={deb}"),
            format!("Dir::State::Lists={}", self.dir.join("lists").display()),
            format!("Dir::State::status={}", self.dir.join("status").display()),
            format!("Dir::Cache={}", self.dir.join("cache").display()),
        ];
        for opt in opts {
            cmd.arg("-o").arg(opt);
        }
        if rustix::process::geteuid().is_root() {
            // apt's download user could not read our dirs under root's home.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }

    /// Whether `update` ran successfully within [`LISTS_FRESH_FOR`].
    fn lists_are_fresh(&self) -> bool {
        fs::metadata(self.dir.join("updated"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < LISTS_FRESH_FOR))
    }

    fn update(&self) -> Result<(), KernelError> {
        run(self.command("apt-get").args(["-q", "update"]))?;
        let stamp = self.dir.join("updated");
        fs::write(&stamp, "").map_err(|e| KernelError::io("write", &stamp, e))
    }

    fn resolve(&self, series: &Series, spec: &str) -> Result<Package, KernelError> {
        let names = run(self.command("apt-cache").args(["pkgnames", "linux-image-"]))?;
        let names: Vec<&str> = names.lines().collect();
        let deb = self.arch.debian_name();
        let (metas, concrete) = match_packages(&names, series, deb);
        let not_found = || KernelError::NoPackage {
            spec: spec.to_owned(),
            arch: self.arch,
            available: available_series(&names, series.flavour.as_deref(), deb),
        };
        if let Some(meta) = metas.first() {
            let stanzas = self.show(&[meta])?;
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
            let stanzas = self.show(&[&target])?;
            return stanzas
                .first()
                .and_then(Stanza::package)
                .ok_or_else(not_found);
        }
        if concrete.is_empty() {
            return Err(not_found());
        }
        self.show(&concrete)?
            .iter()
            .filter_map(Stanza::package)
            .max_by(|a, b| compare_versions(&a.version, &b.version))
            .ok_or_else(not_found)
    }

    /// `apt-cache show` of each package's candidate version.
    fn show(&self, packages: &[&str]) -> Result<Vec<Stanza>, KernelError> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", "--no-all-versions"]).args(packages);
        // Some names may have no candidate; apt-cache then fails but still prints the others.
        let out = cmd
            .output()
            .map_err(|e| KernelError::io("run", Path::new("apt-cache"), e))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split("\n\n")
            .filter(|s| !s.trim().is_empty())
            .map(|s| Stanza(s.to_owned()))
            .collect())
    }

    fn download(&self, package: &Package, into: &Path) -> Result<PathBuf, KernelError> {
        let pin = format!("{}={}", package.name, package.version);
        run(self
            .command("apt-get")
            .current_dir(into)
            .args(["-q", "download"])
            .arg(&pin))?;
        let entries = fs::read_dir(into).map_err(|e| KernelError::io("read", into, e))?;
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension() == Some(OsStr::new("deb")))
            .ok_or_else(|| KernelError::BadPackage {
                package: package.name.clone(),
                reason: format!("apt-get download left no .deb in {}", into.display()),
            })
    }
}

/// One `apt-cache show` record.
struct Stanza(String);

impl Stanza {
    fn field(&self, key: &str) -> Option<&str> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    }

    fn package(&self) -> Option<Package> {
        Some(Package {
            name: self.field("Package")?.to_owned(),
            version: self.field("Version")?.to_owned(),
            size: self.field("Size").and_then(|s| s.parse().ok()),
        })
    }
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
    let rest = name
        .strip_prefix("linux-image-")?
        .strip_suffix(deb)?
        .strip_suffix('-')?;
    let rest = match flavour {
        Some(f) => rest.strip_suffix(f)?.strip_suffix('-')?,
        None => rest,
    };
    let version_like = rest
        .split('-')
        .all(|p| p.starts_with(|c: char| c.is_ascii_digit()));
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

/// Checks that apt-get, apt-cache and dpkg-deb are on `path` (a `PATH` value).
fn require_tools(path: Option<&OsStr>) -> Result<(), KernelError> {
    for (tool, package) in [
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        let found = path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(tool).is_file()));
        if !found {
            return Err(KernelError::ToolMissing { tool, package });
        }
    }
    Ok(())
}

/// Runs a command to completion; its stdout, or an error with the command and its stderr.
fn run(cmd: &mut Command) -> Result<String, KernelError> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| KernelError::Command {
        command: line.clone(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(KernelError::Command {
            command: line,
            reason: format!("{}: {}", out.status, tail.join("\n")),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
            (
                vec!["linux-image-6.12-amd64"],
                vec!["linux-image-6.12.117+deb12-amd64"]
            )
        );
        assert_eq!(
            match_packages(NAMES, &s("6.1"), "amd64"),
            (
                vec![],
                vec!["linux-image-6.1.0-50-amd64", "linux-image-6.1.0-56-amd64"]
            )
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
    fn missing_tools_say_how_to_install_them() {
        let dir = crate::kernel::tests::scratch_dir("no-tools");
        let err = require_tools(Some(dir.as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`apt-get`") && err.contains("apt-get install apt"),
            "{err}"
        );
        fs::write(dir.join("apt-get"), "").unwrap();
        fs::write(dir.join("apt-cache"), "").unwrap();
        let err = require_tools(Some(dir.as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`dpkg-deb`") && err.contains("apt-get install dpkg"),
            "{err}"
        );
        let err = require_tools(None).unwrap_err().to_string();
        assert!(err.contains("`apt-get`"), "{err}");
    }

    #[test]
    fn fetch_wants_a_series() {
        let dir = crate::kernel::tests::scratch_dir("fetch-spec");
        let store = Store::at(&*dir);
        let err = store
            .fetch("bpf-next", Arch::X86_64, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed to fetch `bpf-next`") && err.contains("`6.1-cloud`"),
            "{err}"
        );
        assert!(
            !dir.join("apt").exists(),
            "nothing is set up for a bad name"
        );
    }

    #[test]
    fn stanza_fields() {
        let s = Stanza(
            "Package: linux-image-6.12-amd64\nVersion: 6.12.117-1~deb12u1\nSize: 1234\n\
             Depends: linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)\n"
                .into(),
        );
        assert_eq!(
            s.field("Depends"),
            Some("linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)")
        );
        let p = s.package().unwrap();
        assert_eq!(
            (p.version.as_str(), p.size),
            ("6.12.117-1~deb12u1", Some(1234))
        );
    }
}
