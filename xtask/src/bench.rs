//! `cargo xtask bench [--arch <arch>] [--rounds N]`: what a user pays per run, against the floor.
//!
//! In one run, interleaved round by round (each round starting one scenario later) so that a busy
//! machine slows every scenario alike:
//! - **floor**: QEMU as the harness starts it, booting the kernel's bzImage with a static init
//!   that powers off at once, in an initramfs with the guest userland as every harness image
//!   has (no harness, no control port); **floor-pvh** the same with the
//!   uncompressed kernel the harness boots through PVH, where the kernel has one;
//!   **floor-dynamic** that boot with the init built as test binaries are on the host's arch
//!   (debug, linked against the host's libc, its libraries in the image);
//! - **one**: a vm_test binary with one trivial test, from process start to exit;
//! - **many**: fifty trivial tests in one VM; the per-test overhead is `(many - one) / 49`;
//! - **matrix**: twenty tests on two kernels (two VMs), with the default parallelism and with
//!   `--test-threads=1` (x86_64 only: the store holds one arm64 kernel);
//! - **transfer**: a test writing 64 MiB to an artifact, which the host receives, against one
//!   writing it to a file that stays in the guest: the difference gives the transfer rate.
//!
//! Those run with `VMTEST_SNAPSHOT=off`: every VM boots its kernel (the cold path). Then:
//! - **one-save**: `one` with `VMTEST_SNAPSHOT=refresh`: boots, saves the snapshot, runs (what
//!   the first run of a configuration costs);
//! - **warm-one**, **warm-many**: `one` and `many` started from their snapshots, in a cache of
//!   the bench's own (`target/bench/snapshots`) that one untimed run of each fills first;
//! - **nextest-10**: `cargo nextest run` of ten trivial tests, one process and so one VM per
//!   test, warm (x86_64 guests on an x86_64 host only; skipped with a line when cargo-nextest
//!   is missing).
//!
//! Plus, outside the rounds, for a 50 MB test binary: the time to build its initramfs, and the
//! harness's time from start to QEMU's start when nothing changed since the last run. Each
//! scenario's median, minimum and maximum go to a table and to JSON. A run that fails or does
//! not finish within [`RUN_LIMIT`] counts as a failure and is reported, not retried. The
//! harness's cost on the PVH boot is also given per round (the median of `one` over
//! `floor-pvh` in the same round), which a machine whose speed drifts during the bench moves
//! less than the ratio of the medians.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use vmtest::arch::Arch;
use vmtest::cli::runner::ensure_target;

use crate::exec::status;

/// Longest a single run may take before it counts as a hang.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Bytes of the large artifact.
const TRANSFER_BYTES: u64 = 64 << 20;
/// Size of the padded test binary for the initramfs measurement.
const FAT_BINARY_BYTES: u64 = 50 << 20;

/// One thing timed each round.
struct Scenario {
    name: &'static str,
    what: &'static str,
    command: Command,
    samples: Vec<f64>,
    /// Each round's time, `None` where the run failed: pairs runs of one round for
    /// [`paired_ratio`].
    by_round: Vec<Option<f64>>,
    failures: Vec<String>,
}

/// `bench [--arch <arch>] [--rounds N] [--only a,b,...]`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Guest architecture: x86_64, aarch64 (or arm64) [default: this machine's].
    #[arg(long)]
    arch: Option<Arch>,
    /// Rounds of every scenario.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive)]
    rounds: usize,
    /// Only these scenarios, comma-separated (an unknown name lists them).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    only: Option<Vec<String>>,
}

fn positive(value: &str) -> Result<usize, String> {
    value.parse().ok().filter(|&n| n > 0).ok_or(format!("{value:?} is not a positive number"))
}

