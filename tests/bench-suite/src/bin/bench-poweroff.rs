//! The floor's init: powers the VM off at once. Built static (musl) and booted by a bare QEMU
//! command, it is what the harness's overhead is measured against.

fn main() {
    // SAFETY: reboot(2) with RB_POWER_OFF has no memory-safety preconditions; as PID 1 of a
    // VM it ends the VM, which is the point.
    unsafe {
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Not PID 1 (run by hand): nothing to power off.
    std::process::exit(1);
}
