//! The host side: libtest's command line and output over tests grouped into VM boots.
//!
//! The selected test instances are grouped by VM configuration; worker threads (as many as
//! `--test-threads`, within the host's memory) boot one VM per group, in the order of the
//! groups' first tests, and each VM runs its group's tests one after another. VM threads send
//! [`Note`]s (a test started, printed live, finished with a [`Verdict`]); the main thread turns
//! them into [`report::Event`]s in libtest's order (see [`crate::host::progress`]) and prints what
//! the [`report::Reporter`] makes of them.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmtest_init::protocol::{self, GuestMessage, Outcome, PlannedTest, Stream};

use crate::arch::Arch;
use crate::guest::child::FailureNote;
use crate::host::args::{self, Options, Parsed, RunIgnored};
use crate::host::files;
use crate::host::report::{self, Source, TestInfo, TestType};
use crate::image::guest_image::{Base, GuestImage, Payload};
use crate::image::{fixtures, guest_env};
use crate::kernel::{self, Kernel, ModuleFile, ModuleProvider};
use crate::meta::{self, TestMeta};
use crate::registry::TESTS;
use crate::userland::GuestUserland;
use crate::vm::accel::{self, AccelChoice};
use crate::vm::session::{self, VmSpec};
use crate::Error;

/// Timeout of a test without a `timeout` attribute, before scaling.
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a kernel to reach the harness, before scaling.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time the host grants beyond a test's own timeout (and [`SEND_TIME`]) before it gives
/// up on the guest; also the longest silence between two tests. Before scaling.
const HOST_GRACE: Duration = Duration::from_secs(30);
/// How long after a test ended the guest may spend sending its files, before scaling.
const SEND_TIME: Duration = Duration::from_secs(30);
/// Notes the VM threads may queue for the main thread before they wait: the main thread
/// writes output to a terminal or a pipe that may stop taking it (`--nocapture | less`).
const NOTE_QUEUE: usize = 32;
/// Guest memory on top of what the initramfs needs.
const BASE_MEMORY_MIB: u64 = 256;
/// Environment variable that carries a test's shown name (`test[kernel]`) into the guest.
const INSTANCE_ENV: &str = "VMTEST_TEST_INSTANCE";
/// libtest's exit code when a test failed or the command line is wrong.
const FAILED: i32 = 101;

/// A test binary and the vmtest tests it holds: what the engine runs.
#[derive(Clone, Debug)]
pub(crate) struct TestBinary {
    /// The binary; it becomes the guest's `/init`.
    pub path: PathBuf,
    /// Its architecture (from its ELF header), which the guest must have.
    pub arch: Arch,
    /// Its tests, in any order.
    pub tests: Vec<TestMeta>,
    /// Its crate's root file, as recorded by `vmtest::main!()`.
    pub crate_root: Option<String>,
    /// Its crate's directory when it was built, as recorded by `vmtest::main!()`.
    pub manifest_dir: Option<String>,
}

impl TestBinary {
    /// The running binary, with the tests registered in it; `crate_root` is the record
    /// `vmtest::main!()` made.
    pub(crate) fn current(crate_root: &[u8]) -> Result<TestBinary, Error> {
        let path =
            std::env::current_exe().map_err(|e| Error::io("failed to find the test binary", e))?;
        let section = meta::decode(crate_root).unwrap_or_default();
        Ok(TestBinary {
            path,
            arch: Arch::host(),
            tests: TESTS.iter().map(TestMeta::from).collect(),
            crate_root: section.crate_root,
            manifest_dir: section.manifest_dir,
        })
    }

    /// Reads the binary at `path` without executing it: its architecture from the ELF header,
    /// its tests from the `vmtest_tests` section. `None` when it has no such section (it was
    /// not built with vmtest).
    pub(crate) fn read(path: &Path) -> Result<Option<TestBinary>, Error> {
        let arch = elf_arch(path)?;
        let section = crate::image::elf::read_section(path, meta::SECTION)
            .map_err(|e| Error::Config(e.to_string()))?;
        let Some(section) = section else { return Ok(None) };
        let decoded = meta::decode(&section).map_err(|e| {
            Error::Config(format!(
                "failed to read the vmtest tests of {} (section {}): {e}",
                path.display(),
                meta::SECTION
            ))
        })?;
        Ok(Some(TestBinary {
            path: path.to_owned(),
            arch,
            tests: decoded.tests,
            crate_root: decoded.crate_root,
            manifest_dir: decoded.manifest_dir,
        }))
    }
}

