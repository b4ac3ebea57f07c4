use vmtest::vm_test;

#[vm_test(cpus = 0)]
fn none() {}

#[vm_test(cpus = 65)]
fn too_many() {}

fn main() {}