pub fn run_bench(args: BenchArgs) -> ExitCode {
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> Result<(), String> {
    let BenchArgs { arch, rounds, only } = args;
    let arch = arch.unwrap_or_else(Arch::host);

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target");
    let out = target.join("bench");
    std::fs::create_dir_all(&out)
        .map_err(|e| format!("failed to create {}: {e}", out.display()))?;
    let bins = build(arch, &target)?;
    let kernel = vmtest::kernel::resolve(Some("6.12"), arch).map_err(|e| e.to_string())?;

    let floor_initrd = out.join(format!("floor-{arch}.cpio"));
    vmtest::__bench::write_initramfs(&bins.poweroff, arch, &floor_initrd)?;
    // Bare QEMU booting `image` with `initrd`, its console unread.
    let floor_command = |image: &Path, initrd: &Path| {
        vmtest::__bench::floor_command(arch, image, initrd).map(|(mut command, accel)| {
            command.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null());
            (command, accel)
        })
    };
    let (floor, accel) = floor_command(kernel.image(), &floor_initrd)?;

    let snapshots = out.join("snapshots");
    let run_with = |mode: &str, binary: &Path, args: &[&str], env: &[(&str, String)]| {
        let mut command = bins.command(binary);
        command
            .args(args)
            // A shell's default: no backtraces asked for, so the guest gets the test binary
            // without its debug sections (`one-debug-info` measures it with them).
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .env_remove("VMTEST_DEBUG_INFO")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("VMTEST_SNAPSHOT", mode)
            .env("VMTEST_SNAPSHOTS", &snapshots)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let run = |binary: &Path, args: &[&str], env: &[(&str, String)]| -> Command {
        run_with("off", binary, args, env)
    };
    let transfer_env = |send: bool| {
        [
            ("BENCH_TRANSFER_BYTES", TRANSFER_BYTES.to_string()),
            ("BENCH_TRANSFER_SEND", if send { "1" } else { "0" }.to_owned()),
        ]
    };
    let mut scenarios = vec![scenario("floor", "bare QEMU, static init that powers off", floor)];
    let boot_image = vmtest::__bench::boot_image(&kernel, arch)?;
    if boot_image != kernel.image() {
        scenarios.push(scenario(
            "floor-pvh",
            "the same, booting the uncompressed kernel through PVH",
            floor_command(&boot_image, &floor_initrd)?.0,
        ));
    }
    if let Some(dynamic) = &bins.poweroff_dynamic {
        // What a test binary costs as PID 1 before the harness does anything: the same init,
        // a debug build linked against the host's libc, with its libraries.
        let initrd = out.join(format!("floor-dynamic-{arch}.cpio"));
        vmtest::__bench::write_initramfs(dynamic, arch, &initrd)?;
        scenarios.push(scenario(
            "floor-dynamic",
            "the same, the init a dynamically linked debug build (as test binaries are)",
            floor_command(&boot_image, &initrd)?.0,
        ));
    }
    scenarios.extend([
        scenario("one", "1 trivial test", run(&bins.one, &[], &[])),
        scenario(
            "one-debug-info",
            "1 trivial test, the guest's binary with its debug sections (VMTEST_DEBUG_INFO=keep)",
            run(&bins.one, &[], &[("VMTEST_DEBUG_INFO", "keep".to_owned())]),
        ),
        scenario("many", "50 trivial tests, one VM", run(&bins.many, &[], &[])),
        scenario(
            "kept-64M",
            "1 test writing 64 MiB to a file kept in the guest",
            run(&bins.transfer, &[], &transfer_env(false)),
        ),
        scenario(
            "sent-64M",
            "1 test writing 64 MiB to an artifact sent to the host",
            run(&bins.transfer, &[], &transfer_env(true)),
        ),
        scenario(
            "one-save",
            "1 trivial test, booting and saving its snapshot (VMTEST_SNAPSHOT=refresh)",
            run_with("refresh", &bins.one, &[], &[]),
        ),
        scenario(
            "warm-one",
            "1 trivial test, started from its snapshot",
            run_with("on", &bins.one, &[], &[]),
        ),
        scenario(
            "warm-many",
            "50 trivial tests, one VM, started from its snapshot",
            run_with("on", &bins.many, &[], &[]),
        ),
    ]);
    if arch == Arch::X86_64 && Arch::host() == Arch::X86_64 {
        match nextest(&root, &snapshots) {
            Some(command) => scenarios.push(scenario(
                "nextest-10",
                "cargo nextest run, 10 trivial tests: 10 processes, 10 VMs, warm",
                command,
            )),
            None => eprintln!(
                "xtask: bench: no nextest-10: cargo-nextest is not installed \
                 (`cargo install cargo-nextest --locked`, or `cargo xtask setup`)"
            ),
        }
    }
    if arch == Arch::X86_64 {
        // A kernel developer's own build: the same image at a path outside the store.
        let own_build = out.join("own-build-bzImage");
        std::fs::copy(kernel.image(), &own_build).map_err(|e| {
            format!("failed to copy {} for one-path: {e}", kernel.image().display())
        })?;
        let own_build = own_build.to_string_lossy().into_owned();
        scenarios.push(scenario(
            "one-path",
            "1 trivial test, kernel given by path (VMTEST_KERNEL=<bzImage>)",
            run(&bins.one, &[], &[("VMTEST_KERNEL", own_build)]),
        ));
        scenarios.push(scenario(
            "matrix",
            "20 tests x 2 kernels, default parallelism",
            run(&bins.matrix, &[], &[]),
        ));
        scenarios.push(scenario(
            "matrix-serial",
            "20 tests x 2 kernels, --test-threads=1",
            run(&bins.matrix, &["--test-threads", "1"], &[]),
        ));
    }

    if let Some(only) = &only {
        let known: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        if let Some(unknown) = only.iter().find(|name| !known.contains(&name.as_str())) {
            return Err(format!(
                "--only: no scenario `{unknown}` here (scenarios: {})",
                known.join(", ")
            ));
        }
        scenarios.retain(|s| only.iter().any(|name| name == s.name));
    }
    eprintln!(
        "xtask: bench: {arch} guest, kernel {}, accelerator {accel}, {rounds} rounds of {} scenarios",
        kernel.describe(),
        scenarios.len()
    );
    // The warm scenarios' snapshots, made before the rounds (a run that saves is `one-save`).
    for scenario in scenarios
        .iter_mut()
        .filter(|s| s.name.starts_with("warm-") || s.name.starts_with("nextest"))
    {
        if let Err(e) = time(&mut scenario.command) {
            scenario.failures.push(format!("the run that saves the snapshot: {e}"));
        }
    }
    let count = scenarios.len();
    for round in 1..=rounds {
        // Each round starts one scenario later: a run's time depends a little on what ran just
        // before it (tens of ms under TCG), and no scenario should always follow the same one.
        for i in 0..count {
            let scenario = &mut scenarios[(i + round - 1) % count];
            let result = time(&mut scenario.command);
            scenario.by_round.push(result.as_ref().ok().copied());
            match result {
                Ok(seconds) => scenario.samples.push(seconds),
                Err(e) => scenario.failures.push(format!("round {round}: {e}")),
            }
        }
        eprintln!("xtask: bench: round {round}/{rounds} done");
    }

    let fat = fat_binary(&bins.one, &out)?;
    let initramfs = initramfs_times(arch, &fat, &out);
    let before_qemu = initramfs.and_then(|initramfs| {
        Ok(Setup { initramfs, before_qemu: before_qemu_times(arch, &fat, &bins, &out)? })
    });
    let _ = std::fs::remove_file(&fat);
    report(arch, accel, &kernel.describe(), rounds, &scenarios, &before_qemu?, &out)
}

/// `cargo nextest run` of `tests/bench-suite/tests/ten.rs`, warm from `snapshots`, built
/// first; `None` without cargo-nextest.
fn nextest(root: &Path, snapshots: &Path) -> Option<Command> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let installed = Command::new(&cargo)
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        return None;
    }
    let mut command = Command::new(cargo);
    command
        .args(["nextest", "run", "-p", "bench-suite", "--test", "ten", "--no-fail-fast"])
        .current_dir(root)
        .env("VMTEST_SNAPSHOT", "on")
        .env("VMTEST_SNAPSHOTS", snapshots)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("VMTEST_DEBUG_INFO")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Some(command)
}

