//! vm_tests that must pass inside the guest.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use vmtest::vm_test;

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mounts").expect("failed to read /proc/self/mounts")
}

#[vm_test]
fn runs_as_root_in_a_child_of_pid1() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0);
    assert_eq!(std::os::unix::process::parent_id(), 1, "the test's parent is the guest's PID 1");
    assert_ne!(std::process::id(), 1);
}

#[vm_test]
fn stdin_is_dev_null_and_only_stdio_is_open() {
    let stdin = std::fs::read_link("/proc/self/fd/0").unwrap();
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
    // Only stdio is open: nothing of PID 1's (control port, fork server socket) leaked in.
    let mut open: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    open.sort();
    // The fourth is read_dir's own descriptor.
    assert_eq!(open.len(), 4, "open descriptors: {open:?}");
}

/// The disposition of `signal`: `SIG_DFL`, `SIG_IGN` or a handler's address.
fn disposition(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction is valid; sigaction only writes the current action into it.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `action` is valid for writes; a null new action changes nothing.
    assert_eq!(unsafe { libc::sigaction(signal, std::ptr::null(), &mut action) }, 0);
    action.sa_sigaction
}

/// A line of the calling thread's `/proc/thread-self/status`, e.g. `Umask`. Not
/// `/proc/self/status`: that is the main thread's, whose mask is briefly full while it creates
/// a thread (glibc blocks every signal around `clone`), as it is under libtest.
fn status_field(name: &str) -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let prefix = format!("{name}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{name}"));
    line[prefix.len()..].trim().to_owned()
}

#[vm_test]
fn process_state_is_as_under_cargo() {
    // SAFETY: getsid, getpgid and getpid with 0 query the calling process; no preconditions.
    let (sid, pgid, pid) = unsafe { (libc::getsid(0), libc::getpgid(0), libc::getpid()) };
    assert_ne!(sid, pid, "the test process leads a session");
    assert_ne!(pgid, pid, "the test process leads its process group");
    assert_eq!(sid, 1, "the test process is not in PID 1's session");
    // No controlling terminal.
    let tty = std::fs::File::open("/dev/tty").map(drop).unwrap_err();
    assert_eq!(tty.raw_os_error(), Some(libc::ENXIO), "/dev/tty: {tty}");
    // Default dispositions, but what Rust's runtime sets (SIGPIPE ignored).
    for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGUSR1] {
        assert_eq!(disposition(signal), libc::SIG_DFL, "signal {signal}");
    }
    assert_eq!(disposition(libc::SIGPIPE), libc::SIG_IGN);
    assert_eq!(status_field("SigBlk"), "0000000000000000", "the signal mask is not empty");
    assert_eq!(status_field("SigIgn"), format!("{:016x}", 1u64 << (libc::SIGPIPE - 1)));
    assert_eq!(status_field("Umask"), "0022");
    // The kernel's default limits.
    let mut nofile = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `nofile` is valid for writes.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) }, 0);
    assert_eq!((nofile.rlim_cur, nofile.rlim_max), (1024, 4096));
}

/// Opens a pseudo-terminal pair the way a test of terminal code does (no `O_NOCTTY` on the
/// slave), then hangs the terminal up by closing the master. Under cargo this is harmless; a
/// session leader would get the terminal as its controlling one and be killed by the SIGHUP.
#[vm_test]
fn a_pty_hangup_does_not_kill_the_test() {
    // SAFETY: plain libc calls on descriptors this test owns; ptsname's buffer is copied at once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
        let slave = libc::open(name.as_ptr(), libc::O_RDWR);
        assert!(slave >= 0, "open {name:?}: {}", std::io::Error::last_os_error());
        // It did not become the controlling terminal.
        let tty = libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR);
        assert_eq!((tty, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENXIO)));
        libc::close(master);
        libc::close(slave);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Still alive: a SIGHUP would have killed it before this point.
    assert_eq!(disposition(libc::SIGHUP), libc::SIG_DFL);
}

#[vm_test]
fn the_test_process_can_make_its_own_session() {
    // Fails with EPERM for a process group leader.
    // SAFETY: setsid has no preconditions; this process is the test's own.
    let sid = unsafe { libc::setsid() };
    assert_eq!(sid, std::process::id() as i32, "setsid: {}", std::io::Error::last_os_error());
}

