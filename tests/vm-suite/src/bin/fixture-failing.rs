//! vm_tests with known outcomes, most of them failures; `tests/outcomes.rs` runs this binary
//! and checks what it prints.

use std::time::Duration;

use vmtest::vm_test;

#[vm_test]
fn passes() {}

#[vm_test]
fn panics() {
    panic!("deliberate panic");
}

#[vm_test]
fn assertion_fails() {
    println!("captured stdout line");
    eprintln!("captured stderr line");
    assert_eq!(1 + 1, 3, "arithmetic");
}

#[vm_test]
fn exits_with_3() {
    std::process::exit(3);
}

#[vm_test(timeout = "2s")]
fn hangs() {
    println!("hang started");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[vm_test]
fn returns_err() -> Result<(), String> {
    Err("deliberate error".to_owned())
}

#[vm_test]
#[should_panic]
fn does_not_panic_as_required() {}

#[vm_test]
fn prints_kernel_release() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!("kernel release: {}", release.trim());
}

vmtest::main!();
