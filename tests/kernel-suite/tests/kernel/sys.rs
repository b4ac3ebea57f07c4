//! Small wrappers over raw system calls shared by the tests.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Turns a `-1`-on-error return into an `io::Result`, naming what failed (the error keeps the
/// errno's [`io::ErrorKind`]).
pub fn check(ret: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("failed to {what}: {e}")))
    } else {
        Ok(ret)
    }
}

/// Wraps a file descriptor returned by a successful system call.
pub fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Forks; the child runs `child` and exits with its return value, without returning here.
/// Returns the child's pid to the parent.
///
/// The test runs on a thread of a multi-threaded process, so `child` must keep to system calls
/// (no allocation, no locks).
pub fn fork_with(child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    // SAFETY: fork(2) has no memory-safety preconditions; the child only runs `child`, which
    // by contract uses async-signal-safe calls only, then `_exit`s.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = child();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

/// Waits for `pid` and returns its raw wait status.
pub fn wait(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    check(unsafe { libc::waitpid(pid, &mut status, 0) } as libc::c_long, "wait for the child")?;
    Ok(status)
}

/// A pipe for one-byte handshakes between a parent and a forked child.
pub struct Pipe {
    pub read: i32,
    pub write: i32,
}

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        check(
            // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long,
            "create a pipe",
        )?;
        Ok(Pipe { read: fds[0], write: fds[1] })
    }

    /// Writes one byte; async-signal-safe.
    pub fn send(&self, byte: u8) -> bool {
        // SAFETY: writes one byte from a valid local to a descriptor we own.
        unsafe { libc::write(self.write, (&byte as *const u8).cast(), 1) == 1 }
    }

    /// Reads one byte (`None` at end of file); async-signal-safe.
    pub fn recv(&self) -> Option<u8> {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a valid local from a descriptor we own.
        (unsafe { libc::read(self.read, (&mut byte as *mut u8).cast(), 1) } == 1).then_some(byte)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both descriptors belong to this Pipe and are closed once.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}
