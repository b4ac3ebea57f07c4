use vmtest::vm_test;

#[vm_test(kernel = "6.12", kernels = ["6.1", "6.12"])]
fn both() {}

#[vm_test(kernels = [])]
fn empty() {}

#[vm_test(kernels = ["6.1", "6.1"])]
fn twice() {}

fn main() {}
