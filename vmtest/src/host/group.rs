//! One VM group: the tests that share a VM configuration, run one after another in VMs
//! booted for them. A group boots its VM (its image built by [`GuestImage`]), follows the
//! guest's messages within each test's [`Deadline`], and, when the VM dies (a kernel panic, a
//! crash), fails the test that was running and runs the rest in a fresh VM. Worker threads
//! ([`RunContext::start_workers`]) run the groups in order. Nothing here prints: what the main
//! thread should know or print goes to it as [`Note`]s.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmtest_init::protocol::{self, GuestMessage, PlannedTest, Stream};

use crate::arch::Arch;
use crate::guest::child::FailureNote;
use crate::host::debug::{self, Debugger, Debugging};
use crate::host::files;
use crate::host::logdir::LogDir;
use crate::host::note::Note;
use crate::host::plan::{self, GroupKey, PlannedGroup};
use crate::host::slots::VmSlots;
use crate::host::verdict::{Report, Verdict};
use crate::image::guest_env;
use crate::image::guest_image::{Base, DebugInfo, GuestImage, Payload};
use crate::kernel::{Kernel, ModuleFile, ModuleProvider};
use crate::userland::GuestUserland;
use crate::vm::accel::AccelChoice;
use crate::vm::session::{self, VmSpec};
use crate::vm::snapshot::{self, SnapshotCache};
use crate::vm::warm::{SnapshotMode, Warm};
use crate::Error;

/// Time for a kernel to reach the harness, before scaling.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time the host grants beyond a test's own timeout (and [`SEND_TIME`]) before it gives
/// up on the guest; also the longest silence between two tests. Before scaling.
const HOST_GRACE: Duration = Duration::from_secs(30);
/// How long after a test ended the guest may spend sending its files, before scaling.
const SEND_TIME: Duration = Duration::from_secs(30);
/// Guest memory on top of what the initramfs needs.
const BASE_MEMORY_MIB: u64 = 256;
/// The default guest memory is a multiple of this.
const MEMORY_STEP_MIB: u64 = 64;
/// Environment variable that carries a test's shown name (`test[kernel]`) into the guest.
const INSTANCE_ENV: &str = "VMTEST_TEST_INSTANCE";

/// A test of a group as it runs: its plan, and whether it has its verdict yet (the first
/// verdict wins).
struct Member {
    plan: plan::Member,
    reported: AtomicBool,
}

impl Deref for Member {
    type Target = plan::Member;

    fn deref(&self) -> &plan::Member {
        &self.plan
    }
}

impl Member {
    fn is_reported(&self) -> bool {
        self.reported.load(Ordering::SeqCst)
    }

    /// Sends the test's verdict, unless it has one already.
    fn finish(&self, notes: &SyncSender<Note>, verdict: Verdict) {
        if !self.reported.swap(true, Ordering::SeqCst) {
            let _ = notes.send(Note::Finished(self.id, verdict));
        }
    }
}

