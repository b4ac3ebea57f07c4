use vmtest::vm_test;

#[vm_test]
fn needs_input(name: &str, count: u32) {
    let _ = (name, count);
}

fn main() {}
