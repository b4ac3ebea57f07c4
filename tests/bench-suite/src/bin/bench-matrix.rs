//! Twenty trivial vm_tests on two kernels: two VM groups, run in parallel or one after another.

macro_rules! trivial {
    ($($name:ident),*) => { $( #[vmtest::vm_test(kernels = ["6.1", "6.12"])] fn $name() {} )* };
}

trivial!(
    m00, m01, m02, m03, m04, m05, m06, m07, m08, m09, m10, m11, m12, m13, m14, m15, m16, m17, m18,
    m19
);

vmtest::main!();
