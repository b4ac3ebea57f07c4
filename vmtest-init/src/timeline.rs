//! When PID 1 reached each step of its run, for one line on the console before power-off:
//! `vmtest-init: timing since boot: started 2.278 s, mounted 2.306 s, ...`.
//!
//! The times are the guest's `CLOCK_MONOTONIC`, which starts with the kernel, so they read
//! against the kernel log's timestamps (`Run /init as init process`). Under TCG the guest's
//! clock may run slower than the host's; the host's own timeline (the first line of a console
//! log) is in host time. Marks are kept in memory: only the final line costs console output.
//! On a clean run the last mark is `done`: the host stops the VM once the guest said `Done`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The steps reached so far, in order.
static MARKS: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Records that PID 1 reached `step` now.
pub(crate) fn mark(step: &'static str) {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let since_boot = Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    );
    MARKS.lock().unwrap_or_else(|e| e.into_inner()).push((step, since_boot));
}

/// Whether [`say`] printed the line already.
static SAID: AtomicBool = AtomicBool::new(false);

/// Prints the line on the console, once: before `Done` on a clean run (the host stops the VM
/// once it has `Done`), at power-off otherwise.
pub(crate) fn say() {
    if SAID.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Some(line) = describe() {
        crate::console::say(line);
    }
}

/// The line for the console, or `None` before the first mark.
fn describe() -> Option<String> {
    let marks = MARKS.lock().unwrap_or_else(|e| e.into_inner());
    let mut line = String::from("timing since boot:");
    for (i, (step, at)) in marks.iter().enumerate() {
        let separator = if i == 0 { " " } else { ", " };
        let _ = write!(line, "{separator}{step} {:.3} s", at.as_secs_f64());
    }
    (!marks.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_in_order_with_their_times() {
        mark("first");
        mark("second");
        let line = describe().unwrap();
        let first = line.find(", first ").or_else(|| line.find(": first ")).unwrap();
        let second = line.find(", second ").unwrap();
        assert!(first < second, "{line}");
        assert!(line.ends_with(" s"), "{line}");
    }
}
