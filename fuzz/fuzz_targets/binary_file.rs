//! The readers of files named by the user: a test binary (ELF header, sections, dynamic loader
//! view), a busybox (applet tables) and a kernel image (bzImage, arm64 Image, gzip, EFI zboot
//! headers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vmtest-fuzz-{}", std::process::id()));
    std::fs::write(&path, data).expect("failed to write the fuzz input");
    vmtest::__fuzz::binary_file(&path);
    vmtest::__fuzz::kernel_image(&path);
    let _ = std::fs::remove_file(&path);
});
