//! Powering the VM off.

use std::time::Duration;

use rustix::system::RebootCommand;

use crate::console;

/// Gives the host up to `patience` to stop the VM, which it does once it has read PID 1's last
/// message; returns if it has not by then.
///
/// Written to the port is not yet received: QEMU takes the guest's buffers from the port's
/// queue only as fast as the host's socket takes them, and keeps the rest queued. A guest that
/// powered off at once would end QEMU with the end of its last messages still queued (a test
/// that had just sent a large artifact made the host read half a frame), so PID 1 waits for
/// the host instead.
pub(crate) fn wait_for_host_to_stop(patience: Duration) {
    crate::timeline::mark("waiting for the host");
    std::thread::sleep(patience);
}

/// Flushes file systems and powers the machine off. Never returns: if `reboot` fails, it says so
/// once and keeps trying (QEMU `-no-reboot` and the kernel's `panic=-1` are the backstop should
/// PID 1 ever exit).
pub(crate) fn power_off() -> ! {
    crate::timeline::mark("power-off");
    crate::timeline::say();
    rustix::fs::sync();
    let mut reported = false;
    loop {
        if let Err(e) = rustix::system::reboot(RebootCommand::PowerOff) {
            if !reported {
                console::say(format_args!("failed to power off: {}", std::io::Error::from(e)));
                reported = true;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
