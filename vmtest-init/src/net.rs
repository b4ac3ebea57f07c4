//! Loopback networking.

use std::io;
use std::os::fd::AsRawFd;

use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};

/// Sets `IFF_UP` on `lo`, as `ip link set lo up` does.
pub(crate) fn bring_up_loopback() -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("failed to bring up lo: {what}: {e}");
    let socket = socket_with(AddressFamily::INET, SocketType::DGRAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| fail("socket", e.into()))?;

    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the socket is open, `req` is a valid `ifreq` naming `lo`, and SIOCGIFFLAGS only
    // writes `ifr_flags` inside it.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } == -1 {
        return Err(fail("SIOCGIFFLAGS", io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so `ifr_flags` is the initialised union member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } == -1 {
        return Err(fail("SIOCSIFFLAGS", io::Error::last_os_error()));
    }
    Ok(())
}
