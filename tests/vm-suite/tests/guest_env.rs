//! vm_tests of what a test sees of its host in the guest: environment, fixtures, added host
//! binaries, entropy, hostname and libc lookups. (The clock and a vanished fixture are checked
//! from the host in `tests/outcomes.rs`.)

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::Path;
use std::process::Command;

use vmtest::vm_test;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fixture.bin");

/// In a VM of its own (the cmdline makes a group of one), so nothing else ran before it.
#[vm_test(cmdline = "vmtest.suite=entropy")]
fn getrandom_is_ready_at_boot() {
    let mut buf = [0u8; 32];
    // SAFETY: `buf` is valid for writes of its length.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    assert_eq!(
        got,
        buf.len() as isize,
        "getrandom(GRND_NONBLOCK) failed, the kernel's RNG is not seeded: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(got, buf.len() as isize, "{}", std::io::Error::last_os_error());
    assert_ne!(buf, [0u8; 32]);
}

#[vm_test(env = ["VMTEST_SUITE_MARKER"])]
fn sees_forwarded_variables_only() {
    // `.cargo/config.toml` sets both for every cargo command of this workspace.
    assert_eq!(std::env::var("VMTEST_SUITE_MARKER").as_deref(), Ok("forwarded"));
    assert_eq!(
        std::env::var_os("VMTEST_SUITE_UNLISTED"),
        None,
        "a variable that is not listed leaked"
    );
    assert_eq!(std::env::var("CARGO_MANIFEST_DIR").as_deref(), Ok(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(std::env::var("CARGO_PKG_NAME").as_deref(), Ok("vm-suite"));
    assert_eq!(std::env::var("HOME").as_deref(), Ok("/root"));
    assert_eq!(std::env::var("TMPDIR").as_deref(), Ok("/tmp"));
    assert_eq!(std::env::var("USER").as_deref(), Ok("root"));
    assert!(std::env::var("PATH").unwrap().contains("/usr/bin"));
    let artifacts = std::env::var_os("VMTEST_ARTIFACT_DIR").expect("VMTEST_ARTIFACT_DIR is set");
    assert!(std::path::Path::new(&artifacts).is_dir(), "{artifacts:?} is not a directory");
    let names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    for name in &names {
        assert!(
            name.starts_with("CARGO_")
                || name.starts_with("RUST_")
                || [
                    "VMTEST_SUITE_MARKER",
                    "VMTEST_TEST",
                    "VMTEST_TEST_INSTANCE",
                    "VMTEST_ARTIFACT_DIR",
                    "VMTEST_SKIP_FILE",
                    "LLVM_PROFILE_FILE",
                    "HOME",
                    "TMPDIR",
                    "USER",
                    "PATH"
                ]
                .contains(&name.as_str()),
            "unexpected variable {name} in {names:?}"
        );
    }
}

#[vm_test(files = ["tests/data"])]
fn reads_fixtures_at_their_host_path() {
    assert_eq!(std::fs::read(FIXTURE).unwrap(), include_bytes!("data/fixture.bin"));
    // The working directory is the manifest dir, as under cargo.
    assert_eq!(std::env::current_dir().unwrap(), Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(
        std::fs::read("tests/data/fixture.bin").unwrap(),
        include_bytes!("data/fixture.bin")
    );
    assert_eq!(std::fs::read_link("tests/data/fixture-link").unwrap(), Path::new("fixture.bin"));
    assert_eq!(
        std::fs::read("tests/data/fixture-link").unwrap(),
        include_bytes!("data/fixture.bin")
    );
}

/// `..` after a symlink is resolved where the link leads, as the kernel resolves it, at compile
/// time and at run time alike: `tests/data/to-bin` links to `src/bin`, so `to-bin/..` is `src`.
#[vm_test(files = ["tests/data/to-bin/../lib.rs"])]
fn a_fixture_path_with_dots_is_resolved_through_its_symlink() {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs");
    assert_eq!(std::fs::read(lib).unwrap(), include_bytes!("../src/lib.rs"));
}

#[vm_test]
fn runs_in_the_manifest_dir_without_fixtures() {
    assert_eq!(std::env::current_dir().unwrap(), Path::new(env!("CARGO_MANIFEST_DIR")));
}

#[vm_test(files = ["/usr/sbin/ip"])]
fn runs_an_added_host_binary() {
    let output = Command::new("/usr/sbin/ip").args(["link", "show", "lo"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ip link failed: {}\n{stdout}{stderr}", output.status);
    assert!(stdout.contains(": lo: <LOOPBACK,UP"), "{stdout}");
    // Found on PATH too.
    assert!(Command::new("ip").arg("-V").status().unwrap().success());
}

/// The host's `/usr/bin/env` (GNU coreutils) where the guest's userland has busybox's.
#[vm_test(files = ["/usr/bin/env"])]
fn a_fixture_wins_over_the_userland() {
    let meta = std::fs::symlink_metadata("/usr/bin/env").unwrap();
    assert!(meta.file_type().is_file(), "/usr/bin/env is still busybox's link");
    let output = Command::new("/usr/bin/env").arg("--version").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("GNU coreutils"), "{output:?}");
    // The rest of the userland is there all the same.
    assert!(Command::new("/bin/sh").args(["-c", "true"]).status().unwrap().success());
}

#[vm_test]
fn has_a_hostname_and_resolves_localhost() {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(hostname.trim(), "vmtest");
    let addrs: Vec<IpAddr> = ("localhost", 80).to_socket_addrs().unwrap().map(|a| a.ip()).collect();
    assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
    assert!(addrs
        .iter()
        .all(|a| *a == IpAddr::V4(Ipv4Addr::LOCALHOST) || *a == IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let own: Vec<IpAddr> = ("vmtest", 0).to_socket_addrs().unwrap().map(|a| a.ip()).collect();
    assert!(own.iter().all(IpAddr::is_loopback) && !own.is_empty(), "{own:?}");
}

#[vm_test]
fn looks_up_root() {
    // SAFETY: the name is a NUL-terminated string; the result points into libc's static buffer,
    // read before any other lookup.
    let pw = unsafe { libc::getpwnam(c"root".as_ptr()) };
    assert!(!pw.is_null(), "getpwnam(root) found nothing");
    // SAFETY: non-null, returned by getpwnam; its strings are NUL-terminated.
    let (uid, gid, dir) = unsafe { ((*pw).pw_uid, (*pw).pw_gid, CStr::from_ptr((*pw).pw_dir)) };
    assert_eq!((uid, gid), (0, 0));
    assert_eq!(dir.to_str().unwrap(), "/root");
    // SAFETY: as above.
    let gr = unsafe { libc::getgrnam(c"root".as_ptr()) };
    assert!(!gr.is_null(), "getgrnam(root) found nothing");
    // SAFETY: non-null, returned by getgrnam.
    assert_eq!(unsafe { (*gr).gr_gid }, 0);
    // SAFETY: getuid has no preconditions; getpwuid's result is checked for null.
    let me = unsafe { libc::getpwuid(libc::getuid()) };
    assert!(!me.is_null());
}

vmtest::main!();
