//! Resource bounds, checked from outside on `fixture-limits`: a test's files, a run's files, a
//! file that is sparse or never stops growing, the console log and the host's queues stay
//! bounded; each limit it meets is a warning naming the test, the limit and its knob, and the
//! run goes on.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture-limits");

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn show(&self) -> String {
        format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the fixture with `args` and `env`; fails the test if it has not ended after `patience`.
fn run(args: &[&str], env: &[(&str, &str)], patience: Duration) -> Ran {
    let mut child = Command::new(FIXTURE)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("VMTEST_TEST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > patience {
            // SIGTERM: the harness kills its QEMU and removes its temp dirs.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!(
                "{args:?} still ran after {patience:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ran { code: status.code(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// The directory named in `artifacts in <dir>: ...` for `test`.
fn artifact_dir(ran: &Ran, test: &str) -> PathBuf {
    let line = ran
        .stderr
        .lines()
        .find(|l| l.contains("artifacts in ") && l.contains(&format!("/{test}:")))
        .unwrap_or_else(|| panic!("no artifact line for {test}:\n{}", ran.show()));
    let dir = line.split("artifacts in ").nth(1).unwrap().split_once(": ").unwrap().0;
    PathBuf::from(dir)
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_below(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

fn assert_has(text: &str, needle: &str, ran: &Ran) {
    assert!(text.contains(needle), "missing {needle:?} in:\n{}", ran.show());
}

#[test]
fn a_test_lands_at_most_its_file_limits_and_the_run_goes_on() {
    let ran = run(&["--test-threads", "1", "files_"], &[], Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert_has(&ran.stdout, "test files_many_small ... ok", &ran);
    assert_has(&ran.stdout, "test files_sparse_terabyte ... ok", &ran);

    // 20,000 small files: the first 1000 (the default) land, one warning says what was not sent.
    let many = files_below(&artifact_dir(&ran, "files_many_small"));
    assert_eq!(many.len(), 1000, "{:?}", &many[..many.len().min(5)]);
    assert!(many[0].ends_with("many/00000.txt") && many[999].ends_with("many/00999.txt"));
    assert_has(
        &ran.stderr,
        "vmtest: warning: files_many_small: a file from the guest: artifacts/many/01000.txt and \
         18999 more files: not sent (",
        &ran,
    );
    assert_has(&ran.stderr, "over the limit of 1000 files per test (VMTEST_FILES_PER_TEST)", &ran);
    let warnings = ran.stderr.lines().filter(|l| l.contains("files_many_small: a file")).count();
    assert_eq!(warnings, 1, "{}", ran.show());

    // A sparse terabyte is refused by its length before a byte of it moves; the test's other
    // file arrives.
    assert_has(
        &ran.stderr,
        "vmtest: warning: files_sparse_terabyte: a file from the guest: artifacts/sparse.bin: not \
         sent (1099511627776 bytes): over the limit of 1073741824 bytes per file \
         (VMTEST_FILE_LIMIT)",
        &ran,
    );
    let sparse = artifact_dir(&ran, "files_sparse_terabyte");
    assert_eq!(std::fs::read_to_string(sparse.join("small.txt")).unwrap(), "small\n");
    assert!(!sparse.join("sparse.bin").exists());
}

#[test]
fn a_test_and_a_run_are_held_to_their_byte_limits() {
    let ran = run(
        &["--test-threads", "1", "budget_"],
        &[("VMTEST_BYTES_PER_TEST", "300K"), ("VMTEST_BYTES_PER_RUN", "500K")],
        Duration::from_secs(300),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    // 3 of a's 100,000-byte files fit in 300 KiB; b gets 2 of what is left of the run's 500 KiB.
    let a = files_below(&artifact_dir(&ran, "budget_a"));
    let b = files_below(&artifact_dir(&ran, "budget_b"));
    assert_eq!(
        a.iter().map(|p| p.file_name().unwrap()).collect::<Vec<_>>(),
        ["0.bin", "1.bin", "2.bin"]
    );
    assert_eq!(b.iter().map(|p| p.file_name().unwrap()).collect::<Vec<_>>(), ["0.bin", "1.bin"]);
    assert_has(
        &ran.stderr,
        "vmtest: warning: budget_a: a file from the guest: artifacts/3.bin: not sent (100000 \
         bytes): over the limit of 307200 bytes per test (VMTEST_BYTES_PER_TEST)",
        &ran,
    );
    assert_has(
        &ran.stderr,
        "vmtest: warning: budget_b: a file from the guest: artifacts/2.bin and 1 more files: not \
         sent (200000 bytes): over the limit of 512000 bytes per run (VMTEST_BYTES_PER_RUN)",
        &ran,
    );
}

#[test]
fn a_file_that_never_stops_growing_does_not_hold_up_the_run() {
    let ran = run(&["--exact", "growing_artifact"], &[], Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert_has(&ran.stdout, "test growing_artifact ... ok", &ran);
    // Sent as long as it was when sending began, with a warning; the test's other file arrives.
    assert_has(
        &ran.stderr,
        "vmtest: warning: growing_artifact: a file from the guest: artifacts/growing.bin: sent as \
         long as it was when sending began; it grew by ",
        &ran,
    );
    let dir = artifact_dir(&ran, "growing_artifact");
    assert_eq!(std::fs::read_to_string(dir.join("small.txt")).unwrap(), "small\n");
    let len = std::fs::metadata(dir.join("growing.bin")).unwrap().len();
    assert!((8 << 20..1 << 30).contains(&len), "{len}");
}

#[test]
fn a_flooded_console_keeps_a_bounded_log_that_ends_with_the_last_lines() {
    let ran = run(
        &["--exact", "console_flood_then_exit_3"],
        &[("VMTEST_CONSOLE_LIMIT", "64K")],
        Duration::from_secs(300),
    );
    assert_eq!(ran.code, Some(101), "{}", ran.show());
    let log = ran
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("kernel console: "))
        .unwrap_or_else(|| panic!("no console log named:\n{}", ran.show()));
    let log_text = std::fs::read_to_string(log).unwrap();
    // The log starts with lines of vmtest's own (how the VM started, its timing); the limit is
    // the kernel console's.
    let mut console = log_text.as_str();
    while console.starts_with("vmtest: ") {
        console = console.split_once('\n').map_or("", |(_, rest)| rest);
    }
    let console = console.to_owned();
    // 20,000 lines of 103 bytes went to the console; 64 KiB and the note on the cut stay.
    assert!(console.len() <= (64 << 10) + 200, "{} bytes in {log}", console.len());
    let (head, end) = console
        .split_once("bytes of console output cut here: VMTEST_CONSOLE_LIMIT=65536")
        .unwrap_or_else(|| panic!("no note on the cut in {log}"));
    // The beginning: the boot and the flood's first lines.
    assert!(head.contains("\nflood 00000 "), "{head}");
    // The end: the flood's last lines, then PID 1's last words before `Done`.
    assert!(end.contains("flood 19999 ") && end.contains("flood: the end"), "{end}");
    let last = console.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("vmtest-init: timing since boot: ") && last.ends_with(" s"),
        "{}",
        &console[console.len() - 500..]
    );
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_reader_that_stops_reading_holds_up_the_guest_not_host_memory() {
    // As `--nocapture | less` with the pager waiting: nobody reads stdout for a while.
    let mut child = Command::new(FIXTURE)
        .args(["--exact", "chatty_output", "--nocapture"])
        .env_remove("VMTEST_TEST")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("chatty ") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no output");
    }
    let before = rss_kib(child.id());
    std::thread::sleep(Duration::from_secs(20));
    let after = rss_kib(child.id());
    // The guest writes 257 MiB; the host may hold a few frames and notes of 64 KiB.
    let grew = after.saturating_sub(before);
    let mut lines = 1u64;
    let mut rest = String::new();
    while stdout.read_line(&mut rest).unwrap() > 0 {
        if rest.starts_with("chatty ") {
            lines += 1;
        }
        rest.clear();
    }
    let status = child.wait().unwrap();
    assert!(grew < 64 << 10, "the harness grew by {grew} KiB ({before} -> {after}) while stalled");
    assert_eq!(lines, 1 << 20, "lines lost");
    assert!(status.success(), "{status}");
}
