//! The guest's userland: the usual directory tree (`/usr/bin`, `/var/tmp`, `/home`, ...) and a
//! static busybox of the guest's arch with links for its applets (`/bin/sh`, `/bin/ls`,
//! `/sbin/ip`, `/usr/bin/env`, ...), so tests can run scripts and shell out to common tools.
//!
//! The busybox is Debian's `busybox-static`, kept in the kernel store (`store.rs`) and fetched
//! like kernels: by `cargo vmtest userland fetch`, by `cargo xtask setup`, or by a run that
//! finds the store without one (when apt is there; otherwise the run goes on without it and
//! says so once). `VMTEST_USERLAND` chooses: `busybox` (the default), `none`, or the path of a
//! static busybox of the user's own.
//!
//! Links are written into the initramfs by the host, from the applet list read out of the
//! binary when it was fetched (`applets.rs`): nothing runs busybox on the host, nothing installs
//! links at boot. The whole userland goes in *beneath* what the run brings
//! (`Initramfs::add_beneath`): the test binary, its libraries, fixtures, the working directory
//! and vmtest's own files win wherever paths collide.

pub(crate) mod applets;
#[cfg(feature = "cli")]
pub mod cli;
pub(crate) mod gdbserver;
mod store;

use std::ffi::OsStr;
use std::path::PathBuf;

pub use store::Userland;

use self::applets::{Applet, InstallDir};
use crate::arch::Arch;
use crate::image::initramfs::{Initramfs, InitramfsError};
use crate::kernel::{KernelError, Store};
use crate::Error;

/// The variable that chooses the userland.
pub(crate) const USERLAND_ENV: &str = "VMTEST_USERLAND";

/// Where the busybox binary goes; every applet link points to it.
const BUSYBOX_PATH: &str = "/bin/busybox";

/// Applets that get no link: `modprobe` and `depmod` are vmtest's own business (the kernel's
/// module loader helper), `linuxrc` is an init for initrds, `busybox` is the binary itself.
const NOT_LINKED: &[&str] = &["busybox", "depmod", "linuxrc", "modprobe"];

/// The directory tree every guest has, with each dir's mode.
const SKELETON: &[(&str, u32)] = &[
    ("/bin", 0o755),
    ("/dev", 0o755),
    ("/etc", 0o755),
    ("/home", 0o755),
    ("/lib", 0o755),
    ("/media", 0o755),
    ("/mnt", 0o755),
    ("/opt", 0o755),
    ("/proc", 0o555),
    ("/root", 0o700),
    ("/run", 0o755),
    ("/sbin", 0o755),
    ("/srv", 0o755),
    ("/sys", 0o555),
    ("/tmp", 0o1777),
    ("/usr", 0o755),
    ("/usr/bin", 0o755),
    ("/usr/lib", 0o755),
    ("/usr/local", 0o755),
    ("/usr/local/bin", 0o755),
    ("/usr/local/lib", 0o755),
    ("/usr/local/sbin", 0o755),
    ("/usr/sbin", 0o755),
    ("/usr/share", 0o755),
    ("/var", 0o755),
    ("/var/cache", 0o755),
    ("/var/lib", 0o755),
    ("/var/log", 0o755),
    ("/var/spool", 0o755),
    ("/var/tmp", 0o1777),
];

/// Symbolic links of the tree, as (link, target).
const SKELETON_LINKS: &[(&str, &str)] = &[("/var/run", "/run")];

/// What `VMTEST_USERLAND` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Choice {
    /// The store's busybox for the guest's arch, fetched when missing.
    Store,
    /// No busybox; the directory tree only.
    None,
    /// A static busybox of the user's own.
    Path(PathBuf),
}

