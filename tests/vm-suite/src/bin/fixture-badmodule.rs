//! A vm_test asking for a module no kernel has: the harness must refuse to start.

#[vmtest::vm_test(kernel = "6.12", modules = ["dummmy"])]
fn wants_a_misspelled_module() {}

vmtest::main!();
