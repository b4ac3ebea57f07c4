//! Snapshots of a booted guest, for real: the project's guest (a vmtest binary as PID 1) boots
//! on Debian's 6.12 kernel to its restore point, is saved there, and is restored twice in new
//! QEMUs. Each restored guest must run its test with the host's wall clock (not the
//! snapshot's) and draw other random bytes from `getrandom` than the other restore. Prints
//! the timings (`--nocapture`), which docs/snapshots.md quotes. On an x86_64 host the arm64
//! guest is the same fixture cross-built for aarch64 (musl) by a nested cargo, in a target dir
//! of its own (the outer `cargo test` holds the lock of the workspace's).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmtest::__snapshot::{
    Cache, Guest, GuestMessage, HostMessage, Plan, PlannedTest, Restore, Vm, PROTOCOL_VERSION,
    TEST_ENV,
};
use vmtest::arch::Arch;

const PROBE: &str = env!("CARGO_BIN_EXE_fixture-restore");
/// Generous: TCG on a loaded 2-core machine.
const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

/// The plan: stop at the restore point. The same plan without it is the payload's, sent after
/// each restore: it runs the probe.
fn plan() -> Plan {
    let mut plan = Plan::new(
        Vec::new(),
        vec![PlannedTest {
            id: 0,
            name: "probe".into(),
            program: "/init".into(),
            args: Vec::new(),
            env: vec![(TEST_ENV.into(), "probe".into())],
            cwd: "/".into(),
            timeout_ms: 60_000,
            capture: true,
        }],
    );
    plan.restore_point = true;
    plan
}

/// The 6.12 kernel for `arch`, or `None` (said so) when the store has none.
fn kernel(arch: Arch) -> Option<vmtest::kernel::Kernel> {
    match vmtest::kernel::resolve(Some("6.12"), arch) {
        Ok(kernel) => Some(kernel),
        Err(e) => {
            vmtest::__testing::missing(&format!(
                "no 6.12 {arch} kernel in the store (`cargo xtask setup` fetches one): {e}"
            ));
            None
        }
    }
}

/// The probe fixture built for aarch64 (static, musl), or `None` (said so) without the target.
fn aarch64_probe() -> Option<PathBuf> {
    let triple = "aarch64-unknown-linux-musl";
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = std::process::Command::new(rustc).args(["--print", "sysroot"]).output().unwrap();
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib").join(triple).is_dir() {
        vmtest::__testing::missing(&format!(
            "no Rust target {triple} (`rustup target add {triple}`; `cargo xtask setup` adds it)"
        ));
        return None;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = workspace.join("target/runner-tests");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "-q", "-p", "vm-suite", "--bin", "fixture-restore", "--target", triple])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .status()
        .unwrap();
    assert!(status.success(), "building fixture-restore for {triple} failed");
    Some(target_dir.join(triple).join("debug/fixture-restore"))
}

fn dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Messages up to `Ready` (or `Hello`, for `until_hello`), skipping logs.
fn wait_for(vm: &mut Vm, wanted: &str) {
    loop {
        match vm.next_message(BOOT).unwrap() {
            GuestMessage::Ready if wanted == "Ready" => return,
            GuestMessage::Hello { version, .. } if wanted == "Hello" => {
                assert_eq!(version, PROTOCOL_VERSION);
                return;
            }
            GuestMessage::Hello { .. } | GuestMessage::Log(_) => {}
            other => panic!("waiting for {wanted}, the guest sent {other:?}\n{}", vm.console()),
        }
    }
}

/// What the probe printed, and when the host saw the test end.
struct Probe {
    output: String,
    realtime: Duration,
    getrandom: String,
    vmgenid: bool,
}

/// Runs the plan's test in a restored guest to its end; returns the probe's output.
fn run_probe(vm: &mut Vm) -> Probe {
    let mut output = None;
    loop {
        match vm.next_message(STEP).unwrap() {
            GuestMessage::TestFinished { outcome, output: bytes, .. } => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                assert_eq!(outcome, vmtest::__snapshot::Outcome::Exited(0), "{text}");
                output = Some(text);
            }
            GuestMessage::Done => break,
            GuestMessage::Fatal(message) => panic!("the guest failed: {message}"),
            _ => {}
        }
    }
    let output = output.expect("the probe's result");
    let field = |name: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {output:?}"))
            .to_owned()
    };
    let realtime = field("realtime");
    let (secs, nanos) = realtime.split_once('.').unwrap();
    Probe {
        realtime: Duration::new(secs.parse().unwrap(), nanos.parse().unwrap()),
        getrandom: field("getrandom"),
        vmgenid: field("vmgenid") == "true",
        output,
    }
}

fn host_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut seed)
        .unwrap();
    seed
}