/// Tests that share one VM boot.
pub(crate) struct Group {
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

/// What every group of a run boots with, found before the first boot.
pub(crate) struct RunSettings {
    /// The test binary, the guest's `/init`.
    pub exe: PathBuf,
    /// The guests' architecture.
    pub arch: Arch,
    /// The accelerator chosen for the run.
    pub accel: AccelChoice,
    /// Capture the tests' output (no `--nocapture`).
    pub capture: bool,
    /// Where this run's console logs go; see [`LogDir`].
    pub log_dir: LogDir,
    /// Where the tests' LLVM profiles go: the directory of the host's `LLVM_PROFILE_FILE`,
    /// when it is set (`cargo llvm-cov`, PGO).
    pub profile_dir: Option<PathBuf>,
    /// Most bytes of kernel console kept per VM.
    pub console_limit: u64,
    /// What the run accepts of the guests' files.
    pub file_limits: files::Limits,
    /// The tests' working directory in the guest.
    pub cwd: String,
    /// How many VMs run at once.
    pub vms: VmSlots,
    /// The directory tree and tools every guest of the run gets beneath its own files.
    pub userland: GuestUserland,
    /// Whether the guest's copy of the test binary keeps its debug sections.
    pub debug_info: DebugInfo,
    /// Where VMs start warm from; `None`: every VM boots its kernel.
    pub snapshots: Option<Snapshots>,
    /// When the guests offer an interactive shell (`VMTEST_SHELL`).
    pub shell: protocol::ShellWhen,
    /// The debugger the run's VMs wait for (`VMTEST_GDB`), if any.
    pub debug: Option<Debugging>,
}

/// Warm starts for a run's VMs (`VMTEST_SNAPSHOT`).
#[derive(Clone, Debug)]
pub(crate) struct Snapshots {
    pub cache: SnapshotCache,
    /// Boot and save anew even where a snapshot exists.
    pub refresh: bool,
}

impl Snapshots {
    /// Where VMs start warm from, as `VMTEST_SNAPSHOT` says: `None` when it is off, or when
    /// there is no kernel store to keep snapshots under and `VMTEST_SNAPSHOTS` names no
    /// directory.
    pub(crate) fn from_env() -> Result<Option<Snapshots>, Error> {
        let refresh = match SnapshotMode::from_env()? {
            SnapshotMode::Off => return Ok(None),
            SnapshotMode::On => false,
            SnapshotMode::Refresh => true,
        };
        let cache = match crate::kernel::Store::open() {
            Ok(store) => SnapshotCache::open(store.root()),
            Err(_) => match std::env::var_os(snapshot::SNAPSHOTS_ENV) {
                Some(dir) if !dir.is_empty() => SnapshotCache::open(Path::new(&dir)),
                _ => return Ok(None),
            },
        };
        Ok(Some(Snapshots { cache, refresh }))
    }
}

/// Writes `image` for a VM whose files go in `workdir`: as one initramfs at `initrd`, or,
/// with `snapshots`, its base there and its payload next to it, with the [`Warm`] start that
/// sends it. Returns the bytes written.
pub(crate) fn write_image(
    image: &GuestImage,
    initrd: &Path,
    workdir: &Path,
    snapshots: Option<&Snapshots>,
) -> Result<(u64, Option<Warm>), Error> {
    let Some(snapshots) = snapshots else { return Ok((image.write(initrd)?, None)) };
    let payload = workdir.join("payload.cpio");
    let size = image.base.write_warm(initrd)? + image.payload.write_warm(&image.base, &payload)?;
    Ok((size, Some(Warm { cache: snapshots.cache.clone(), refresh: snapshots.refresh, payload })))
}

/// A run's settings and the state its groups share.
pub(crate) struct RunContext {
    settings: RunSettings,
    /// TCG after KVM, chosen automatically, failed to boot a guest.
    fallback: OnceLock<AccelChoice>,
    /// Bytes of the guests' files received so far, by every VM of the run.
    file_bytes: AtomicU64,
    /// Threads of the VMs started so far.
    vm_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Deref for RunContext {
    type Target = RunSettings;

    fn deref(&self) -> &RunSettings {
        &self.settings
    }
}

impl RunContext {
    /// The context of a run with `settings`, before its first boot.
    pub(crate) fn new(settings: RunSettings) -> RunContext {
        RunContext {
            settings,
            fallback: OnceLock::new(),
            file_bytes: AtomicU64::new(0),
            vm_threads: Mutex::new(Vec::new()),
        }
    }

    /// The accelerator for the next boot.
    fn accel(&self) -> &AccelChoice {
        self.fallback.get().unwrap_or(&self.accel)
    }

    /// `time` scaled for the accelerator of the next boot; suspended while a debugger may hold
    /// the guest.
    fn scaled(&self, time: Duration) -> Duration {
        match self.debug {
            Some(_) => debug::SUSPENDED,
            None => time.mul_f64(self.accel().timeout_scale),
        }
    }

