//! vm_tests over the kernel suite's out-of-tree module (built by `cargo xtask test`, see
//! `xtask/src/kmod.rs`) that `tests/outcomes.rs` checks from the host: its deliberate WARN path
//! without allowing kernel warnings fails the test with the module's report, and the module
//! file named in `modules = [...]` is loaded before the test starts.

use std::os::fd::AsRawFd;
use std::path::Path;

use vmtest::vm_test;

#[vm_test(files = ["../kernel-suite/kmod"])]
fn module_warning_fails() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let module =
        Path::new("../kernel-suite/kmod/build").join(release.trim()).join("kst_chardev.ko");
    vmtest::load_module(&module, "warn_on_ioctl=1").unwrap();
    let device = std::fs::File::open("/dev/kst_chardev").unwrap();
    let mut value = 1u64;
    let add = (3 << 30) | (8 << 16) | ((b'k' as libc::c_ulong) << 8) | 1;
    // SAFETY: the ioctl reads and writes one u64 through the pointer, which outlives the call.
    assert_eq!(unsafe { libc::ioctl(device.as_raw_fd(), add as _, &mut value) }, 0);
    assert_eq!(value, 2);
}

#[vm_test(modules = ["../kernel-suite/kmod/build/{release}/kst_chardev.ko"])]
fn module_file_is_loaded_before_the_test() {
    assert!(Path::new("/sys/module/kst_chardev").is_dir(), "kst_chardev is not loaded");
    assert!(Path::new("/dev/kst_chardev").exists(), "its device is missing");
}

vmtest::main!();
