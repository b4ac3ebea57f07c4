//! Runner mode for a binary without vmtest tests (an ordinary `#[test]` suite, or any program):
//! it boots under a static `vmtest-init` as `/init`, runs once as `/main` with the runner's
//! arguments in the runner's working directory, its output streams live, and its exit code
//! becomes the runner's. `cargo vmtest shell` boots the same guest with a shell instead of a
//! program ([`shell`]); `VMTEST_SHELL` offers one after the program ran.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmtest_init::protocol::{self, GuestMessage, Outcome, PlannedTest, ShellWhen, Stream};

use crate::arch::Arch;
use crate::cli::init_build::{self, INIT_ENV};
use crate::host::binary::elf_arch;
use crate::host::group::{write_image, Snapshots, BOOT_TIMEOUT};
use crate::image::guest_image::{Base, DebugInfo, GuestImage, Payload};
use crate::userland::GuestUserland;
use crate::vm::accel;
use crate::vm::memo::Memo;
use crate::vm::session::{self, VmSpec};
use crate::{kernel, Error};

/// How long the program may run, before scaling, unless `VMTEST_PLAIN_TIMEOUT` (seconds) says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What the guest runs.
enum Main<'a> {
    /// A binary with its arguments, as `/main`.
    Binary(&'a Path, &'a [String]),
    /// An interactive shell, from this kernel (a store name or an image's path; `None`: the
    /// default), in place of a program.
    Shell(Option<&'a str>),
}

/// Runs `binary` with `args` in a VM; returns its exit code (or 1 when it could not run).
pub(crate) fn run(binary: &Path, args: &[String]) -> Result<i32, Error> {
    let arch = elf_arch(binary)?;
    boot(arch, Main::Binary(binary, args))
}

/// Boots a guest of `arch` from `kernel` (`None`: `VMTEST_KERNEL` or the default) with an
/// interactive shell on this terminal, as a test's guest would be (the userland, `/tmp`, the
/// runner's working directory); returns the shell's exit status.
pub(crate) fn shell(kernel: Option<&str>, arch: Arch) -> Result<i32, Error> {
    if !crate::vm::shell::is_terminal() {
        return Err(Error::Config(
            "`cargo vmtest shell` needs a terminal: its stdin and stdout are not one".to_owned(),
        ));
    }
    boot(arch, Main::Shell(kernel))
}