    /// Switches the rest of the run to TCG after KVM failed, with one warning line.
    fn fall_back_to_tcg(&self, why: &str, notes: &SyncSender<Note>) -> Result<(), Error> {
        let tcg = self.accel.fallen_back(why)?;
        let scale = tcg.timeout_scale;
        if self.fallback.set(tcg).is_ok() {
            let _ = notes.send(Note::Stderr(format!(
                "vmtest: warning: KVM failed to boot the guest; using TCG for the rest of this run, \
                 timeouts scaled x{scale} (set VMTEST_ACCEL=tcg to skip KVM)"
            )));
        }
        Ok(())
    }

    /// `<log dir>/artifacts/<test name>/`: where a test's artifacts go.
    fn artifact_dir(&self, member: &Member) -> PathBuf {
        self.log_dir.artifact_dir(&member.name)
    }

    /// `verdict`, told about the test's files: where its artifacts are, and which files were
    /// rejected. Where the artifacts are goes into a failure that vmtest explains anyway, and
    /// to stderr otherwise, so that an ordinary result reads exactly as libtest's.
    fn with_files(
        &self,
        member: &Member,
        mut verdict: Verdict,
        files: &files::Received,
        notes: &SyncSender<Note>,
    ) -> Verdict {
        for problem in &files.problems {
            let _ = notes.send(Note::Stderr(format!(
                "vmtest: warning: {}: a file from the guest: {problem}",
                member.name
            )));
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
        match &mut verdict {
            Verdict::Explained { output, .. } => {
                output.extend_from_slice(format!("{note}\n").as_bytes())
            }
            Verdict::Own { .. } => {
                let _ = notes.send(Note::Stderr(format!("vmtest: {}: {note}", member.name)));
            }
        }
        verdict
    }

    /// Starts `threads` workers (at most one per group) that boot the groups' VMs in order.
    pub(crate) fn start_workers(
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

    /// Waits for every VM thread to end, each having reaped its QEMU and removed its temp dir.
    pub(crate) fn join_vms(&self) {
        let threads =
            std::mem::take(&mut *self.vm_threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Guest memory when a test does not say: a base, plus twice the initramfs (the archive and
/// the files unpacked from it), rounded up to [`MEMORY_STEP_MIB`]. The memory is part of a
/// snapshot's key: rounded, runs whose files differ by a few MiB share their snapshot.
pub(crate) fn default_memory_mib(initramfs_bytes: u64) -> u64 {
    (BASE_MEMORY_MIB + 2 * initramfs_bytes.div_ceil(1 << 20)).next_multiple_of(MEMORY_STEP_MIB)
}

/// Counts VM boots of this process, to name their profiles apart.
static BOOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How one boot of a group's VM ended.
#[derive(Debug)]
enum BootEnd {
    /// The guest ran to its end; a test it did not report fails as such.
    Ended,
    /// The VM could not run the tests still pending: why, with the console's last lines.
    Failed(String),
}

/// How long the host waits for the guest's next message: until the running test's deadline,
/// or, between tests, for a gap. A test's deadline is fixed when it starts (its timeout, the
/// gap, the time for sending its files), so that no message (a file chunk, live output)
/// extends it; only the time the host itself made the guest wait (the main thread not taking
/// notes) moves it.
#[derive(Debug)]
struct Deadline {
    /// The running test's deadline.
    test: Option<Instant>,
    /// The longest silence between tests; also part of each test's time.
    gap: Duration,
}

impl Deadline {
    fn new(gap: Duration) -> Deadline {
        Deadline { test: None, gap }
    }

    /// A test started that may take `time` (its timeout and the sending of its files) beyond
    /// the gap; `None` when the test is not one the host knows.
    fn start(&mut self, time: Option<Duration>) {
        self.test = time.map(|time| Instant::now() + time + self.gap);
    }

    /// The test ended.
    fn end(&mut self) {
        self.test = None;
    }

    /// How long the host waits for the next message.
    fn left(&self) -> Duration {
        self.test.map_or(self.gap, |d| d.saturating_duration_since(Instant::now()))
    }

    /// Sends `note`, moving the running test's deadline by the time the send waited for the
    /// main thread.
    fn send(&mut self, notes: &SyncSender<Note>, note: Note) {
        let started = Instant::now();
        let _ = notes.send(note);
        if let Some(deadline) = &mut self.test {
            *deadline += started.elapsed();
        }
    }
}

impl Group {
    /// The group `planned` on `kernel`, whose modules `modules` serves. Resolves the modules
    /// now, so that an unknown name is a setup error, not a boot failure.
    pub(crate) fn new(
        planned: PlannedGroup,
        kernel: Kernel,
        modules: Arc<ModuleProvider>,
    ) -> Result<Group, Error> {
        let harness_modules = kernel.harness_modules()?;
        let wanted: Vec<&str> = planned.key.modules.iter().map(String::as_str).collect();
        let test_modules = kernel.modules_wanted(&wanted)?;
        let members = planned
            .members
            .into_iter()
            .map(|plan| Member { plan, reported: AtomicBool::new(false) })
            .collect();
        Ok(Group {
            index: planned.index,
            key: planned.key,
            kernel,
            harness_modules,
            test_modules,
            modules,
            members,
        })
    }

    /// Boots VMs until every test has a verdict: when a VM dies (a kernel panic, a crash), the
    /// test that was running fails and the tests after it run in a fresh VM.
    fn run(&self, context: &RunContext, notes: &SyncSender<Note>) {
        let mut end = BootEnd::Ended;
        for attempt in 0.. {
            let pending: Vec<&Member> = self.members.iter().filter(|m| !m.is_reported()).collect();
            if pending.is_empty() {
                break;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.boot(context, &pending, attempt, notes)
            }));
            end = match outcome {
                Ok(Ok(end)) => end,
                Ok(Err(e)) => BootEnd::Failed(e.to_string()),
                Err(_) => BootEnd::Failed("the harness panicked while running this VM".to_owned()),
            };
            let progressed = pending.iter().any(|m| m.is_reported());
            if matches!(end, BootEnd::Ended) || !progressed {
                break;
            }
        }
        let verdict = match &end {
            BootEnd::Failed(problem) => Verdict::not_run(problem),
            BootEnd::Ended => Verdict::unreported(),
        };
        for member in &self.members {
            member.finish(notes, verdict.clone());
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

    /// Boots the VM (or starts it from its configuration's snapshot) and runs the group's
    /// tests.
    fn boot(
        &self,
        context: &RunContext,
        pending: &[&Member],
        attempt: u32,
        notes: &SyncSender<Note>,
    ) -> Result<BootEnd, Error> {
        let workdir = crate::vm::process::vm_workdir()?;
        let initrd = workdir.path().join("initrd.cpio");
        let image = self.image(context, pending)?;
        let (size, warm) =
            write_image(&image, &initrd, workdir.path(), context.snapshots.as_ref())?;
        let memory_mib = self.memory_mib(size);
        // Counted against the host's memory with the size the VM really gets.
        let permit = context.vms.acquire(memory_mib);
        let accel = context.accel();
        let debug = context.debug.as_ref().map(|d| d.debugger.vm_args(workdir.path()));
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
            boot_timeout: context.scaled(BOOT_TIMEOUT),
            console_limit: context.console_limit,
            modules: Arc::clone(&self.modules),
            warm,
            shell: context.shell != protocol::ShellWhen::Never,
            debug: debug.clone().unwrap_or_default(),
        };
        if let (Some(args), Some(settings)) = (&debug, &context.debug) {
            let _ = notes.send(Note::Stderr(self.announce(context, settings, args, pending)));
        }
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
        let send_time = context.scaled(SEND_TIME);
        let mut deadline = Deadline::new(context.scaled(HOST_GRACE));
        let end = session::run(&spec, workdir.path(), &initrd, &console_log, |message| {
            match message {
                GuestMessage::TestStarted { id } => {
                    running = by_id.get(&id).copied();
                    live_note = FailureNote::default();
                    deadline.start(running.map(|m| context.scaled(m.timeout) + send_time));
                    deadline.send(notes, Note::Started(id));
                }
                GuestMessage::KernelLog { id, bytes } if running.is_some_and(|m| m.id == id) => {
                    kernel_log = bytes;
                }
                GuestMessage::FileChunk { name, offset, data, last } => {
                    // The test running on this VM owns the file, whatever the guest might claim.
                    received.chunk(running.map(|m| m.id), &name, offset, &data, last);
                    for stray in received.take_strays() {
                        let line = format!("vmtest: warning: a file from the guest: {stray}");
                        deadline.send(notes, Note::Stderr(line));
                    }
                }
                GuestMessage::FilesHeldBack { why, name, files, bytes } => {
                    received.held_back(running.map(|m| m.id), why, &name, files, bytes);
                    for stray in received.take_strays() {
                        let line = format!("vmtest: warning: a file from the guest: {stray}");
                        deadline.send(notes, Note::Stderr(line));
                    }
                }
                GuestMessage::TestFinished { id, outcome, duration_ms: _, output } => {
                    let files = received.finish(id);
                    let (rest, live_message) = std::mem::take(&mut live_note).finish();
                    if !rest.is_empty() {
                        let _ = notes.send(Note::Output { stream: Stream::Stderr, bytes: rest });
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
                        member.finish(notes, context.with_files(member, verdict, &files, notes));
                    }
                    kernel_log.clear();
                    running = None;
                    deadline.end();
                }
                GuestMessage::Output { stream, bytes, .. } => {
                    let bytes = match stream {
                        Stream::Stdout => bytes,
                        Stream::Stderr => live_note.feed(&bytes),
                    };
                    if !bytes.is_empty() {
                        deadline.send(notes, Note::Output { stream, bytes });
                    }
                }
                GuestMessage::Log(line) => {
                    deadline.send(notes, Note::Stderr(format!("vmtest: guest: {line}")));
                }
                _ => {}
            }
            deadline.left()
        })?;
        for warning in &end.warnings {
            let _ = notes.send(Note::Stderr(format!("vmtest: warning: {warning}")));
        }
        let Some(mut problem) = end.problem else { return Ok(BootEnd::Ended) };
        if end.kvm_failed && accel.may_fall_back {
            context.fall_back_to_tcg(&problem, notes)?;
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
            member.finish(notes, Verdict::vm_failed(&report));
        }
        let unfinished = pending.iter().filter(|m| !m.is_reported()).count();
        Ok(if unfinished > 0 { BootEnd::Failed(report) } else { BootEnd::Ended })
    }

    /// The guest image of a VM that runs `pending`.
    fn image(&self, context: &RunContext, pending: &[&Member]) -> Result<GuestImage, Error> {
        let mut base = Base::new(&context.exe, context.userland.clone(), context.debug_info)?;
        for module in &self.harness_modules {
            base.add_module(module)?;
        }
        let mut payload = Payload::new(&context.cwd);
        if let Some(gdbserver) = context.debug.as_ref().and_then(|d| d.gdbserver.as_ref()) {
            payload.add_program(debug::GUEST_GDBSERVER, gdbserver, DebugInfo::Keep)?;
        }
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
        payload.set_shell(context.shell);
        let run_bytes_left = context
            .file_limits
            .run_bytes
            .saturating_sub(context.file_bytes.load(Ordering::Relaxed));
        let send_ms = context.scaled(SEND_TIME).as_millis();
        payload.set_file_limits(
            context
                .file_limits
                .for_guest(run_bytes_left, u64::try_from(send_ms).unwrap_or(u64::MAX)),
        );
        Ok(GuestImage { base, payload })
    }

    /// What the user is told about the debugger of this boot's VM (see [`debug`]).
    fn announce(
        &self,
        context: &RunContext,
        settings: &Debugging,
        args: &crate::vm::qemu::DebugArgs,
        pending: &[&Member],
    ) -> String {
        match settings.debugger {
            Debugger::Kernel => {
                let names: Vec<&str> = pending.iter().map(|m| m.name.as_str()).collect();
                let hint = debug::fetch_hint(&self.kernel, context.arch);
                debug::kernel_announcement(&self.kernel, context.arch, args, &names, &hint)
            }
            Debugger::Test => {
                let tests: Vec<(&str, String)> =
                    pending.iter().map(|m| (m.name.as_str(), m.function.clone())).collect();
                debug::test_announcement(&context.exe, context.arch, args, &tests)
            }
        }
    }

    fn planned(&self, member: &Member, context: &RunContext) -> PlannedTest {
        let listed: Vec<&str> = member.env.iter().map(String::as_str).collect();
        let mut env = guest_env::test_env(std::env::vars_os(), &listed);
        env.retain(|(name, _)| {
            name != protocol::TEST_ENV && name != INSTANCE_ENV && name != debug::GDBSERVER_ENV
        });
        env.push((protocol::TEST_ENV.to_owned(), member.base_name.clone()));
        // The name libtest shows, with the kernel suffix of a matrix instance.
        env.push((INSTANCE_ENV.to_owned(), member.name.clone()));
        if context.debug.as_ref().is_some_and(|d| d.gdbserver.is_some()) {
            env.push((debug::GDBSERVER_ENV.to_owned(), debug::GUEST_GDBSERVER.to_owned()));
        }
        PlannedTest {
            id: member.id,
            name: member.name.clone(),
            program: "/init".to_owned(),
            args: vec![],
            env,
            cwd: context.cwd.clone(),
            timeout_ms: u64::try_from(context.scaled(member.timeout).as_millis())
                .unwrap_or(u64::MAX),
            capture: context.capture,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn default_memory_is_the_base_and_twice_the_image_in_steps() {
        assert_eq!(default_memory_mib(0), 256);
        assert_eq!(default_memory_mib(1), 320);
        assert_eq!(default_memory_mib(32 << 20), 320);
        assert_eq!(default_memory_mib((32 << 20) + 1), 384);
    }

    #[test]
    fn between_tests_the_guest_has_the_gap() {
        let mut deadline = Deadline::new(Duration::from_secs(30));
        assert_eq!(deadline.left(), Duration::from_secs(30));
        deadline.start(Some(Duration::from_secs(100)));
        let left = deadline.left();
        assert!(left > Duration::from_secs(129) && left <= Duration::from_secs(130), "{left:?}");
        deadline.end();
        assert_eq!(deadline.left(), Duration::from_secs(30));
        // A test the host does not know gets the gap alone.
        deadline.start(None);
        assert_eq!(deadline.left(), Duration::from_secs(30));
    }

    #[test]
    fn only_the_hosts_own_waiting_moves_a_tests_deadline() {
        let mut deadline = Deadline::new(Duration::ZERO);
        deadline.start(Some(Duration::from_secs(10)));
        let (notes, received) = mpsc::sync_channel(0);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            received.recv().unwrap();
        });
        let before = deadline.left();
        deadline.send(&notes, Note::Started(0));
        reader.join().unwrap();
        // The send waited about 300 ms for the reader: the deadline moved by as much.
        assert!(deadline.left() + Duration::from_millis(100) >= before, "{:?}", deadline.left());
        // Time passing otherwise does not move it.
        let before = deadline.left();
        std::thread::sleep(Duration::from_millis(200));
        assert!(deadline.left() + Duration::from_millis(150) <= before);
    }
}
