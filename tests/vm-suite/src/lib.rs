//! The workspace's own VM test suite.
//!
//! - `tests/vm.rs`: vm_tests that must pass inside the guest.
//! - `src/bin/fixture-*.rs`: vm_test binaries whose outcomes `tests/outcomes.rs` checks by
//!   running them as subprocesses (tests that must fail, a hanging test, many tests to list).