fn restored(seed: Vec<u8>) -> HostMessage {
    let now = unix_now();
    HostMessage::Restored {
        version: PROTOCOL_VERSION,
        unix_secs: now.as_secs() as i64,
        unix_nanos: now.subsec_nanos(),
        seed,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Boots `guest` cold to its restore point and saves it into `cache`.
fn boot_and_save(guest: &Guest, cache: &Cache, work: &Path, name: &str) -> Duration {
    let started = Instant::now();
    let mut vm = guest.boot(&dir(work, name), BOOT).unwrap();
    wait_for(&mut vm, "Ready");
    let cold_ready = started.elapsed();
    let started = Instant::now();
    let saved = vm.save(guest, cache, STEP).unwrap();
    let save_time = started.elapsed();
    assert!(vm.qemu_version().starts_with(char::is_numeric), "{}", vm.qemu_version());
    vm.quit();
    eprintln!(
        "{name}: cold boot to ready {}; save {}; snapshot {:.1} MB",
        ms(cold_ready),
        ms(save_time),
        saved.bytes as f64 / 1e6
    );
    assert!(saved.path.is_file() && saved.evicted.is_empty());
    unix_now()
}

/// Restores `guest` from `cache`, hands it `seed` with the host's time, and runs its probe.
fn restore_and_probe(
    guest: &Guest,
    cache: &Cache,
    work: &Path,
    name: &str,
    seed: Vec<u8>,
) -> Probe {
    let started = Instant::now();
    let restore = guest.restore(cache, &dir(work, name), STEP).unwrap();
    let Restore::Running(mut vm) = restore else { panic!("{name}: the snapshot was not used") };
    let running = started.elapsed();
    let sent = unix_now();
    vm.send(&restored(seed)).unwrap();
    let mut run = plan();
    run.restore_point = false;
    vm.send_plan(&run).unwrap();
    wait_for(&mut vm, "Hello");
    let greeted = started.elapsed();
    let probe = run_probe(&mut vm);
    let finished = unix_now();
    // After `Done` the host ends the VM, as the harness does.
    vm.quit();
    eprintln!(
        "{name}: running {} after QEMU's start, greeted after {}; guest clock {:.3} s after \
         the host sent it",
        ms(running),
        ms(greeted),
        probe.realtime.as_secs_f64() - sent.as_secs_f64()
    );
    // The host's time, not the snapshot's: between sending it and seeing the result.
    assert!(
        probe.realtime >= sent,
        "{name}: guest {:?} before the host's {sent:?}",
        probe.realtime
    );
    assert!(probe.realtime <= finished, "{name}: guest {:?} after {finished:?}", probe.realtime);
    probe
}

/// Boots `probe` on `kernel` to its restore point, saves it, restores it twice with the host's
/// seed and twice without, and checks the clock and the random bytes.
fn clock_and_randomness(kernel: &vmtest::kernel::Kernel, arch: Arch, probe: &Path) {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let guest = Guest::new(kernel, arch, probe, &plan(), false, work).unwrap();
    let cache = Cache::at(&work.join("snapshots"), 1 << 30);
    assert!(matches!(guest.restore(&cache, &dir(work, "none"), STEP).unwrap(), Restore::Miss));
    let saved_at = boot_and_save(&guest, &cache, work, &format!("{arch} cold"));
    // Let the snapshot's clock fall clearly behind the host's.
    std::thread::sleep(Duration::from_secs(3));
    let probes: Vec<Probe> = (0..2)
        .map(|run| {
            restore_and_probe(&guest, &cache, work, &format!("{arch} warm{run}"), host_seed())
        })
        .collect();
    for probe in &probes {
        assert!(probe.realtime > saved_at + Duration::from_secs(2));
        assert!(!probe.vmgenid, "no vmgenid device was asked for");
    }
    assert_ne!(probes[0].getrandom, probes[1].getrandom, "two restores drew the same bytes");
    // What the seed is for: two restores that get none (and have no vmgenid) often draw the
    // same bytes. Reported, not asserted: the kernel reseeds by itself now and then.
    let unseeded: Vec<Probe> = (0..2)
        .map(|run| {
            restore_and_probe(&guest, &cache, work, &format!("{arch} unseeded{run}"), Vec::new())
        })
        .collect();
    eprintln!(
        "{arch}: without a seed, two restores drew {} bytes",
        if unseeded[0].getrandom == unseeded[1].getrandom { "the same" } else { "different" }
    );
}

#[test]
fn a_restored_guest_runs_with_the_hosts_clock_and_fresh_random_bytes() {
    let Some(kernel) = kernel(Arch::host()) else { return };
    clock_and_randomness(&kernel, Arch::host(), Path::new(PROBE));
}

#[test]
fn a_restored_arm64_guest_runs_with_the_hosts_clock_and_fresh_random_bytes() {
    if Arch::host() == Arch::Aarch64 {
        // The test above is this one there.
        return;
    }
    let Some(kernel) = kernel(Arch::Aarch64) else { return };
    let Some(probe) = aarch64_probe() else { return };
    clock_and_randomness(&kernel, Arch::Aarch64, &probe);
}

#[test]
fn a_restored_x86_64_guest_has_qemus_vmgenid_device_bound() {
    if Arch::host() != Arch::X86_64 {
        // QEMU 7.2 has no vmgenid device for arm64.
        return;
    }
    let Some(kernel) = kernel(Arch::X86_64) else { return };
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let guest = Guest::new(&kernel, Arch::X86_64, Path::new(PROBE), &plan(), true, work).unwrap();
    let cache = Cache::at(&work.join("snapshots"), 1 << 30);
    boot_and_save(&guest, &cache, work, "cold-vmgenid");
    let probes: Vec<Probe> = (0..2)
        .map(|run| restore_and_probe(&guest, &cache, work, &format!("vmgenid{run}"), Vec::new()))
        .collect();
    assert!(
        probes.iter().all(|p| p.vmgenid),
        "the kernel did not bind QEMU's vmgenid device: {}",
        probes[0].output
    );
    assert_ne!(probes[0].getrandom, probes[1].getrandom, "two restores drew the same bytes");
}
