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

/// Makes, under `dir`, a kernel store holding the real store's kernels for `arch` and nothing
/// else (no userland, no gdbserver), and a `bin` directory holding only that arch's QEMU.
/// Returns both: with `VMTEST_KERNELS` and `PATH` set to them, a run boots as usual but can
/// fetch nothing (there is no apt).
pub fn store_without_extras(
    dir: &std::path::Path,
    arch: vmtest::arch::Arch,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let real = vmtest::kernel::Store::open().unwrap();
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::os::unix::fs::symlink(real.root().join(arch.name()), store.join(arch.name())).unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let qemu = format!("qemu-system-{arch}");
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(&qemu))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{qemu} is not on PATH"));
    std::os::unix::fs::symlink(found, bin.join(&qemu)).unwrap();
    (store, bin)
}
