//! Ten trivial vm_tests, for `cargo nextest run` (one process, so one VM, per test): the
//! bench's `nextest-10`. Not run by `cargo test` (`test = false` in Cargo.toml).

macro_rules! trivial {
    ($($name:ident),*) => { $( #[vmtest::vm_test] fn $name() {} )* };
}

trivial!(t0, t1, t2, t3, t4, t5, t6, t7, t8, t9);

vmtest::main!();
