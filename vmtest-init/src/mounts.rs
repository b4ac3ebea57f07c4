//! The guest's mount table, as data, and which paths it leaves to the initramfs.
//!
//! The kernel unpacks the initramfs into its rootfs, which is already a writable RAM file system
//! (tmpfs). PID 1 mounts the kernel's file systems over some directories, which hides whatever
//! the initramfs put there; every other path, `/tmp` and `/run` included, shows the initramfs's
//! content as it is. That is how a checkout or a `files = [...]` fixture under `/tmp`, `/run` or
//! `/dev/shm` reaches a test at its host path. [`hidden_in_guest`] tells the host which paths
//! the guest cannot provide, from this same table.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

/// What PID 1 provides at one path.
#[derive(Debug)]
pub(crate) struct MountSpec {
    /// Absolute path; created when missing.
    pub(crate) target: &'static str,
    /// How it is provided.
    pub(crate) kind: Kind,
}

/// How a path of the table is provided.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A file system mounted over the path: what the initramfs put there is hidden.
    Mount {
        /// The `source` argument of `mount(2)` (a label for virtual file systems).
        source: &'static str,
        /// File system type.
        fstype: &'static str,
        /// Mount flags.
        flags: MountFlags,
        /// File-system-specific options.
        data: Option<&'static CStr>,
    },
    /// The rootfs's own directory, with what the initramfs put in it; only its mode is set.
    Rootfs {
        /// Permission bits, `0o7777`.
        mode: u32,
    },
    /// The rootfs's own directory, which a `Mount` of a parent would hide: held open before
    /// that mount and bound back at the same path after it, then its mode is set.
    Carried {
        /// Permission bits, `0o7777`.
        mode: u32,
    },
}

const NOSUID_NODEV: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);
const NOSUID_NODEV_NOEXEC: MountFlags = NOSUID_NODEV.union(MountFlags::NOEXEC);

const fn mount(
    target: &'static str,
    source: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: Option<&'static CStr>,
) -> MountSpec {
    MountSpec { target, kind: Kind::Mount { source, fstype, flags, data } }
}

/// Everything PID 1 provides, parents before children. `/proc` comes first: a `Carried`
/// directory is bound back through `/proc/self/fd`.
pub(crate) const MOUNTS: &[MountSpec] = &[
    mount("/proc", "proc", "proc", NOSUID_NODEV_NOEXEC, None),
    mount("/sys", "sysfs", "sysfs", NOSUID_NODEV_NOEXEC, None),
    mount("/dev", "devtmpfs", "devtmpfs", MountFlags::NOSUID, Some(c"mode=0755")),
    mount(
        "/dev/pts",
        "devpts",
        "devpts",
        MountFlags::NOSUID.union(MountFlags::NOEXEC),
        Some(c"mode=0620,ptmxmode=0666"),
    ),
    // POSIX shared memory and semaphores (glibc's shm_open) live here.
    MountSpec { target: "/dev/shm", kind: Kind::Carried { mode: 0o1777 } },
    MountSpec { target: "/tmp", kind: Kind::Rootfs { mode: 0o1777 } },
    MountSpec { target: "/run", kind: Kind::Rootfs { mode: 0o755 } },
    mount("/sys/kernel/debug", "debugfs", "debugfs", NOSUID_NODEV_NOEXEC, None),
    mount("/sys/kernel/tracing", "tracefs", "tracefs", NOSUID_NODEV_NOEXEC, None),
    mount("/sys/fs/bpf", "bpffs", "bpf", NOSUID_NODEV_NOEXEC, Some(c"mode=0700")),
    mount("/sys/fs/cgroup", "cgroup2", "cgroup2", NOSUID_NODEV_NOEXEC, None),
    mount("/sys/kernel/security", "securityfs", "securityfs", NOSUID_NODEV_NOEXEC, None),
];

