//! The host side: libtest's CLI over libtest-mimic, tests grouped into VM boots.
//!
//! Every test instance becomes a libtest-mimic [`Trial`] whose runner waits for the verdict of
//! its test from its group's VM. The first trial of a group that runs starts the group's VM on a
//! thread of its own; that VM runs every selected test of the group one after another and fills
//! in their verdicts as they arrive. A semaphore caps how many VMs run at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use vmtest_init::protocol::{self, GuestMessage, Outcome, Plan, PlannedTest, Stream};

use crate::accel::{self, AccelChoice};
use crate::arch::Arch;
use crate::initramfs::Initramfs;
use crate::kernel::{self, Kernel, ModuleFile};
use crate::meta::{self, TestMeta};
use crate::registry::TESTS;
use crate::vm::{self, VmSpec};
use crate::Error;
use crate::{files, fixtures, guest_env};

/// Timeout of a test without a `timeout` attribute, before scaling.
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a kernel to reach the harness, before scaling.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time the host grants beyond a test's own timeout before it gives up on the guest.
const HOST_GRACE: Duration = Duration::from_secs(30);
/// Guest memory on top of what the initramfs needs.
const BASE_MEMORY_MIB: u64 = 256;
/// Environment variable that carries a test's shown name (`test[kernel]`) into the guest.
const INSTANCE_ENV: &str = "VMTEST_TEST_INSTANCE";
/// Where the guest finds modules inside the initramfs.
const GUEST_MODULE_DIR: &str = "/vmtest/modules";

/// A test binary and the vmtest tests it holds: what the engine runs.
#[derive(Clone, Debug)]
pub(crate) struct TestBinary {
    /// The binary; it becomes the guest's `/init`.
    pub path: PathBuf,
    /// Its architecture (from its ELF header), which the guest must have.
    pub arch: Arch,
    /// Its tests, in any order.
    pub tests: Vec<TestMeta>,
}

impl TestBinary {
    /// The running binary, with the tests registered in it.
    pub(crate) fn current() -> Result<TestBinary, Error> {
        let path =
            std::env::current_exe().map_err(|e| Error::io("failed to find the test binary", e))?;
        Ok(TestBinary {
            path,
            arch: Arch::host(),
            tests: TESTS.iter().map(TestMeta::from).collect(),
        })
    }

    /// Reads the binary at `path` without executing it: its architecture from the ELF header,
    /// its tests from the `vmtest_tests` section. `None` when it has no such section (it was
    /// not built with vmtest).
    pub(crate) fn read(path: &Path) -> Result<Option<TestBinary>, Error> {
        let arch = elf_arch(path)?;
        let section = crate::elf::read_section(path, meta::SECTION)
            .map_err(|e| Error::Config(e.to_string()))?;
        let Some(section) = section else { return Ok(None) };
        let tests = meta::decode(&section).map_err(|e| {
            Error::Config(format!(
                "failed to read the vmtest tests of {} (section {}): {e}",
                path.display(),
                meta::SECTION
            ))
        })?;
        Ok(Some(TestBinary { path: path.to_owned(), arch, tests }))
    }
}

/// The architecture of the ELF file at `path`.
pub(crate) fn elf_arch(path: &Path) -> Result<Arch, Error> {
    let info = crate::elf::read_elf(path).map_err(|e| Error::Config(e.to_string()))?;
    Arch::from_elf_machine(info.machine).ok_or_else(|| {
        Error::Config(format!(
            "{} is for ELF machine {}, which vmtest cannot boot",
            path.display(),
            info.machine
        ))
    })
}

/// Runs the host harness for the running binary and exits with libtest's exit code.
pub(crate) fn run_host() -> ! {
    let args = Arguments::from_args();
    let code = TestBinary::current().map_or_else(
        |e| {
            eprintln!("error: {e}");
            1
        },
        |binary| run(&binary, &args),
    );
    std::process::exit(code)
}

