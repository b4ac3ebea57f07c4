//! apt with state of its own, for fetching Debian packages of any arch without touching the
//! system's apt configuration.
//!
//! apt runs with its own lists, cache and (empty) dpkg status under `<store>/apt/<arch>/`, and
//! `APT::Architecture` set to the target's Debian arch, so a foreign arch (arm64 on an amd64
//! host) needs no `dpkg --add-architecture`, and fetching needs no root. The sources are the
//! system's. Kernels ([`super::fetch`]) and the guest userland ([`crate::userland`]) are
//! fetched through it; both resolve package versions from the current lists each time.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::layout::lock_file;
use super::store::Store;
use super::{human_size, KernelError};
use crate::arch::Arch;

/// A Debian package's candidate version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) size: Option<u64>,
}

/// How long package lists count as current after an update (several fetches in a row update
/// once).
const LISTS_FRESH_FOR: Duration = Duration::from_secs(10 * 60);

/// apt with its own state for one Debian arch.
pub(crate) struct Apt {
    dir: PathBuf,
    arch: Arch,
}

impl Apt {
    /// apt for `arch` with its state in `store`'s `apt/<debian arch>/`, after checking that
    /// apt's tools are installed.
    pub(crate) fn for_store(store: &Store, arch: Arch) -> Result<Apt, KernelError> {
        require_tools(std::env::var_os("PATH").as_deref())?;
        Apt::new(store.root().join("apt").join(arch.debian_name()), arch)
    }

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

    /// Takes the lock on this apt state: exclusive to update lists, shared to download.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<File, KernelError> {
        lock_file(&self.dir.join("vmtest.lock"), exclusive)
    }

    /// Updates the package lists unless they are fresh, reporting which to `progress`. Call with
    /// the exclusive lock held.
    pub(crate) fn refresh(&self, progress: &mut dyn FnMut(&str)) -> Result<(), KernelError> {
        let deb = self.arch.debian_name();
        if self.lists_are_fresh() {
            progress(&format!("package lists for {deb} are fresh"));
            return Ok(());
        }
        progress(&format!(
            "updating package lists for {deb} (apt state in {})",
            self.dir.display()
        ));
        run(self.command("apt-get").args(["-q", "update"]))?;
        let stamp = self.dir.join("updated");
        fs::write(&stamp, "").map_err(|e| KernelError::io("write", &stamp, e))
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

    /// The names of the packages apt knows that start with `prefix`.
    pub(crate) fn names(&self, prefix: &str) -> Result<Vec<String>, KernelError> {
        let names = run(self.command("apt-cache").args(["pkgnames", prefix]))?;
        Ok(names.lines().map(str::to_owned).collect())
    }

    /// `apt-cache show` of each package's candidate version.
    pub(crate) fn show(&self, packages: &[&str]) -> Result<Vec<Stanza>, KernelError> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", "--no-all-versions"]).args(packages);
        // Some names may have no candidate; apt-cache then fails but still prints the others.
        let out = cmd.output().map_err(|e| KernelError::io("run", Path::new("apt-cache"), e))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split("\n\n")
            .filter(|s| !s.trim().is_empty())
            .map(|s| Stanza(s.to_owned()))
            .collect())
    }

    /// Downloads `package` into a fresh `download/` dir under `tmp`, under apt's shared lock,
    /// telling `progress` the package, its size and the time taken; returns the `.deb`'s path.
    pub(crate) fn download_into(
        &self,
        package: &Package,
        tmp: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, KernelError> {
        let download = tmp.join("download");
        fs::create_dir_all(&download).map_err(|e| KernelError::io("create", &download, e))?;
        let size = package.size.map(|s| format!(", {}", human_size(s))).unwrap_or_default();
        progress(&format!("downloading {} {}{size}", package.name, package.version));
        let started = Instant::now();
        let deb = {
            let _lock = self.lock(false)?;
            self.download(package, &download)?
        };
        let deb_size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
        progress(&format!(
            "downloaded {} in {:.1}s",
            human_size(deb_size),
            started.elapsed().as_secs_f64()
        ));
        Ok(deb)
    }

    /// Downloads `package` at its version into the dir `into`; returns the `.deb`'s path.
    fn download(&self, package: &Package, into: &Path) -> Result<PathBuf, KernelError> {
        let pin = format!("{}={}", package.name, package.version);
        run(self.command("apt-get").current_dir(into).args(["-q", "download"]).arg(&pin))?;
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

/// Unpacks the `.deb` at `deb` into the dir `into` (`dpkg-deb -x`).
pub(crate) fn unpack(deb: &Path, into: &Path) -> Result<(), KernelError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into)).map(drop)
}

/// One `apt-cache show` record.
pub(crate) struct Stanza(pub(crate) String);

impl Stanza {
    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        self.0.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
    }

    pub(crate) fn package(&self) -> Option<Package> {
        Some(Package {
            name: self.field("Package")?.to_owned(),
            version: self.field("Version")?.to_owned(),
            size: self.field("Size").and_then(|s| s.parse().ok()),
        })
    }
}

/// Checks that apt-get, apt-cache and dpkg-deb are on `path` (a `PATH` value).
pub(crate) fn require_tools(path: Option<&OsStr>) -> Result<(), KernelError> {
    for (tool, package) in [("apt-get", "apt"), ("apt-cache", "apt"), ("dpkg-deb", "dpkg")] {
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
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let out = cmd
        .output()
        .map_err(|e| KernelError::Command { command: line.clone(), reason: e.to_string() })?;
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

    #[test]
    fn missing_tools_say_how_to_install_them() {
        let dir = crate::kernel::tests::scratch_dir("no-tools");
        let err = require_tools(Some(dir.as_os_str())).unwrap_err().to_string();
        assert!(err.contains("`apt-get`") && err.contains("apt-get install apt"), "{err}");
        fs::write(dir.join("apt-get"), "").unwrap();
        fs::write(dir.join("apt-cache"), "").unwrap();
        let err = require_tools(Some(dir.as_os_str())).unwrap_err().to_string();
        assert!(err.contains("`dpkg-deb`") && err.contains("apt-get install dpkg"), "{err}");
        let err = require_tools(None).unwrap_err().to_string();
        assert!(err.contains("`apt-get`"), "{err}");
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
        assert_eq!((p.version.as_str(), p.size), ("6.12.117-1~deb12u1", Some(1234)));
    }
}
