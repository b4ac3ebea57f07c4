//! The workspace's own VM test suite.
//!
//! - `tests/vm.rs`: vm_tests that must pass inside the guest.
//! - `src/bin/fixture-*.rs`: vm_test binaries whose outcomes `tests/outcomes.rs` checks by
//!   running them as subprocesses (tests that must fail, a hanging test, many tests to list).

/// Size of the large artifact `fixture-artifacts` sends: several file chunks, and more than
/// the guest keeps queued.
pub const BIG_ARTIFACT_LEN: usize = 24 << 20;

/// The bytes of the large artifact: a xorshift stream from `state`, which the fixture (in the
/// guest) and the test (on the host) both make.
pub fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
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
