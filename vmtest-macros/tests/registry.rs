//! The `TestDef`s `#[vm_test]` registers, read back through `vmtest::__private::TESTS`, and
//! their attributes, decoded from the records they point at.

// The expansion must not add warnings to the user's crate.
#![deny(warnings, unused_qualifications, unreachable_pub, missing_docs)]

use vmtest::__private::{TestDef, TestMeta, VmMeta, TESTS};
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

fn find(name: &str) -> (&'static TestDef, TestMeta) {
    let mut found = TESTS.iter().filter(|t| t.name == name);
    let test = found.next().unwrap_or_else(|| panic!("`{name}` is not registered"));
    assert!(found.next().is_none(), "`{name}` is registered twice");
    (test, test.decode().unwrap_or_else(|e| panic!("the record of `{name}`: {e}")))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
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
fn every_record_names_its_test() {
    for test in TESTS {
        let meta = test.decode().unwrap();
        assert_eq!((meta.module_path.as_str(), meta.name.as_str()), (test.module_path, test.name));
        assert_eq!(meta.test_name(), test.test_name());
    }
}

#[test]
fn plain_test_has_defaults() {
    let (t, meta) = find("plain");
    assert_eq!(t.module_path, "registry");
    assert_eq!(meta.file, file!());
    let source = include_str!("registry.rs");
    assert_eq!(source.lines().nth(meta.line as usize - 1), Some("fn plain() {}"));
    assert_eq!(
        source.lines().nth(meta.line as usize - 1).unwrap()[meta.column as usize - 1..],
        *"plain() {}"
    );
    assert_eq!(meta.ignore, None);
    assert!(!meta.should_panic);
    assert_eq!(meta.expected_panic, None);
    assert_eq!(meta.vm, VmMeta::default());
    assert_eq!((t.run)(), Ok(()));
}

#[test]
fn every_key_is_recorded() {
    let (t, meta) = find("every_key");
    assert_eq!(meta.ignore, Some(Some("needs a bridge".to_owned())));
    assert!(!meta.should_panic);
    assert_eq!(
        meta.vm,
        VmMeta {
            kernels: strings(&["6.12"]),
            arch: strings(&["x86_64", "aarch64", "riscv64"]),
            memory_mib: Some(1024),
            cpus: Some(2),
            timeout_ms: Some(500),
            cmdline: Some("foo=1".to_owned()),
            modules: strings(&["dummy", "veth"]),
            env: strings(&["RUST_LOG"]),
            files: strings(&[
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui"),
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ]),
            allow_kernel_warnings: true,
        }
    );
    assert!(meta.vm.files.iter().all(|f| std::path::Path::new(f).exists()));
    assert_eq!((t.run)(), Ok(()));
}

#[test]
fn should_panic_and_kernels() {
    let (_, meta) = find("panics");
    assert!(meta.should_panic);
    assert_eq!(meta.expected_panic.as_deref(), Some("boom"));
    assert_eq!(meta.ignore, None);
    assert_eq!(meta.vm.kernels, ["6.1", "6.12"]);
    assert_eq!(meta.vm.memory_mib, Some(64));
    assert_eq!(meta.vm.timeout_ms, Some(120_000));
}

#[test]
fn attributes_on_either_side() {
    let (_, meta) = find("attributes_before_and_after");
    assert_eq!(meta.ignore, Some(None));
    assert!(meta.should_panic);
    assert_eq!(meta.expected_panic, None);
    assert!(!meta.vm.allow_kernel_warnings);
}

#[test]
fn err_is_reported_like_libtest() {
    let (t, _) = find("fails");
    assert_eq!((t.run)(), Err(r#"Error: "disk on fire""#.to_owned()));
}

#[test]
fn tests_in_modules() {
    let (t, meta) = find("in_module");
    assert_eq!(t.module_path, "registry::nested::deeper");
    assert_eq!(t.test_name(), "nested::deeper::in_module");
    assert_eq!(meta.vm.timeout_ms, Some(3_600_000));
}
