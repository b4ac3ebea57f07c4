//! The guest side of vmtest.
//!
//! Inside the VM the test binary (or the static `vmtest-init` binary, in runner mode) is PID 1.
//! It reads the [`protocol::Plan`] that the host packed into the initramfs, prepares the system
//! (mounts, loopback, kernel modules), runs each planned program in a child process and reports
//! over a named virtio-serial port with [`protocol`] frames, then powers off.
//!
//! [`protocol`] is also the host's decoder: both sides share one definition of the wire format.

#![deny(missing_docs)]

pub mod protocol;

/// Runs as PID 1: prepares the guest, runs the plan, reports, powers off. Never returns.
pub fn run_pid1() -> ! {
    eprintln!("vmtest-init: not implemented");
    loop {
        std::thread::park();
    }
}