/// What the harness does before QEMU starts, for a 50 MB test binary.
struct Setup {
    /// Seconds to build its initramfs.
    initramfs: Vec<f64>,
    /// Seconds from starting it to its QEMU starting, when nothing changed since the last run.
    before_qemu: Vec<f64>,
}

fn scenario(name: &'static str, what: &'static str, command: Command) -> Scenario {
    Scenario {
        name,
        what,
        command,
        samples: Vec::new(),
        by_round: Vec::new(),
        failures: Vec::new(),
    }
}

/// Wall time of one run, or why it does not count.
fn time(command: &mut Command) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = command.spawn().map_err(|e| format!("failed to start {command:?}: {e}"))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let seconds = start.elapsed().as_secs_f64();
            return if status.success() {
                Ok(seconds)
            } else {
                Err(format!("exited with {status}"))
            };
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no exit within {} s (hang)", RUN_LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The programs the bench runs.
struct Bins {
    poweroff: PathBuf,
    /// The same program as a debug build linked against the host's libc, when the guest's
    /// arch is the host's (test binaries of another arch are static).
    poweroff_dynamic: Option<PathBuf>,
    one: PathBuf,
    many: PathBuf,
    matrix: PathBuf,
    transfer: PathBuf,
    /// `cargo-vmtest` for binaries of another architecture.
    runner: Option<PathBuf>,
}

