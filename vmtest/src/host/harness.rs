//! The host side: libtest's command line and output over tests grouped into VM boots.
//!
//! [`run`] plans the run ([`crate::host::plan`]: the selected test instances, grouped by VM
//! configuration), finds what the groups need before anything boots, and starts worker threads
//! (as many as `--test-threads`, within the host's memory, see [`crate::host::slots`]) that boot
//! one VM per group ([`crate::host::group`]), in the order of the groups' first tests; each VM
//! runs its group's tests one after another. VM threads send
//! [`Note`](crate::host::note::Note)s (a test started, printed live, finished with a
//! [`Verdict`](crate::host::verdict::Verdict)); the main thread turns them into
//! [`report::Event`]s in libtest's order (see [`crate::host::progress`]) and prints what the
//! [`report::Reporter`] makes of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmtest_init::protocol;

use crate::host::args::{self, Options, Parsed};
use crate::host::binary::TestBinary;
use crate::host::debug::{self, Debugger, Debugging};
use crate::host::files;
use crate::host::group::{Group, RunContext, RunSettings, Snapshots};
use crate::host::logdir::LogDir;
use crate::host::plan::{self, Selected};
use crate::host::progress;
use crate::host::report::{self, TestInfo, TestType};
use crate::host::slots::VmSlots;
use crate::image::guest_image::DebugInfo;
use crate::image::{fixtures, guest_env};
use crate::kernel::{self, Kernel, ModuleProvider};
use crate::userland::GuestUserland;
use crate::vm::accel;
use crate::vm::memo::Memo;
use crate::vm::session;
use crate::Error;

/// Notes the VM threads may queue for the main thread before they wait: the main thread
/// writes output to a terminal or a pipe that may stop taking it (`--nocapture | less`).
const NOTE_QUEUE: usize = 32;
/// libtest's exit code when a test failed or the command line is wrong.
const FAILED: i32 = 101;

