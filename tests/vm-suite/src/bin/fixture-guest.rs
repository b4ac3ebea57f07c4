//! vm_tests that `tests/outcomes.rs` checks from the host: the guest's clock against the host's,
//! a fixture that has vanished since compile time (in a patched copy of this binary), the
//! userland a run's settings give the guest, a module loaded on demand from a kernel given by
//! path, and how the kernel was booted.

use std::time::{SystemTime, UNIX_EPOCH};

use vmtest::vm_test;

#[vm_test]
fn prints_guest_clock() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    println!("guest clock: {}.{:09}", now.as_secs(), now.subsec_nanos());
}

#[vm_test(files = ["tests/data/vanishing.txt"])]
fn reads_a_fixture() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vanishing.txt");
    assert!(std::fs::read_to_string(path).unwrap().contains("fixture-guest"));
}

#[vm_test]
fn prints_its_userland() {
    let sh = std::path::Path::new("/bin/sh").exists();
    let usr = std::path::Path::new("/usr/bin").is_dir();
    println!("userland: sh={sh} usr={usr}");
}

/// The boot protocol version in the kernel's boot parameters: the bzImage's own (`0x020f` for
/// 6.12) when QEMU loaded the bzImage, `0x020c` when the kernel started through PVH (which
/// fills the parameters itself).
#[vm_test]
fn prints_its_boot_protocol() {
    let version = std::fs::read_to_string("/sys/kernel/boot_params/version").unwrap();
    println!("boot protocol: {}", version.trim());
}

/// Loads `dummy` by one of its aliases, which needs the kernel's alias index.
#[vm_test]
fn loads_a_module_by_alias() {
    let output = std::process::Command::new("modprobe").arg("rtnl-link-dummy").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(std::path::Path::new("/sys/module/dummy").exists());
}

vmtest::main!();
