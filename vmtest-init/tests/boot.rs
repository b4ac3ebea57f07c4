//! Boots the static `vmtest-init` as PID 1 in QEMU and checks what it reports.
//!
//! Needs `qemu-system-x86_64`, the `x86_64-unknown-linux-musl` target and a kernel with
//! virtio_pci and virtio_console built in, named by `VMTEST_KERNEL` (path to a bzImage).
//! `VMTEST_KERNEL_MODULES` (a `lib/modules/<release>` directory) adds a module-loading check.
//! `VMTEST_KEEP=1` keeps the scratch directory (initramfs, console log, control stream).
//! Run with `cargo test -p vmtest-init --test boot -- --ignored`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmtest_init::protocol::{
    encode_frame, FrameReader, GuestMessage, Module, Outcome, Plan, PlannedTest, Stream,
    KERNEL_LOG_NAME, PROTOCOL_VERSION,
};

const MUSL: &str = "x86_64-unknown-linux-musl";
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

#[test]
#[ignore = "boots a VM: needs qemu-system-x86_64, the musl target and VMTEST_KERNEL"]
fn runs_a_plan_and_says_done() {
    let env = BootEnv::new("plan");
    let modules_dir = std::env::var_os("VMTEST_KERNEL_MODULES").map(PathBuf::from);

    let test = |id: u32, mode: &str, capture: bool| PlannedTest {
        id,
        name: format!("probe::{mode}"),
        program: "/bin/probe".into(),
        args: vec![mode.into()],
        env: vec![("PROBE".into(), "value".into())],
        cwd: "/tmp".into(),
        timeout_ms: 60_000,
        capture,
    };
    let mut tests = vec![
        test(0, "ok", true),
        test(1, "exit3", true),
        PlannedTest { timeout_ms: 1_000, ..test(2, "sleep", true) },
        test(3, "abort", true),
        test(4, "stream", false),
        test(5, "orphan", true),
        PlannedTest { program: "/bin/nope".into(), ..test(6, "ok", true) },
        test(7, "big", true),
        test(8, "system", true),
        test(9, "ok", true),
    ];
    let mut modules = vec![Module {
        name: "bogus".into(),
        path: "/lib/modules/bogus.ko".into(),
        wanted_by: vec![9],
    }];
    let mut files = vec![("lib/modules/bogus.ko".to_owned(), b"not an ELF file".to_vec())];
    if let Some(dir) = &modules_dir {
        let ko = dir.join("kernel/drivers/net/dummy.ko.xz");
        files.push(("lib/modules/dummy.ko.xz".into(), std::fs::read(&ko).unwrap()));
        modules.push(Module {
            name: "dummy".into(),
            path: "/lib/modules/dummy.ko.xz".into(),
            wanted_by: vec![10],
        });
        tests.push(PlannedTest {
            args: vec!["module".into(), "dummy".into()],
            ..test(10, "", true)
        });
    }
    let plan = Plan::new(modules, tests);

    let messages = env.boot(&plan, &files);
    let mut messages = messages.into_iter();
    match messages.next() {
        Some(GuestMessage::Hello { version, kernel_release }) => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert!(kernel_release.starts_with(char::is_numeric), "{kernel_release}");
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    let mut finished = std::collections::BTreeMap::new();
    let mut streamed = (Vec::new(), Vec::new());
    let mut current = None;
    let mut done = false;
    let mut files: std::collections::BTreeMap<(u32, String), Vec<u8>> = Default::default();
    for message in messages {
        assert!(!done, "message after Done: {message:?}");
        match message {
            GuestMessage::Log(line) => eprintln!("guest log: {line}"),
            GuestMessage::TestStarted { id } => {
                assert_eq!(current, None, "test {id} started inside another");
                current = Some(id);
            }
            GuestMessage::Output { id, stream, bytes } => {
                assert_eq!((current, id), (Some(4), 4));
                match stream {
                    Stream::Stdout => streamed.0.extend(bytes),
                    Stream::Stderr => streamed.1.extend(bytes),
                }
            }
            GuestMessage::TestFinished { id, outcome, duration_ms, output } => {
                assert_eq!(current.take(), Some(id));
                eprintln!("test {id}: {outcome:?} in {duration_ms} ms");
                finished.insert(id, (outcome, duration_ms, output));
            }
            GuestMessage::FileChunk { name, data, .. } => {
                let name = String::from_utf8(name).unwrap();
                let id = current.unwrap_or_else(|| panic!("file {name} outside any test"));
                files.entry((id, name)).or_default().extend(data);
            }
            GuestMessage::KernelLog { id, .. } => assert_eq!(current, Some(id)),
            GuestMessage::Done => done = true,
            other => panic!("unexpected {other:?}\n{}", env.console()),
        }
    }
    assert!(done, "no Done\n{}", env.console());
    let console = env.console();
    // PID 1's timeline is the one line it prints on a clean run, before `Done`.
    let timeline = "vmtest-init: timing since boot: started ";
    assert_eq!(console.matches(timeline).count(), 1, "{console}");
    let diagnostics: Vec<&str> =
        console.lines().filter(|l| l.contains("vmtest-init:") && !l.contains(timeline)).collect();
    assert!(diagnostics.is_empty(), "unexpected diagnostics on the console:\n{console}");
    assert_eq!(finished.len(), plan.tests.len());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let (outcome, _, output) = &finished[&0];
    assert_eq!(outcome, &Outcome::Exited(0));
    // stdout and stderr in the order written; exactly the planned environment, plus where PID 1
    // wants skip reasons and artifacts.
    assert_eq!(
        text(output),
        "hello stdout\nhello stderr\nenv PROBE=value\nenv VMTEST_SKIP_FILE=/tmp/vmtest-skip-1-0\n\
         env VMTEST_ARTIFACT_DIR=/run/vmtest/out/0/artifacts\ncwd /tmp\n"
    );

    // A failed test's kernel log travels under its own name; a passing test sends nothing.
    let dmesg: Vec<u32> =
        files.keys().filter(|(_, name)| name == KERNEL_LOG_NAME).map(|(id, _)| *id).collect();
    let failed: Vec<u32> = finished
        .iter()
        .filter(|(_, (outcome, ..))| !matches!(outcome, Outcome::Exited(0) | Outcome::Skipped(_)))
        .map(|(id, _)| *id)
        .collect();
    assert!(failed.starts_with(&[1, 2, 3]), "{failed:?}");
    assert_eq!(dmesg, failed, "{:?}", files.keys().collect::<Vec<_>>());
    assert!(text(&files[&(1, KERNEL_LOG_NAME.to_owned())]).contains("Linux version"));

    assert_eq!(finished[&1].0, Outcome::Exited(3));
    let (outcome, duration_ms, _) = &finished[&2];
    assert_eq!(outcome, &Outcome::TimedOut { after_ms: 1_000 });
    assert!((1_000..30_000).contains(duration_ms), "{duration_ms}");
    assert_eq!(finished[&3].0, Outcome::Signaled(6));

    let (outcome, _, output) = &finished[&4];
    assert_eq!(outcome, &Outcome::Exited(0));
    assert!(output.is_empty());
    assert_eq!(text(&streamed.0), "line 0\nline 1\nline 2\n");
    assert_eq!(text(&streamed.1), "err line\n");

    let (outcome, duration_ms, output) = &finished[&5];
    assert_eq!(outcome, &Outcome::Exited(0));
    assert_eq!(text(output), "spawned\n", "the orphan's group was not killed");
    assert!(*duration_ms < 30_000);

    match &finished[&6].0 {
        Outcome::Error(e) => assert!(e.starts_with("failed to start /bin/nope"), "{e}"),
        other => panic!("{other:?}"),
    }

    let (outcome, _, stdout) = &finished[&7];
    assert_eq!(outcome, &Outcome::Exited(0));
    let tail = &stdout[stdout.len().saturating_sub(100)..];
    assert!(stdout.ends_with(b"xxxEND"), "{} bytes, ending {}", stdout.len(), text(tail));
    assert!(stdout.len() < 8 << 20, "{}", stdout.len());
    assert!(text(&stdout[..200]).starts_with("[vmtest-init: output truncated: "));

    let (outcome, _, stdout) = &finished[&8];
    assert_eq!(outcome, &Outcome::Exited(0));
    let system = text(stdout);
    assert!(system.starts_with("lo_up true\n"), "{system}");
    for mount in [
        "proc /proc proc",
        "sysfs /sys sysfs",
        "devtmpfs /dev devtmpfs",
        "devpts /dev/pts devpts",
        // The initramfs's own /dev/shm, carried across the devtmpfs mount.
        "rootfs /dev/shm rootfs",
        "debugfs /sys/kernel/debug debugfs",
        "tracefs /sys/kernel/tracing tracefs",
        "bpffs /sys/fs/bpf bpf",
        "cgroup2 /sys/fs/cgroup cgroup2",
        "securityfs /sys/kernel/security securityfs",
    ] {
        assert!(system.contains(mount), "{mount} missing:\n{system}");
    }
    // /tmp and /run are the initramfs's, not mounted over.
    for target in [" /tmp ", " /run "] {
        assert!(!system.contains(target), "{target} is mounted over:\n{system}");
    }

    match &finished[&9].0 {
        Outcome::Error(e) => {
            assert!(e.starts_with("failed to load module bogus: "), "{e}");
            assert!(e.contains("dmesg: Invalid ELF header"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    if modules_dir.is_some() {
        assert_eq!(finished[&10].0, Outcome::Exited(0), "dummy.ko.xz did not load");
    }
}

#[test]
#[ignore = "boots a VM: needs qemu-system-x86_64, the musl target and VMTEST_KERNEL"]
fn reports_a_fatal_error() {
    let env = BootEnv::new("fatal");
    let plan = Plan::new(
        vec![Module {
            name: "virtio_missing".into(),
            path: "/lib/modules/virtio_missing.ko".into(),
            wanted_by: vec![],
        }],
        vec![],
    );
    let messages = env.boot(&plan, &[]);
    assert!(matches!(messages.first(), Some(GuestMessage::Hello { .. })), "{messages:?}");
    match messages.last() {
        Some(GuestMessage::Fatal(e)) => {
            assert!(e.starts_with("failed to load module virtio_missing: failed to open"), "{e}")
        }
        other => panic!("expected Fatal last, got {other:?}\n{}", env.console()),
    }
    assert!(env.console().contains("vmtest-init: fatal: failed to load module virtio_missing"));
}

#[test]
#[ignore = "boots a VM: needs qemu-system-x86_64, the musl target and VMTEST_KERNEL"]
fn refuses_a_plan_of_another_version_or_with_trailing_bytes() {
    let env = BootEnv::new("version");
    let newer = Plan { version: PROTOCOL_VERSION + 1, ..Plan::default() };
    let mut trailing = encode_frame(&Plan::default()).unwrap();
    trailing.extend_from_slice(b"junk");
    for (plan, expected) in [
        (
            encode_frame(&newer).unwrap(),
            format!(
                "failed to read the plan /vmtest/plan: the guest speaks vmtest protocol version \
                 {PROTOCOL_VERSION}, the host version {}: the guest's vmtest-init is older than \
                 the host's vmtest: rebuild it",
                PROTOCOL_VERSION + 1
            ),
        ),
        (
            trailing,
            "failed to decode the plan /vmtest/plan: 4 unexpected bytes after the frame".to_owned(),
        ),
    ] {
        let messages = env.boot_with_plan_bytes(&plan, &[]);
        assert!(
            matches!(messages.first(), Some(GuestMessage::Hello { version: PROTOCOL_VERSION, .. })),
            "{messages:?}"
        );
        match messages.last() {
            Some(GuestMessage::Fatal(e)) => assert!(e.starts_with(&expected), "{e}"),
            other => panic!("expected Fatal last, got {other:?}\n{}", env.console()),
        }
    }
}

/// A scratch directory with the init binary and the probe program built for musl.
struct BootEnv {
    dir: PathBuf,
    init: PathBuf,
    probe: PathBuf,
    kernel: PathBuf,
}

impl BootEnv {
    fn new(name: &str) -> Self {
        let kernel = PathBuf::from(
            std::env::var_os("VMTEST_KERNEL").expect("VMTEST_KERNEL must name a kernel image"),
        );
        let dir =
            std::env::temp_dir().join(format!("vmtest-init-boot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let init = build_init();
        let probe = dir.join("probe");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boot/probe.rs");
        run(Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["--edition", "2021", "-O", "--target", MUSL, "-o"])
            .arg(&probe)
            .arg(&source));
        Self { dir, init, probe, kernel }
    }

    /// Boots with `plan` and `files` (path in the initramfs, contents); returns every frame.
    fn boot(&self, plan: &Plan, files: &[(String, Vec<u8>)]) -> Vec<GuestMessage> {
        self.boot_with_plan_bytes(&encode_frame(plan).unwrap(), files)
    }

    /// [`BootEnv::boot`] with the plan file's bytes as given.
    fn boot_with_plan_bytes(&self, plan: &[u8], files: &[(String, Vec<u8>)]) -> Vec<GuestMessage> {
        let initrd = self.dir.join("initrd.cpio");
        let mut cpio = Cpio::default();
        for dir in ["bin", "vmtest", "lib", "lib/modules", "tmp"] {
            cpio.dir(dir);
        }
        cpio.file("init", 0o755, &std::fs::read(&self.init).unwrap());
        cpio.file("bin/probe", 0o755, &std::fs::read(&self.probe).unwrap());
        cpio.file("vmtest/plan", 0o644, plan);
        for (path, bytes) in files {
            cpio.file(path, 0o644, bytes);
        }
        std::fs::write(&initrd, cpio.finish()).unwrap();

        let control = self.dir.join("control.out");
        // An earlier boot's stream must not pass for this one's.
        let _ = std::fs::remove_file(&control);
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-M", "pc", "-accel", "tcg", "-m", "256M", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", self.dir.join("console.log").display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .args(["-device", "virtio-serial-pci", "-chardev"])
            .arg(format!("file,id=ctl,path={}", control.display()))
            .args(["-device", "virtserialport,chardev=ctl,name=vmtest.control"])
            .stdin(Stdio::null())
            .spawn()
            .expect("failed to start qemu-system-x86_64");
        // As the harness does: once the guest's last message (`Done` or `Fatal`) is in, the
        // host stops QEMU; the guest waits for that rather than power off.
        let start = Instant::now();
        loop {
            let messages = read_messages(&control);
            if messages
                .last()
                .is_some_and(|m| matches!(m, GuestMessage::Done | GuestMessage::Fatal(_)))
            {
                assert!(qemu.try_wait().unwrap().is_none(), "the guest powered off by itself");
                let _ = qemu.kill();
                let _ = qemu.wait();
                eprintln!("last message after {:?} ({})", start.elapsed(), self.dir.display());
                return messages;
            }
            if let Some(status) = qemu.try_wait().unwrap() {
                panic!(
                    "QEMU exited ({status}) before the guest's last message\n{}",
                    self.console()
                );
            }
            if start.elapsed() > BOOT_DEADLINE {
                let _ = qemu.kill();
                let _ = qemu.wait();
                panic!("no last message within {BOOT_DEADLINE:?}\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }
}

impl Drop for BootEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("VMTEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The whole frames in the control port's file so far (QEMU may be writing the next one).
fn read_messages(control: &Path) -> Vec<GuestMessage> {
    let bytes = std::fs::read(control).unwrap_or_default();
    let mut reader = FrameReader::new(&bytes[..]);
    let mut messages = Vec::new();
    while let Ok(Some(message)) = reader.next_frame() {
        messages.push(message);
    }
    messages
}

/// Builds the static `vmtest-init` binary; returns its path.
fn build_init() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--quiet", "-p", "vmtest-init", "--bin", "vmtest-init", "--target", MUSL])
        .arg("--message-format=json")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("failed to run cargo");
    assert!(output.status.success(), "cargo build of vmtest-init failed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = "\"executable\":\"";
    stdout
        .lines()
        .filter_map(|line| {
            let start = line.find(key)? + key.len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .next_back()
        .expect("cargo reported no executable")
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("failed to run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

/// A newc archive, written in memory.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, &[]);
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | mode, data);
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let size = u32::try_from(data.len()).expect("file too large for newc");
        let name_len = u32::try_from(path.len() + 1).unwrap();
        let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
        let fields = [self.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_len, 0];
        write!(self.out, "070701").unwrap();
        for field in fields {
            write!(self.out, "{field:08x}").unwrap();
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}
