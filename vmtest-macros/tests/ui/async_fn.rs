use vmtest::vm_test;

#[vm_test]
async fn waits() {}

fn main() {}
