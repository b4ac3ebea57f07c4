//! The decoder of the `vmtest_tests` ELF section, read from binaries of any origin.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmtest::__fuzz::test_metadata(data);
});
