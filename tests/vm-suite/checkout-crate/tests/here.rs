//! A vm_test suite that `tests/checkout.rs` copies, with its crate, to a fresh directory under
//! `/tmp` or `/dev/shm` and runs there with `cargo test` (or, built in one copy, runs from a
//! nextest archive in another): the guest must show the working directory and the fixture at
//! the host paths of the run (`CARGO_MANIFEST_DIR` as the run sets it, not as it was built).

use std::path::Path;

use vmtest::vm_test;

#[vm_test(files = ["tests/data"])]
fn sees_its_fixture_and_working_directory() {
    let cwd = std::env::current_dir().unwrap();
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    assert_eq!(cwd, Path::new(&manifest_dir));
    let expected = "a fixture of the copied checkout\n";
    let fixture = Path::new(&manifest_dir).join("tests/data/fixture.txt");
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
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&manifest_dir);
    assert!(root.join("Cargo.toml").is_file());
    assert!(root.join("tests/here.rs").is_file());
    assert!(root.join("tests/data/fixture.txt").is_file());
    assert!(!root.join("target").exists(), "the target dir was copied into the guest");
}

vmtest::main!();