impl Bins {
    /// Runs the vm_test binary `binary`: itself for the host's arch, else through the runner.
    fn command(&self, binary: &Path) -> Command {
        match &self.runner {
            Some(runner) => {
                let mut command = Command::new(runner);
                command.arg("run").arg(binary);
                command
            }
            None => Command::new(binary),
        }
    }
}

fn build(arch: Arch, target: &Path) -> Result<Bins, String> {
    let triple = arch.musl_target();
    ensure_target(triple).map_err(|e| e.to_string())?;
    let linker = format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase().replace('-', "_"));
    let cargo = || Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    status(
        cargo()
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "bench-suite",
                "--bin",
                "bench-poweroff",
                "--target",
                triple,
            ])
            .env(&linker, "rust-lld"),
        &format!("cargo build --release -p bench-suite --bin bench-poweroff --target {triple}"),
    )?;
    let poweroff = target.join(triple).join("release/bench-poweroff");
    let (dir, runner) = if arch == Arch::host() {
        status(cargo().args(["build", "-q", "-p", "bench-suite"]), "cargo build -p bench-suite")?;
        (target.join("debug"), None)
    } else {
        status(
            cargo()
                .args(["build", "-q", "-p", "bench-suite", "--target", triple])
                .env(&linker, "rust-lld"),
            &format!("cargo build -p bench-suite --target {triple}"),
        )?;
        status(
            cargo().args([
                "build",
                "-q",
                "-p",
                "vmtest",
                "--features",
                "cli",
                "--bin",
                "cargo-vmtest",
            ]),
            "cargo build -p vmtest --features cli --bin cargo-vmtest",
        )?;
        (target.join(triple).join("debug"), Some(target.join("debug/cargo-vmtest")))
    };
    Ok(Bins {
        poweroff,
        poweroff_dynamic: runner.is_none().then(|| dir.join("bench-poweroff")),
        one: dir.join("bench-one"),
        many: dir.join("bench-many"),
        matrix: dir.join("bench-matrix"),
        transfer: dir.join("bench-transfer"),
        runner,
    })
}

