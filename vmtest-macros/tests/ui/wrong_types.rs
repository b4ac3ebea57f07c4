use vmtest::vm_test;

#[vm_test(
    kernel = 6.12,
    cpus = "2",
    cmdline = ["quiet"],
    modules = "dummy",
    env = ["RUST-LOG"],
    allow_kernel_warnings = "yes",
    crate = "vmtest",
    timeout,
)]
fn every_error_at_once() {}

fn main() {}
