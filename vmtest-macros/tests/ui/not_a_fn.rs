use vmtest::vm_test;

#[vm_test]
struct NotAFunction;

fn main() {}
