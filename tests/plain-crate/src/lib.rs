//! An ordinary crate with ordinary `#[test]`s: `cargo vmtest run` boots its test binary in a VM
//! under `vmtest-init`, as it would any crate's.

/// Adds two numbers.
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() {
        assert_eq!(add(2, 2), 4);
    }

    #[test]
    fn sees_a_linux_kernel() {
        let version = std::fs::read_to_string("/proc/version").unwrap();
        assert!(version.starts_with("Linux version "), "{version}");
    }

    /// Whether this runs in a vmtest guest: a child of PID 1 on the host name the guest sets.
    fn in_vmtest_guest() -> bool {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        hostname.trim() == "vmtest" && std::os::unix::process::parent_id() == 1
    }

    /// A line of the calling thread's `/proc/thread-self/status`, e.g. `Umask` (the main
    /// thread's mask is briefly full while libtest starts a test thread).
    fn status_field(name: &str) -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let prefix = format!("{name}:");
        let line = status.lines().find(|l| l.starts_with(&prefix)).expect("a status field");
        line[prefix.len()..].trim().to_owned()
    }

    /// What holds for a test process that cargo started, on a host and in a vmtest guest; some
    /// of it depends on the host's terminal and shell, so is checked in the guest only.
    #[test]
    fn process_state_is_as_under_cargo() {
        // SAFETY: getsid, getpgid and getpid with 0 query the calling process.
        let (sid, pgid, pid) = unsafe { (libc::getsid(0), libc::getpgid(0), libc::getpid()) };
        assert_ne!(sid, pid, "the test process leads a session");
        assert_ne!(pgid, pid, "the test process leads its process group");
        // A pseudo-terminal pair, the slave opened without O_NOCTTY, then hung up: harmless for
        // a process that leads no session.
        // SAFETY: plain libc calls on descriptors this test owns; ptsname's result is copied.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!((libc::grantpt(master), libc::unlockpt(master)), (0, 0));
            let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
            let slave = libc::open(name.as_ptr(), libc::O_RDWR);
            assert!(slave >= 0, "open {name:?}: {}", std::io::Error::last_os_error());
            libc::close(master);
            libc::close(slave);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !in_vmtest_guest() {
            return;
        }
        let tty = std::fs::File::open("/dev/tty").map(drop).unwrap_err();
        assert_eq!(tty.raw_os_error(), Some(libc::ENXIO), "/dev/tty: {tty}");
        assert_eq!(status_field("SigBlk"), "0000000000000000", "the signal mask is not empty");
        // Only SIGPIPE is ignored (by Rust's runtime); SIGHUP and the rest are the defaults.
        assert_eq!(status_field("SigIgn"), format!("{:016x}", 1u64 << (libc::SIGPIPE - 1)));
        assert_eq!(status_field("Umask"), "0022");
        let mut nofile = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `nofile` is valid for writes.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) }, 0);
        assert_eq!((nofile.rlim_cur, nofile.rlim_max), (1024, 4096));
        println!("process state checked in the vmtest guest");
    }

    /// cargo runs a test binary in its package's directory; the runner keeps it in the guest.
    #[test]
    fn runs_in_the_package_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(cwd, std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    }

    #[test]
    fn a_shell_pipeline_runs() {
        let output = std::process::Command::new("sh")
            .args(["-c", "echo plain | cat | grep -c plain"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n");
    }

    #[test]
    #[ignore = "loads kernel modules: only in a VM (the runner's tests run it with --ignored)"]
    fn loads_modules_on_demand() {
        use std::path::Path;
        use std::process::Command;
        assert!(
            Path::new("/vmtest/plan").exists(),
            "not inside a vmtest VM: refusing to load modules"
        );
        // The kernel runs the loader it is pointed at: vmtest-init, PID 1's binary.
        let loader = std::fs::read_to_string("/proc/sys/kernel/modprobe").unwrap();
        assert_eq!(loader.trim(), "/sbin/modprobe");
        assert_eq!(std::fs::canonicalize("/sbin/modprobe").unwrap(), Path::new("/init"));

        let status = Command::new("modprobe").arg("dummy").status().unwrap();
        assert!(status.success());
        assert!(Path::new("/sys/module/dummy").exists());

        // The kernel asks for `net-pf-38` (af_alg) itself.
        assert!(!Path::new("/sys/module/af_alg").exists());
        // SAFETY: socket(2) with constant arguments; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0) };
        assert!(fd >= 0, "socket(AF_ALG): {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a descriptor this test owns.
        unsafe { libc::close(fd) };
        assert!(Path::new("/sys/module/af_alg").exists());
    }

    #[test]
    #[ignore = "fails on purpose: the runner's tests run it with --include-ignored"]
    fn fails_on_purpose() {
        assert_eq!(add(2, 2), 5, "plain-crate failure marker");
    }
}
