//! An out-of-tree module as its author tests it: `kmod/kst_chardev.c`, built by kbuild against
//! the build tree of each kernel the suite boots (`cargo xtask test` runs
//! `make -C "$(cargo xtask kernel path <kernel> --build)" M=kmod/build/<release> modules`),
//! brought into the guest with `files = ["kmod"]` and loaded with `vmtest::load_module`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vmtest::{load_module, unload_module, vm_test, ModuleError};

/// `_IOWR('k', 1, __u64)`: adds the module's `step` to the value.
const KST_IOC_ADD: libc::c_ulong = (3 << 30) | (8 << 16) | ((b'k' as libc::c_ulong) << 8) | 1;

fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_owned()
}

/// The module built for `release`, or a skip naming how it is built.
fn module_for(release: &str) -> PathBuf {
    let path = Path::new("kmod/build").join(release).join("kst_chardev.ko");
    if !path.is_file() {
        vmtest::skip(format!(
            "{} was not built (`cargo xtask test` builds it against the kernel's build tree \
             from `cargo xtask kernel fetch <series> --headers`)",
            path.display()
        ));
    }
    path
}

/// `KST_IOC_ADD` on the module's device: `value + step`.
fn add(value: u64) -> u64 {
    let device = std::fs::File::open("/dev/kst_chardev").unwrap();
    let mut value = value;
    // SAFETY: the ioctl reads and writes one u64 through the pointer, which lives until it returns.
    let ret = unsafe { libc::ioctl(device.as_raw_fd(), KST_IOC_ADD as _, &mut value) };
    assert_eq!(ret, 0, "KST_IOC_ADD: {}", std::io::Error::last_os_error());
    value
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s", files = ["kmod"])]
fn out_of_tree_module_loads_answers_its_ioctl_shows_its_parameter_and_unloads() {
    let module = module_for(&running_release());
    load_module(&module, "step=5").unwrap();
    assert!(Path::new("/sys/module/kst_chardev").is_dir(), "not in /sys/module");
    let step = Path::new("/sys/module/kst_chardev/parameters/step");
    assert_eq!(std::fs::read_to_string(step).unwrap().trim(), "5");
    assert_eq!(add(37), 42);
    // The parameter is writable at run time, and the device sees the change.
    std::fs::write(step, "100").unwrap();
    assert_eq!(add(1), 101);
    // A second load of the same module is the kernel's EEXIST, not a crash.
    match load_module(&module, "") {
        Err(ModuleError::Load { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EEXIST), "{source}")
        }
        other => panic!("a second load did not fail with EEXIST: {other:?}"),
    }
    unload_module("kst_chardev").unwrap();
    assert!(!Path::new("/sys/module/kst_chardev").exists(), "still loaded");
    assert!(!Path::new("/dev/kst_chardev").exists(), "its device stayed");
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s", files = ["kmod"])]
fn a_module_built_for_another_kernel_is_refused_naming_both_kernels() {
    let running = running_release();
    let other = std::fs::read_dir("kmod/build")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|release| {
            *release != running
                && Path::new("kmod/build").join(release).join("kst_chardev.ko").is_file()
        });
    let Some(other) = other else {
        vmtest::skip("the module was built for no other kernel of this arch");
    };
    let error = load_module(module_for(&other), "").unwrap_err();
    assert!(matches!(error, ModuleError::WrongKernel { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains(&other) && message.contains(&running), "{message}");
    assert!(!Path::new("/sys/module/kst_chardev").exists(), "it was loaded anyway");
}

/// The deliberate WARN path runs and its report reaches the kernel log (this test allows the
/// warning; `tests/vm-suite`'s outcomes show that without the allowance it fails the test).
#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s", files = ["kmod"], allow_kernel_warnings)]
fn the_modules_warn_path_reports_to_the_kernel_log() {
    load_module(module_for(&running_release()), "warn_on_ioctl=1").unwrap();
    assert_eq!(add(1), 2);
    let log = crate::modprobe::kernel_log_lines("kst_chardev");
    assert!(log.iter().any(|l| l.contains("kst_chardev: deliberate warning, value 1")), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("WARNING:")), "{log:?}");
    unload_module("kst_chardev").unwrap();
}
