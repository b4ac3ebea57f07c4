//! The harness's error type.

use std::io;

use crate::kernel::KernelError;

/// Why the harness could not run the tests.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A setting (attribute, environment variable) is invalid.
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
