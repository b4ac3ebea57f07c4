//! The interactive shell in a guest, driven as a user would drive it: through a
//! pseudo-terminal this test owns, whose slave is the harness's controlling terminal.
//! `VMTEST_SHELL=on-failure` on a failing test (x86_64, the harness engine) and
//! `cargo vmtest shell --arch arm64` (the runner's guest under a static vmtest-init): commands
//! typed, their output read back, Ctrl-C and the window size reaching the guest, the
//! terminal restored, the run's exit status the test's own (or the shell's).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAILING: &str = env!("CARGO_BIN_EXE_fixture-failing");
const RUNNER: &str = env!("CARGO_BIN_EXE_runner");
/// Boots under TCG on a loaded 2-core host take a while; a shell answers within this.
const PATIENCE: Duration = Duration::from_secs(180);

/// A pseudo-terminal: the master this test reads and types on, and the slave the harness gets
/// as its stdin, stdout, stderr and controlling terminal.
struct Pty {
    master: File,
    slave: OwnedFd,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Pty {
        // SAFETY: plain libc calls on descriptors this function owns; `name` is a buffer of the
        // size given, NUL-terminated by ptsname_r on success.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = File::from_raw_fd(master);
            assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), 0);
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(slave >= 0, "open the pty's slave: {}", std::io::Error::last_os_error());
            let pty = Pty { master, slave: OwnedFd::from_raw_fd(slave) };
            pty.resize(rows, cols);
            pty
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// The slave's local modes (`c_lflag`).
    fn local_modes(&self) -> libc::tcflag_t {
        // SAFETY: tcgetattr fills the zeroed termios it is given.
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.slave.as_raw_fd(), &mut termios), 0);
            termios.c_lflag
        }
    }
}

/// A program running on a [`Pty`], everything it prints collected.
struct OnTerminal {
    child: Child,
    pty: Pty,
    output: Arc<Mutex<Vec<u8>>>,
}

