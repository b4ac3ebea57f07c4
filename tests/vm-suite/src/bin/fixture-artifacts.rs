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

vmtest::main!();
