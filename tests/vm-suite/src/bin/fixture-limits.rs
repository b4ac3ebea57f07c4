//! vm_tests that push vmtest's resource bounds: too many files, a sparse terabyte, a file that
//! never stops growing, a flooded console, a torrent of output. `tests/limits.rs` runs this
//! binary and checks that each run stays bounded, warns, and ends.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vmtest::vm_test;

/// Lines `chatty_output` prints, and their length with the newline.
const CHATTY_LINES: usize = 1 << 20;
const CHATTY_LINE_LEN: usize = 256;

fn artifact_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("VMTEST_ARTIFACT_DIR").expect("VMTEST_ARTIFACT_DIR is set"))
}

#[vm_test]
fn files_many_small() {
    let dir = artifact_dir().join("many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..20_000 {
        std::fs::write(dir.join(format!("{i:05}.txt")), format!("{i}\n")).unwrap();
    }
}

#[vm_test]
fn files_sparse_terabyte() {
    let path = vmtest::artifact("sparse.bin", "").unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_len(1 << 40).unwrap();
    vmtest::artifact("small.txt", "small\n").unwrap();
}

#[vm_test]
#[allow(clippy::zombie_processes)] // It must outlive the test; PID 1 reaps orphans.
fn growing_artifact() {
    let path = vmtest::artifact("growing.bin", "").unwrap();
    // A process in a process group of its own outlives the test, and makes the file 1 MiB
    // longer (sparse, so it costs the guest no memory) as fast as it can, forever.
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"n=0; while :; do n=$((n+1)); dd if=/dev/zero of="$0" bs=1M count=0 seek=$n 2>/dev/null; done"#)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&path).unwrap().len() < 8 << 20 {
        assert!(Instant::now() < deadline, "the file does not grow");
        std::thread::sleep(Duration::from_millis(10));
    }
    vmtest::artifact("small.txt", "small\n").unwrap();
}

#[vm_test]
fn budget_a() {
    for i in 0..4 {
        vmtest::artifact(&format!("{i}.bin"), vec![b'a'; 100_000]).unwrap();
    }
}

#[vm_test]
fn budget_b() {
    for i in 0..4 {
        vmtest::artifact(&format!("{i}.bin"), vec![b'b'; 100_000]).unwrap();
    }
}

#[vm_test]
fn console_flood_then_exit_3() {
    let mut console = std::fs::File::options().write(true).open("/dev/console").unwrap();
    let filler = "x".repeat(90);
    for i in 0..20_000 {
        writeln!(console, "flood {i:05} {filler}").unwrap();
    }
    writeln!(console, "flood: the end").unwrap();
    std::process::exit(3);
}

#[vm_test]
fn chatty_output() {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let filler = "y".repeat(CHATTY_LINE_LEN - 20);
    for i in 0..CHATTY_LINES {
        writeln!(out, "chatty {i:012} {filler}").unwrap();
    }
}

vmtest::main!();
