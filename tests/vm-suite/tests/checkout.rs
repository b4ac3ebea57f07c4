//! A checkout anywhere works: a small vm_test crate (`checkout-crate/`) is copied to a fresh
//! directory under `/tmp` and under `/dev/shm`, where the guest keeps what the initramfs puts
//! (it mounts nothing over them), and its tests run there with `cargo test`.
//!
//! A nextest archive moves too: built in one copy, it runs in another copy with another target
//! path, as on the machines of a sharded CI job, each partition its part.
//!
//! The copies are built by nested cargo commands in a target dir of their own (the outer
//! `cargo test` holds the lock of the workspace's), offline, with the workspace's lock file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Copies `checkout-crate/` into a fresh directory under `base`, removed when dropped, as the
/// package `name` (copies of one name would share, and race for, one test binary).
fn copy_checkout(base: &str, name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("vmtest-checkout-").tempdir_in(base).unwrap();
    let root = dir.path();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkout-crate");
    std::fs::create_dir_all(root.join("tests/data")).unwrap();
    for file in ["tests/here.rs", "tests/data/fixture.txt"] {
        std::fs::copy(template.join(file), root.join(file)).unwrap();
    }
    let vmtest = workspace().join("vmtest");
    let manifest = format!(
        "[package]\nname = {name:?}\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[dev-dependencies]\nvmtest = {{ path = {:?} }}\n\n\
         [[test]]\nname = \"here\"\nharness = false\n\n[workspace]\n",
        vmtest.to_str().unwrap()
    );
    std::fs::write(root.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    // A target dir inside the checkout, as a plain `cargo build` there makes it (this run
    // builds elsewhere): `files = ["."]` must leave it out.
    std::fs::create_dir_all(root.join("target/debug")).unwrap();
    std::fs::write(
        root.join("target/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n\
         # This file is a cache directory tag created by cargo.\n",
    )
    .unwrap();
    std::fs::write(root.join("target/debug/build-output"), "not for the guest").unwrap();
    dir
}

/// Runs the copied suite with `cargo test` from its directory and checks that its test passed
/// and saw the checkout at its host path.
fn passes_in_a_checkout_under(base: &str, name: &str) {
    if !Path::new(base).is_dir() {
        vmtest::__testing::missing(&format!("this host has no {base}"));
        return;
    }
    let checkout = copy_checkout(base, name);
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "-q", "--offline", "--test", "here", "--", "--nocapture"])
        .current_dir(checkout.path())
        .env("CARGO_TARGET_DIR", workspace().join("target/checkout-tests"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let seen = format!("checkout seen at {}", checkout.path().display());
    assert!(stdout.contains(&seen), "{seen:?} missing:\n{stdout}\n{stderr}");
    assert!(stdout.contains("test result: ok. 2 passed"), "{stdout}");
    let path = checkout.path().to_owned();
    checkout.close().unwrap();
    assert!(!path.exists(), "{} is left behind", path.display());
}

#[test]
fn a_checkout_under_tmp_passes() {
    passes_in_a_checkout_under("/tmp", "checkout-in-tmp");
}

#[test]
fn a_checkout_under_dev_shm_passes() {
    passes_in_a_checkout_under("/dev/shm", "checkout-in-dev-shm");
}

/// What `cargo nextest` prints for each passed test: `PASS [ time] (i/n) binary-id test-name`.
fn passed_tests(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("PASS "))
        .filter_map(|rest| rest.rsplit_once(' ').map(|(_, name)| name.to_owned()))
        .collect()
}

fn nextest(dir: &Path, args: &[&str]) -> (String, String) {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg("nextest")
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", workspace().join("target/checkout-tests"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "cargo nextest {args:?}: {}\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

#[test]
fn a_nextest_archive_runs_in_partitions_in_another_checkout() {
    let has_nextest = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join("cargo-nextest").is_file());
    if !has_nextest {
        vmtest::__testing::missing("cargo-nextest (cargo install cargo-nextest --locked)");
        return;
    }
    // Two checkouts of the same source at different paths: the build machine's and a test
    // machine's.
    let built = copy_checkout("/tmp", "checkout-sharded");
    let elsewhere = copy_checkout("/tmp", "checkout-sharded");
    let scratch = tempfile::Builder::new().prefix("vmtest-shards-").tempdir_in("/tmp").unwrap();
    let archive = scratch.path().join("tests.tar.zst");
    let archive = archive.to_str().unwrap();
    nextest(built.path(), &["archive", "--offline", "--archive-file", archive]);
    drop(built);

    let remap = elsewhere.path().to_str().unwrap();
    let extract = |name: &str| {
        let dir = scratch.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir.to_str().unwrap().to_owned()
    };
    let listed = extract("list");
    let (list, _) = nextest(
        elsewhere.path(),
        &[
            "list",
            "--archive-file",
            archive,
            "--workspace-remap",
            remap,
            "--extract-to",
            &listed,
            "--message-format",
            "oneline",
        ],
    );
    let mut all: Vec<String> =
        list.lines().filter_map(|l| l.rsplit_once(' ').map(|(_, name)| name.to_owned())).collect();
    all.sort();
    assert_eq!(all.len(), 2, "{list}");

    let mut ran = Vec::new();
    for partition in ["count:1/2", "count:2/2"] {
        let target = extract(&partition.replace([':', '/'], "-"));
        let (stdout, stderr) = nextest(
            elsewhere.path(),
            &[
                "run",
                "--archive-file",
                archive,
                "--workspace-remap",
                remap,
                "--extract-to",
                &target,
                "--partition",
                partition,
                "--no-fail-fast",
            ],
        );
        let passed = passed_tests(&format!("{stdout}{stderr}"));
        assert!(!passed.is_empty(), "partition {partition} ran nothing:\n{stdout}\n{stderr}");
        ran.extend(passed);
    }
    ran.sort();
    assert_eq!(ran, all, "every test exactly once across the partitions");
}
