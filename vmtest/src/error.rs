//! The harness's error type.

use std::io;

use crate::kernel::KernelError;

/// Why the harness could not run the tests.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A `VMTEST_*` environment variable's value is invalid, or cannot be honoured here; the
    /// message names the variable.
    #[error("{0}")]
    Env(String),
    /// A fixture (`files = [...]`) or the working directory cannot be provided in the guest;
    /// the message names the path.
    #[error("{0}")]
    Fixture(String),
    /// The static `vmtest-init` for plain binaries cannot be found or built.
    #[cfg(feature = "cli")]
    #[error("{0}")]
    InitBuild(String),
    /// The harness is ending (interrupted, or a panic): no new VM may start.
    #[error("the harness is stopping")]
    Stopping,
    /// The test binary cannot be read or planned for (its ELF, its tests, the plan sent to the
    /// guest), or a plain binary cannot be booted.
    #[error("{0}")]
    Config(String),
    /// The QEMU system emulator for the guest's architecture is not installed.
    #[error(
        "failed to find `{binary}` on PATH: install it with \
         `apt-get install -y --no-install-recommends {package}`"
    )]
    QemuMissing {
        /// The binary that was looked for.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A kernel could not be found or used.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The Rust target a static `vmtest-init` is built for could not be installed.
    #[cfg(feature = "cli")]
    #[error(transparent)]
    Target(#[from] crate::cli::target::TargetError),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] crate::image::initramfs::InitramfsError),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// "failed to ..." with the path or command.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl Error {
    /// An I/O error with a "failed to ..." context.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}