/// The architecture of the ELF file at `path`.
pub(crate) fn elf_arch(path: &Path) -> Result<Arch, Error> {
    let info = crate::image::elf::read_elf(path).map_err(|e| Error::Config(e.to_string()))?;
    Arch::from_elf_machine(info.machine).ok_or_else(|| {
        Error::Config(format!(
            "{} is for ELF machine {}, which vmtest cannot boot",
            path.display(),
            info.machine
        ))
    })
}

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
    let (selected, filtered_out) = select(instances(&binary.tests, binary.arch), options);
    if options.list {
        let tests: Vec<TestInfo> = selected.into_iter().map(|s| s.info).collect();
        crate::host::progress::print(report::list(options.format, &tests).as_bytes());
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
    let tests: Vec<crate::host::progress::Test> = selected
        .iter()
        .map(|s| crate::host::progress::Test { info: s.info.clone(), not_run: s.not_run.clone() })
        .collect();
    let (notes, received) = std::sync::mpsc::sync_channel(NOTE_QUEUE);
    let mut live = crate::host::progress::Live::start(settings, &tests, filtered_out);
    if let Some((context, groups)) = &context {
        context.start_workers(groups, threads, &notes);
    }
    drop(notes);
    live.follow(&received);
    // A VM thread still sending (a guest that talks after its last test) must not wait for a
    // reader that is gone while the main thread waits for it.
    drop(received);
    let failed = live.finish();
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

/// One test on one kernel.
struct Instance {
    def: Arc<TestMeta>,
    /// libtest name of the function (what the guest child looks up).
    base_name: String,
    /// Name shown and filtered on: `base_name`, or `base_name[kernel]` for a kernel matrix.
    name: String,
    kernel: Option<String>,
    /// Reported as ignored with this reason instead of running.
    skip: Option<String>,
}

fn instances(defs: &[TestMeta], arch: Arch) -> Vec<Instance> {
    let mut out = Vec::new();
    for def in defs {
        let def = Arc::new(def.clone());
        let base_name = def.test_name();
        let skip = (!def.vm.arch.is_empty() && !def.vm.arch.iter().any(|a| a == arch.name()))
            .then(|| format!("runs only on {}", def.vm.arch.join(", ")));
        let kernels: Vec<Option<String>> = match def.vm.kernels.as_slice() {
            [] => vec![None],
            list => list.iter().cloned().map(Some).collect(),
        };
        let matrix = kernels.len() > 1;
        for kernel in kernels {
            let name = match &kernel {
                Some(kernel) if matrix => format!("{base_name}[{kernel}]"),
                _ => base_name.clone(),
            };
            out.push(Instance {
                def: Arc::clone(&def),
                base_name: base_name.clone(),
                name,
                kernel,
                skip: skip.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A test instance the command line selected.
struct Selected {
    instance: Instance,
    /// How the reporter names it.
    info: TestInfo,
    /// `Some(reason)`: reported ignored without running (`#[ignore]`, another architecture,
    /// `--bench`).
    not_run: Option<Option<String>>,
}

/// The instances `options` select, in name order, as libtest's filtering selects tests; and
/// how many it left out.
fn select(instances: Vec<Instance>, options: &Options) -> (Vec<Selected>, usize) {
    let total = instances.len();
    let matches = |name: &str, filter: &str| {
        if options.exact {
            name == filter
        } else {
            name.contains(filter)
        }
    };
    let mut selected = Vec::new();
    for instance in instances {
        let name = instance.name.as_str();
        if !options.filters.is_empty() && !options.filters.iter().any(|f| matches(name, f)) {
            continue;
        }
        if options.skip.iter().any(|f| matches(name, f)) {
            continue;
        }
        let def = &instance.def;
        if options.exclude_should_panic && def.should_panic {
            continue;
        }
        let ignore_message = def.ignore.clone().flatten();
        let ignore = match options.run_ignored {
            RunIgnored::No => def.ignore.is_some(),
            RunIgnored::Yes => false,
            RunIgnored::Only if def.ignore.is_some() => false,
            RunIgnored::Only => continue,
        };
        let not_run = match &instance.skip {
            Some(reason) => Some(Some(reason.clone())),
            None if ignore || !options.run_tests => Some(ignore_message.clone()),
            None => None,
        };
        let name_len = u32::try_from(def.name.chars().count()).unwrap_or(0);
        let info = TestInfo {
            name: instance.name.clone(),
            ignore,
            ignore_message,
            should_panic: def.should_panic,
            source: Source {
                path: def.file.clone(),
                start_line: def.line,
                start_col: def.column,
                end_line: def.line,
                end_col: def.column + name_len,
            },
        };
        selected.push(Selected { instance, info, not_run });
    }
    let filtered_out = total - selected.len();
    (selected, filtered_out)
}

/// How a test went, as the reporter tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Passed, failed or ignored.
    pub outcome: report::Outcome,
    /// What the test printed (when captured), then any text vmtest adds.
    pub output: Vec<u8>,
    /// vmtest added text of its own to `output` (a timeout, a dead VM, a kernel splat):
    /// notes about the test's files go there too, rather than to stderr.
    pub explained: bool,
}

impl Verdict {
    /// A failure vmtest explains with `text`.
    fn explained(text: &str) -> Verdict {
        let mut output = text.as_bytes().to_vec();
        if !output.ends_with(b"\n") {
            output.push(b'\n');
        }
        Verdict { outcome: report::Outcome::Failed { message: None }, output, explained: true }
    }
}

/// What a VM thread tells the main thread.
pub(crate) enum Note {
    /// The guest started the test with this id.
    Started(u32),
    /// Live output of a test that is not captured.
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes, in order.
        bytes: Vec<u8>,
    },
    /// The test with this id ended.
    Finished(u32, Verdict),
}

/// Whether a test has its verdict yet; the first verdict wins.
#[derive(Default)]
struct Slot(AtomicBool);

impl Slot {
    fn is_filled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What groups tests into one VM boot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    kernel: PathBuf,
    memory_mib: Option<u64>,
    cpus: Option<u32>,
    cmdline: Option<String>,
    modules: Vec<String>,
}

struct Member {
    id: u32,
    name: String,
    base_name: String,
    /// The test's timeout before scaling.
    timeout: Duration,
    slot: Slot,
    /// `env = [...]` of the test.
    env: Vec<String>,
    /// `files = [...]` of the test.
    files: Vec<String>,
    /// `allow_kernel_warnings`: a kernel WARNING alone does not fail the test.
    allow_kernel_warnings: bool,
}

impl Member {
    /// Sends the test's verdict, unless it has one already.
    fn finish(&self, notes: &SyncSender<Note>, verdict: Verdict) {
        if !self.slot.0.swap(true, Ordering::SeqCst) {
            let _ = notes.send(Note::Finished(self.id, verdict));
        }
    }
}

/// Tests that share one VM boot.
struct Group {
    index: usize,
    key: GroupKey,
    kernel: Kernel,
    /// Drivers the harness needs that the kernel does not build in, in load order.
    harness_modules: Vec<ModuleFile>,
    /// The tests' `modules` and their dependencies, in load order.
    test_modules: Vec<ModuleFile>,
    /// Answers the guest's `modprobe`; shared by every group of the same kernel.
    modules: Arc<ModuleProvider>,
    members: Vec<Member>,
}

/// A group while tests are sorted into it: its kernel and members.
type GroupParts = (Kernel, Vec<Member>);

/// Settings shared by every group of a run.
struct RunContext {
    exe: PathBuf,
    arch: Arch,
    accel: AccelChoice,
    /// TCG after KVM, chosen automatically, failed to boot a guest.
    fallback: OnceLock<AccelChoice>,
    capture: bool,
    /// Where this run's console logs go; see [`LogDir`].
    log_dir: LogDir,
    /// Where the tests' LLVM profiles go: the directory of the host's `LLVM_PROFILE_FILE`,
    /// when it is set (`cargo llvm-cov`, PGO).
    profile_dir: Option<PathBuf>,
    /// Most bytes of kernel console kept per VM.
    console_limit: u64,
    /// What the run accepts of the guests' files.
    file_limits: files::Limits,
    /// Bytes of the guests' files received so far, by every VM of the run.
    file_bytes: AtomicU64,
    /// The tests' working directory in the guest.
    cwd: String,
    vms: VmSlots,
    /// The directory tree and tools every guest of the run gets beneath its own files.
    userland: GuestUserland,
    /// Threads of the VMs started so far.
    vm_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl RunContext {
    /// The accelerator for the next boot.
    fn accel(&self) -> &AccelChoice {
        self.fallback.get().unwrap_or(&self.accel)
    }

    /// Switches the rest of the run to TCG after KVM failed, with one warning line.
    fn fall_back_to_tcg(&self, why: &str) -> Result<(), Error> {
        let tcg = self.accel.fallen_back(why)?;
        let scale = tcg.timeout_scale;
        if self.fallback.set(tcg).is_ok() {
            eprintln!(
                "vmtest: warning: KVM failed to boot the guest; using TCG for the rest of this run, \
                 timeouts scaled x{scale} (set VMTEST_ACCEL=tcg to skip KVM)"
            );
        }
        Ok(())
    }

    /// `<log dir>/artifacts/<test name>/`: where a test's artifacts go.
    fn artifact_dir(&self, member: &Member) -> PathBuf {
        let name: String =
            member.name.chars().map(|c| if c == '/' || c.is_control() { '_' } else { c }).collect();
        self.log_dir.path.join("artifacts").join(name)
    }

    /// `verdict`, told about the test's files: where its artifacts are, and which files were
    /// rejected. Where the artifacts are goes into a failure that vmtest explains anyway, and
    /// to stderr otherwise, so that an ordinary result reads exactly as libtest's.
    fn with_files(
        &self,
        member: &Member,
        mut verdict: Verdict,
        files: &files::Received,
    ) -> Verdict {
        for problem in &files.problems {
            eprintln!("vmtest: warning: {}: a file from the guest: {problem}", member.name);
        }
        let dir = self.artifact_dir(member);
        let artifacts: Vec<String> = files
            .written
            .iter()
            .filter_map(|path| path.strip_prefix(&dir).ok())
            .map(|path| path.display().to_string())
            .collect();
        if artifacts.is_empty() {
            return verdict;
        }
        let note = format!("artifacts in {}: {}", dir.display(), artifacts.join(", "));
        if verdict.explained {
            verdict.output.extend_from_slice(format!("{note}\n").as_bytes());
        } else {
            eprintln!("vmtest: {}: {note}", member.name);
        }
        verdict
    }

    /// Starts `threads` workers (at most one per group) that boot the groups' VMs in order.
    fn start_workers(
        self: &Arc<Self>,
        groups: &[Arc<Group>],
        threads: usize,
        notes: &SyncSender<Note>,
    ) {
        let queue: Arc<Mutex<VecDeque<Arc<Group>>>> =
            Arc::new(Mutex::new(groups.iter().cloned().collect()));
        let mut handles = self.vm_threads.lock().unwrap_or_else(|e| e.into_inner());
        for worker in 0..threads.min(groups.len()) {
            let (context, queue, notes) = (Arc::clone(self), Arc::clone(&queue), notes.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{}{worker}", crate::vm::process::VM_THREAD_PREFIX))
                .spawn(move || loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some(group) = next else { break };
                    group.run(&context, &notes);
                })
                .expect("failed to spawn a VM thread");
            handles.push(thread);
        }
    }

    fn join_vms(&self) {
        let threads =
            std::mem::take(&mut *self.vm_threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A run's context and its groups, in the order their VMs boot; `None` when nothing runs.
type Prepared = Option<(Arc<RunContext>, Vec<Arc<Group>>)>;

/// Finds everything the selected tests need before anything boots (kernels, QEMU, the
/// accelerator, modules, fixtures), and groups them by VM configuration.
fn prepare(
    binary: &TestBinary,
    options: &Options,
    threads: usize,
    selected: &[Selected],
) -> Result<Prepared, Error> {
    let arch = binary.arch;
    let runnable: Vec<&Instance> =
        selected.iter().filter(|s| s.not_run.is_none()).map(|s| &s.instance).collect();
    if runnable.is_empty() {
        return Ok(None);
    }

    let accel = accel::choose(arch)?;
    crate::vm::qemu::check_sandbox(&session::find_qemu(arch)?)?;
    if let Some(why) = &accel.kvm_unusable {
        eprintln!(
            "vmtest: using TCG (KVM not used: {why}); timeouts scaled x{}",
            accel.timeout_scale
        );
    }
    let cwd = guest_env::test_cwd(std::env::var_os("CARGO_MANIFEST_DIR"))?;
    // Resolve each kernel once; group by VM configuration. Ids are positions among the
    // selected tests, which the main thread reports by.
    let mut kernels: BTreeMap<Option<String>, Kernel> = BTreeMap::new();
    let mut groups: BTreeMap<GroupKey, GroupParts> = BTreeMap::new();
    for (id, selected) in selected.iter().enumerate() {
        if selected.not_run.is_some() {
            continue;
        }
        let instance = &selected.instance;
        let kernel = match kernels.get(&instance.kernel) {
            Some(kernel) => kernel.clone(),
            None => {
                let kernel = kernel::resolve(instance.kernel.as_deref(), arch)?;
                kernel.check_arch(arch)?;
                kernels.insert(instance.kernel.clone(), kernel.clone());
                kernel
            }
        };
        let vm = &instance.def.vm;
        let files = fixtures::follow_crate(&vm.files, binary.manifest_dir.as_deref(), &cwd);
        fixtures::check(&files.iter().map(String::as_str).collect::<Vec<_>>())?;
        let mut modules = vm.modules.clone();
        modules.sort_unstable();
        let key = GroupKey {
            kernel: kernel.image.clone(),
            memory_mib: vm.memory_mib,
            cpus: vm.cpus,
            cmdline: vm.cmdline.clone(),
            modules,
        };
        let timeout = vm.timeout_ms.map_or(DEFAULT_TEST_TIMEOUT, Duration::from_millis);
        let member = Member {
            id: u32::try_from(id).expect("fewer than 2^32 tests"),
            name: instance.name.clone(),
            base_name: instance.base_name.clone(),
            timeout,
            slot: Slot::default(),
            env: vm.env.clone(),
            files,
            allow_kernel_warnings: vm.allow_kernel_warnings,
        };
        groups.entry(key).or_insert_with(|| (kernel, Vec::new())).1.push(member);
    }
    let mut ordered = Vec::new();
    let mut providers: BTreeMap<PathBuf, Arc<ModuleProvider>> = BTreeMap::new();
    for (index, (key, (kernel, members))) in groups.into_iter().enumerate() {
        // Resolve modules now, so an unknown name is a setup error, not a boot failure.
        let harness_modules = kernel.harness_modules()?;
        let wanted: Vec<&str> = key.modules.iter().map(String::as_str).collect();
        let test_modules = kernel.module_closure(&wanted)?;
        let modules = Arc::clone(
            providers
                .entry(kernel.image.clone())
                .or_insert_with(|| Arc::new(kernel.module_provider())),
        );
        ordered.push(Arc::new(Group {
            index,
            key,
            kernel,
            harness_modules,
            test_modules,
            modules,
            members,
        }));
    }
    // Last of the setup: it may fetch, which a setup error should not wait for.
    let userland = GuestUserland::for_run(arch)?;
    let context = Arc::new(RunContext {
        exe: binary.path.clone(),
        arch,
        capture: !options.nocapture,
        log_dir: LogDir::claim(log_dir(&binary.path))?,
        profile_dir: profile_dir(),
        file_limits: files::Limits::from_env()?,
        console_limit: session::console_limit()?,
        file_bytes: AtomicU64::new(0),
        cwd,
        vms: VmSlots::for_host(threads),
        accel,
        fallback: OnceLock::new(),
        userland,
        vm_threads: Mutex::new(Vec::new()),
    });
    // Boot in the order of each group's first test, so that one test thread runs the tests
    // in name order as far as their VMs allow.
    ordered.sort_by_key(|group| group.members.first().map_or(u32::MAX, |m| m.id));
    Ok(Some((context, ordered)))
}

/// Guest memory when a test does not say: a base, plus twice the initramfs (the archive and
/// the files unpacked from it).
pub(crate) fn default_memory_mib(initramfs_bytes: u64) -> u64 {
    BASE_MEMORY_MIB + 2 * initramfs_bytes.div_ceil(1 << 20)
}

/// Counts VM boots of this process, to name their profiles apart.
static BOOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The directory of the host's `LLVM_PROFILE_FILE` pattern, if it is set.
fn profile_dir() -> Option<PathBuf> {
    let pattern = PathBuf::from(std::env::var_os(protocol::PROFILE_ENV)?);
    let dir = pattern.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    Some(dir)
}

/// `<target>/<profile>/vmtest/<binary name>/`, next to cargo's own output.
fn log_dir(exe: &Path) -> PathBuf {
    let stem = exe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Test binaries live in `<target>/<profile>/deps`.
    let base =
        if dir.ends_with("deps") { dir.parent().map(PathBuf::from).unwrap_or(dir) } else { dir };
    base.join("vmtest").join(stem)
}

/// The directory of one run's console logs. Runs of the same binary at the same time (two
/// terminals, `cargo test` running suites in parallel) each claim their own: the first free
/// of `<dir>/`, `<dir>/concurrent-1/`, `<dir>/concurrent-2/`, ..., held by an flock on a
/// `.lock` file inside it for as long as the run lasts. Claiming one removes the console logs a
/// killed run left half-saved in it.
struct LogDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl LogDir {
    fn claim(base: PathBuf) -> Result<LogDir, Error> {
        use rustix::fs::{flock, FlockOperation};
        for slot in 0u32.. {
            let path =
                if slot == 0 { base.clone() } else { base.join(format!("concurrent-{slot}")) };
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))?;
            let lock_path = path.join(".lock");
            let lock = std::fs::File::create(&lock_path)
                .map_err(|e| Error::io(format!("failed to create {}", lock_path.display()), e))?;
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                // Console logs a run that was killed left half-saved: this run owns the dir
                // now (`concurrent-*` below slot 0 are other runs').
                crate::vm::process::remove_partial_console_logs(&path);
                return Ok(LogDir { path, _lock: lock });
            }
        }
        unreachable!("some slot is free")
    }
}

impl Group {
    /// Boots VMs until every test has a verdict: when a VM dies (a kernel panic, a crash), the
    /// test that was running fails and the tests after it run in a fresh VM.
    fn run(&self, context: &RunContext, notes: &SyncSender<Note>) {
        let mut problem = None;
        for attempt in 0.. {
            let pending: Vec<&Member> =
                self.members.iter().filter(|m| !m.slot.is_filled()).collect();
            if pending.is_empty() {
                break;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.boot(context, &pending, attempt, notes)
            }));
            problem = match outcome {
                Ok(Ok(None)) => None,
                Ok(Ok(Some(problem))) => Some(problem),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the harness panicked while running this VM".to_owned()),
            };
            let progressed = pending.iter().any(|m| m.slot.is_filled());
            if problem.is_none() || !progressed {
                break;
            }
        }
        for member in &self.members {
            member.finish(
                notes,
                Verdict::explained(&match &problem {
                    Some(problem) => format!("not run: {problem}"),
                    None => "the guest did not report this test".to_owned(),
                }),
            );
        }
    }

    /// The guest memory of this group's VM: the test's `memory`, or the default sizing from the
    /// initramfs actually written (fixtures, libraries and userland included).
    fn memory_mib(&self, initramfs_bytes: u64) -> u64 {
        self.key.memory_mib.unwrap_or_else(|| default_memory_mib(initramfs_bytes))
    }

    fn console_log(&self, context: &RunContext, attempt: u32) -> PathBuf {
        let kernel: String = self
            .kernel
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        let retry = if attempt == 0 { String::new() } else { format!("-retry{attempt}") };
        context.log_dir.path.join(format!("vm{}{retry}-{kernel}.console.log", self.index))
    }

    /// Boots the VM and runs the group's tests. `Ok(Some(..))` describes a VM that failed.
    fn boot(
        &self,
        context: &RunContext,
        pending: &[&Member],
        attempt: u32,
        notes: &SyncSender<Note>,
    ) -> Result<Option<String>, Error> {
        let workdir = crate::vm::process::vm_workdir()?;
        let initrd = workdir.path().join("initrd.cpio");
        let size = self.write_initramfs(context, pending, &initrd)?;
        let memory_mib = self.memory_mib(size);
        // Counted against the host's memory with the size the VM really gets.
        let permit = context.vms.acquire(memory_mib);
        let accel = context.accel();
        let scale = accel.timeout_scale;
        let spec = VmSpec {
            arch: context.arch,
            accel: accel.accel,
            kernel: accel.accel.boot_image(&self.kernel),
            memory_mib,
            cpus: self.key.cpus.unwrap_or(crate::vm::qemu::profile(context.arch).default_cpus),
            cmdline: self
                .key
                .cmdline
                .as_deref()
                .map(|c| c.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            boot_timeout: BOOT_TIMEOUT.mul_f64(scale),
            console_limit: context.console_limit,
            modules: Arc::clone(&self.modules),
        };
        let console_log = self.console_log(context, attempt);
        let mut running: Option<&Member> = None;
        let mut kernel_log = Vec::new();
        let by_id: BTreeMap<u32, &Member> = pending.iter().map(|m| (m.id, *m)).collect();
        for member in pending {
            // This run's artifacts replace the last run's.
            let _ = std::fs::remove_dir_all(context.artifact_dir(member));
        }
        let serial = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let route = |id: u32, kind: files::Kind, relative: &Path| match kind {
            files::Kind::Artifact => by_id.get(&id).map(|m| context.artifact_dir(m).join(relative)),
            // Named so that profiles of different runs, VMs and tests never collide; the
            // `.profraw` the guest gave them is kept (cargo-llvm-cov collects `*.profraw`).
            files::Kind::Profile => context.profile_dir.as_ref().map(|dir| {
                dir.join(format!(
                    "vmtest-{}-{serial}-{id}-{}",
                    std::process::id(),
                    relative.display()
                ))
            }),
        };
        let mut received =
            files::Receiver::new(Box::new(route), context.file_limits, &context.file_bytes);
        // The live stderr of the running test, less the failure note it may end with.
        let mut live_note = FailureNote::default();
        let gap = HOST_GRACE.mul_f64(scale);
        let send_time = SEND_TIME.mul_f64(scale);
        // Until when the running test and the sending of its files may take: fixed when it
        // starts, so that no message (a file chunk, live output) extends it, and moved only by
        // the time the host itself made the guest wait (the main thread not taking notes).
        let mut test_deadline: Option<Instant> = None;
        let send = |note: Note, test_deadline: &mut Option<Instant>| {
            let started = Instant::now();
            let _ = notes.send(note);
            if let Some(deadline) = test_deadline {
                *deadline += started.elapsed();
            }
        };
        let left = |test_deadline: Option<Instant>| {
            test_deadline.map_or(gap, |d| d.saturating_duration_since(Instant::now()))
        };
        let end =
            session::run(&spec, workdir.path(), &initrd, &console_log, |message| match message {
                GuestMessage::TestStarted { id } => {
                    running = by_id.get(&id).copied();
                    live_note = FailureNote::default();
                    test_deadline = running
                        .map(|m| Instant::now() + m.timeout.mul_f64(scale) + gap + send_time);
                    send(Note::Started(id), &mut test_deadline);
                    left(test_deadline)
                }
                GuestMessage::KernelLog { id, bytes } => {
                    if running.is_some_and(|m| m.id == id) {
                        kernel_log = bytes;
                    }
                    left(test_deadline)
                }
                GuestMessage::FileChunk { name, offset, data, last } => {
                    // The test running on this VM owns the file, whatever the guest might claim.
                    received.chunk(running.map(|m| m.id), &name, offset, &data, last);
                    for stray in received.take_strays() {
                        eprintln!("vmtest: warning: a file from the guest: {stray}");
                    }
                    left(test_deadline)
                }
                GuestMessage::FilesHeldBack { why, name, files, bytes } => {
                    received.held_back(running.map(|m| m.id), why, &name, files, bytes);
                    for stray in received.take_strays() {
                        eprintln!("vmtest: warning: a file from the guest: {stray}");
                    }
                    left(test_deadline)
                }
                GuestMessage::TestFinished { id, outcome, duration_ms: _, output } => {
                    let files = received.finish(id);
                    let (rest, live_message) = std::mem::take(&mut live_note).finish();
                    if !rest.is_empty() {
                        send(Note::Output { stream: Stream::Stderr, bytes: rest }, &mut None);
                    }
                    if let Some(member) = by_id.get(&id) {
                        let (output, message) = FailureNote::split(&output);
                        let report = Report {
                            outcome: &outcome,
                            output: &output,
                            message: message.or(live_message),
                            kernel_log: &kernel_log,
                        };
                        let verdict = report.verdict(member.allow_kernel_warnings, &console_log);
                        member.finish(notes, context.with_files(member, verdict, &files));
                    }
                    kernel_log.clear();
                    running = None;
                    test_deadline = None;
                    gap
                }
                GuestMessage::Output { stream, bytes, .. } => {
                    let bytes = match stream {
                        Stream::Stdout => bytes,
                        Stream::Stderr => live_note.feed(&bytes),
                    };
                    if !bytes.is_empty() {
                        send(Note::Output { stream, bytes }, &mut test_deadline);
                    }
                    left(test_deadline)
                }
                GuestMessage::Log(line) => {
                    eprintln!("vmtest: guest: {line}");
                    left(test_deadline)
                }
                _ => left(test_deadline),
            })?;
        let Some(mut problem) = end.problem else { return Ok(None) };
        if end.kvm_failed && accel.may_fall_back {
            context.fall_back_to_tcg(&problem)?;
            drop(permit);
            return self.boot(context, pending, attempt, notes);
        }
        if end.kvm_failed {
            problem.push_str(
                "\nKVM failed while forced by VMTEST_ACCEL=kvm; unset it to fall back to TCG",
            );
        }
        let report = format!(
            "{problem}\nkernel console ({}), last lines:\n{}",
            console_log.display(),
            end.console_tail
        );
        if let Some(member) = running {
            member.finish(
                notes,
                Verdict::explained(&format!("the VM failed while this test ran: {report}")),
            );
        }
        let unfinished = pending.iter().filter(|m| !m.slot.is_filled()).count();
        Ok((unfinished > 0).then_some(report))
    }

    fn write_initramfs(
        &self,
        context: &RunContext,
        pending: &[&Member],
        path: &std::path::Path,
    ) -> Result<u64, Error> {
        let mut base = Base::new(&context.exe, context.userland.clone())?;
        for module in &self.harness_modules {
            base.add_module(module)?;
        }
        let mut payload = Payload::new(&context.cwd);
        for file in pending.iter().flat_map(|m| m.files.iter()) {
            payload.add_fixture(file)?;
        }
        let everyone: Vec<u32> = pending.iter().map(|m| m.id).collect();
        for module in &self.test_modules {
            payload.add_module(module, everyone.clone())?;
        }
        for member in pending {
            payload.add_test(self.planned(member, context));
        }
        let run_bytes_left = context
            .file_limits
            .run_bytes
            .saturating_sub(context.file_bytes.load(Ordering::Relaxed));
        let send_ms = SEND_TIME.mul_f64(context.accel().timeout_scale).as_millis();
        payload.set_file_limits(
            context
                .file_limits
                .for_guest(run_bytes_left, u64::try_from(send_ms).unwrap_or(u64::MAX)),
        );
        GuestImage { base, payload }.write(path)
    }

    fn planned(&self, member: &Member, context: &RunContext) -> PlannedTest {
        let listed: Vec<&str> = member.env.iter().map(String::as_str).collect();
        let mut env = guest_env::test_env(std::env::vars_os(), &listed);
        env.retain(|(name, _)| name != protocol::TEST_ENV && name != INSTANCE_ENV);
        env.push((protocol::TEST_ENV.to_owned(), member.base_name.clone()));
        // The name libtest shows, with the kernel suffix of a matrix instance.
        env.push((INSTANCE_ENV.to_owned(), member.name.clone()));
        PlannedTest {
            id: member.id,
            name: member.name.clone(),
            program: "/init".to_owned(),
            args: vec![],
            env,
            cwd: context.cwd.clone(),
            timeout_ms: u64::try_from(
                member.timeout.mul_f64(context.accel().timeout_scale).as_millis(),
            )
            .unwrap_or(u64::MAX),
            capture: context.capture,
        }
    }
}

/// What the guest reported about one test.
struct Report<'a> {
    outcome: &'a Outcome,
    /// The captured output (stdout and stderr in the order written), without the failure note.
    output: &'a [u8],
    /// The message of the failure note, if the test ended its output with one.
    message: Option<String>,
    /// Kernel log records written while the test ran.
    kernel_log: &'a [u8],
}

impl Report<'_> {
    /// The verdict: the test's own outcome, then any kernel splat (a WARNING alone passes when
    /// `allow_warnings`; a splat fails even a skipped test). A test that passed, panicked,
    /// returned `Err` or did not panic as required reads as under libtest, its output only;
    /// anything else (an odd exit status, a signal, a timeout, a splat) is explained after the
    /// output, with the kernel console log's path.
    fn verdict(&self, allow_warnings: bool, console_log: &Path) -> Verdict {
        let why = match self.outcome {
            Outcome::Exited(0 | 1 | 101) | Outcome::Skipped(_) => None,
            Outcome::Exited(code) => Some(format!("the test process exited with status {code}")),
            Outcome::Signaled(signal) => {
                Some(format!("the test process was killed by signal {signal}"))
            }
            Outcome::TimedOut { after_ms } => Some(format!(
                "timed out after {} s",
                Duration::from_millis(*after_ms).as_secs_f64()
            )),
            Outcome::Error(message) => Some(message.clone()),
        };
        let splat =
            crate::host::splat::failure(&String::from_utf8_lossy(self.kernel_log), allow_warnings);
        let mut output = self.output.to_vec();
        let message = self.message.clone();
        if why.is_none() && splat.is_none() {
            let outcome = match self.outcome {
                Outcome::Exited(0) => report::Outcome::Passed,
                Outcome::Skipped(reason) => {
                    report::Outcome::Ignored { reason: Some(reason.clone()) }
                }
                _ => report::Outcome::Failed { message },
            };
            return Verdict { outcome, output, explained: false };
        }
        for line in why.into_iter().chain(splat) {
            if !output.is_empty() && !output.ends_with(b"\n") {
                output.push(b'\n');
            }
            output.extend_from_slice(line.as_bytes());
            output.push(b'\n');
        }
        output.extend_from_slice(format!("kernel console: {}\n", console_log.display()).as_bytes());
        Verdict { outcome: report::Outcome::Failed { message }, output, explained: true }
    }
}

/// Caps the VMs running at once: at most one per thread (`--test-threads`, else one per
/// core), and together within the memory the host has available, so that parallel VMs do not
/// push the host into swap. A VM larger than the whole budget still runs, alone.
struct VmSlots {
    free: Mutex<SlotsFree>,
    released: Condvar,
    /// The memory budget, MiB.
    budget_mib: u64,
}

struct SlotsFree {
    vms: usize,
    mib: u64,
}

struct Permit<'a> {
    slots: &'a VmSlots,
    mib: u64,
}

impl VmSlots {
    fn new(vms: usize, budget_mib: u64) -> Self {
        VmSlots {
            free: Mutex::new(SlotsFree { vms: vms.max(1), mib: budget_mib }),
            released: Condvar::new(),
            budget_mib,
        }
    }

    /// Slots for this host: `threads` VMs, within three quarters of its available memory.
    fn for_host(threads: usize) -> Self {
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_available_mib(&text))
            .unwrap_or(u64::MAX / 4);
        VmSlots::new(threads, available / 4 * 3)
    }

    /// Waits for a slot and `mib` of the budget (all of it, if `mib` exceeds the budget).
    fn acquire(&self, mib: u64) -> Permit<'_> {
        let mib = mib.min(self.budget_mib);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while free.vms == 0 || free.mib < mib {
            free = self.released.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        free.vms -= 1;
        free.mib -= mib;
        Permit { slots: self, mib }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self.slots.free.lock().unwrap_or_else(|e| e.into_inner());
        free.vms += 1;
        free.mib += self.mib;
        self.slots.released.notify_all();
    }
}

