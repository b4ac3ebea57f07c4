//! vm_tests during which the kernel reports splats without crashing; `tests/outcomes.rs` runs
//! this binary and checks that each splat fails the test that was running, and only that one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use vmtest::vm_test;

/// A WARNING line as the kernel prints it; written to `/dev/kmsg` it lands in the kernel log
/// exactly as a `WARN()` would put it there.
const WARNING: &str = "<4>WARNING: CPU: 0 PID: 1 at vmtest/fixture.c:1 injected_warning+0x0/0x1\n";

/// Makes the kernel's hung-task detector report a real task blocked in the kernel: one thread
/// writes to a tmpfs file from a buffer whose page is missing under userfaultfd, so it sleeps
/// in the page fault holding the file's inode lock; a second thread's write to the same file
/// then blocks on that lock, uninterruptibly, until the fault is resolved.
#[vm_test(timeout = "60s")]
fn hung_task_fails() {
    std::fs::write("/proc/sys/kernel/hung_task_timeout_secs", "1").unwrap();
    let page = page_size();
    let uffd = Userfault::new().unwrap();
    // SAFETY: an anonymous private mapping of one page; unmapped only by the process exit.
    let buffer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(buffer, libc::MAP_FAILED, "mmap failed");
    uffd.register(buffer as u64, page as u64).unwrap();
    let path = "/tmp/hung-task-target";
    File::create(path).unwrap();
    let address = buffer as usize;
    let holder = std::thread::spawn(move || {
        // SAFETY: `address` is the page mapped above, alive for the whole process.
        let data = unsafe { std::slice::from_raw_parts(address as *const u8, page) };
        OpenOptions::new().write(true).open(path).unwrap().write_all(data).unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    let waiter = std::thread::spawn(move || {
        OpenOptions::new().write(true).open(path).unwrap().write_all(b"second writer").unwrap();
    });
    // The detector runs every `hung_task_timeout_secs` and reports a task that stayed blocked
    // for a whole period; wait until it has said so.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !kernel_log_mentions("blocked for more than") {
        assert!(std::time::Instant::now() < deadline, "the hung-task detector did not report");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Releasing the userfaultfd resolves the fault: both writes complete.
    drop(uffd);
    holder.join().unwrap();
    waiter.join().unwrap();
    std::fs::write("/proc/sys/kernel/hung_task_timeout_secs", "0").unwrap();
}

#[vm_test]
fn warning_fails() {
    inject(WARNING);
}

#[vm_test(allow_kernel_warnings)]
fn warning_allowed() {
    inject(WARNING);
}

#[vm_test(allow_kernel_warnings)]
fn oops_fails_even_when_warnings_are_allowed() {
    inject("<1>Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP\n");
}

#[vm_test]
fn quiet_kernel_passes() {
    inject("<6>an ordinary kernel message\n");
}

fn inject(record: &str) {
    OpenOptions::new().write(true).open("/dev/kmsg").unwrap().write_all(record.as_bytes()).unwrap();
}

/// Whether any kernel log record holds `needle`.
fn kernel_log_mentions(needle: &str) -> bool {
    let Ok(mut kmsg) =
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg")
    else {
        return false;
    };
    let mut record = vec![0; 16 << 10];
    loop {
        match std::io::Read::read(&mut kmsg, &mut record) {
            Ok(n) if n > 0 => {
                if String::from_utf8_lossy(&record[..n]).contains(needle) {
                    return true;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            _ => return false,
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
}

/// A userfaultfd (the `libc` crate has no definitions for its ioctls; these are the kernel's
/// `<linux/userfaultfd.h>`, identical on x86_64 and arm64).
struct Userfault(OwnedFd);

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

impl Userfault {
    fn new() -> std::io::Result<Userfault> {
        // SAFETY: userfaultfd takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Userfault(fd))
    }

    fn register(&self, start: u64, len: u64) -> std::io::Result<()> {
        let mut register =
            UffdioRegister { start, len, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`, which `register` is.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_REGISTER as _, &mut register) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

vmtest::main!();
