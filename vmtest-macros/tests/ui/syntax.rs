use vmtest::vm_test;

#[vm_test(memory = "512M" cpus = 2, kernel = 6.12)]
fn missing_comma() {}

#[vm_test(memory == "512M")]
fn double_equals() {}

fn main() {}
