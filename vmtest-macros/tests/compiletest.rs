//! Compile-fail tests: each `tests/ui/*.rs` must fail with the `.stderr` next to it. The
//! expected output follows the toolchain in use; regenerate with `TRYBUILD=overwrite`.

#[test]
#[cfg_attr(miri, ignore)]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
