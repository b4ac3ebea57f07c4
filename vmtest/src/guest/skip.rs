//! Skipping a test at run time, from inside the VM.

/// Ends the current `#[vm_test]` as skipped: libtest reports it as `ignored`, with `reason`.
///
/// Call it from the test body when the kernel under test lacks something the test needs (a
/// config option, a syscall, a filesystem), so that the test neither passes nor fails on that
/// kernel. The reason is shown by `cargo test` next to `ignored`:
///
/// ```no_run
/// #[vmtest::vm_test]
/// fn reads_btf() {
///     if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
///         vmtest::skip("the kernel has no CONFIG_DEBUG_INFO_BTF");
///     }
///     // ...
/// }
/// ```
///
/// The test process exits at once (status 0) after leaving the reason where the guest's PID 1
/// looks for it, so nothing after the call runs, not even destructors. Call it from the test's
/// own process in the VM's initial mount namespace (not from a forked child, nor after
/// `unshare(CLONE_NEWNS)`), before any output that should count as a failure.
///
/// # Panics
///
/// Outside a `#[vm_test]` running in a VM (where there is nobody to report the skip to), and if
/// the reason cannot be written.
pub fn skip(reason: impl std::fmt::Display) -> ! {
    let Some(file) = std::env::var_os(vmtest_init::protocol::SKIP_ENV) else {
        panic!("vmtest::skip called outside a #[vm_test] running in a VM: {reason}");
    };
    let reason = reason.to_string();
    if let Err(e) = std::fs::write(&file, reason.as_bytes()) {
        panic!(
            "failed to record the skip reason in {}: {e} (reason: {reason})",
            file.to_string_lossy()
        );
    }
    std::process::exit(0)
}
