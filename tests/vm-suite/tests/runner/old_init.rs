//! An init that greets the host as a vmtest-init of protocol version 2 (built before the plan
//! was versioned) does: `Hello { version: 2, kernel_release }` on the control port. Built
//! static for musl by `tests/runner.rs` and booted as `VMTEST_INIT`; needs virtio_console built
//! into the kernel (Debian's 6.12 has it).

use std::ffi::{c_char, c_int, c_ulong, c_void, CString};
use std::io::Write;
use std::time::Duration;

extern "C" {
    fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
}

const RB_POWER_OFF: c_int = 0x4321_fedc;

fn mount_fs(fstype: &str, target: &str) {
    let _ = std::fs::create_dir_all(target);
    let fstype = CString::new(fstype).unwrap();
    let target = CString::new(target).unwrap();
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; data is null.
    unsafe { mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
}

fn control_port() -> Option<String> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == "vmtest.control" {
            return Some(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    None
}

fn main() {
    mount_fs("sysfs", "/sys");
    mount_fs("devtmpfs", "/dev");
    for _ in 0..500 {
        if let Some(port) = control_port() {
            if let Ok(mut port) = std::fs::OpenOptions::new().write(true).open(port) {
                // Hello is variant 0: version 2, then the release as a length-prefixed string.
                let payload = [0u8, 2, 3, b'o', b'l', b'd'];
                let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
                frame.extend_from_slice(&payload);
                let _ = port.write_all(&frame);
                std::thread::sleep(Duration::from_secs(2));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: powering off is what this init is for; nothing needs flushing.
    unsafe { reboot(RB_POWER_OFF) };
}
