use vmtest::vm_test;

#[vm_test(
    kernel = "6.12",
    arch = ["x86_64", "arm64"],
    memory = "512M",
    cpus = 2,
    timeout = "30s",
    cmdline = "foo=1",
    modules = ["dummy", "veth"],
    env = ["RUST_LOG"],
    // Relative to the crate trybuild generates, which has a Cargo.toml.
    files = ["Cargo.toml"],
    allow_kernel_warnings,
)]
#[ignore = "reason"]
#[should_panic(expected = "boom")]
fn every_key() {
    panic!("boom");
}

#[vm_test(kernels = ["6.1", "6.12"], arch = "riscv64gc", allow_kernel_warnings = false)]
#[ignore]
#[should_panic = "boom"]
fn other_forms() {
    panic!("boom");
}

#[vm_test]
#[should_panic]
fn bare_should_panic() {
    panic!();
}

#[vm_test(memory = "1GiB", timeout = "500ms")]
fn returns_result() -> Result<(), std::io::Error> {
    Ok(())
}

mod reexport {
    pub use vmtest as renamed;
}

#[vm_test(crate = reexport::renamed, memory = "2G")]
fn through_a_reexport() {}

mod nested {
    use vmtest::vm_test;

    #[vm_test(timeout = "2m")]
    pub(crate) fn in_a_module() {}
}

// Calling a test from ordinary code still works.
#[allow(dead_code)]
fn caller() {
    nested::in_a_module();
}

// trybuild runs what it builds, and the harness would boot VMs: compile `main!` here, and
// run a `main` that only checks what was registered.
mod harness {
    vmtest::main!();
}

fn main() {
    let mut names: Vec<_> = vmtest::__private::TESTS.iter().map(|t| t.test_name()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bare_should_panic",
            "every_key",
            "nested::in_a_module",
            "other_forms",
            "returns_result",
            "through_a_reexport",
        ]
    );
}
