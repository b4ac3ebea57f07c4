//! A vm_test that takes the kernel suite's out-of-tree module through its deliberate WARN path
//! without allowing kernel warnings: `tests/outcomes.rs` checks that the harness fails it with
//! the module's report. The module is built by `cargo xtask test` (see `xtask/src/kmod.rs`).

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

vmtest::main!();
