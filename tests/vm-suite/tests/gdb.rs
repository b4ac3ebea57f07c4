//! `VMTEST_GDB`: runs `fixture-gdb` as a user would, attaches a scripted `gdb -batch` to what the
//! harness says to attach to, and checks that the test then passes; and that a run without
//! `VMTEST_GDB` boots QEMU exactly as before.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vmtest::arch::Arch;

const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture-gdb");
/// `cargo vmtest run`'s runner.
const RUNNER: &str = env!("CARGO_BIN_EXE_runner");

/// A private TMPDIR per run, where the run's VM temp dirs (and so its sockets) are.
struct RunDir(PathBuf);

impl RunDir {
    fn new(label: &str) -> RunDir {
        let dir = std::env::temp_dir().join(format!("vmtest-gdb-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        RunDir(dir)
    }

    fn command(&self, program: &str, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(program);
        command.env("TMPDIR", &self.0).env_remove("VMTEST_TEST").env_remove("VMTEST_GDB");
        if program == FIXTURE {
            command.args(["--test-threads", "1"]);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The command lines of the processes whose arguments mention `needle` (QEMU's mention their
/// temp dir), as argument lists.
fn processes_mentioning(needle: &Path) -> Vec<Vec<String>> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().skip(1).any(|a| a.contains(&needle)) {
            found.push(args);
        }
    }
    found
}

/// The arguments of the run's QEMU, once it runs (at most two minutes).
fn qemu_args(run: &RunDir) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(args) =
            processes_mentioning(&run.0).into_iter().find(|args| args[0].contains("qemu-system"))
        {
            return args;
        }
        assert!(Instant::now() < deadline, "no QEMU started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines of `reader`, as they come.
fn lines(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// A started harness run: its stdout and stderr lines.
struct Started {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen_stderr: String,
}

impl Started {
    fn new(mut command: Command) -> Started {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Started { child, stdout, stderr, seen_stderr: String::new() }
    }

    /// Reads stderr until a line holds `needle` (at most two minutes); returns that line.
    fn stderr_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "no {needle:?} on stderr:\n{}", self.seen_stderr);
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(50)) {
                self.seen_stderr.push_str(&line);
                self.seen_stderr.push('\n');
                if line.contains(needle) {
                    return line;
                }
            }
        }
    }

    /// Waits for the run to end; its exit code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let code = self.child.wait().unwrap().code();
        let stdout: Vec<String> = self.stdout.iter().collect();
        let mut stderr = self.seen_stderr;
        stderr.extend(self.stderr.iter().map(|l| l + "\n"));
        (code, stdout.join("\n"), stderr)
    }
}

/// The words of the indented command line the harness printed after its `VMTEST_GDB` line
/// (the words it quotes are single-quoted, without quotes inside).
fn announced_command(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('\'') {
            let end = quoted.find('\'').unwrap();
            words.push(quoted[..end].to_owned());
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    words
}

/// The gdb to run, or `None` (after saying so) when it is not installed.
fn gdb(program: &str) -> Option<String> {
    let found = Command::new(program).arg("--version").stdout(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return Some(program.to_owned());
    }
    vmtest::__testing::missing(&format!(
        "no `{program}` (apt-get install gdb; `cargo xtask setup` installs it)"
    ));
    None
}

/// Runs the announced gdb command line with `script` added as `-ex` commands, in batch mode.
fn run_gdb(announced: &[String], script: &[&str]) -> Output {
    let mut command = Command::new(&announced[0]);
    command.args(["-batch", "-nx"]).args(&announced[1..]);
    for line in script {
        command.args(["-ex", line]);
    }
    let output = command.stdin(Stdio::null()).output().unwrap();
    eprintln!(
        "gdb said:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stored_6_12(arch: Arch) -> Option<vmtest::kernel::Kernel> {
    match vmtest::kernel::resolve(Some("6.12"), arch) {
        Ok(kernel) => Some(kernel),
        Err(_) => {
            vmtest::__testing::missing(&format!(
                "no 6.12 {arch} kernel in the store (`cargo xtask setup` fetches one)"
            ));
            None
        }
    }
}

#[test]
fn kernel_debugging_pauses_the_guest_until_gdb_attached_and_reads_its_symbols() {
    if Arch::host() != Arch::X86_64 {
        return vmtest::__testing::missing("an x86_64 host (fixture-gdb is built for it)");
    }
    let Some(kernel) = stored_6_12(Arch::X86_64) else { return };
    let Some(gdb) = gdb("gdb") else { return };
    let run = RunDir::new("kernel");
    let command = run.command(FIXTURE, &[("VMTEST_GDB", "kernel")]);
    debug_kernel(&run, command, &kernel, &gdb);
}

/// The same for an arm64 guest, through `cargo vmtest run`'s runner and `gdb-multiarch`: the
/// fixture is cross-built for aarch64 (musl, rust-lld) into the workspace's target dir, where
/// `cargo xtask test --arch arm64` builds the same crates.
#[test]
fn arm64_kernel_debugging_takes_gdb_multiarch() {
    if Arch::host() != Arch::X86_64 {
        return vmtest::__testing::missing("an x86_64 host (arm64 is the foreign arch here)");
    }
    let Some(kernel) = stored_6_12(Arch::Aarch64) else { return };
    let Some(gdb) = gdb("gdb-multiarch") else { return };
    let triple = "aarch64-unknown-linux-musl";
    // <target>/debug/fixture-gdb
    let target = Path::new(FIXTURE).parent().unwrap().parent().unwrap();
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "vm-suite", "--bin", "fixture-gdb", "--target", triple])
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(
        built.success(),
        "building fixture-gdb for {triple} failed (rustup target add {triple})"
    );
    let fixture = target.join(triple).join("debug/fixture-gdb");
    let run = RunDir::new("arm64");
    let mut command = run.command(RUNNER, &[("VMTEST_GDB", "kernel")]);
    command.arg(&fixture);
    debug_kernel(&run, command, &kernel, &gdb);
    // The test process cannot be debugged there: Debian's gdbserver needs the guest arch's
    // libraries, which this host does not have. One error, before anything boots.
    let output = run.command(RUNNER, &[("VMTEST_GDB", "test")]).arg(&fixture).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("VMTEST_GDB=test works for guests of the host's arch only"),
        "{stderr}"
    );
}

