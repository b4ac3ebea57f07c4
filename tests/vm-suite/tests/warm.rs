//! Warm starts for real: `fixture-warm` runs as `cargo test` runs it, against a snapshot cache
//! of its own. The first run boots and saves each VM configuration; later runs start from the
//! snapshot. What the restored guests show their tests must look fresh: the host's clock, other
//! random bytes, boot id and `HashMap` keys than any other run, nothing left by an earlier run, and the run's
//! own fixture, environment and modules. `VMTEST_SNAPSHOT=off` and `=refresh` do what they say,
//! a damaged snapshot is replaced after one warning, and a bad value is one error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const WARM: &str = env!("CARGO_BIN_EXE_fixture-warm");

/// What one run of the fixture printed and left.
struct Run {
    /// `warm: <key> <value>` lines of `prints_its_state`.
    state: BTreeMap<String, String>,
    stdout: String,
    stderr: String,
    /// The first line of each VM's console log (how the VM started).
    starts: Vec<String>,
    /// The host's clock before and after the run, in seconds.
    window: (f64, f64),
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn log_dir() -> PathBuf {
    Path::new(WARM).parent().unwrap().join("vmtest/fixture-warm")
}

/// Runs the fixture with `snapshots` as its cache and `mode` as `VMTEST_SNAPSHOT`, as if its
/// crate were checked out under `/tmp` (its fixture copied there): the payload then carries
/// `/tmp` among the parents of the working directory, as in a CI checkout there.
fn run(snapshots: &Path, mode: &str, probe: &str) -> Run {
    let _ = std::fs::remove_dir_all(log_dir());
    let cwd = tempfile::Builder::new().prefix("vmtest-warm-crate").tempdir_in("/tmp").unwrap();
    let data = cwd.path().join("tests/data");
    std::fs::create_dir_all(&data).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture.bin");
    std::fs::copy(fixture, data.join("fixture.bin")).unwrap();
    let before = unix_now();
    let output = Command::new(WARM)
        .env("CARGO_MANIFEST_DIR", cwd.path())
        .args(["--nocapture", "--test-threads", "1"])
        .env("VMTEST_SNAPSHOTS", snapshots)
        .env("VMTEST_SNAPSHOT", mode)
        .env("VMTEST_WARM_PROBE", probe)
        .env_remove("VMTEST_TEST")
        .output()
        .unwrap();
    let after = unix_now();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the run failed:\n{stdout}\n{stderr}");
    let state: BTreeMap<String, String> = stdout
        .lines()
        // A test's first line shares libtest's `test name ... ` line.
        .filter_map(|l| l.split_once("warm: ").map(|(_, rest)| rest))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(log_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".console.log"))
        .collect();
    logs.sort();
    let starts = logs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(state.get("cwd").map(PathBuf::from).as_deref(), Some(cwd.path()), "{stdout}");
    Run { state, stdout, stderr, starts, window: (before, after) }
}

/// Everything in `dir`, sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The snapshots in the cache `dir`.
fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    entries(dir).into_iter().filter(|p| p.extension().is_some_and(|x| x == "vmsnap")).collect()
}

/// Asserts how the run's two VMs started, in whichever order they ran.
fn started(run: &Run, prefixes: [&str; 2]) {
    assert_eq!(run.starts.len(), 2, "two VMs: {:?}", run.starts);
    let mut left: Vec<&str> = prefixes.to_vec();
    for start in &run.starts {
        let Some(at) = left.iter().position(|p| start.starts_with(p)) else {
            panic!("expected {prefixes:?}, a VM's log starts {start:?}");
        };
        left.remove(at);
    }
}

const SAVED: &str = "vmtest: booted, and saved at the restore point as the snapshot";
const RESTORED: &str = "vmtest: started from the snapshot";

/// The state a restored guest shows must be its own.
fn looks_fresh(run: &Run, others: &[&Run], probe: &str) {
    let clock: f64 = run.state["clock"].parse().unwrap();
    assert!(
        clock >= run.window.0 && clock <= run.window.1,
        "guest clock {clock} outside the run's {:?}",
        run.window
    );
    assert_eq!(run.state["marker"], "found false", "a file of an earlier run is there");
    assert_eq!(run.state["env"], probe);
    assert_eq!(run.state["fixture"], "bytes 33");
    assert_eq!(run.state["modes"], "/tmp=1777,/run=755,/dev/shm=1777");
    assert!(run.stdout.contains("warm: module dummy loaded"), "{}", run.stdout);
    for other in others {
        for key in ["random", "boot_id", "hashmap"] {
            assert_ne!(run.state[key], other.state[key], "two runs saw the same {key}");
        }
    }
}