/// Runs `binary`'s tests as libtest would with `args`; returns the exit code.
pub(crate) fn run(binary: &TestBinary, args: &Arguments) -> i32 {
    crate::process::install_signal_cleanup();
    crate::process::remove_stale_workdirs();
    match prepare(binary, args) {
        Ok((trials, context)) => {
            let conclusion = libtest_mimic::run(args, trials);
            // Verdicts arrive before QEMU has shut down; wait for every VM to be gone and its
            // temp dir removed before exiting.
            if let Some(context) = context {
                context.join_vms();
            }
            if conclusion.has_failed() {
                101
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
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

/// How a test went: `Ok(None)` passed, `Ok(Some(reason))` skipped itself at run time,
/// `Err(text)` failed.
type Verdict = Result<Option<String>, String>;

/// A test's verdict, filled in by its group's VM.
#[derive(Default)]
struct Slot {
    verdict: Mutex<Option<Verdict>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, verdict: Verdict) {
        let mut slot = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(verdict);
            self.ready.notify_all();
        }
    }

    fn is_filled(&self) -> bool {
        self.verdict.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn wait(&self) -> Verdict {
        let mut slot = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(verdict) = slot.as_ref() {
                return verdict.clone();
            }
            slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
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
    slot: Arc<Slot>,
    /// `env = [...]` of the test.
    env: Vec<String>,
    /// `files = [...]` of the test.
    files: Vec<String>,
    /// `allow_kernel_warnings`: a kernel WARNING alone does not fail the test.
    allow_kernel_warnings: bool,
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
    members: Vec<Member>,
    started: Once,
}

/// Where a trial finds its group and the run, once grouping is done.
type GroupCell = OnceLock<(Arc<Group>, Arc<RunContext>)>;
/// A group while tests are sorted into it: its kernel, members, and their trials' cells.
type GroupParts = (Kernel, Vec<Member>, Vec<Arc<GroupCell>>);

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
    /// Largest file accepted from a guest.
    file_limit: u64,
    vms: VmSlots,
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

    /// `verdict`, told about the test's files: where its artifacts are (in the failure text,
    /// or on stderr for a test that passed), and which files were rejected.
    fn with_files(&self, member: &Member, verdict: Verdict, files: &files::Received) -> Verdict {
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
        match verdict {
            Err(text) => Err(format!("{text}\n{note}")),
            passed => {
                eprintln!("vmtest: {}: {note}", member.name);
                passed
            }
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

fn prepare(
    binary: &TestBinary,
    args: &Arguments,
) -> Result<(Vec<Trial>, Option<Arc<RunContext>>), Error> {
    let arch = binary.arch;
    let instances = instances(&binary.tests, arch);
    let run_ignored = args.ignored || args.include_ignored;

    let mut trials = Vec::with_capacity(instances.len());
    let mut runnable = Vec::new();
    for instance in instances {
        let ignore = instance.def.ignore.clone();
        if let Some(reason) = instance.skip.clone() {
            trials.push(Trial::ignorable_test(instance.name, move || {
                Ok(Completion::ignored_with(reason))
            }));
            continue;
        }
        if let (Some(Some(reason)), false) = (ignore.clone(), run_ignored) {
            trials.push(Trial::ignorable_test(instance.name.clone(), move || {
                Ok(Completion::ignored_with(reason))
            }));
            continue;
        }
        let slot = Arc::new(Slot::default());
        let group = Arc::new(GroupCell::new());
        let trial = {
            let slot = Arc::clone(&slot);
            let group = Arc::clone(&group);
            Trial::ignorable_test(instance.name.clone(), move || {
                let (group, context) = group.get().expect("every selected test has a group");
                group.start(context);
                match slot.wait().map_err(Failed::from)? {
                    None => Ok(Completion::Completed),
                    Some(reason) => Ok(Completion::ignored_with(reason)),
                }
            })
            .with_ignored_flag(ignore.is_some())
        };
        if !args.list && !args.is_filtered_out(&trial) && !args.is_ignored(&trial) {
            runnable.push((instance, slot, group));
        }
        trials.push(trial);
    }
    if runnable.is_empty() {
        return Ok((trials, None));
    }

    let accel = accel::choose(arch)?;
    vm::find_qemu(arch)?;
    if let Some(why) = &accel.kvm_unusable {
        eprintln!(
            "vmtest: using TCG (KVM not used: {why}); timeouts scaled x{}",
            accel.timeout_scale
        );
    }
    let context = Arc::new(RunContext {
        exe: binary.path.clone(),
        arch,
        capture: !args.nocapture,
        log_dir: LogDir::claim(log_dir(&binary.path))?,
        profile_dir: profile_dir(),
        file_limit: files::file_limit()?,
        vms: VmSlots::for_host(
            args.test_threads
                .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
                .unwrap_or(1),
        ),
        accel,
        fallback: OnceLock::new(),
        vm_threads: Mutex::new(Vec::new()),
    });

    // Resolve each kernel once; group by VM configuration.
    let mut kernels: BTreeMap<Option<String>, Kernel> = BTreeMap::new();
    let mut groups: BTreeMap<GroupKey, GroupParts> = BTreeMap::new();
    for (id, (instance, slot, cell)) in runnable.into_iter().enumerate() {
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
        fixtures::check(&vm.files.iter().map(String::as_str).collect::<Vec<_>>())?;
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
            name: instance.name,
            base_name: instance.base_name,
            timeout,
            slot,
            env: vm.env.clone(),
            files: vm.files.clone(),
            allow_kernel_warnings: vm.allow_kernel_warnings,
        };
        let entry = groups.entry(key).or_insert_with(|| (kernel, Vec::new(), Vec::new()));
        entry.1.push(member);
        entry.2.push(cell);
    }
    for (index, (key, (kernel, members, cells))) in groups.into_iter().enumerate() {
        // Resolve modules now, so an unknown name is a setup error, not a boot failure.
        let harness_modules = kernel.harness_modules()?;
        let wanted: Vec<&str> = key.modules.iter().map(String::as_str).collect();
        let test_modules = kernel.module_closure(&wanted)?;
        let group = Arc::new(Group {
            index,
            key,
            kernel,
            harness_modules,
            test_modules,
            members,
            started: Once::new(),
        });
        for cell in cells {
            let _ = cell.set((Arc::clone(&group), Arc::clone(&context)));
        }
    }
    Ok((trials, Some(context)))
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
/// `.lock` file inside it for as long as the run lasts.
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
                return Ok(LogDir { path, _lock: lock });
            }
        }
        unreachable!("some slot is free")
    }
}

impl Group {
    /// Starts the group's VM on its own thread, once.
    fn start(self: &Arc<Self>, context: &Arc<RunContext>) {
        self.started.call_once(|| {
            let group = Arc::clone(self);
            let context = Arc::clone(context);
            let thread = std::thread::Builder::new()
                .name(format!("{}{}", crate::process::VM_THREAD_PREFIX, self.index))
                .spawn({
                    let context = Arc::clone(&context);
                    move || group.run(&context)
                })
                .expect("failed to spawn a VM thread");
            context.vm_threads.lock().unwrap_or_else(|e| e.into_inner()).push(thread);
        });
    }

    /// Boots VMs until every test has a verdict: when a VM dies (a kernel panic, a crash), the
    /// test that was running fails and the tests after it run in a fresh VM.
    fn run(&self, context: &RunContext) {
        let _permit = context.vms.acquire(self.memory_estimate_mib(context));
        let mut problem = None;
        for attempt in 0.. {
            let pending: Vec<&Member> =
                self.members.iter().filter(|m| !m.slot.is_filled()).collect();
            if pending.is_empty() {
                break;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.boot(context, &pending, attempt)
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
            member.slot.fill(Err(match &problem {
                Some(problem) => format!("not run: {problem}"),
                None => "the guest did not report this test".to_owned(),
            }));
        }
    }

    /// The guest memory of this group's VM before its initramfs exists: the test's `memory`,
    /// or the default sizing with the test binary standing in for the initramfs.
    fn memory_estimate_mib(&self, context: &RunContext) -> u64 {
        self.key.memory_mib.unwrap_or_else(|| {
            default_memory_mib(std::fs::metadata(&context.exe).map_or(0, |m| m.len()))
        })
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
    ) -> Result<Option<String>, Error> {
        let workdir = crate::process::vm_workdir()?;
        let initrd = workdir.path().join("initrd.cpio");
        let size = self.write_initramfs(context, pending, &initrd)?;
        let memory_mib = self.key.memory_mib.unwrap_or_else(|| default_memory_mib(size));
        let accel = context.accel();
        let scale = accel.timeout_scale;
        let spec = VmSpec {
            arch: context.arch,
            accel: accel.accel,
            kernel: self.kernel.boot_image(accel.accel),
            memory_mib,
            cpus: self.key.cpus.unwrap_or(crate::qemu::profile(context.arch).default_cpus),
            cmdline: self
                .key
                .cmdline
                .as_deref()
                .map(|c| c.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            boot_timeout: BOOT_TIMEOUT.mul_f64(scale),
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
        let mut received = files::Receiver::new(Box::new(route), context.file_limit);
        let gap = HOST_GRACE.mul_f64(scale);
        let end = vm::run(&spec, workdir.path(), &initrd, &console_log, |message| match message {
            GuestMessage::TestStarted { id } => {
                running = by_id.get(&id).copied();
                running.map_or(gap, |m| m.timeout.mul_f64(scale) + gap)
            }
            GuestMessage::KernelLog { id, bytes } => {
                if running.is_some_and(|m| m.id == id) {
                    kernel_log = bytes;
                }
                running.map_or(gap, |m| m.timeout.mul_f64(scale) + gap)
            }
            GuestMessage::FileChunk { id, name, offset, data, last } => {
                received.chunk(id, &name, offset, &data, last);
                running.map_or(gap, |m| m.timeout.mul_f64(scale) + gap)
            }
            GuestMessage::TestFinished { id, outcome, duration_ms: _, stdout, stderr } => {
                let files = received.finish(id);
                if let Some(member) = by_id.get(&id) {
                    let report = Report {
                        outcome: &outcome,
                        stdout: &stdout,
                        stderr: &stderr,
                        kernel_log: &kernel_log,
                    };
                    let verdict = report.verdict(member.allow_kernel_warnings, &console_log);
                    member.slot.fill(context.with_files(member, verdict, &files));
                }
                kernel_log.clear();
                running = None;
                gap
            }
            GuestMessage::Output { stream, bytes, .. } => {
                let _ = match stream {
                    Stream::Stdout => std::io::stdout().write_all(&bytes),
                    Stream::Stderr => std::io::stderr().write_all(&bytes),
                };
                running.map_or(gap, |m| m.timeout.mul_f64(scale) + gap)
            }
            GuestMessage::Log(line) => {
                eprintln!("vmtest: guest: {line}");
                running.map_or(gap, |m| m.timeout.mul_f64(scale) + gap)
            }
            _ => running.map_or(gap, |m| m.timeout.mul_f64(scale) + gap),
        })?;
        let Some(mut problem) = end.problem else { return Ok(None) };
        if end.kvm_failed && accel.may_fall_back {
            context.fall_back_to_tcg(&problem)?;
            return self.boot(context, pending, attempt);
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
            member.slot.fill(Err(format!("the VM failed while this test ran: {report}")));
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
        let mut initramfs = Initramfs::new();
        initramfs.add_elf_with_libraries("/init", &context.exe)?;
        // The kernel opens /dev/console for PID 1's stdio before devtmpfs is mounted.
        initramfs.add_char_device("/dev/console", 5, 1, 0o600)?;
        for file in pending.iter().flat_map(|m| m.files.iter()) {
            fixtures::add(&mut initramfs, file)?;
        }
        let cwd = guest_env::test_cwd(std::env::var_os("CARGO_MANIFEST_DIR"));
        if cwd != "/" && !initramfs.contains(&cwd) {
            initramfs.add_dir(&cwd, 0o755)?;
        }
        let everyone: Vec<u32> = pending.iter().map(|m| m.id).collect();
        let modules = (self.harness_modules.iter().map(|m| (m, Vec::new())))
            .chain(self.test_modules.iter().map(|m| (m, everyone.clone())));
        let mut planned_modules = Vec::new();
        for (module, wanted_by) in modules {
            let file = module.host_path.file_name().map(|f| f.to_string_lossy().into_owned());
            let guest =
                format!("{GUEST_MODULE_DIR}/{}", file.unwrap_or_else(|| module.name.clone()));
            initramfs.add_host_file(&guest, &module.host_path, 0o644)?;
            planned_modules.push(protocol::Module {
                name: module.name.clone(),
                path: guest,
                wanted_by,
            });
        }
        let plan = Plan {
            modules: planned_modules,
            tests: pending.iter().map(|m| self.planned(m, context)).collect(),
        };
        let plan = protocol::encode_frame(&plan).map_err(|e| Error::Config(e.to_string()))?;
        initramfs.add_bytes(protocol::PLAN_PATH, plan, 0o644)?;
        let file = std::fs::File::create(path)
            .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))?;
        let mut out = std::io::BufWriter::new(file);
        let size = initramfs.write_to(&mut out)?;
        out.flush().map_err(|e| Error::io(format!("failed to write {}", path.display()), e))?;
        Ok(size)
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
            cwd: guest_env::test_cwd(std::env::var_os("CARGO_MANIFEST_DIR")),
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
    stdout: &'a [u8],
    stderr: &'a [u8],
    /// Kernel log records written while the test ran.
    kernel_log: &'a [u8],
}

impl Report<'_> {
    /// libtest's verdict and failure text: the test's own outcome, then any kernel splat
    /// (a WARNING alone passes when `allow_warnings`; a splat fails even a skipped test).
    fn verdict(&self, allow_warnings: bool, console_log: &Path) -> Verdict {
        let why = match self.outcome {
            Outcome::Exited(0) | Outcome::Skipped(_) => None,
            Outcome::Exited(101) => Some(None),
            Outcome::Exited(code) => {
                Some(Some(format!("the test process exited with status {code}")))
            }
            Outcome::Signaled(signal) => {
                Some(Some(format!("the test process was killed by signal {signal}")))
            }
            Outcome::TimedOut { after_ms } => Some(Some(format!(
                "timed out after {} s",
                Duration::from_millis(*after_ms).as_secs_f64()
            ))),
            Outcome::Error(message) => Some(Some(message.clone())),
        };
        let splat =
            crate::splat::failure(&String::from_utf8_lossy(self.kernel_log), allow_warnings);
        if why.is_none() && splat.is_none() {
            let skipped = match self.outcome {
                Outcome::Skipped(reason) => Some(reason.clone()),
                _ => None,
            };
            return Ok(skipped);
        }
        let mut text = String::new();
        text.push_str(&String::from_utf8_lossy(self.stdout));
        text.push_str(&String::from_utf8_lossy(self.stderr));
        for line in why.flatten().into_iter().chain(splat) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(&format!("kernel console: {}", console_log.display()));
        Err(text)
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
