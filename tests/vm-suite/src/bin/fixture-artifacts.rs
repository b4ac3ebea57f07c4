//! vm_tests that hand files to the host; `tests/artifacts.rs` runs this binary and checks what
//! arrived where.

use vm_suite::{pseudo_random, BIG_ARTIFACT_LEN};
use vmtest::vm_test;

#[vm_test]
fn sends_a_large_artifact() {
    let len =
        std::env::var("ARTIFACT_LEN").ok().and_then(|v| v.parse().ok()).unwrap_or(BIG_ARTIFACT_LEN);
    let path = vmtest::artifact("big.bin", pseudo_random(len, 0x5eed)).unwrap();
    assert!(path.starts_with(std::env::var("VMTEST_ARTIFACT_DIR").unwrap()));
}

/// 64 MiB handed to the host as the VM's last act (`tests/artifacts.rs` runs it alone).
#[vm_test(memory = "512M")]
fn sends_64_mib_last() {
    vmtest::artifact("last.bin", vec![0xa5u8; 64 << 20]).unwrap();
}

#[vm_test]
fn sends_nested_artifacts() {
    vmtest::artifact("logs/first.txt", "first\n").unwrap();
    vmtest::artifact("logs/deeper/second.txt", "second\n").unwrap();
}

#[vm_test]
fn refuses_names_that_escape() {
    for name in ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt", "", "a//b"] {
        let err = vmtest::artifact(name, "x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{name:?}: {err}");
    }
}

#[vm_test]
fn fails_after_saving_an_artifact() {
    vmtest::artifact("state.txt", "what the test saw\n").unwrap();
    panic!("deliberate failure");
}

#[vm_test]
fn refuses_reserved_and_unprintable_names() {
    for name in ["dmesg.txt", "red\x1b[31m", "tab\there", "\u{9b}2J"] {
        let err = vmtest::artifact(name, "x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{name:?}: {err}");
    }
    vmtest::artifact("logs/dmesg.txt", "only the top-level name is reserved\n").unwrap();
}

/// Writes straight into the artifact directory what `vmtest::artifact` refuses, and names that
/// collide with vmtest's own, then fails (so the kernel log comes too).
#[vm_test]
fn fails_with_odd_artifact_names() {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::path::PathBuf::from(std::env::var_os("VMTEST_ARTIFACT_DIR").unwrap());
    let write = |name: &[u8], text: &str| {
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(name)), text).unwrap()
    };
    write(b"dmesg.txt", "the test's own dmesg.txt\n");
    write(b"name-\xff", "ff\n");
    write(b"name-\xfe", "fe\n");
    write(b"esc-\x1b]0;title\x07", "escape\n");
    write(b"x", "x\n");
    write(b"x.vmtest-partial", "named like a temporary file\n");
    panic!("deliberate failure with odd artifact names");
}

vmtest::main!();