impl OnTerminal {
    fn spawn(mut command: Command, pty: Pty) -> OnTerminal {
        let slave = || Stdio::from(pty.slave.try_clone().unwrap());
        command.stdin(slave()).stdout(slave()).stderr(slave());
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the slave once stdio is set.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut master = pty.master.try_clone().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once nobody has the slave open; this test keeps it open, so it runs on.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnTerminal { child, pty, output }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output after `from` holds `needle`; returns where it ends.
    fn expect(&mut self, from: usize, needle: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text();
            if let Some(at) = text.get(from..).and_then(|rest| rest.find(needle)) {
                return from + at + needle.len();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the run ended ({status}) before it printed {needle:?}:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no {needle:?} within {PATIENCE:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_in(&mut self, keys: &str) {
        self.pty.master.write_all(keys.as_bytes()).unwrap();
    }

    /// The run's exit code, once it ended.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the run did not end after the shell:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A fresh TMPDIR for one run, checked empty (no VM dir, no QEMU socket) after it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vmtest-shell-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_kernel(arch: vmtest::arch::Arch) -> bool {
    let found = vmtest::kernel::Store::open()
        .and_then(|store| store.list_arch(arch))
        .is_ok_and(|kernels| !kernels.is_empty());
    if !found {
        vmtest::__testing::missing(&format!(
            "no {arch} kernel in the store (`cargo xtask setup` fetches one)"
        ));
    }
    found
}

#[test]
fn a_failing_test_hands_its_guest_to_the_users_terminal() {
    if !have_kernel(vmtest::arch::Arch::host()) {
        return;
    }
    let tmp = TempDir::new("failing");
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(FAILING);
    command
        .args(["--exact", "panics"])
        .current_dir(cwd)
        .env("VMTEST_SHELL", "on-failure")
        .env("TMPDIR", &tmp.0)
        .env("TERM", "xterm")
        .env_remove("VMTEST_TEST");
    let mut run = OnTerminal::spawn(command, Pty::open(37, 101));
    let cooked = run.pty.local_modes();
    assert_ne!(cooked & libc::ICANON, 0);

    let at = run.expect(0, "rerun: VMTEST_TEST=panics /init\r\n");
    let at = run.expect(at, "# ");
    // The harness's terminal is raw: keys go to the guest as they are typed.
    assert_eq!(run.pty.local_modes() & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
    run.type_in(
        "echo answer=$((6*7)); cat /proc/version; stty size; pwd; echo test=$VMTEST_TEST\r",
    );
    let at = run.expect(at, "answer=42\r\n");
    let at = run.expect(at, "Linux version ");
    let at = run.expect(at, "37 101\r\n");
    let at = run.expect(at, &format!("{}\r\n", cwd.display()));
    let at = run.expect(at, "test=panics\r\n");
    // The window's new size reaches the guest's terminal.
    run.pty.resize(40, 120);
    std::thread::sleep(Duration::from_millis(500));
    run.type_in("stty size\r");
    let at = run.expect(at, "40 120\r\n");
    // Ctrl-C stops the guest's foreground command, not the harness. (Once `started` shows, the
    // shell has given the terminal back to the commands, with Ctrl-C as a signal.)
    run.type_in("echo started; sleep 600\r");
    let at = run.expect(at, "started\r\n");
    std::thread::sleep(Duration::from_millis(500));
    run.type_in("\x03");
    run.type_in("echo after=$((1+1))\r");
    let at = run.expect(at, "after=2\r\n");
    assert!(run.child.try_wait().unwrap().is_none(), "Ctrl-C ended the harness");
    // The hint's command runs the test again, in the guest.
    run.type_in("VMTEST_TEST=panics /init; echo rerun=$?\r");
    let at = run.expect(at, "rerun=101\r\n");
    run.type_in("exit\r");
    let code = run.wait();
    let text = run.text();
    assert_eq!(code, Some(101), "the run's result is the test's:\n{text}");
    let _ = at;
    assert!(text.contains("test panics ... ") && text.contains("test result: "), "{text}");
    assert!(!text.contains("job control turned off"), "no controlling terminal:\n{text}");
    let restored = run.pty.local_modes();
    assert_eq!(restored, cooked, "the terminal was not restored:\n{text}");
    tmp.assert_empty();
}

#[test]
fn a_guest_without_a_shell_says_so_and_the_run_goes_on() {
    if !have_kernel(vmtest::arch::Arch::host()) {
        return;
    }
    let tmp = TempDir::new("nouserland");
    let mut command = Command::new(FAILING);
    command
        .args(["--exact", "panics"])
        .env("VMTEST_SHELL", "on-failure")
        .env("VMTEST_USERLAND", "none")
        .env("TMPDIR", &tmp.0)
        .env_remove("VMTEST_TEST");
    let mut run = OnTerminal::spawn(command, Pty::open(24, 80));
    let code = run.wait();
    let text = run.text();
    assert_eq!(code, Some(101), "{text}");
    assert!(text.contains("vmtest: guest: failed to start /bin/sh in the guest: "), "{text}");
    assert!(text.contains("test result: "), "{text}");
    tmp.assert_empty();
}

#[test]
fn without_a_terminal_the_variable_is_ignored_and_a_bad_value_is_an_error() {
    let run = |value: &str, args: &[&str]| {
        Command::new(FAILING)
            .args(args)
            .env("VMTEST_SHELL", value)
            .env_remove("VMTEST_TEST")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let bad = run("yes", &["--exact", "panics"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("VMTEST_SHELL=\"yes\" is not one of never, on-failure, always"),
        "{stderr}"
    );
    if !have_kernel(vmtest::arch::Arch::host()) {
        return;
    }
    let piped = run("always", &["--exact", "panics"]);
    let stderr = String::from_utf8_lossy(&piped.stderr);
    let stdout = String::from_utf8_lossy(&piped.stdout);
    assert_eq!(piped.status.code(), Some(101), "{stdout}\n{stderr}");
    let warning = "VMTEST_SHELL=always is ignored: stdin and stdout are not a terminal";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(stdout.contains("test panics ... FAILED"), "{stdout}");
}

/// A static vmtest-init for `triple`, built once into a target dir of this test's own.
fn static_init(triple: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = workspace.join("target/shell-tests");
    let linker = format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase().replace('-', "_"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "vmtest-init", "--bin", "vmtest-init", "--target", triple])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target)
        .env(linker, "rust-lld")
        .status()
        .unwrap();
    assert!(status.success(), "building vmtest-init for {triple} failed");
    target.join(triple).join("debug/vmtest-init")
}

#[test]
fn cargo_vmtest_shell_explores_an_arm64_kernel() {
    use vmtest::arch::Arch;
    if !have_kernel(Arch::Aarch64) {
        return;
    }
    let init = static_init(Arch::Aarch64.musl_target());
    let tmp = TempDir::new("arm64");
    let mut command = Command::new(RUNNER);
    command
        .args(["--shell", "--arch", "arm64", "--kernel", "6.12"])
        .env("VMTEST_INIT", &init)
        .env("TMPDIR", &tmp.0)
        .env_remove("VMTEST_SHELL");
    let mut run = OnTerminal::spawn(command, Pty::open(30, 90));
    let at = run.expect(0, "vmtest: shell in the guest (no test runs)");
    let at = run.expect(at, "# ");
    run.type_in("echo answer=$((6*7)); uname -m; cat /proc/version; stty size\r");
    let at = run.expect(at, "answer=42\r\naarch64\r\nLinux version 6.12");
    let at = run.expect(at, "30 90\r\n");
    run.type_in("exit 3\r");
    let code = run.wait();
    let text = run.text();
    assert_eq!(code, Some(3), "the shell's exit status is the command's:\n{}", &text[at..]);
    assert_eq!(run.pty.local_modes() & libc::ICANON, libc::ICANON, "not restored:\n{text}");
    tmp.assert_empty();
}

#[test]
fn a_failing_plain_binary_hands_its_arm64_guest_over_and_keeps_its_exit_status() {
    use vmtest::arch::Arch;
    if !have_kernel(Arch::Aarch64) {
        return;
    }
    let store = vmtest::kernel::Store::open().unwrap();
    let Some(userland) = store.userland(Arch::Aarch64).unwrap() else {
        vmtest::__testing::missing(
            "no arm64 userland (`cargo vmtest userland fetch --arch arm64`)",
        );
        return;
    };
    let init = static_init(Arch::Aarch64.musl_target());
    let tmp = TempDir::new("plain-arm64");
    // Busybox started as `/main` runs no applet of that name: it fails, with its own status.
    let mut command = Command::new(RUNNER);
    command
        .arg(&userland.busybox)
        .arg("--bogus")
        .env("VMTEST_INIT", &init)
        .env("VMTEST_KERNEL", "6.12")
        .env("VMTEST_SHELL", "on-failure")
        .env("TMPDIR", &tmp.0);
    let mut run = OnTerminal::spawn(command, Pty::open(24, 80));
    let at = run.expect(0, "vmtest: shell in the guest after ");
    let at = run.expect(at, "failed (exit status ");
    let text = run.text();
    let status: i32 = text[at..].split(')').next().unwrap().parse().unwrap();
    let at = run.expect(at, "rerun: /main --bogus\r\n");
    let at = run.expect(at, "# ");
    run.type_in("echo answer=$((6*7)); uname -m\r");
    let at = run.expect(at, "answer=42\r\naarch64\r\n");
    // At the prompt the shell reads the terminal itself: Ctrl-D on an empty line ends it.
    run.expect(at, "# ");
    run.type_in("\x04");
    let code = run.wait();
    assert_ne!(status, 0);
    assert_eq!(code, Some(status), "Ctrl-D ends the run with the binary's status:\n{}", run.text());
    tmp.assert_empty();
}

#[test]
fn a_signal_during_the_shell_restores_the_terminal_and_stops_the_vm() {
    use vmtest::arch::Arch;
    if !have_kernel(Arch::host()) {
        return;
    }
    let init = static_init(Arch::host().musl_target());
    let tmp = TempDir::new("sigterm");
    let mut command = Command::new(RUNNER);
    command.args(["--shell"]).env("VMTEST_INIT", &init).env("TMPDIR", &tmp.0);
    let mut run = OnTerminal::spawn(command, Pty::open(24, 80));
    let cooked = run.pty.local_modes();
    let at = run.expect(0, "vmtest: shell in the guest (no test runs)");
    let at = run.expect(at, "# ");
    run.type_in("uname -m\r");
    run.expect(at, &format!("{}\r\n", std::env::consts::ARCH));
    assert_eq!(run.pty.local_modes() & libc::ICANON, 0, "the terminal is not raw");
    // SAFETY: kill(2) on the runner's pid, a child of this test that has not been reaped.
    assert_eq!(unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) }, 0);
    let code = run.wait();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{}", run.text());
    assert_eq!(run.pty.local_modes(), cooked, "not restored:\n{}", run.text());
    tmp.assert_empty();
}

#[test]
fn cargo_vmtest_shell_needs_a_terminal() {
    let output = Command::new(RUNNER)
        .args(["--shell", "--arch", "arm64"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`cargo vmtest shell` needs a terminal"), "{stderr}");
}
