//! The `TestDef`s `#[vm_test]` registers, read back through `vmtest::__private::TESTS`.

// The expansion must not add warnings to the user's crate.
#![deny(warnings, unused_qualifications, unreachable_pub, missing_docs)]

use vmtest::__private::{ShouldPanic, TestDef, VmAttrs, TESTS};
use vmtest::vm_test;

#[vm_test]
fn plain() {}

#[vm_test(
    kernel = "6.12",
    arch = ["amd64", "arm64", "riscv64gc"],
    memory = "1G",
    cpus = 2,
    timeout = "500ms",
    cmdline = "foo=1",
    modules = ["dummy", "veth"],
    env = ["RUST_LOG"],
    files = ["tests/ui", "./Cargo.toml"],
    allow_kernel_warnings
)]
#[ignore = "needs a bridge"]
fn every_key() -> Result<(), std::io::Error> {
    Ok(())
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "65536K", timeout = "2m")]
#[should_panic(expected = "boom")]
fn panics() {
    panic!("boom");
}

#[ignore]
#[vm_test(allow_kernel_warnings = false)]
#[should_panic]
fn attributes_before_and_after() {
    panic!();
}

#[vm_test(crate = ::vmtest)]
fn fails() -> Result<(), &'static str> {
    Err("disk on fire")
}

mod nested {
    mod deeper {
        use vmtest::vm_test;

        #[vm_test(timeout = "1h")]
        fn r#in_module() {}
    }
}

fn find(name: &str) -> &'static TestDef {
    let mut found = TESTS.iter().filter(|t| t.name == name);
    let test = found.next().unwrap_or_else(|| panic!("`{name}` is not registered"));
    assert!(found.next().is_none(), "`{name}` is registered twice");
    test
}

#[test]
fn registers_every_test_once() {
    let mut names: Vec<String> = TESTS.iter().map(TestDef::test_name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "attributes_before_and_after",
            "every_key",
            "fails",
            "nested::deeper::in_module",
            "panics",
            "plain",
        ]
    );
}

#[test]
fn plain_test_has_defaults() {
    let t = find("plain");
    assert_eq!(t.module_path, "registry");
    assert_eq!(t.file, file!());
    let source = include_str!("registry.rs");
    assert_eq!(source.lines().nth(t.line as usize - 1), Some("fn plain() {}"));
    assert_eq!(t.ignore, None);
    assert_eq!(t.should_panic, ShouldPanic::No);
    assert_eq!(t.vm, VmAttrs::default());
    assert_eq!((t.run)(), Ok(()));
}

#[test]
fn every_key_is_recorded() {
    let t = find("every_key");
    assert_eq!(t.ignore, Some(Some("needs a bridge")));
    assert_eq!(t.should_panic, ShouldPanic::No);
    assert_eq!(
        t.vm,
        VmAttrs {
            kernels: &["6.12"],
            arch: &["x86_64", "aarch64", "riscv64"],
            memory_mib: Some(1024),
            cpus: Some(2),
            timeout_ms: Some(500),
            cmdline: Some("foo=1"),
            modules: &["dummy", "veth"],
            env: &["RUST_LOG"],
            files: &[
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui"),
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ],
            allow_kernel_warnings: true,
        }
    );
    assert!(t.vm.files.iter().all(|f| std::path::Path::new(f).exists()));
    assert_eq!((t.run)(), Ok(()));
}

#[test]
fn should_panic_and_kernels() {
    let t = find("panics");
    assert_eq!(t.should_panic, ShouldPanic::WithMessage("boom"));
    assert_eq!(t.ignore, None);
    assert_eq!(t.vm.kernels, ["6.1", "6.12"]);
    assert_eq!(t.vm.memory_mib, Some(64));
    assert_eq!(t.vm.timeout_ms, Some(120_000));
}

#[test]
fn attributes_on_either_side() {
    let t = find("attributes_before_and_after");
    assert_eq!(t.ignore, Some(None));
    assert_eq!(t.should_panic, ShouldPanic::Yes);
    assert!(!t.vm.allow_kernel_warnings);
}

#[test]
fn err_is_reported_like_libtest() {
    let t = find("fails");
    assert_eq!((t.run)(), Err(r#"Error: "disk on fire""#.to_owned()));
}

#[test]
fn tests_in_modules() {
    let t = find("in_module");
    assert_eq!(t.module_path, "registry::nested::deeper");
    assert_eq!(t.test_name(), "nested::deeper::in_module");
    assert_eq!(t.vm.timeout_ms, Some(3_600_000));
}