impl Choice {
    fn parse(value: Option<&OsStr>) -> Result<Choice, Error> {
        let Some(value) = value.filter(|v| !v.is_empty()) else { return Ok(Choice::Store) };
        match value.to_str() {
            Some("busybox") => Ok(Choice::Store),
            Some("none") => Ok(Choice::None),
            _ if value.as_encoded_bytes().contains(&b'/') => Ok(Choice::Path(value.into())),
            _ => Err(Error::Env(format!(
                "{USERLAND_ENV}={} is not a userland: use `busybox` (the default: Debian's \
                 static busybox from the kernel store), `none`, or the path of a static busybox",
                value.to_string_lossy()
            ))),
        }
    }
}

/// The userland of one run's guests: the directory tree, and busybox unless it is turned off
/// or could not be had.
#[derive(Clone, Debug, Default)]
pub(crate) struct GuestUserland {
    busybox: Option<(PathBuf, Vec<Applet>)>,
}

impl GuestUserland {
    /// The userland for guests of `arch`, as `VMTEST_USERLAND` says. Fetches the store's when
    /// it is missing and apt is there, printing progress; when it cannot be had, prints one
    /// warning naming the command that fetches it and goes on without busybox. A bad
    /// `VMTEST_USERLAND` (a value it does not know, a binary for another arch) is an error.
    pub(crate) fn for_run(arch: Arch) -> Result<GuestUserland, Error> {
        match Choice::parse(std::env::var_os(USERLAND_ENV).as_deref())? {
            Choice::None => Ok(GuestUserland::default()),
            Choice::Path(path) => {
                let applets = store::check_busybox(&path, arch).map_err(|reason| {
                    Error::Env(format!(
                        "failed to use {USERLAND_ENV}={} as the guest's busybox: {reason}",
                        path.display()
                    ))
                })?;
                Ok(GuestUserland { busybox: Some((path, applets)) })
            }
            Choice::Store => match from_store(arch) {
                Ok(userland) => Ok(userland),
                Err(reason) => {
                    crate::notice::warn(&missing_warning(arch, &reason));
                    Ok(GuestUserland::default())
                }
            },
        }
    }

    /// Adds the directory tree, busybox and its links beneath what `initramfs` holds: where a
    /// path is taken already (or lies below something that is not a directory), the
    /// initramfs's entry stays.
    pub(crate) fn add_beneath(&self, initramfs: &mut Initramfs) -> Result<(), InitramfsError> {
        let mut lower = Initramfs::new();
        for &(dir, mode) in SKELETON {
            lower.add_dir(dir, mode)?;
        }
        for &(link, target) in SKELETON_LINKS {
            lower.add_symlink(link, target)?;
        }
        if let Some((binary, applets)) = &self.busybox {
            lower.add_host_file(BUSYBOX_PATH, binary, 0o755)?;
            for link in links(applets) {
                lower.add_symlink(&link, BUSYBOX_PATH)?;
            }
        }
        initramfs.add_beneath(lower);
        Ok(())
    }
}

/// The store's userland for `arch`, fetched if missing; the error says why there is none.
fn from_store(arch: Arch) -> Result<GuestUserland, String> {
    let store = Store::open().map_err(|e| e.to_string())?;
    let stored = match store.userland(arch).map_err(|e| e.to_string())? {
        Some(userland) => userland,
        None => {
            crate::kernel::apt::require_tools(std::env::var_os("PATH").as_deref()).map_err(
                |e| match e {
                    KernelError::ToolMissing { tool, .. } => format!(
                        "the kernel store {} has none for {arch}, and fetching it needs apt \
                         (`{tool}` is not on PATH)",
                        store.root().display()
                    ),
                    e => e.to_string(),
                },
            )?;
            crate::notice::note(&format!(
                "the guest userland for {arch} is not in the kernel store {}: fetching \
                 Debian's busybox-static ({USERLAND_ENV}=none goes without)",
                store.root().display()
            ));
            let mut progress =
                |line: &str| crate::notice::note(&format!("userland ({arch}): {line}"));
            store::ensure(&store, arch, &mut progress).map_err(|e| e.to_string())?
        }
    };
    let applets = stored.applets().map_err(|e| e.to_string())?;
    Ok(GuestUserland { busybox: Some((stored.busybox, applets)) })
}

