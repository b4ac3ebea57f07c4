//! Diagnostics on the kernel console.
//!
//! fd 1 and 2 of PID 1 are `/dev/console`. Only the harness's own short diagnostics go there,
//! each line prefixed with `vmtest-init:`; results never do (they travel on the control port).

use std::fmt::Display;
use std::io::Write;

/// Writes one line to the console; a failed write is ignored (there is nowhere else to report it).
pub(crate) fn say(message: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "vmtest-init: {message}");
}

/// Makes sure fds 0, 1 and 2 are open, so that no later `open` lands on them by accident.
///
/// The kernel opens `/dev/console` for init when it exists; if it does not, these stay closed.
pub(crate) fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor flags of `fd` and touches no memory.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if open {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            let flags = if fd == 0 { libc::O_RDONLY } else { libc::O_WRONLY };
            // SAFETY: `path` is a valid NUL-terminated string; the new descriptor is owned by
            // this process and deliberately kept open for its whole life.
            let new = unsafe { libc::open(path.as_ptr(), flags | libc::O_NOCTTY) };
            if new == -1 {
                continue;
            }
            if new != fd {
                // SAFETY: both descriptors are valid; `dup2` makes `fd` refer to the same file
                // and `new`, no longer needed, is closed.
                unsafe {
                    libc::dup2(new, fd);
                    libc::close(new);
                }
            }
            break;
        }
    }
}
