use vmtest::vm_test;

#[vm_test(memroy = "512M")]
fn typo() {}

#[vm_test(ignore = "later")]
fn ignore_as_key() {}

fn main() {}
