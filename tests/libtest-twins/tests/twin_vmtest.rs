//! The cases under vmtest: each in a VM, with the same names and source positions.

use vmtest::vm_test as twin;

mod cases;

vmtest::main!();
