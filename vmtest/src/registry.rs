//! The tests the `#[vm_test]` attribute registers: how a guest finds a test's function by
//! name. A test's attributes are in its record (see [`crate::meta`]), which the registry points
//! at and [`TestDef::decode`] reads, as a host reads a foreign binary's.
//!
//! Everything here is reached by generated code through `vmtest::__private`; its shape is not
//! part of the public API.

use std::fmt::Debug;

use crate::meta::{DecodeError, TestMeta};

/// Every `#[vm_test]` in the binary, collected at link time.
#[linkme::distributed_slice]
pub static TESTS: [TestDef];

/// One `#[vm_test]` function: its name, how to call it, and its record.
#[derive(Debug)]
pub struct TestDef {
    /// `module_path!()` where the function is defined.
    pub module_path: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// Calls the test and turns its return value into a result.
    pub run: fn() -> Result<(), String>,
    /// The test's record in the ELF section `vmtest_tests` (see `crate::meta`); referencing it
    /// keeps the linker from discarding it.
    pub meta: &'static [u8],
}

impl TestDef {
    /// The name libtest would give the test: the module path without the crate, then the name.
    pub fn test_name(&self) -> String {
        match self.module_path.split_once("::") {
            Some((_crate, rest)) => format!("{rest}::{}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// The test's attributes, decoded from its record as from a binary's section.
    pub fn decode(&self) -> Result<TestMeta, DecodeError> {
        crate::meta::decode_test(self.meta)
    }
}

/// Every registered test's attributes, each decoded from its record.
pub(crate) fn decode_all() -> Result<Vec<TestMeta>, DecodeError> {
    TESTS.iter().map(TestDef::decode).collect()
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