/// The one warning of a run whose guests go without busybox.
fn missing_warning(arch: Arch, reason: &str) -> String {
    format!(
        "the guest has no userland (no /bin/sh, no busybox tools): {reason}; \
         fetch it with `cargo vmtest userland fetch --arch {arch}` (in the vmtest workspace: \
         `cargo xtask userland fetch --arch {arch}`), or set {USERLAND_ENV}=none to go without \
         it and without this warning"
    )
}

/// The guest paths of the links for `applets`: each at the dir busybox installs it in, or in
/// both `/bin` and `/usr/bin` when that is unknown. Applets installed in `/` and those in
/// [`NOT_LINKED`] get none.
fn links(applets: &[Applet]) -> Vec<String> {
    let mut links = Vec::new();
    for applet in applets {
        if NOT_LINKED.contains(&applet.name.as_str()) || !applets::valid_name(&applet.name) {
            continue;
        }
        let dirs: &[InstallDir] = match &applet.dir {
            Some(InstallDir::Root) => &[],
            Some(dir) => std::slice::from_ref(dir),
            None => &[InstallDir::Bin, InstallDir::UsrBin],
        };
        links.extend(dirs.iter().map(|dir| format!("{}/{}", dir.path(), applet.name)));
    }
    links
}

#[cfg(test)]
mod tests {
    use super::applets::tests::SAMPLE;
    use super::*;

    fn sample() -> Vec<Applet> {
        SAMPLE.iter().map(|&(name, dir)| Applet { name: name.to_owned(), dir }).collect()
    }

    #[test]
    fn links_go_where_busybox_installs_them() {
        let links = links(&sample());
        assert_eq!(
            links,
            [
                "/usr/bin/[",
                "/usr/bin/[[",
                "/bin/ash",
                "/bin/cat",
                "/usr/sbin/chroot",
                "/usr/bin/env",
                "/sbin/insmod",
                "/sbin/ip",
                "/bin/ls",
                "/bin/mount",
                "/bin/sh",
                "/bin/zcat"
            ]
        );
    }

    #[test]
    fn no_modprobe_nor_depmod_from_busybox() {
        let mut applets = sample();
        applets.iter_mut().for_each(|a| a.dir = None);
        let links = links(&applets);
        assert!(links.iter().all(|l| !l.ends_with("/modprobe") && !l.ends_with("/depmod")));
        assert!(links.iter().all(|l| !l.ends_with("/linuxrc") && !l.ends_with("/busybox")));
        // Unknown dirs: both bin dirs.
        assert!(
            links.contains(&"/bin/env".to_owned()) && links.contains(&"/usr/bin/env".to_owned())
        );
        assert!(links.contains(&"/bin/ip".to_owned()) && links.contains(&"/usr/bin/ip".to_owned()));
        assert!(!links.iter().any(|l| l.starts_with("/sbin/")));
    }

    #[test]
    fn the_choice_is_read_from_the_variable() {
        let parse = |v: &str| Choice::parse(Some(OsStr::new(v)));
        assert_eq!(Choice::parse(None).unwrap(), Choice::Store);
        assert_eq!(parse("").unwrap(), Choice::Store);
        assert_eq!(parse("busybox").unwrap(), Choice::Store);
        assert_eq!(parse("none").unwrap(), Choice::None);
        assert_eq!(parse("./bb").unwrap(), Choice::Path("./bb".into()));
        let err = parse("alpine").unwrap_err().to_string();
        assert!(err.contains("VMTEST_USERLAND=alpine") && err.contains("`none`"), "{err}");
    }

