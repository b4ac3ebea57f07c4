//! Twenty trivial vm_tests: listing them must not boot anything.

macro_rules! trivial_tests {
    ($($name:ident)*) => { $( #[vmtest::vm_test] fn $name() {} )* };
}

trivial_tests!(t01 t02 t03 t04 t05 t06 t07 t08 t09 t10 t11 t12 t13 t14 t15 t16 t17 t18 t19 t20);

vmtest::main!();
