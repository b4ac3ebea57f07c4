use vmtest::vm_test;

#[vm_test(arch = "mips")]
fn single() {}

#[vm_test(arch = ["x86_64", "sparc", "amd64"])]
fn list() {}

fn main() {}
