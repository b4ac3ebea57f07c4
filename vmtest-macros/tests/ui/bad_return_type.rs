use vmtest::vm_test;

#[vm_test]
fn returns_number() -> u32 {
    1
}

fn main() {}