/// Runs `command` (the fixture with `VMTEST_GDB=kernel`), checks that its VM waits paused with
/// a gdb stub, attaches the announced `gdb` (which must be `gdb`), reads the kernel's banner
/// when the store has its debug image, detaches, and checks that the test then passes.
fn debug_kernel(run: &RunDir, command: Command, kernel: &vmtest::kernel::Kernel, gdb: &str) {
    let mut started = Started::new(command);
    started.stderr_line(
        "VMTEST_GDB=kernel: the VM for debugged, second is paused before its kernel runs",
    );
    let announced = announced_command(&started.stderr_line("target remote"));
    assert_eq!(announced[0], gdb, "{announced:?}");
    let args = qemu_args(run);
    for flag in ["-S", "-gdb", "chardev:gdbstub"] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
    }
    assert!(args.last().unwrap().contains(" nokaslr"), "{args:?}");
    // Booted cold, from the kernel's first instruction, never restored from a snapshot.
    assert!(!args.iter().any(|a| a == "-incoming"), "{args:?}");
    // Paused: nothing runs before gdb says so, longer than the test's timeout (1 s, x3 under
    // TCG), which is suspended.
    std::thread::sleep(Duration::from_secs(5));
    assert!(started.child.try_wait().unwrap().is_none(), "the run ended without a debugger");
    let symbols = kernel.debug_image();
    assert_eq!(announced.get(1).map(PathBuf::from), symbols.clone().or(Some("-ex".into())));
    let output = match &symbols {
        Some(_) => run_gdb(
            &announced,
            &[
                "break start_kernel",
                "continue",
                "print linux_banner",
                "print init_task.comm",
                "detach",
            ],
        ),
        None => run_gdb(&announced, &["info registers pc", "detach"]),
    };
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("detached"), "{said}");
    let (code, stdout, stderr) = started.finish();
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test debugged ... ok"), "{stdout}");
    assert!(stdout.contains("test second ... ok"), "{stdout}");
    match symbols {
        Some(_) => {
            assert!(said.contains("Breakpoint 1") && said.contains(" start_kernel ()"), "{said}");
            assert!(said.contains("<linux_banner> \"Linux version 6.12"), "{said}");
            assert!(said.contains("= \"swapper"), "{said}");
        }
        None => vmtest::__testing::missing(&format!(
            "the debug image of 6.12 for {} (`cargo vmtest kernel fetch 6.12 --arch {} \
             --debug-symbols`; `cargo xtask setup` fetches it): attached without symbols only",
            kernel.arch(),
            kernel.arch()
        )),
    }
}