    #[test]
    fn the_warning_names_the_fetch_command() {
        let warning = missing_warning(Arch::Aarch64, "no apt");
        assert!(warning.starts_with("the guest has no userland"), "{warning}");
        assert!(warning.contains("`cargo vmtest userland fetch --arch aarch64`"), "{warning}");
        assert!(warning.contains("no apt") && warning.contains("VMTEST_USERLAND=none"));
        assert!(!warning.contains('\n'));
    }

    /// (path, mode with file type) of an initramfs listing, for lookups.
    fn kinds(initramfs: &Initramfs) -> std::collections::BTreeMap<String, u32> {
        initramfs.listing().into_iter().collect()
    }

    #[test]
    fn the_skeleton_is_there_with_or_without_busybox() {
        let mut initramfs = Initramfs::new();
        GuestUserland::default().add_beneath(&mut initramfs).unwrap();
        let entries = kinds(&initramfs);
        for dir in ["/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/var", "/var/tmp", "/home"] {
            assert_eq!(entries.get(dir).map(|m| m & 0o170000), Some(0o040000), "{dir}");
        }
        for dir in ["/opt", "/root", "/srv", "/mnt", "/etc", "/bin", "/sbin", "/tmp"] {
            assert_eq!(entries.get(dir).map(|m| m & 0o170000), Some(0o040000), "{dir}");
        }
        assert_eq!(entries["/root"] & 0o7777, 0o700);
        assert_eq!(entries["/var/tmp"] & 0o7777, 0o1777);
        assert_eq!(entries["/var/run"] & 0o170000, 0o120000);
        assert!(!initramfs.contains("/bin/sh"));
        // Every parent of the tree is in the tree.
        for (dir, _) in SKELETON {
            let parent = std::path::Path::new(dir).parent().unwrap().to_str().unwrap();
            assert!(parent == "/" || SKELETON.iter().any(|(d, _)| *d == parent), "{dir}");
        }
    }

    #[test]
    fn what_the_run_brings_wins() {
        let dir = crate::kernel::tests::scratch_dir("userland-beneath");
        let busybox = dir.join("busybox");
        std::fs::write(&busybox, b"busybox").unwrap();
        let fixture = dir.join("env");
        std::fs::write(&fixture, b"the test's env").unwrap();
        let userland = GuestUserland { busybox: Some((busybox, sample())) };

        let mut initramfs = Initramfs::new();
        // A fixture at an applet's path, a library dir, a working directory under /root, a
        // file where the tree has a dir, a link where the tree has a dir with links below it.
        initramfs.add_host_file("/usr/bin/env", &fixture, 0o755).unwrap();
        initramfs.add_bytes("/lib64/ld-linux-x86-64.so.2", b"ld".to_vec(), 0o755).unwrap();
        initramfs.add_dir("/root/project", 0o755).unwrap();
        initramfs.add_bytes("/opt", b"not a dir".to_vec(), 0o644).unwrap();
        initramfs.add_symlink("/sbin", "/usr/sbin").unwrap();
        userland.add_beneath(&mut initramfs).unwrap();

        let entries = kinds(&initramfs);
        assert_eq!(entries["/usr/bin/env"], 0o100755, "the fixture stays a file");
        assert_eq!(entries["/bin/busybox"], 0o100755);
        assert_eq!(entries["/bin/sh"], 0o120777);
        assert_eq!(entries["/usr/bin/["], 0o120777);
        assert_eq!(entries["/lib64/ld-linux-x86-64.so.2"], 0o100755);
        assert_eq!(entries["/root"], 0o040755, "the run's parent dir stays as it made it");
        assert_eq!(entries["/opt"], 0o100644);
        assert_eq!(entries["/sbin"], 0o120777);
        assert!(!entries.contains_key("/sbin/ip"), "nothing below the run's link");
        assert!(!entries.keys().any(|p| p.ends_with("/modprobe")));
        let mut out = Vec::new();
        initramfs.write_to(&mut out).unwrap();
    }
}