/// Each test runs in a fresh process: two tests of one VM both see the counter at zero.
static RUNS_IN_THIS_PROCESS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[vm_test]
fn a_fresh_process_per_test_a() {
    assert_eq!(RUNS_IN_THIS_PROCESS.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
}

#[vm_test]
fn a_fresh_process_per_test_b() {
    assert_eq!(RUNS_IN_THIS_PROCESS.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
}

#[vm_test]
fn kernel_filesystems_are_mounted() {
    let mounts = mounts();
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/sys/fs/cgroup", "cgroup2"),
        ("/sys/fs/bpf", "bpf"),
    ] {
        assert!(
            mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(target)
                && l.split_whitespace().nth(2) == Some(fstype)),
            "{fstype} is not mounted on {target}:\n{mounts}"
        );
    }
}

/// `/tmp`, `/run` and `/dev/shm` are the rootfs's own (RAM) directories, not mounts over it, so
/// whatever the initramfs put there (a checkout, fixtures) stays; their modes are the usual ones.
#[vm_test]
fn temporary_directories_are_writable_ram_with_the_usual_modes() {
    use std::os::unix::fs::PermissionsExt;
    for (dir, mode) in [("/tmp", 0o1777), ("/run", 0o755), ("/dev/shm", 0o1777)] {
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dir}");
        // SAFETY: a zeroed statfs is valid; statfs fills it.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(dir).unwrap();
        // SAFETY: `path` is NUL-terminated and `fs` valid for writes.
        assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut fs) }, 0, "{dir}");
        assert_eq!(fs.f_type, libc::TMPFS_MAGIC as _, "{dir} is not in RAM");
        let file = std::path::Path::new(dir).join(format!("vmtest-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        std::fs::remove_file(&file).unwrap();
    }
    // POSIX shared memory works on /dev/shm.
    let name = c"/vmtest-shm";
    // SAFETY: `name` is NUL-terminated; the descriptor is closed and the object unlinked.
    unsafe {
        let fd = libc::shm_open(name.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600);
        assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
        libc::close(fd);
        assert!(std::path::Path::new("/dev/shm/vmtest-shm").exists());
        assert_eq!(libc::shm_unlink(name.as_ptr()), 0);
    }
}

#[vm_test]
fn loopback_is_up() {
    let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "IFF_UP is not set on lo (flags {flags:#x})");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[vm_test]
fn runs_under_a_linux_kernel() {
    let version = std::fs::read_to_string("/proc/version").unwrap();
    assert!(version.starts_with("Linux version "), "{version}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(version.contains(release.trim()), "{version} vs {release}");
}

#[vm_test(memory = "512M", cpus = 2, timeout = "60s", cmdline = "vmtest.marker=42")]
fn sees_the_configured_vm() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    assert!((300 * 1024..=512 * 1024).contains(&total_kib), "MemTotal {total_kib} kB");
    assert_eq!(std::thread::available_parallelism().unwrap().get(), 2);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
    assert!(cmdline.split_whitespace().any(|a| a == "vmtest.marker=42"), "{cmdline}");
}

#[vm_test]
fn returns_ok() -> Result<(), std::io::Error> {
    std::fs::metadata("/proc/self/exe")?;
    Ok(())
}

#[vm_test]
#[should_panic(expected = "expected boom")]
fn should_panic_with_message() {
    panic!("an expected boom");
}

#[vm_test]
#[ignore = "shows that ignored tests are reported with their reason"]
fn ignored_with_reason() {
    panic!("ignored tests do not run");
}

/// `uname -m` of the running kernel.
fn machine() -> String {
    // SAFETY: utsname is plain bytes, valid when zeroed; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    assert_eq!(unsafe { libc::uname(&mut uts) }, 0, "uname failed");
    // SAFETY: uname NUL-terminates every field.
    let machine = unsafe { std::ffi::CStr::from_ptr(uts.machine.as_ptr()) };
    machine.to_string_lossy().into_owned()
}

#[vm_test]
fn guest_machine_is_the_binary_arch() {
    // `consts::ARCH` is what the binary was compiled for; `uname` asks the running kernel.
    assert_eq!(machine(), std::env::consts::ARCH);
}

