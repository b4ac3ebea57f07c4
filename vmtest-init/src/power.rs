//! Powering the VM off.

use std::time::Duration;

use rustix::system::RebootCommand;

use crate::console;

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