/// Why the guest cannot show what the initramfs puts at `path` (absolute): the file system PID 1
/// mounts over it. `None` when the path is the initramfs's, as for `/tmp/x`, `/run/x`,
/// `/dev/shm/x` or `/home/x`.
pub fn hidden_in_guest(path: &Path) -> Option<String> {
    let owner = MOUNTS
        .iter()
        .filter(|spec| path.starts_with(spec.target))
        .max_by_key(|spec| Path::new(spec.target).components().count())?;
    match owner.kind {
        Kind::Mount { fstype, .. } => Some(format!(
            "the guest mounts {fstype} on {}, which hides whatever is put there",
            owner.target
        )),
        Kind::Rootfs { .. } | Kind::Carried { .. } => None,
    }
}

/// Provides the whole table. A step that fails is returned as a message, never fatal: a kernel
/// without, say, tracefs still runs tests that do not need it.
pub(crate) fn mount_all() -> Vec<String> {
    let mut problems = Vec::new();
    // Opened before anything is mounted over them.
    let mut carried: Vec<(&str, OwnedFd)> = Vec::new();
    for spec in MOUNTS.iter().filter(|spec| matches!(spec.kind, Kind::Carried { .. })) {
        match hold(spec.target) {
            Ok(fd) => carried.push((spec.target, fd)),
            Err(e) => problems.push(e),
        }
    }
    for spec in MOUNTS {
        let done = match &spec.kind {
            Kind::Mount { source, fstype, flags, data } => {
                mount_one(spec.target, source, fstype, *flags, *data)
            }
            Kind::Rootfs { mode } => create(spec.target).and_then(|()| chmod(spec.target, *mode)),
            Kind::Carried { mode } => {
                match carried.iter().find(|(target, _)| *target == spec.target) {
                    Some((_, fd)) => {
                        bind_back(spec.target, fd).and_then(|()| chmod(spec.target, *mode))
                    }
                    // Holding it failed; that was reported.
                    None => Ok(()),
                }
            }
        };
        problems.extend(done.err());
    }
    problems
}

/// Gives the rootfs's own directories of the table (`/tmp`, `/run`, `/dev/shm`) their modes
/// again, after a restored guest unpacked its payload (whose archive makes the parents of its
/// paths with mode 0755, as an initramfs does before [`mount_all`] sets them).
pub(crate) fn reset_modes() -> Vec<String> {
    MOUNTS
        .iter()
        .filter_map(|spec| match spec.kind {
            Kind::Rootfs { mode } | Kind::Carried { mode } => chmod(spec.target, mode).err(),
            Kind::Mount { .. } => None,
        })
        .collect()
}

fn create(target: &str) -> Result<(), String> {
    std::fs::create_dir_all(target)
        .map_err(|e| format!("failed to create mount point {target}: {e}"))
}

fn chmod(target: &str, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("failed to set the mode of {target} to {mode:o}: {e}"))
}

fn mount_one(
    target: &str,
    source: &str,
    fstype: &str,
    flags: MountFlags,
    data: Option<&CStr>,
) -> Result<(), String> {
    create(target)?;
    rustix::mount::mount(source, target, fstype, flags, data)
        .map_err(|e| format!("failed to mount {fstype} on {target}: {}", io::Error::from(e)))
}

/// Opens the rootfs's directory `target` (created when missing), to bind it back later.
fn hold(target: &str) -> Result<OwnedFd, String> {
    create(target)?;
    rustix::fs::open(target, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("failed to open {target}: {}", io::Error::from(e)))
}