#[vm_test(arch = "arm64")]
fn runs_on_aarch64_under_arm64() {
    assert_eq!(machine(), "aarch64");
    let arch = std::fs::read_to_string("/proc/sys/kernel/arch").unwrap_or_default();
    assert!(arch.is_empty() || arch.trim() == "aarch64", "/proc/sys/kernel/arch: {arch}");
}

mod nested {
    #[vmtest::vm_test]
    fn tests_in_modules_keep_their_path() {
        assert_eq!(
            std::env::var("VMTEST_TEST").as_deref(),
            Ok("nested::tests_in_modules_keep_their_path")
        );
    }
}

/// Runs `program` with `args` in the guest and returns its stdout, after checking that it
/// succeeded.
fn run(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?}: {}\n{stdout}{stderr}", output.status);
    stdout
}

#[vm_test]
fn has_the_usual_directory_tree() {
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/local/bin",
        "/var",
        "/var/tmp",
        "/home",
        "/opt",
        "/root",
        "/srv",
        "/mnt",
        "/etc",
        "/tmp",
    ] {
        assert!(std::path::Path::new(dir).is_dir(), "{dir} is not a directory");
    }
    let mode = std::fs::metadata("/var/tmp").unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o1777, "/var/tmp is world-writable and sticky");
}

#[vm_test]
fn runs_a_shell_script() {
    use std::os::unix::fs::PermissionsExt;
    let script = "/tmp/vmtest-script.sh";
    std::fs::write(
        script,
        "#!/bin/sh\nset -e\necho \"args: $# $1\"\nfor w in a b c; do printf %s \"$w\"; done\necho\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = std::process::Command::new(script).arg("one").output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "args: 1 one\nabc\n");
}

#[vm_test]
fn runs_an_env_shebang_script() {
    use std::os::unix::fs::PermissionsExt;
    let script = "/tmp/vmtest-env-script";
    std::fs::write(script, "#!/usr/bin/env sh\necho \"from $0\"\n").unwrap();
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(run(script, &[]), format!("from {script}\n"));
}

#[vm_test]
fn sh_pipes_through_cat_and_grep() {
    let out = run("sh", &["-c", "printf 'alpha\\nbeta\\ngamma\\n' | cat | grep -n mm"]);
    assert_eq!(out, "3:gamma\n");
    assert_eq!(run("/bin/sh", &["-c", "echo $((6 * 7)) | cat"]), "42\n");
}

#[vm_test]
fn ls_lists_usr() {
    let listed = run("ls", &["/usr"]);
    let names: Vec<&str> = listed.split_whitespace().collect();
    for dir in ["bin", "lib", "sbin"] {
        assert!(names.contains(&dir), "ls /usr: {listed}");
    }
}

#[vm_test]
fn ip_shows_the_loopback_link() {
    let out = run("ip", &["link", "show", "lo"]);
    assert!(out.contains(": lo: <LOOPBACK,UP"), "{out}");
    assert!(run("/sbin/ip", &["addr", "show", "lo"]).contains("127.0.0.1"));
}

#[vm_test]
fn mount_lists_the_kernel_filesystems() {
    let out = run("mount", &[]);
    assert!(out.contains("proc on /proc type proc"), "{out}");
    assert!(out.contains("sysfs on /sys type sysfs"), "{out}");
}

#[vm_test]
fn common_tools_are_on_path() {
    let tools = "awk basename cat chmod cp cut date dd df du env find grep head hostname id \
                 insmod kill ln ls lsmod mkdir mktemp mount mv ps readlink rm rmmod sed sh sleep \
                 sort tail tar touch tr true umount uname uniq wc xargs";
    let script = format!("for t in {tools}; do command -v $t || echo missing $t; done");
    let out = run("sh", &["-c", &script]);
    assert!(!out.contains("missing"), "{out}");
    // vmtest's own, never busybox's: the kernel calls /sbin/modprobe to load modules.
    for helper in ["/sbin/modprobe", "/usr/sbin/modprobe", "/sbin/depmod", "/usr/sbin/depmod"] {
        if let Ok(target) = std::fs::canonicalize(helper) {
            assert_ne!(target, std::path::Path::new("/bin/busybox"), "{helper} is busybox's");
        }
    }
}

vmtest::main!();