#[test]
fn test_debugging_stops_the_test_process_where_gdb_says() {
    if Arch::host() != Arch::X86_64 {
        return vmtest::__testing::missing("an x86_64 host (fixture-gdb is built for it)");
    }
    if stored_6_12(Arch::X86_64).is_none() {
        return;
    }
    let Some(_) = gdb("rust-gdb") else { return };
    let run = RunDir::new("test");
    let mut command = run.command(FIXTURE, &[("VMTEST_GDB", "test"), ("VMTEST_GDB_SETS", "42")]);
    command.arg("--nocapture");
    let mut started = Started::new(command);
    let line = started.stderr_line("VMTEST_GDB=test: each test of this VM waits for a debugger");
    assert!(line.contains("timeouts are suspended"), "{line}");
    let announced = announced_command(&started.stderr_line("target remote"));
    assert_eq!(announced[..2], ["rust-gdb".to_owned(), FIXTURE.to_owned()], "{announced:?}");
    started.stderr_line(
        "(debugged: `break fixture_gdb::debugged`, second: `break fixture_gdb::second`)",
    );
    let args = qemu_args(&run);
    assert!(args.iter().any(|a| a.ends_with("name=vmtest.gdb")), "{args:?}");
    assert!(!args.iter().any(|a| a == "-S" || a == "-gdb"), "{args:?}");
    // The test process waits, longer than its timeout, until a debugger comes.
    started.stderr_line("waits for gdb on vmtest.gdb");
    std::thread::sleep(Duration::from_secs(5));
    assert!(started.child.try_wait().unwrap().is_none(), "the run ended without a debugger");
    let output = run_gdb(
        &announced,
        &[
            "break fixture_gdb::checked",
            "continue",
            "bt 3",
            "set var fixture_gdb::VALUE = 42",
            "continue",
        ],
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("hit Breakpoint 1, fixture_gdb::checked ()"), "{said}");
    assert!(said.contains("fixture_gdb::debugged ()"), "{said}");
    assert!(said.contains("exited normally"), "{said}");
    // The next test of the VM waits for a debugger of its own, on the same socket.
    started.stderr_line("waits for gdb on vmtest.gdb");
    let output = run_gdb(&announced, &["break fixture_gdb::second", "continue", "continue"]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("hit Breakpoint 1, fixture_gdb::second ()"), "{said}");
    assert!(said.contains("exited normally"), "{said}");
    let (code, stdout, stderr) = started.finish();
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test debugged ... ok"), "{stdout}");
    assert!(stdout.contains("test second ... ok"), "{stdout}");
}

#[test]
fn without_vmtest_gdb_qemu_runs_as_before() {
    if stored_6_12(Arch::host()).is_none() {
        return;
    }
    let plain_run = RunDir::new("plain");
    // Cold boots both, so that a snapshot saved by one run does not make the next one's
    // arguments differ (VMTEST_GDB itself turns warm starts off).
    let plain = Started::new(plain_run.command(FIXTURE, &[("VMTEST_SNAPSHOT", "off")]));
    let plain_args = qemu_args(&plain_run);
    let (code, stdout, stderr) = plain.finish();
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("VMTEST_GDB"), "{stderr}");
    for flag in ["-S", "-gdb"] {
        assert!(!plain_args.iter().any(|a| a == flag), "{flag} in {plain_args:?}");
    }
    for word in ["nokaslr", "gdbstub", "gdb-kernel", "server=on", "vmtest.gdb"] {
        assert!(!plain_args.iter().any(|a| a.contains(word)), "{word} in {plain_args:?}");
    }
    // An empty VMTEST_GDB is unset.
    let empty_run = RunDir::new("empty");
    let empty =
        Started::new(empty_run.command(FIXTURE, &[("VMTEST_GDB", ""), ("VMTEST_SNAPSHOT", "off")]));
    let empty_args = qemu_args(&empty_run);
    assert_eq!(empty.finish().0, Some(0));
    // The same arguments but for the VM's temp dir.
    let strip = |args: &[String], dir: &Path| -> Vec<String> {
        let dir = dir.to_string_lossy();
        args.iter()
            .map(|a| match a.find(&*dir) {
                Some(at) => {
                    let rest = &a[at + dir.len()..];
                    let file = rest.trim_start_matches('/').split_once('/').map_or("", |x| x.1);
                    format!("{}<vm dir>/{file}", &a[..at])
                }
                None => a.clone(),
            })
            .collect()
    };
    assert_eq!(strip(&plain_args, &plain_run.0), strip(&empty_args, &empty_run.0));
}

#[test]
fn a_bad_vmtest_gdb_is_one_clear_error() {
    let run = RunDir::new("bad");
    let output = run.command(FIXTURE, &[("VMTEST_GDB", "kernal")]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in ["VMTEST_GDB=\"kernal\"", "`kernel`", "`test`"] {
        assert!(errors[0].contains(needle), "{needle} missing in {}", errors[0]);
    }
    assert!(processes_mentioning(&run.0).is_empty());
}

#[test]
fn a_missing_gdbserver_is_one_clear_error_naming_the_package_and_the_fetch() {
    // A store with the real one's kernels and nothing else; a PATH with QEMU and without apt,
    // so gdbserver can be neither found nor fetched.
    let arch = Arch::host();
    if stored_6_12(arch).is_none() {
        return;
    }
    let run = RunDir::new("no-gdbserver");
    let (store, bin) = vm_suite::store_without_extras(&run.0, arch);
    let output = run
        .command(
            FIXTURE,
            &[
                ("VMTEST_GDB", "test"),
                ("VMTEST_KERNELS", store.to_str().unwrap()),
                ("PATH", bin.to_str().unwrap()),
            ],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let fetch = format!("`cargo vmtest userland fetch --gdbserver --arch {arch}`");
    for needle in ["VMTEST_GDB=test needs Debian's `gdbserver`", "apt", &fetch] {
        assert!(errors[0].contains(needle), "{needle} missing in {}", errors[0]);
    }
    assert!(!store.join("userland").join(arch.name()).join("gdbserver").exists());
    assert!(processes_mentioning(&run.0).iter().all(|args| !args[0].contains("qemu")));
}