/// `MemAvailable` of `/proc/meminfo` text, in MiB.
fn mem_available_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::host::args::Parsed;

    fn meta(name: &str, ignore: Option<Option<&str>>, should_panic: bool) -> TestMeta {
        TestMeta {
            module_path: "suite".into(),
            name: name.into(),
            file: "tests/suite.rs".into(),
            line: 3,
            column: 4,
            should_panic,
            ignore: ignore.map(|reason| reason.map(str::to_owned)),
            ..TestMeta::default()
        }
    }

    fn suite() -> Vec<TestMeta> {
        let mut other_arch = meta("elsewhere", None, false);
        other_arch.vm.arch = vec!["riscv64".into()];
        let mut matrix = meta("on_both", None, false);
        matrix.vm.kernels = vec!["6.1".into(), "6.12".into()];
        vec![
            meta("runs", None, false),
            meta("panics", None, true),
            meta("later", Some(Some("slow")), false),
            meta("later_too", Some(None), false),
            other_arch,
            matrix,
        ]
    }

    /// A selected test as `(name, ignore, not_run)`.
    type Picked = (String, bool, Option<Option<String>>);

    /// What `args` select from [`suite`], and how many they leave out.
    fn selection(args: &[&str]) -> (Vec<Picked>, usize) {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let Ok(Parsed::Run(options)) = args::parse("t", &args, |_| None) else { panic!() };
        let (selected, out) = select(instances(&suite(), Arch::X86_64), &options);
        (selected.into_iter().map(|s| (s.info.name, s.info.ignore, s.not_run)).collect(), out)
    }

    fn names(args: &[&str]) -> Vec<String> {
        selection(args).0.into_iter().map(|(name, _, _)| name).collect()
    }

    #[test]
    fn selects_as_libtest_filters() {
        let (all, out) = selection(&[]);
        assert_eq!(out, 0);
        let expected: Vec<Picked> = vec![
            ("elsewhere".into(), false, Some(Some("runs only on riscv64".into()))),
            ("later".into(), true, Some(Some("slow".into()))),
            ("later_too".into(), true, Some(None)),
            ("on_both[6.12]".into(), false, None),
            ("on_both[6.1]".into(), false, None),
            ("panics".into(), false, None),
            ("runs".into(), false, None),
        ];
        assert_eq!(all, expected);
        assert_eq!(names(&["later", "runs"]), ["later", "later_too", "runs"]);
        assert_eq!(names(&["--exact", "later"]), ["later"]);
        assert_eq!(names(&["on_both", "--skip", "6.12"]), ["on_both[6.1]"]);
        assert_eq!(
            names(&["--exclude-should-panic", "--skip", "o"]),
            ["elsewhere", "later", "runs"]
        );
        assert_eq!(selection(&["runs"]).1, 6);
    }

    #[test]
    fn ignored_tests_run_on_request_but_other_arches_never() {
        let (only, out) = selection(&["--ignored"]);
        assert_eq!(out, 5);
        assert_eq!(
            only,
            [("later".to_owned(), false, None), ("later_too".to_owned(), false, None)]
        );
        let (all, _) = selection(&["--include-ignored", "l"]);
        assert!(all
            .iter()
            .all(|(name, ignore, not_run)| !ignore && (not_run.is_none() || name == "elsewhere")));
        // --bench reports every test ignored, with the attribute's reason where it has one.
        let (bench, _) = selection(&["--bench", "later"]);
        assert_eq!(bench[0].2, Some(Some("slow".into())));
        assert_eq!(selection(&["--bench", "runs"]).0[0].2, Some(None));
    }

    #[test]
    fn a_test_is_named_where_its_name_is() {
        let args = Vec::new();
        let Ok(Parsed::Run(options)) = args::parse("t", &args, |_| None) else { panic!() };
        let (selected, _) = select(instances(&suite(), Arch::X86_64), &options);
        let panics = selected.iter().find(|s| s.info.name == "panics").unwrap();
        assert!(panics.info.should_panic);
        assert_eq!(
            panics.info.source,
            Source {
                path: "tests/suite.rs".into(),
                start_line: 3,
                start_col: 4,
                end_line: 3,
                end_col: 10
            }
        );
    }

    fn report(outcome: Outcome, output: &str, kernel_log: &str) -> Verdict {
        Report {
            outcome: &outcome,
            output: output.as_bytes(),
            message: None,
            kernel_log: kernel_log.as_bytes(),
        }
        .verdict(false, Path::new("/logs/vm0.console.log"))
    }

    #[test]
    fn ordinary_results_carry_only_the_tests_output() {
        let passed = report(Outcome::Exited(0), "out\nerr\n", "");
        assert_eq!(passed.outcome, report::Outcome::Passed);
        assert_eq!(passed.output, b"out\nerr\n");
        let panicked = report(Outcome::Exited(101), "thread 'x' panicked\n", "");
        assert_eq!(panicked.outcome, report::Outcome::Failed { message: None });
        assert_eq!(panicked.output, b"thread 'x' panicked\n");
        assert!(!panicked.explained);
        let skipped = report(Outcome::Skipped("no BTF".into()), "", "");
        assert_eq!(skipped.outcome, report::Outcome::Ignored { reason: Some("no BTF".into()) });
    }

    #[test]
    fn vmtest_failures_are_explained_after_the_output() {
        let timed_out = report(Outcome::TimedOut { after_ms: 2000 }, "hang started\n", "");
        assert!(timed_out.explained);
        assert_eq!(
            String::from_utf8(timed_out.output).unwrap(),
            "hang started\ntimed out after 2 s\nkernel console: /logs/vm0.console.log\n"
        );
        let exited = report(Outcome::Exited(3), "no newline", "");
        assert_eq!(
            String::from_utf8(exited.output).unwrap(),
            "no newline\nthe test process exited with status 3\n\
             kernel console: /logs/vm0.console.log\n"
        );
        let splat = "[    1.000000] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x0/0x0\n";
        let warned = report(Outcome::Skipped("x".into()), "", splat);
        assert_eq!(warned.outcome, report::Outcome::Failed { message: None });
        assert!(String::from_utf8(warned.output).unwrap().contains("kernel WARNING"));
    }

    #[test]
    fn reads_mem_available() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(mem_available_mib(meminfo), Some(2048));
        assert_eq!(mem_available_mib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn vms_wait_for_memory_as_well_as_for_a_slot() {
        let slots = Arc::new(VmSlots::new(4, 1000));
        let first = slots.acquire(600);
        let (started, rx) = mpsc::channel();
        let waiter = {
            let slots = Arc::clone(&slots);
            std::thread::spawn(move || {
                let _second = slots.acquire(600);
                started.send(()).unwrap();
            })
        };
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "600 + 600 > 1000 MiB");
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).expect("the second VM starts once memory is free");
        waiter.join().unwrap();
    }

    #[test]
    fn a_vm_larger_than_the_budget_runs_alone() {
        let slots = VmSlots::new(2, 1000);
        let big = slots.acquire(5000);
        assert_eq!(slots.free.lock().unwrap().mib, 0);
        drop(big);
        let a = slots.acquire(300);
        let _b = slots.acquire(300);
        assert_eq!(slots.free.lock().unwrap().vms, 0);
        drop(a);
    }
}