#[test]
fn runs_start_from_their_snapshots_and_look_fresh() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path();

    // The two VMs differ in their runs' modules and fixtures, not in their base: one snapshot
    // serves both, so the second VM of the very first run starts warm already.
    let cold = run(cache, "on", "first");
    started(&cold, [SAVED, RESTORED]);
    let saved = snapshot_files(cache);
    assert_eq!(saved.len(), 1, "one snapshot for the one configuration: {saved:?}");
    looks_fresh(&cold, &[], "first");
    // What the run learned of its kernel (its digest) and of QEMU (its version, and whether it
    // runs under its seccomp sandbox here) is remembered for the next processes, which then
    // start QEMU without learning it again.
    let memo = entries(&cache.join("memo"));
    assert_eq!(memo.len(), 3, "{memo:?}");
    let facts: Vec<String> = memo.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert!(facts.iter().any(|f| f.starts_with("QEMU emulator version")), "{facts:?}");
    assert!(facts.iter().any(|f| f.len() == 64), "{facts:?}");
    assert!(facts.iter().any(|f| f == "true" || f == "false"), "{facts:?}");

    let warm = run(cache, "on", "second");
    started(&warm, [RESTORED, RESTORED]);
    looks_fresh(&warm, &[&cold], "second");
    let again = run(cache, "on", "third");
    started(&again, [RESTORED, RESTORED]);
    looks_fresh(&again, &[&cold, &warm], "third");
    assert_eq!(snapshot_files(cache), saved, "nothing new was saved");
    assert_eq!(entries(&cache.join("memo")), memo, "nothing new was learned");

    // Off: boots, saves nothing, leaves the cache alone.
    let off = run(cache, "off", "off");
    for start in &off.starts {
        assert!(
            !start.starts_with(SAVED) && !start.starts_with(RESTORED),
            "a VM started warm with snapshots off: {start}"
        );
    }
    assert_eq!(snapshot_files(cache), saved);

    // Refresh: boots and saves again, in place.
    let refreshed = run(cache, "refresh", "refresh");
    started(&refreshed, [SAVED, SAVED]);
    assert_eq!(snapshot_files(cache), saved);

    // A damaged snapshot: one warning naming it, a cold boot, a new snapshot.
    let damaged = &saved[0];
    let len = std::fs::metadata(damaged).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(damaged).unwrap().set_len(len / 2).unwrap();
    let repaired = run(cache, "on", "repaired");
    started(&repaired, [SAVED, RESTORED]);
    let warnings: Vec<&str> =
        repaired.stderr.lines().filter(|l| l.contains("vmtest: warning:")).collect();
    assert_eq!(warnings.len(), 1, "{}", repaired.stderr);
    assert!(warnings[0].contains(&damaged.display().to_string()), "{}", warnings[0]);
    assert!(warnings[0].contains("the VM boots cold"), "{}", warnings[0]);
    assert_eq!(snapshot_files(cache), saved);
    looks_fresh(&repaired, &[&cold, &warm, &again], "repaired");
    // Saved again, whole: the next run starts from it.
    let after = run(cache, "on", "after");
    started(&after, [RESTORED, RESTORED]);
    looks_fresh(&after, &[&cold, &warm, &again, &repaired], "after");
}

#[test]
fn a_bad_snapshot_setting_is_one_error() {
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(WARM)
        .env("VMTEST_SNAPSHOTS", cache.path())
        .env("VMTEST_SNAPSHOT", "sometimes")
        .env_remove("VMTEST_TEST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // Before anything else: no log dir claimed, so the other test's runs keep theirs.
    assert!(!stderr.contains("using TCG"), "{stderr}");
    assert!(
        stderr.contains("VMTEST_SNAPSHOT=\"sometimes\" is not one of on, off, refresh"),
        "{stderr}"
    );
    assert!(entries(cache.path()).is_empty());
}
