//! Run Rust tests inside real Linux VMs under QEMU.
//!
//! ```no_run
//! // tests/kernel.rs, with `[[test]] name = "kernel" harness = false` in Cargo.toml
//! use vmtest::vm_test;
//!
//! #[vm_test(memory = "512M", timeout = "30s")]
//! fn runs_as_root() {
//!     assert_eq!(std::fs::read_to_string("/proc/self/status").unwrap().contains("Uid:\t0"), true);
//! }
//!
//! vmtest::main!();
//! ```
//!
//! `cargo test` then boots one VM per distinct VM configuration, runs every selected test inside
//! it (each in its own child process of the guest's PID 1) and prints libtest's output. See the
//! README for the attribute's keys and the environment variables.

#![deny(missing_docs)]

mod accel;
pub mod arch;
mod artifact;
mod child;
mod elf;
mod error;
mod files;
mod fixtures;
mod guest_env;
mod harness;
mod initramfs;
pub mod kernel;
mod meta;
mod plain;
mod process;
mod qemu;
mod registry;
pub mod runner;
mod skip;
mod splat;
mod vm;

pub(crate) use error::Error;

pub use artifact::artifact;
pub use skip::skip;
pub use vmtest_macros::vm_test;

/// Defines `main` for a test binary with `harness = false`.
#[macro_export]
macro_rules! main {
    () => {
        fn main() {
            $crate::__private::main()
        }
    };
}

/// Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz`); not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    use std::path::Path;

    /// Decodes a `vmtest_tests` section.
    pub fn test_metadata(section: &[u8]) {
        let _ = crate::meta::decode(section);
    }

    /// Reads `path` as a test binary: its ELF header, its tests, its loader's view.
    pub fn binary_file(path: &Path) {
        let _ = crate::harness::TestBinary::read(path);
        let _ = crate::elf::read_elf(path);
    }

    /// Reads `path` as a kernel image.
    pub fn kernel_image(path: &Path) {
        let _ = crate::kernel::image_info(path);
    }

    /// Finds the splats in kernel log text and judges them.
    pub fn kernel_log(text: &str) {
        let _ = crate::splat::failure(text, false);
    }
}

#[doc(hidden)]
pub mod __private {
    pub use crate::meta::{encode as meta_record, encoded_len as meta_len, SECTION};
    pub use crate::registry::{ShouldPanic, TestDef, TestReturn, VmAttrs, TESTS};
    pub use linkme;

    /// The entry point behind [`main!`](crate::main): guest PID 1, guest test child, or host
    /// harness.
    pub fn main() -> ! {
        if std::process::id() == 1 {
            vmtest_init::run_pid1();
        }
        if let Ok(name) = std::env::var(vmtest_init::protocol::TEST_ENV) {
            crate::child::run_test(&name);
        }
        crate::harness::run_host()
    }
}
