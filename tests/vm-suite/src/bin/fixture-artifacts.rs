//! vm_tests that hand files to the host; `tests/artifacts.rs` runs this binary and checks what
//! arrived where.

use vmtest::vm_test;

/// Size of the large artifact: several file chunks, and more than the guest keeps queued.
pub const BIG_LEN: usize = 24 << 20;

/// The bytes of the large artifact: a xorshift stream, so both sides can make them.
fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[vm_test]
fn sends_a_large_artifact() {
    let len = std::env::var("ARTIFACT_LEN").ok().and_then(|v| v.parse().ok()).unwrap_or(BIG_LEN);
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
