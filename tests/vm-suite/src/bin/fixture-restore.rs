//! What a guest restored from a snapshot must get fresh, printed by a vm_test:
//! `tests/snapshots.rs` boots this binary as PID 1 with a plan that stops at the restore point,
//! saves the VM there, restores it, and reads this test's output.

use vmtest::vm_test;

#[vm_test]
fn probe() {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) }, 0);
    let mut bytes = [0u8; 32];
    // SAFETY: `bytes` is valid for writes of its length.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(got, bytes.len() as isize);
    println!("realtime={}.{:09}", now.tv_sec, now.tv_nsec);
    println!("getrandom={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    // QEMU's vmgenid device as the kernel found it: an ACPI device (QEMUVGID) bound to the
    // vmgenid driver, a platform driver since Linux 6.10 and an ACPI one before.
    let bound = ["/sys/bus/platform/drivers/vmgenid", "/sys/bus/acpi/drivers/vmgenid"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("VGID") || name.contains(':'))
        .collect::<Vec<_>>();
    println!("vmgenid={}", !bound.is_empty());
    println!("vmgenid-devices={bound:?}");
    let acpi = std::path::Path::new("/sys/firmware/acpi/tables").exists();
    println!("acpi={acpi}");
}

vmtest::main!();
