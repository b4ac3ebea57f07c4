use vmtest::vm_test;

#[vm_test(files = ["Cargo.toml", "does/not/exist"])]
fn relative() {}

#[vm_test(files = ["/does/not/exist"])]
fn absolute() {}

fn main() {}
