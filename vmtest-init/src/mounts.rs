//! The guest's mount table, as data.

use std::ffi::CStr;
use std::io;

use rustix::mount::MountFlags;

/// One file system to mount at boot.
#[derive(Debug)]
pub(crate) struct MountSpec {
    /// The `source` argument of `mount(2)` (a label for virtual file systems).
    pub(crate) source: &'static str,
    /// Absolute mount point; created when missing.
    pub(crate) target: &'static str,
    /// File system type.
    pub(crate) fstype: &'static str,
    /// Mount flags.
    pub(crate) flags: MountFlags,
    /// File-system-specific options.
    pub(crate) data: Option<&'static CStr>,
}

const NOSUID_NODEV: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);
const NOSUID_NODEV_NOEXEC: MountFlags = NOSUID_NODEV.union(MountFlags::NOEXEC);

/// Everything PID 1 mounts, parents before children.
pub(crate) const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: Some(c"mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: Some(c"mode=0620,ptmxmode=0666"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some(c"mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some(c"mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some(c"mode=0755"),
    },
    MountSpec {
        source: "debugfs",
        target: "/sys/kernel/debug",
        fstype: "debugfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "tracefs",
        target: "/sys/kernel/tracing",
        fstype: "tracefs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "bpffs",
        target: "/sys/fs/bpf",
        fstype: "bpf",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some(c"mode=0700"),
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "securityfs",
        target: "/sys/kernel/security",
        fstype: "securityfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Mounts the whole table. A mount that fails is returned as a message, never fatal: a kernel
/// without, say, tracefs still runs tests that do not need it.
pub(crate) fn mount_all() -> Vec<String> {
    MOUNTS.iter().filter_map(|spec| mount_one(spec).err()).collect()
}

fn mount_one(spec: &MountSpec) -> Result<(), String> {
    std::fs::create_dir_all(spec.target)
        .map_err(|e| format!("failed to create mount point {}: {e}", spec.target))?;
    rustix::mount::mount(spec.source, spec.target, spec.fstype, spec.flags, spec.data).map_err(
        |e| format!("failed to mount {} on {}: {}", spec.fstype, spec.target, io::Error::from(e)),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(target: &str) -> &'static MountSpec {
        MOUNTS.iter().find(|m| m.target == target).unwrap_or_else(|| panic!("{target} missing"))
    }

    #[test]
    fn mounts_every_required_file_system() {
        for (fstype, target) in [
            ("proc", "/proc"),
            ("sysfs", "/sys"),
            ("devtmpfs", "/dev"),
            ("devpts", "/dev/pts"),
            ("tmpfs", "/dev/shm"),
            ("tmpfs", "/tmp"),
            ("tmpfs", "/run"),
            ("debugfs", "/sys/kernel/debug"),
            ("tracefs", "/sys/kernel/tracing"),
            ("bpf", "/sys/fs/bpf"),
            ("cgroup2", "/sys/fs/cgroup"),
            ("securityfs", "/sys/kernel/security"),
        ] {
            assert_eq!(spec(target).fstype, fstype, "{target}");
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
    fn temporary_directories_are_world_writable_and_sticky() {
        for target in ["/tmp", "/dev/shm"] {
            assert_eq!(spec(target).data, Some(c"mode=1777"), "{target}");
        }
        assert!(MOUNTS.iter().all(|m| m.flags.contains(MountFlags::NOSUID)));
    }
}