/// Runs the host harness for the running binary and exits with libtest's exit code.
pub(crate) fn run_host(crate_root: &'static [u8]) -> ! {
    let argv: Vec<String> = std::env::args().collect();
    let code = match parse_args(&argv) {
        Err(code) => code,
        Ok(options) => match TestBinary::current(crate_root) {
            Ok(binary) => run(&binary, &options),
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    };
    crate::vm::process::exit(code)
}

/// libtest's options from `argv` (the program first). `Err` holds the exit code once the usage
/// (`--help`, exit 0) or an `error:` line (exit 101, as libtest) has been printed.
pub(crate) fn parse_args(argv: &[String]) -> Result<Options, i32> {
    let program = argv.first().map_or("...", String::as_str);
    let rest = argv.get(1..).unwrap_or_default();
    match args::parse(program, rest, |name| std::env::var(name).ok()) {
        Ok(Parsed::Run(options)) => Ok(options),
        Ok(Parsed::Help(usage)) => {
            print!("{usage}");
            Err(0)
        }
        Err(message) => {
            eprintln!("error: {message}");
            Err(FAILED)
        }
    }
}

/// How many tests libtest would run at once: `--test-threads`, else `RUST_TEST_THREADS`, else
/// one per core. This also caps the VMs running at once.
fn test_threads(options: &Options) -> Result<usize, String> {
    if let Some(n) = options.test_threads {
        return Ok(n);
    }
    match std::env::var("RUST_TEST_THREADS") {
        Ok(value) => match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("RUST_TEST_THREADS is `{value}`, should be a positive integer.")),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// Runs `binary`'s tests as libtest would with `options`; returns the exit code.
pub(crate) fn run(binary: &TestBinary, options: &Options) -> i32 {
    crate::vm::process::install_signal_cleanup();
    crate::vm::process::remove_stale_workdirs();
    let threads = match test_threads(options) {
        Ok(threads) => threads,
        Err(e) => {
            eprintln!("error: {e}");
            return FAILED;
        }
    };
    let (selected, filtered_out) =
        plan::select(plan::instances(&binary.tests, binary.arch), options);
    if options.list {
        let tests: Vec<TestInfo> = selected.into_iter().map(|s| s.info).collect();
        progress::print(report::list(options.format, &tests).as_bytes());
        return 0;
    }
    let context = match prepare(binary, options, threads, &selected) {
        Ok(context) => context,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let settings = report::Settings {
        format: options.format,
        color: match options.color {
            args::Color::Always => true,
            args::Color::Never => false,
            args::Color::Auto => {
                !options.nocapture && std::io::IsTerminal::is_terminal(&std::io::stdout())
            }
        },
        multithreaded: threads > 1,
        show_output: options.show_output,
        test_type: binary.crate_root.as_deref().map_or(TestType::Unknown, TestType::of_crate_root),
    };
    let (notes, received) = std::sync::mpsc::sync_channel(NOTE_QUEUE);
    let mut live = progress::Live::start(settings, &selected, filtered_out);
    if let Some((context, groups)) = &context {
        context.start_workers(groups, threads, &notes);
    }
    drop(notes);
    live.follow(&received);
    let failed = live.finish();
    // What VM threads still send (a guest that talks after its last test) is read until they
    // are gone, so that none waits for the main thread while it waits for them.
    progress::print_late_lines(received);
    // Verdicts arrive before QEMU has shut down; wait for every VM to be gone and its temp
    // dir removed before exiting.
    if let Some((context, _)) = context {
        context.join_vms();
    }
    if failed {
        FAILED
    } else {
        0
    }
}

/// A run's context and its groups, in the order their VMs boot; `None` when nothing runs.
type Prepared = Option<(Arc<RunContext>, Vec<Arc<Group>>)>;

/// Finds everything the selected tests need before anything boots (kernels, QEMU, the
/// accelerator, modules, fixtures), and groups them by VM configuration, in the order the
/// groups boot.
fn prepare(
    binary: &TestBinary,
    options: &Options,
    threads: usize,
    selected: &[Selected],
) -> Result<Prepared, Error> {
    let arch = binary.arch;
    if plan::runnable(selected).next().is_none() {
        return Ok(None);
    }

    // The settings from the environment first: a bad one is an error before anything else.
    let debugger = Debugger::from_env()?;
    let snapshots = Snapshots::from_env()?;
    let shell = crate::vm::shell::from_env()?;
    let debug_info = DebugInfo::from_env()?;
    let accel = accel::choose(arch)?;
    let memo = snapshots.as_ref().map_or_else(Memo::none, |s| s.cache.memo());
    crate::vm::qemu::check_sandbox(&session::find_qemu(arch)?, &memo)?;
    crate::vm::qemu::HugePages::for_accel(accel.accel)?;
    if let Some(why) = &accel.kvm_unusable {
        eprintln!(
            "vmtest: using TCG (KVM not used: {why}); timeouts scaled x{}",
            accel.timeout_scale
        );
    }
    let cwd = guest_env::test_cwd(std::env::var_os("CARGO_MANIFEST_DIR"))?;
    let dirs = plan::CrateDirs { built_in: binary.manifest_dir.as_deref(), run_in: &cwd };
    // Resolve each kernel once and check each test's fixtures, in test order.
    let mut kernels: BTreeMap<Option<String>, Kernel> = BTreeMap::new();
    for (_, instance) in plan::runnable(selected) {
        if !kernels.contains_key(&instance.kernel) {
            let kernel = kernel::resolve(instance.kernel.as_deref(), arch)?;
            kernel.check_arch(arch)?;
            kernels.insert(instance.kernel.clone(), kernel);
        }
        let files = dirs.files(instance);
        fixtures::check(&files.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    let images =
        kernels.iter().map(|(name, kernel)| (name.clone(), kernel.image.clone())).collect();
    let mut ordered = Vec::new();
    let mut providers: BTreeMap<PathBuf, Arc<ModuleProvider>> = BTreeMap::new();
    for planned in plan::groups(selected, &images, dirs) {
        let kernel = kernels[&planned.kernel].clone();
        let modules = Arc::clone(
            providers
                .entry(kernel.image.clone())
                .or_insert_with(|| Arc::new(kernel.module_provider())),
        );
        ordered.push(Arc::new(Group::new(planned, kernel, modules)?));
    }
    // Last of the setup: they may fetch, which a setup error should not wait for.
    let userland = GuestUserland::for_run(arch)?;
    let debug = match debugger {
        None => None,
        Some(Debugger::Kernel) => Some(Debugging { debugger: Debugger::Kernel, gdbserver: None }),
        Some(Debugger::Test) => {
            Some(Debugging { debugger: Debugger::Test, gdbserver: Some(debug::gdbserver(arch)?) })
        }
    };
    let context = Arc::new(RunContext::new(RunSettings {
        exe: binary.path.clone(),
        arch,
        capture: !options.nocapture,
        log_dir: LogDir::claim_for(&binary.path)?,
        profile_dir: profile_dir(),
        file_limits: files::Limits::from_env()?,
        console_limit: session::console_limit()?,
        cwd,
        vms: VmSlots::for_host(threads),
        accel,
        userland,
        debug_info,
        // A debugger sees a VM start from its kernel's first instruction, with its own
        // devices: never a restored one.
        snapshots: snapshots.filter(|_| debug.is_none()),
        shell,
        debug,
    }));
    Ok(Some((context, ordered)))
}

/// The directory of the host's `LLVM_PROFILE_FILE` pattern, if it is set.
fn profile_dir() -> Option<PathBuf> {
    let pattern = PathBuf::from(std::env::var_os(protocol::PROFILE_ENV)?);
    let dir = pattern.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    Some(dir)
}
