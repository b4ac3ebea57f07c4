//! The tests the `#[vm_test]` attribute registers, as the macro emits them.
//!
//! Everything here is reached by generated code through `vmtest::__private`; its shape is not
//! part of the public API.

use std::fmt::Debug;

/// Every `#[vm_test]` in the binary, collected at link time.
#[linkme::distributed_slice]
pub static TESTS: [TestDef];

/// One `#[vm_test]` function and its attribute values, validated at compile time.
#[derive(Debug)]
pub struct TestDef {
    /// `module_path!()` where the function is defined.
    pub module_path: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// Source file and line, for messages.
    pub file: &'static str,
    /// Line of the function's name in `file`.
    pub line: u32,
    /// Column (1-based) of the function's name in `file`.
    pub column: u32,
    /// Calls the test and turns its return value into a result.
    pub run: fn() -> Result<(), String>,
    /// `#[ignore]`: `Some(reason)` (the reason may be absent).
    pub ignore: Option<Option<&'static str>>,
    /// `#[should_panic]`.
    pub should_panic: ShouldPanic,
    /// The test's record in the ELF section `vmtest_tests` (see `crate::meta`); referencing it
    /// keeps the linker from discarding it.
    pub meta: &'static [u8],
    /// The VM the test needs.
    pub vm: VmAttrs,
}

/// The `#[should_panic]` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShouldPanic {
    /// No attribute.
    No,
    /// `#[should_panic]`.
    Yes,
    /// `#[should_panic(expected = "...")]`.
    WithMessage(&'static str),
}

/// The `#[vm_test(...)]` arguments, already checked by the macro.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmAttrs {
    /// `kernel = "..."` or `kernels = [...]`: names or paths; empty for the default kernel.
    pub kernels: &'static [&'static str],
    /// `arch = "..."` or `arch = [...]`: canonical names (`x86_64`, `aarch64`, `riscv64`);
    /// empty for every architecture.
    pub arch: &'static [&'static str],
    /// `memory = "512M"`, in MiB.
    pub memory_mib: Option<u64>,
    /// `cpus = 2`.
    pub cpus: Option<u32>,
    /// `timeout = "30s"`, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `cmdline = "..."`: extra kernel arguments.
    pub cmdline: Option<&'static str>,
    /// `modules = [...]`: kernel modules to load before the test.
    pub modules: &'static [&'static str],
    /// `env = [...]`: host environment variables to forward.
    pub env: &'static [&'static str],
    /// `files = [...]`: host files to put into the guest at the same absolute path
    /// (already resolved against the crate's manifest dir).
    pub files: &'static [&'static str],
    /// `allow_kernel_warnings`: a kernel WARN does not fail the test.
    pub allow_kernel_warnings: bool,
}

impl TestDef {
    /// The name libtest would give the test: the module path without the crate, then the name.
    pub fn test_name(&self) -> String {
        match self.module_path.split_once("::") {
            Some((_crate, rest)) => format!("{rest}::{}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// What a test function may return, as with libtest: `()` or `Result<(), E: Debug>`.
pub trait TestReturn {
    /// `Err` carries what libtest would print (`Error: ...`).
    fn into_test_result(self) -> Result<(), String>;
}

impl TestReturn for () {
    fn into_test_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Debug> TestReturn for Result<(), E> {
    fn into_test_result(self) -> Result<(), String> {
        self.map_err(|e| format!("Error: {e:?}"))
    }
}
