//! A vm_test suite that `tests/checkout.rs` copies, with its crate, to a fresh directory under
//! `/tmp` or `/dev/shm` and runs there with `cargo test`: the guest must show the working
//! directory and the fixture at those host paths.

use std::path::Path;

use vmtest::vm_test;

#[vm_test(files = ["tests/data"])]
fn sees_its_fixture_and_working_directory() {
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(cwd, Path::new(env!("CARGO_MANIFEST_DIR")));
    let expected = "a fixture of the copied checkout\n";
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fixture.txt");
    assert_eq!(std::fs::read_to_string(fixture).unwrap(), expected);
    assert_eq!(std::fs::read_to_string("tests/data/fixture.txt").unwrap(), expected);
    // The directory that holds the checkout is still the usual writable temporary directory.
    let scratch = cwd.join("written-in-the-guest");
    std::fs::write(&scratch, "x").unwrap();
    std::fs::remove_file(&scratch).unwrap();
    println!("checkout seen at {}", cwd.display());
}

/// The whole crate as a fixture: its files come, its target dir (tagged by `CACHEDIR.TAG`)
/// does not.
#[vm_test(files = ["."])]
fn sees_its_crate_without_the_target_dir() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(root.join("Cargo.toml").is_file());
    assert!(root.join("tests/here.rs").is_file());
    assert!(root.join("tests/data/fixture.txt").is_file());
    assert!(!root.join("target").exists(), "the target dir was copied into the guest");
}

vmtest::main!();