/// Binds the directory held by `fd` at `target` (whose parent has been mounted over since).
fn bind_back(target: &str, fd: &OwnedFd) -> Result<(), String> {
    create(target)?;
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::mount::mount_bind(source.as_str(), target).map_err(|e| {
        format!(
            "failed to bind the initramfs's {target} back over the mount of its parent: {}",
            io::Error::from(e)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: &str) -> &'static MountSpec {
        MOUNTS.iter().find(|m| m.target == target).unwrap_or_else(|| panic!("{target} missing"))
    }

    fn fstype(spec: &MountSpec) -> Option<&'static str> {
        match spec.kind {
            Kind::Mount { fstype, .. } => Some(fstype),
            _ => None,
        }
    }

    fn mounted_ancestor(spec: &MountSpec) -> Option<&'static MountSpec> {
        MOUNTS.iter().find(|other| {
            other.target != spec.target
                && Path::new(spec.target).starts_with(other.target)
                && matches!(other.kind, Kind::Mount { .. })
        })
    }

    #[test]
    fn mounts_every_required_file_system() {
        for (fstype_wanted, target) in [
            ("proc", "/proc"),
            ("sysfs", "/sys"),
            ("devtmpfs", "/dev"),
            ("devpts", "/dev/pts"),
            ("debugfs", "/sys/kernel/debug"),
            ("tracefs", "/sys/kernel/tracing"),
            ("bpf", "/sys/fs/bpf"),
            ("cgroup2", "/sys/fs/cgroup"),
            ("securityfs", "/sys/kernel/security"),
        ] {
            assert_eq!(fstype(spec(target)), Some(fstype_wanted), "{target}");
        }
    }

    #[test]
    fn targets_are_absolute_unique_and_parents_come_first() {
        for (i, m) in MOUNTS.iter().enumerate() {
            assert!(m.target.starts_with('/'), "{}", m.target);
            for (j, other) in MOUNTS.iter().enumerate() {
                if i != j {
                    assert_ne!(m.target, other.target);
                }
                if Path::new(m.target).starts_with(other.target) && i != j {
                    assert!(j < i, "{} must be mounted before {}", other.target, m.target);
                }
            }
        }
    }

    #[test]
    fn temporary_directories_keep_the_initramfs_content_with_their_usual_modes() {
        // Nothing is mounted over them: a checkout or fixture there stays visible.
        assert!(matches!(spec("/tmp").kind, Kind::Rootfs { mode: 0o1777 }));
        assert!(matches!(spec("/run").kind, Kind::Rootfs { mode: 0o755 }));
        // devtmpfs on /dev would hide /dev/shm: it is carried across that mount.
        assert!(matches!(spec("/dev/shm").kind, Kind::Carried { mode: 0o1777 }));
        for target in ["/tmp", "/run", "/dev/shm"] {
            assert_eq!(hidden_in_guest(Path::new(target)), None, "{target}");
            assert_eq!(hidden_in_guest(&Path::new(target).join("checkout/crate")), None);
        }
    }

    #[test]
    fn kept_directories_sit_where_they_need_to() {
        for spec in MOUNTS {
            match spec.kind {
                // A rootfs directory below a mount would be created in the mounted file system.
                Kind::Rootfs { .. } => assert!(mounted_ancestor(spec).is_none(), "{}", spec.target),
                // A carried directory is bound back through /proc/self/fd after its parent's
                // mount; without such a parent it would be a `Rootfs` one.
                Kind::Carried { .. } => {
                    assert!(mounted_ancestor(spec).is_some(), "{}", spec.target);
                    assert_eq!(MOUNTS[0].target, "/proc");
                }
                Kind::Mount { flags, .. } => {
                    assert!(flags.contains(MountFlags::NOSUID), "{}", spec.target)
                }
            }
        }
    }

    #[test]
    fn paths_under_the_kernel_file_systems_are_hidden() {
        for (path, fstype) in [
            ("/proc", "proc"),
            ("/proc/checkout", "proc"),
            ("/sys/x", "sysfs"),
            ("/sys/fs/cgroup/x", "cgroup2"),
            ("/dev/x", "devtmpfs"),
            ("/dev/pts/x", "devpts"),
            ("/dev", "devtmpfs"),
        ] {
            let why = hidden_in_guest(Path::new(path)).unwrap_or_else(|| panic!("{path}"));
            assert!(why.contains(fstype), "{path}: {why}");
        }
        for path in
            ["/", "/home/me/src/crate", "/procfs", "/dev/shm/x/y", "/devices", "/run/user/1000/x"]
        {
            assert_eq!(hidden_in_guest(Path::new(path)), None, "{path}");
        }
    }
}
