use vmtest::vm_test;

#[vm_test]
fn generic<T: Default>() {
    let _ = T::default();
}

#[vm_test]
fn bounded() where u8: Copy {}

fn main() {}
