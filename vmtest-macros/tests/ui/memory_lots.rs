use vmtest::vm_test;

#[vm_test(memory = "lots")]
fn lots() {}

#[vm_test(memory = "32M")]
fn too_small() {}

#[vm_test(memory = 512)]
fn not_a_string() {}

fn main() {}
