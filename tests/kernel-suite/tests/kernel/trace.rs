//! Tracing: a tracepoint counted through perf_event_open(2).

use std::io::Read;
use std::os::fd::AsRawFd;

use vmtest::vm_test;

use crate::sys::{check, owned};

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::Ioctl = 0x2401;

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn tracepoint_counts_this_threads_syscalls() {
    let event = "/sys/kernel/tracing/events/syscalls/sys_enter_getppid/id";
    let id: u64 = match std::fs::read_to_string(event) {
        Ok(id) => id.trim().parse().unwrap(),
        Err(e) => vmtest::skip(format!(
            "no syscall tracepoints ({event}: {e}; CONFIG_FTRACE_SYSCALLS off?)"
        )),
    };
    // struct perf_event_attr (PERF_ATTR_SIZE_VER7): type, size, config; `disabled` set.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
    attr[40..48].copy_from_slice(&1u64.to_ne_bytes()); // disabled

    // SAFETY: perf_event_open(2) on this thread (pid 0), any CPU, with a valid attr buffer.
    let ret = unsafe {
        libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, PERF_FLAG_FD_CLOEXEC)
    };
    let counter = owned(check(ret, "open a tracepoint counter").unwrap());

    // SAFETY: ioctls on a perf event descriptor we own, without arguments.
    check(
        unsafe { libc::ioctl(counter.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } as libc::c_long,
        "enable",
    )
    .unwrap();
    for _ in 0..25 {
        // SAFETY: getppid(2) has no preconditions.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    // SAFETY: as above.
    check(
        unsafe { libc::ioctl(counter.as_raw_fd(), PERF_EVENT_IOC_DISABLE, 0) } as libc::c_long,
        "disable",
    )
    .unwrap();
    let mut count = [0u8; 8];
    std::fs::File::from(counter).read_exact(&mut count).unwrap();
    assert_eq!(u64::from_ne_bytes(count), 25, "the tracepoint fired a different number of times");
}
