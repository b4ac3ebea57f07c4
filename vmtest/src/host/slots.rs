//! How many VMs run at once: one per test thread, and together within the memory the host has
//! available ([`VmSlots`]).

use std::sync::{Condvar, Mutex};

/// Caps the VMs running at once: at most one per thread (`--test-threads`, else one per
/// core), and together within the memory the host has available, so that parallel VMs do not
/// push the host into swap. A VM larger than the whole budget still runs, alone.
pub(crate) struct VmSlots {
    free: Mutex<SlotsFree>,
    released: Condvar,
    /// The memory budget, MiB.
    budget_mib: u64,
}

struct SlotsFree {
    vms: usize,
    mib: u64,
}

/// A running VM's slot and memory, given back when dropped.
pub(crate) struct Permit<'a> {
    slots: &'a VmSlots,
    mib: u64,
}

impl VmSlots {
    fn new(vms: usize, budget_mib: u64) -> Self {
        VmSlots {
            free: Mutex::new(SlotsFree { vms: vms.max(1), mib: budget_mib }),
            released: Condvar::new(),
            budget_mib,
        }
    }

    /// Slots for this host: `threads` VMs, within three quarters of its available memory.
    pub(crate) fn for_host(threads: usize) -> Self {
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_available_mib(&text))
            .unwrap_or(u64::MAX / 4);
        VmSlots::new(threads, available / 4 * 3)
    }

    /// Waits for a slot and `mib` of the budget (all of it, if `mib` exceeds the budget).
    pub(crate) fn acquire(&self, mib: u64) -> Permit<'_> {
        let mib = mib.min(self.budget_mib);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while free.vms == 0 || free.mib < mib {
            free = self.released.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        free.vms -= 1;
        free.mib -= mib;
        Permit { slots: self, mib }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self.slots.free.lock().unwrap_or_else(|e| e.into_inner());
        free.vms += 1;
        free.mib += self.mib;
        self.slots.released.notify_all();
    }
}

/// `MemAvailable` of `/proc/meminfo` text, in MiB.
fn mem_available_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn reads_mem_available() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(mem_available_mib(meminfo), Some(2048));
        assert_eq!(mem_available_mib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn vms_wait_for_memory_as_well_as_for_a_slot() {
        let slots = Arc::new(VmSlots::new(4, 1000));
        let first = slots.acquire(600);
        let (started, rx) = mpsc::channel();
        let waiter = {
            let slots = Arc::clone(&slots);
            std::thread::spawn(move || {
                let _second = slots.acquire(600);
                started.send(()).unwrap();
            })
        };
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "600 + 600 > 1000 MiB");
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).expect("the second VM starts once memory is free");
        waiter.join().unwrap();
    }

    #[test]
    fn a_vm_larger_than_the_budget_runs_alone() {
        let slots = VmSlots::new(2, 1000);
        let big = slots.acquire(5000);
        assert_eq!(slots.free.lock().unwrap().mib, 0);
        drop(big);
        let a = slots.acquire(300);
        let _b = slots.acquire(300);
        assert_eq!(slots.free.lock().unwrap().vms, 0);
        drop(a);
    }
}
