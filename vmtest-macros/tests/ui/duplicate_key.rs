use vmtest::vm_test;

#[vm_test(memory = "512M", cpus = 2, memory = "1G")]
fn twice() {}

fn main() {}