fn boot(arch: Arch, main: Main<'_>) -> Result<i32, Error> {
    crate::vm::process::install_signal_cleanup();
    crate::vm::process::remove_stale_workdirs();
    let shell = match main {
        Main::Binary(..) => crate::vm::shell::from_env()?,
        Main::Shell(_) => ShellWhen::Instead,
    };
    let init = init_build::find_or_build(arch)?;
    let init_arch = elf_arch(&init)?;
    if init_arch != arch {
        let what = match main {
            Main::Binary(binary, _) => format!("{} is", binary.display()),
            Main::Shell(_) => "the shell is".to_owned(),
        };
        return Err(Error::Config(format!(
            "{} is a vmtest-init for {init_arch}, but {what} for {arch}: point {INIT_ENV} at a \
             vmtest-init built with {}",
            init.display(),
            init_build::build_hint(arch)
        )));
    }
    if crate::host::debug::Debugger::from_env()?.is_some() {
        let what = match main {
            Main::Binary(binary, _) => format!("{} is an ordinary binary", binary.display()),
            Main::Shell(_) => "`cargo vmtest shell` boots no test binary".to_owned(),
        };
        return Err(Error::Env(format!(
            "{} is for vmtest test binaries (`#[vm_test]`); {what}, which `cargo vmtest` \
             cannot debug yet",
            crate::host::debug::GDB_ENV,
        )));
    }
    let accel = accel::choose(arch)?;
    let snapshots = Snapshots::from_env()?;
    let memo = snapshots.as_ref().map_or_else(Memo::none, |s| s.cache.memo());
    crate::vm::qemu::check_sandbox(&session::find_qemu(arch)?, &memo)?;
    crate::vm::qemu::HugePages::for_accel(accel.accel)?;
    let kernel = kernel::resolve(if let Main::Shell(kernel) = main { kernel } else { None }, arch)?;
    kernel.check_arch(arch)?;
    let scale = accel.timeout_scale;
    let timeout = match std::env::var("VMTEST_PLAIN_TIMEOUT") {
        Ok(secs) => Duration::from_secs(secs.parse().map_err(|_| {
            Error::Config(format!("VMTEST_PLAIN_TIMEOUT={secs:?} is not a number of seconds"))
        })?),
        Err(_) => DEFAULT_TIMEOUT.mul_f64(scale),
    };

    let cwd = working_directory()?;

    let workdir = crate::vm::process::vm_workdir()?;
    let initrd = workdir.path().join("initrd.cpio");
    let debug_info = DebugInfo::from_env()?;
    let mut base = Base::new(&init, GuestUserland::for_run(arch)?, debug_info)?;
    for module in kernel.harness_modules()? {
        base.add_module(&module)?;
    }
    let mut payload = Payload::new(&cwd);
    let (name, program, args, console_log) = match main {
        Main::Binary(binary, args) => {
            payload.add_program("/main", binary, debug_info)?;
            let name = binary.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), "/main", args.to_vec(), log_path(binary))
        }
        Main::Shell(_) => ("shell".to_owned(), "/bin/sh", Vec::new(), shell_log_path(arch)),
    };
    let mut env = vec![
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOME".to_owned(), "/root".to_owned()),
        ("TMPDIR".to_owned(), "/tmp".to_owned()),
    ];
    for name in ["RUST_BACKTRACE", "RUST_LOG", "RUST_MIN_STACK", "RUST_TEST_THREADS", "NO_COLOR"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_owned(), value));
        }
    }
    payload.add_test(PlannedTest {
        id: 0,
        name: name.clone(),
        program: program.to_owned(),
        args,
        env,
        cwd,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        capture: false,
    });
    // Nothing on the host takes files from an ordinary binary.
    payload
        .set_file_limits(protocol::FileLimits { test_files: 0, ..protocol::FileLimits::default() });
    payload.set_shell(shell);
    let image = GuestImage { base, payload };
    let (size, warm) = write_image(&image, &initrd, workdir.path(), snapshots.as_ref())?;

    let spec = VmSpec {
        arch,
        accel: accel.accel,
        kernel: accel.accel.boot_image(&kernel),
        memory_mib: crate::host::group::default_memory_mib(size),
        cpus: crate::vm::qemu::profile(arch).default_cpus,
        cmdline: Vec::new(),
        boot_timeout: BOOT_TIMEOUT.mul_f64(scale),
        console_limit: session::console_limit()?,
        modules: std::sync::Arc::new(kernel.module_provider()),
        warm,
        shell: shell != ShellWhen::Never,
        debug: Default::default(),
    };
    let gap = Duration::from_secs(30).mul_f64(scale);
    let mut outcome = None;
    let end =
        session::run(&spec, workdir.path(), &initrd, &console_log, |message| match message {
            GuestMessage::Output { stream, bytes, .. } => {
                let _ = match stream {
                    Stream::Stdout => {
                        std::io::stdout().write_all(&bytes).and_then(|()| std::io::stdout().flush())
                    }
                    Stream::Stderr => std::io::stderr().write_all(&bytes),
                };
                timeout + gap
            }
            GuestMessage::TestFinished { outcome: finished, .. } => {
                outcome = Some(finished);
                gap
            }
            GuestMessage::Log(line) => {
                eprintln!("vmtest: guest: {line}");
                timeout + gap
            }
            _ => timeout + gap,
        })?;
    for warning in &end.warnings {
        eprintln!("vmtest: warning: {warning}");
    }
    let console =
        || format!("kernel console ({}), last lines:\n{}", console_log.display(), end.console_tail);
    let code = match (&outcome, &end.problem) {
        (Some(Outcome::Exited(code)), _) => *code,
        (Some(Outcome::Signaled(signal)), _) => {
            eprintln!("vmtest: {name} was killed by signal {signal} in the VM");
            128 + signal
        }
        (Some(Outcome::TimedOut { after_ms }), _) => {
            eprintln!("vmtest: {name} timed out after {} s in the VM", after_ms / 1000);
            1
        }
        (Some(Outcome::Error(message)), _) => {
            eprintln!("vmtest: {name} could not run in the VM: {message}");
            1
        }
        (Some(Outcome::Skipped(reason)), _) => {
            eprintln!("vmtest: {name} skipped itself: {reason}");
            0
        }
        (None, Some(problem)) => {
            eprintln!(
                "vmtest: {name} did not finish under {}: {problem}\n{}",
                init.display(),
                console()
            );
            1
        }
        (None, None) => {
            eprintln!("vmtest: the guest did not report how {name} ended\n{}", console());
            1
        }
    };
    Ok(code)
}

/// The program's working directory in the guest: the runner's own, as cargo runs a test binary
/// in its package's directory (an empty directory in the guest); `/` when it has no UTF-8 name.
/// A directory the guest cannot provide is an error naming it.
fn working_directory() -> Result<String, Error> {
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|dir| dir.into_os_string().into_string().ok())
        .unwrap_or_else(|| "/".to_owned());
    crate::image::guest_env::check_cwd(&cwd, "the runner's working directory")?;
    Ok(cwd)
}

/// `<cache>/vmtest/shell-<arch>.console.log` (the cache as for the static init), else in the
/// temp dir: the kernel console of `cargo vmtest shell`.
fn shell_log_path(arch: Arch) -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = var("XDG_CACHE_HOME")
        .map(|cache| cache.join("vmtest"))
        .or_else(|| var("HOME").map(|home| home.join(".cache/vmtest")))
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("shell-{arch}.console.log"))
}

/// `<target>/<triple>/<profile>/vmtest/<binary name>.console.log`, next to cargo's output.
fn log_path(binary: &Path) -> PathBuf {
    let stem = binary.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = binary.parent().map(PathBuf::from).unwrap_or_default();
    let base =
        if dir.ends_with("deps") { dir.parent().map(PathBuf::from).unwrap_or(dir) } else { dir };
    base.join("vmtest").join(format!("{stem}.console.log"))
}
