//! vm_tests that `tests/warm.rs` runs again and again, cold and from snapshots, and compares:
//! what a restored guest shows a test must look like a freshly booted one's (clock, random
//! bytes, boot id, nothing left by an earlier run), and the run's own files, modules and
//! environment must arrive after the restore.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use vmtest::vm_test;

/// Left by every run; a later run must never find it.
const MARKER: &str = "/tmp/vmtest-warm-marker";

#[vm_test(files = ["tests/data/fixture.bin"], env = ["VMTEST_WARM_PROBE"])]
fn prints_its_state() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    println!("warm: clock {}.{:09}", now.as_secs(), now.subsec_nanos());
    let mut bytes = [0u8; 16];
    // SAFETY: `bytes` is valid for writes of its length.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(got, bytes.len() as isize);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!("warm: random {hex}");
    println!("warm: hashmap {:016x}", RandomState::new().hash_one("vmtest"));
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    println!("warm: boot_id {}", boot_id.trim());
    println!("warm: marker found {}", std::path::Path::new(MARKER).exists());
    std::fs::write(MARKER, b"left by an earlier run").unwrap();
    let probe = std::env::var("VMTEST_WARM_PROBE").unwrap_or_default();
    println!("warm: env {probe}");
    let modes: Vec<String> = ["/tmp", "/run", "/dev/shm"]
        .iter()
        .map(|dir| {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
            format!("{dir}={mode:o}")
        })
        .collect();
    println!("warm: modes {}", modes.join(","));
    println!("warm: cwd {}", std::env::current_dir().unwrap().display());
    // Relative: the working directory is the crate's, wherever the run says it is.
    println!("warm: fixture bytes {}", std::fs::read("tests/data/fixture.bin").unwrap().len());
}

/// In a VM of its own: its module comes with the run, after the restore.
#[vm_test(modules = ["dummy"])]
fn has_its_module() {
    assert!(std::path::Path::new("/sys/module/dummy").exists(), "dummy is not loaded");
    println!("warm: module dummy loaded");
}

vmtest::main!();