/// A copy of `binary` padded with zeros to 50 MB (still a valid test binary).
fn fat_binary(binary: &Path, out: &Path) -> Result<PathBuf, String> {
    let fat = out.join("fat-test-binary");
    let mut bytes =
        std::fs::read(binary).map_err(|e| format!("failed to read {}: {e}", binary.display()))?;
    bytes.resize(usize::try_from(FAT_BINARY_BYTES).unwrap_or(usize::MAX).max(bytes.len()), 0);
    std::fs::write(&fat, &bytes).map_err(|e| format!("failed to write {}: {e}", fat.display()))?;
    std::fs::set_permissions(&fat, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| format!("failed to make {} executable: {e}", fat.display()))?;
    Ok(fat)
}

/// Seconds to build the initramfs around the 50 MB test binary `fat`, five times.
fn initramfs_times(arch: Arch, fat: &Path, out: &Path) -> Result<Vec<f64>, String> {
    let initrd = out.join("fat.cpio");
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        vmtest::__bench::write_initramfs(fat, arch, &initrd)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_file(&initrd);
    Ok(times)
}

/// Seconds from starting the 50 MB test binary `fat` to its starting QEMU, five times after a
/// first run that warms what the harness caches. QEMU is a stand-in first on `PATH` that
/// notes the time and fails, so nothing boots.
fn before_qemu_times(arch: Arch, fat: &Path, bins: &Bins, out: &Path) -> Result<Vec<f64>, String> {
    let dir = out.join("stand-in-qemu");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    let qemu = dir.join(vmtest::__bench::qemu_binary(arch));
    let script = "#!/bin/sh\ndate +%s%N > \"$VMTEST_BENCH_QEMU_STAMP\"\nexit 1\n";
    std::fs::write(&qemu, script)
        .and_then(|()| {
            std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        })
        .map_err(|e| format!("failed to write {}: {e}", qemu.display()))?;
    let stamp = dir.join("stamp");
    let path = std::env::join_paths(
        std::iter::once(dir.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .map_err(|e| format!("failed to build PATH: {e}"))?;
    let mut times = Vec::new();
    for run in 0..6 {
        let _ = std::fs::remove_file(&stamp);
        let mut command = bins.command(fat);
        let start = std::time::SystemTime::now();
        command
            .env("PATH", &path)
            .env("VMTEST_BENCH_QEMU_STAMP", &stamp)
            // The cold path: a warm start asks QEMU its version first.
            .env("VMTEST_SNAPSHOT", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("failed to run {}: {e}", fat.display()))?;
        let text = std::fs::read_to_string(&stamp)
            .map_err(|e| format!("the stand-in QEMU did not run ({}): {e}", stamp.display()))?;
        let nanos: u128 = text.trim().parse().map_err(|e| format!("bad stamp {text:?}: {e}"))?;
        let since = start
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| format!("clock before 1970: {e}"))?
            .as_nanos();
        if run > 0 {
            times.push(nanos.saturating_sub(since) as f64 / 1e9);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(times)
}

/// The median over rounds of `a`'s time over `b`'s in the same round (rounds where both ran).
/// Runs of one round are seconds apart, so a machine that slows down or speeds up over the
/// bench (other load, a shared host) moves both alike; the ratio of the medians mixes rounds.
fn paired_ratio(a: &Scenario, b: &Scenario) -> Option<f64> {
    let ratios: Vec<f64> = a
        .by_round
        .iter()
        .zip(&b.by_round)
        .filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?))
        .collect();
    stats(&ratios).map(|s| s.0)
}

/// (median, min, max) of `samples`, which must not be empty.
fn stats(samples: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some((median, sorted[0], sorted[n - 1]))
}

fn report(
    arch: Arch,
    accel: &str,
    kernel: &str,
    rounds: usize,
    scenarios: &[Scenario],
    setup: &Setup,
    out: &Path,
) -> Result<(), String> {
    let median = |name: &str| {
        scenarios.iter().find(|s| s.name == name).and_then(|s| stats(&s.samples)).map(|s| s.0)
    };
    let floor = median("floor");
    println!(
        "\nvmtest bench: {arch} guest, kernel {kernel}, accelerator {accel}, {rounds} rounds\n"
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}  {:<8} what",
        "scenario", "median s", "min s", "max s", "x floor", "failed"
    );
    let mut rows = Vec::new();
    for scenario in scenarios {
        let stat = stats(&scenario.samples);
        let ratio = stat.zip(floor).map(|((m, _, _), f)| m / f);
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>9}  {:<8} {}",
            scenario.name,
            cell(stat.map(|s| s.0)),
            cell(stat.map(|s| s.1)),
            cell(stat.map(|s| s.2)),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}")),
            scenario.failures.len(),
            scenario.what
        );
        for failure in &scenario.failures {
            println!("    {}: {failure}", scenario.name);
        }
        rows.push(serde_json::json!({
            "name": scenario.name,
            "what": scenario.what,
            "samples_s": scenario.samples,
            "median_s": stat.map(|s| s.0),
            "min_s": stat.map(|s| s.1),
            "max_s": stat.map(|s| s.2),
            "x_floor": ratio,
            "failures": scenario.failures,
        }));
    }
    let named = |name: &str| scenarios.iter().find(|s| s.name == name);
    let paired = |a: &str, b: &str| paired_ratio(named(a)?, named(b)?);
    let pvh_overhead = median("one").zip(median("floor-pvh")).map(|(one, floor)| one / floor);
    let pvh_overhead_paired = paired("one", "floor-pvh");
    let dynamic_init = median("floor-dynamic").zip(median("floor-pvh")).map(|(d, floor)| d / floor);
    let path_overhead = median("one-path").zip(median("floor-pvh")).map(|(one, floor)| one / floor);
    let per_test = median("many").zip(median("one")).map(|(many, one)| (many - one) / 49.0);
    let floor_pvh = median("floor-pvh").or(floor);
    let warm_one = median("warm-one").zip(floor_pvh).map(|(warm, floor)| warm / floor);
    let warm_many = median("warm-many").zip(floor_pvh).map(|(warm, floor)| warm / floor);
    let nextest_ten = median("nextest-10").zip(floor_pvh).map(|(ten, floor)| ten / floor);
    let save_cost = median("one-save").zip(median("one")).map(|(save, one)| save / one);
    let matrix_ratio = median("matrix").zip(median("matrix-serial")).map(|(p, s)| p / s);
    let transfer = median("sent-64M").zip(median("kept-64M")).map(|(big, small)| {
        let seconds = big - small;
        if seconds > 0.0 {
            TRANSFER_BYTES as f64 / 1e6 / seconds
        } else {
            f64::INFINITY
        }
    });
    let initramfs_stats = stats(&setup.initramfs);
    let before_qemu_stats = stats(&setup.before_qemu);
    println!();
    if let Some(ratio) = pvh_overhead {
        let per_round =
            pvh_overhead_paired.map_or(String::new(), |r| format!(" (per round: {r:.2} x)"));
        println!(
            "one test vs the PVH floor (the harness's own cost on the same boot): {ratio:.2} x\
             {per_round}"
        );
    }
    if let Some(ratio) = dynamic_init {
        println!(
            "a dynamically linked debug init vs the PVH floor (a test binary's share, before the \
             harness does anything): {ratio:.2} x"
        );
    }
    if let Some(ratio) = path_overhead {
        println!("one test, kernel given by path, vs the PVH floor: {ratio:.2} x");
    }
    let floor_name = if median("floor-pvh").is_some() { "PVH floor" } else { "floor" };
    if let Some(ratio) = warm_one {
        println!("one test started from its snapshot vs the {floor_name}: {ratio:.2} x");
    }
    if let Some(ratio) = warm_many {
        println!("50 tests in one VM started from its snapshot vs the {floor_name}: {ratio:.2} x");
    }
    if let Some(ratio) = nextest_ten {
        println!("cargo nextest run of 10 tests (10 VMs), warm, vs the {floor_name}: {ratio:.2} x");
    }
    if let Some(ratio) = save_cost {
        println!(
            "first run of a configuration (boot and save) vs a cold run without: {ratio:.2} x"
        );
    }
    if let Some(per_test) = per_test {
        println!("per extra test in one VM: {:.0} ms (median many - one, / 49)", per_test * 1000.0);
    }
    if let Some(ratio) = matrix_ratio {
        println!("matrix, 2 VMs in parallel vs one after another: {ratio:.2} x");
    }
    if let Some(rate) = transfer {
        println!("file transfer, guest to host: {rate:.1} MB/s (64 MiB sent vs kept, medians)");
    }
    if let Some((m, lo, hi)) = initramfs_stats {
        println!(
            "initramfs for a 50 MB test binary: median {:.0} ms (min {:.0}, max {:.0})",
            m * 1000.0,
            lo * 1000.0,
            hi * 1000.0
        );
    }
    if let Some((m, lo, hi)) = before_qemu_stats {
        println!(
            "harness work before QEMU starts, same 50 MB binary, unchanged since the last run: \
             median {:.0} ms (min {:.0}, max {:.0})",
            m * 1000.0,
            lo * 1000.0,
            hi * 1000.0
        );
    }
    let floor_boots: usize = scenarios
        .iter()
        .filter(|s| s.name.starts_with("floor"))
        .map(|s| s.samples.len() + s.failures.len())
        .sum();
    let harness_boots: usize = scenarios
        .iter()
        .filter(|s| !s.name.starts_with("floor"))
        .map(|s| {
            (s.samples.len() + s.failures.len()) * if s.name.starts_with("matrix") { 2 } else { 1 }
        })
        .sum();
    let failed: usize = scenarios.iter().map(|s| s.failures.len()).sum();
    println!("boots: {floor_boots} floor, {harness_boots} through the harness; failed or hung runs: {failed}");

    let json = serde_json::json!({
        "arch": arch.to_string(),
        "accelerator": accel,
        "kernel": kernel,
        "rounds": rounds,
        "scenarios": rows,
        "one_vs_floor_pvh": pvh_overhead,
        "one_vs_floor_pvh_per_round": pvh_overhead_paired,
        "one_path_vs_floor_pvh": path_overhead,
        "floor_dynamic_vs_floor_pvh": dynamic_init,
        "per_extra_test_s": per_test,
        "warm_one_vs_floor_pvh": warm_one,
        "warm_many_vs_floor_pvh": warm_many,
        "nextest_10_vs_floor_pvh": nextest_ten,
        "one_save_vs_one": save_cost,
        "matrix_parallel_vs_serial": matrix_ratio,
        "transfer_mb_per_s": transfer,
        "initramfs_50mb_s": {
            "samples": setup.initramfs,
            "median": initramfs_stats.map(|s| s.0),
        },
        "before_qemu_50mb_s": {
            "samples": setup.before_qemu,
            "median": before_qemu_stats.map(|s| s.0),
        },
        "failed_runs": failed,
    });
    let path = out.join(format!("bench-{arch}.json"));
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    println!("json: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn paired_ratio_compares_runs_of_the_same_round() {
        let with = |by_round: Vec<Option<f64>>| Scenario {
            by_round,
            ..scenario("s", "", Command::new("true"))
        };
        // The machine slows down by half in the last rounds: per round, `a` stays 10% over `b`.
        let a = with(vec![Some(1.1), Some(1.1), None, Some(1.65), Some(1.65)]);
        let b = with(vec![Some(1.0), Some(1.0), Some(1.0), Some(1.5), Some(1.5)]);
        let ratio = paired_ratio(&a, &b).unwrap();
        assert!((ratio - 1.1).abs() < 1e-9, "{ratio}");
        // The round where `a` failed counts for neither.
        assert_eq!(paired_ratio(&with(vec![None]), &with(vec![Some(1.0)])), None);
    }
}
