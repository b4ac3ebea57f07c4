//! The splat finder over kernel log text sent by the guest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmtest::__fuzz::kernel_log(&String::from_utf8_lossy(data));
});
