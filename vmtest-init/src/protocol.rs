//! The wire format between host and guest.
//!
//! Host to guest: a [`Plan`], written by the host into the initramfs at [`PLAN_PATH`] as one
//! frame. Guest to host: a stream of [`GuestMessage`] frames on the control port, a
//! virtio-serial port named [`CONTROL_PORT`].
//!
//! A frame is a 4-byte little-endian payload length followed by a postcard-encoded payload; a
//! payload with bytes left over after its value, or a plan file with bytes after its frame, is
//! an error ([`FrameError::Trailing`]), not something to skip.
//!
//! Both directions are versioned by [`PROTOCOL_VERSION`]: the plan starts with it
//! ([`Plan::version`]), and the first message on the control port is always
//! [`GuestMessage::Hello`] carrying it; the last one of a clean run is [`GuestMessage::Done`].
//! A stream that ends without `Done` means the VM died. The version is the first thing each
//! side decodes ([`plan_version`], `Hello` is variant 0 with the version first, a layout that
//! never changes), so a mismatch is told apart from garbage and [`VersionMismatch`] says which
//! side is older and what to rebuild.
//!
//! The host treats every frame as untrusted: [`FrameReader`] bounds the frame size and never
//! panics on garbage.
//!
//! A VM that is saved as a snapshot has a third port, [`HOST_PORT`], on which the host writes
//! [`HostMessage`] frames: a plan with [`Plan::restore_point`] set makes PID 1 say
//! [`GuestMessage::Ready`] once its setup is done and wait there for
//! [`HostMessage::Restored`], which the host sends to every VM restored from the snapshot
//! (and to the VM it saved, which goes on too), followed by the run's [`HostMessage::Payload`].
//! Every host message carries [`PROTOCOL_VERSION`] first ([`host_message_version`]); the
//! guest greets each new host with `Hello` again.
//!
//! A further port, [`MODULES_PORT`], carries the guest's `modprobe` requests: a
//! [`ModuleRequest`] for a module name or alias, answered by [`ModuleReply`] frames with the
//! module bytes. Its frames start with [`MODULE_FRAME_MAGIC`] and carry the request's nonce, so a
//! reader finds the next frame and its own answer after bytes left over by a requester that died
//! mid-exchange (see [`ModuleFrameReader`]).

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version of this wire format (the plan and the control port's frames); bumped on any
/// incompatible change to either. 3: the plan carries the version; file chunks carry no test id
/// (the host knows which test is running) and their names are bytes; the kernel log of a failed
/// test travels as [`KERNEL_LOG_NAME`]. 4: the plan carries [`FileLimits`]; the guest says what
/// they held back ([`GuestMessage::FilesHeldBack`]). 5: the plan's [`Plan::restore_point`],
/// [`GuestMessage::Ready`], and [`HostMessage`] frames on [`HOST_PORT`]. 6: after
/// [`HostMessage::Restored`], the run's files and plan arrive as [`HostMessage::Payload`].
/// 7: the plan's [`Plan::shell`], [`GuestMessage::Shell`], and the [`SHELL_PORT`]'s frames
/// ([`ShellInput`], [`ShellOutput`]).
pub const PROTOCOL_VERSION: u32 = 7;

/// Largest frame either side accepts, in bytes (payload only).
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Largest file chunk the guest sends in one [`GuestMessage::FileChunk`].
pub const FILE_CHUNK_LEN: usize = 256 << 10;

/// Environment variable naming the directory whose files the guest sends to the host after the
/// test (as `artifacts/<path>`); `vmtest::artifact` writes there.
pub const ARTIFACT_ENV: &str = "VMTEST_ARTIFACT_DIR";

/// The LLVM profile runtime's output pattern (coverage, `-C profile-generate`). Forwarded from
/// the host, it makes the guest point the test's profiles into a directory it sends back (as
/// `profiles/<file>`).
pub const PROFILE_ENV: &str = "LLVM_PROFILE_FILE";

/// First path component of a [`GuestMessage::FileChunk`] name: what the file is.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// See [`ARTIFACTS_DIR`].
pub const PROFILES_DIR: &str = "profiles";
/// The [`GuestMessage::FileChunk`] name of a failed test's kernel log: outside
/// [`ARTIFACTS_DIR`], so that no artifact of the test can be taken for it or replaced by it.
pub const KERNEL_LOG_NAME: &str = "vmtest/dmesg.txt";

/// Where the host puts the plan inside the initramfs.
pub const PLAN_PATH: &str = "/vmtest/plan";

/// Name of the virtio-serial port that carries [`GuestMessage`] frames.
pub const CONTROL_PORT: &str = "vmtest.control";

/// Name of the virtio-serial port on which the host sends [`HostMessage`] frames.
pub const HOST_PORT: &str = "vmtest.host";

/// Name of the virtio-serial port an interactive shell in the guest talks on ([`Plan::shell`]):
/// [`ShellInput`] frames from the host, [`ShellOutput`] frames from the guest. QEMU has it only
/// when the host wants a shell.
pub const SHELL_PORT: &str = "vmtest.shell";

/// Name of the virtio-serial port that carries [`ModuleRequest`]s and [`ModuleReply`]s.
pub const MODULES_PORT: &str = "vmtest.modules";

/// Name of the virtio-serial port a gdb server in the guest talks on (`VMTEST_GDB=test`); its
/// host end is a socket a debugger connects to.
pub const GDB_PORT: &str = "vmtest.gdb";

/// Environment variable that tells a test process where the gdb server is: set, the process
/// has it attach to itself over [`GDB_PORT`] before its test runs.
pub const GDBSERVER_ENV: &str = "VMTEST_GDBSERVER";

/// Version of the module request format; a host answers another version with
/// [`ModuleReply::Failed`].
pub const MODULE_PROTOCOL_VERSION: u32 = 1;

/// The first bytes of every frame on [`MODULES_PORT`].
pub const MODULE_FRAME_MAGIC: [u8; 8] = *b"\xf7vmtmod\x01";

/// Largest [`ModuleRequest`] frame (payload) the host reads.
pub const MAX_MODULE_REQUEST_LEN: usize = 64 << 10;

/// Longest module name or alias a [`ModuleRequest`] may ask for.
pub const MAX_MODULE_NAME_LEN: usize = 256;

/// Most module bytes in one [`ModuleReply::Data`] frame.
pub const MODULE_CHUNK_LEN: usize = 1 << 20;

/// Environment variable that tells a child of PID 1 which registered test to run.
pub const TEST_ENV: &str = "VMTEST_TEST";

/// Environment variable naming the file where a test child leaves the reason it skipped itself
/// before exiting with status 0 (see `vmtest::skip`).
pub const SKIP_ENV: &str = "VMTEST_SKIP_FILE";

/// What the guest must do, written by the host before boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PROTOCOL_VERSION`] of the host that wrote the plan. The first field, so that
    /// [`plan_version`] reads it from a plan of any version.
    pub version: u32,
    /// Kernel modules to load, in load order (dependencies first). Paths inside the guest.
    pub modules: Vec<Module>,
    /// The programs to run, one after another, each in its own child process.
    pub tests: Vec<PlannedTest>,
    /// Bounds on the files the guest sends after each test.
    pub files: FileLimits,
    /// `true`: once its setup is done (mounts, modules, the control port), PID 1 sends
    /// [`GuestMessage::Ready`] and waits on [`HOST_PORT`] for [`HostMessage::Restored`]
    /// and the run's [`HostMessage::Payload`] before it runs anything: the point where the
    /// host saves the VM's snapshot. Such a plan has no tests; the payload's plan has them.
    pub restore_point: bool,
    /// When PID 1 offers an interactive shell on [`SHELL_PORT`].
    pub shell: ShellWhen,
}

/// When the guest offers an interactive shell (`VMTEST_SHELL` on the host). A shell runs in the
/// test's working directory with its environment; PID 1 announces it with
/// [`GuestMessage::Shell`] and goes on with the plan when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellWhen {
    /// Never (the default).
    #[default]
    Never,
    /// After a test whose process failed (not exit status 0, or killed, timed out, not
    /// started), once its [`GuestMessage::TestFinished`] is sent.
    OnFailure,
    /// After every test, once its [`GuestMessage::TestFinished`] is sent.
    Always,
    /// Instead of running each planned test: its [`GuestMessage::TestFinished`] reports how
    /// the shell exited (`cargo vmtest shell`).
    Instead,
}

/// A frame from the host on [`SHELL_PORT`]. The first is [`ShellInput::Start`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellInput {
    /// Start the shell in a terminal of this size, with this `TERM`.
    Start {
        /// The host's [`PROTOCOL_VERSION`].
        version: u32,
        /// The terminal's size.
        size: WindowSize,
        /// The host's `TERM` (`vt100` when it has none).
        term: String,
    },
    /// Bytes typed on the host's terminal, for the shell's terminal.
    Data(#[serde(with = "bytes")] Vec<u8>),
    /// The host's terminal changed its size.
    Resize(WindowSize),
}

/// A terminal's size in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A frame from the guest on [`SHELL_PORT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellOutput {
    /// Bytes the shell's terminal shows.
    Data(#[serde(with = "bytes")] Vec<u8>),
    /// The shell ended: its exit status (128 + the signal when killed); the last frame.
    Exited(i32),
    /// No shell could be started (why); the last frame.
    Failed(String),
}

/// Bounds on the files a test leaves for the host (artifacts, profiles; not the kernel log of a
/// failed test, which the kernel bounds). The guest holds back what exceeds them before any byte of it moves, and says so with
/// [`GuestMessage::FilesHeldBack`]; the host checks them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLimits {
    /// Largest file, in bytes.
    pub file_bytes: u64,
    /// Most files of one test.
    pub test_files: u64,
    /// Most bytes of one test's files together.
    pub test_bytes: u64,
    /// Most bytes of all files of this VM together (what was left of the run's budget).
    pub vm_bytes: u64,
    /// How long after a test ended its files may still be on their way, in milliseconds.
    pub send_ms: u64,
}

impl Default for FileLimits {
    /// The host's defaults.
    fn default() -> Self {
        FileLimits {
            file_bytes: 1 << 30,
            test_files: 1000,
            test_bytes: 2 << 30,
            vm_bytes: 16 << 30,
            send_ms: 30_000,
        }
    }
}

/// Which limit of [`FileLimits`] held files back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HeldBack {
    /// [`FileLimits::file_bytes`]: the file is larger; none of it was sent.
    FileSize,
    /// [`FileLimits::test_files`]: the test left more files; these were not sent.
    TestFiles,
    /// [`FileLimits::test_bytes`]: these would have taken the test's files over it.
    TestBytes,
    /// [`FileLimits::vm_bytes`]: these would have taken the VM's files over it.
    VmBytes,
    /// [`FileLimits::send_ms`] ran out: these were not sent, or were cut off while on their
    /// way (the host discards the part it has).
    SendTime,
    /// The file was still growing (a process that outlived the test writes to it): it was sent
    /// as long as it was when sending began; `bytes` is what it had grown by at the end.
    StillGrowing,
}

impl Plan {
    /// A plan of this [`PROTOCOL_VERSION`].
    pub fn new(modules: Vec<Module>, tests: Vec<PlannedTest>) -> Plan {
        Plan {
            version: PROTOCOL_VERSION,
            modules,
            tests,
            files: FileLimits::default(),
            restore_point: false,
            shell: ShellWhen::Never,
        }
    }
}

impl Default for Plan {
    fn default() -> Plan {
        Plan::new(Vec::new(), Vec::new())
    }
}

/// Which side of the wire read the other's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The host read the guest's `Hello`.
    Host,
    /// The guest read the host's plan.
    Guest,
}

/// The two sides speak different versions of this protocol: its message says which side is
/// older and what to rebuild.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct VersionMismatch {
    /// The side that noticed.
    pub reader: Reader,
    /// The version the other side speaks.
    pub theirs: u32,
}

impl VersionMismatch {
    /// `Err` when `theirs` (read by `reader` from the other side) is not [`PROTOCOL_VERSION`].
    pub fn check(reader: Reader, theirs: u32) -> Result<(), VersionMismatch> {
        if theirs == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(VersionMismatch { reader, theirs })
        }
    }

    fn message(&self) -> String {
        let ours = PROTOCOL_VERSION;
        let theirs = self.theirs;
        // The guest is this crate as PID 1: the test binary itself, or a static `vmtest-init`
        // (`cargo vmtest run`, `VMTEST_INIT`). The host is the `vmtest` crate's harness or runner.
        let (guest, host) = match self.reader {
            Reader::Host => (theirs, ours),
            Reader::Guest => (ours, theirs),
        };
        let rebuild = if guest < host {
            "the guest's vmtest-init is older than the host's vmtest: rebuild it from the same \
             vmtest version (for `cargo vmtest run`, the binary VMTEST_INIT names; unset \
             VMTEST_INIT to let the runner build a matching one)"
        } else {
            "the host's vmtest is older than the guest's vmtest-init: update the vmtest \
             dependency (or cargo-vmtest) to the version the guest was built from, or rebuild \
             the guest's vmtest-init (VMTEST_INIT) from the host's version"
        };
        format!(
            "the guest speaks vmtest protocol version {guest}, the host version {host}: {rebuild}"
        )
    }
}

/// The [`PROTOCOL_VERSION`] a plan frame was written with, read from its first field alone, so
/// that a plan of another version (whose other fields may not decode) is still recognised.
pub fn plan_version(frame: &[u8]) -> Result<u32, FrameError> {
    let payload = frame.get(4..).ok_or(FrameError::Truncated { got: frame.len(), want: 4 })?;
    let (version, _) = postcard::take_from_bytes::<u32>(payload)?;
    Ok(version)
}

/// One kernel module to load before the tests run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Module name as the user or the kernel config spells it (e.g. `virtio_console`).
    pub name: String,
    /// Path of the `.ko`, `.ko.xz` or `.ko.zst` file inside the guest.
    pub path: String,
    /// Tests (by [`PlannedTest::id`]) that asked for this module; empty for modules the harness
    /// itself needs (virtio drivers). A failure to load fails these tests.
    pub wanted_by: Vec<u32>,
}

/// One program run inside the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTest {
    /// Identifier echoed in every message about this test.
    pub id: u32,
    /// Human-readable name, for guest-side logs.
    pub name: String,
    /// Absolute path of the program inside the guest.
    pub program: String,
    /// Arguments, without `argv[0]`.
    pub args: Vec<String>,
    /// The complete environment of the child.
    pub env: Vec<(String, String)>,
    /// Working directory of the child.
    pub cwd: String,
    /// Kill the child (its whole process group) after this many milliseconds.
    pub timeout_ms: u64,
    /// `true`: collect stdout and stderr through one pipe, in the order written, and send them
    /// in [`GuestMessage::TestFinished`].
    /// `false`: stream them apart as [`GuestMessage::Output`] while the child runs.
    pub capture: bool,
}

/// Which output stream a piece of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// The child's standard output.
    Stdout,
    /// The child's standard error.
    Stderr,
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Exited with this status code (0 is a pass).
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Killed by the guest after its timeout.
    TimedOut {
        /// The timeout that expired, in milliseconds.
        after_ms: u64,
    },
    /// Could not be started, or a module it needs failed to load.
    Error(String),
    /// Exited with status 0 after leaving a reason in the file named by [`SKIP_ENV`]: the test
    /// found that the kernel lacks something it needs.
    Skipped(String),
}

/// A message from the guest to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// First message: the guest's protocol version and kernel release (`uname -r`).
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// The running kernel's release string.
        kernel_release: String,
    },
    /// A non-fatal problem on the guest side (a filesystem that could not be mounted, ...).
    Log(String),
    /// The test with this id is about to start.
    TestStarted {
        /// [`PlannedTest::id`].
        id: u32,
    },
    /// Live output of a test that is not captured.
    Output {
        /// [`PlannedTest::id`].
        id: u32,
        /// Which stream.
        stream: Stream,
        /// The bytes, in order.
        #[serde(with = "bytes")]
        bytes: Vec<u8>,
    },
    /// A test ended.
    TestFinished {
        /// [`PlannedTest::id`].
        id: u32,
        /// How it ended.
        outcome: Outcome,
        /// Wall time inside the guest, in milliseconds.
        duration_ms: u64,
        /// Captured output: what the child wrote to stdout and stderr, interleaved in the order
        /// written (empty when not captured).
        #[serde(with = "bytes")]
        output: Vec<u8>,
    },
    /// A piece of a file the guest hands to the host (coverage, artifacts, dmesg). It belongs
    /// to the test the guest last reported as started and not yet finished: the host decides,
    /// the guest does not say.
    FileChunk {
        /// Relative file name, as the guest's file system has it (not necessarily UTF-8); the
        /// host rejects anything that could escape its directory or is not plain text.
        #[serde(with = "bytes")]
        name: Vec<u8>,
        /// Offset of `data` in the file.
        offset: u64,
        /// At most [`FILE_CHUNK_LEN`] bytes.
        #[serde(with = "bytes")]
        data: Vec<u8>,
        /// `true` on the last chunk of this file.
        last: bool,
    },
    /// A fatal guest-side error; the guest powers off after sending it.
    Fatal(String),
    /// Every planned test has been reported; the guest powers off next.
    Done,
    /// The kernel log records written while a test ran (dmesg format, bounded), sent just
    /// before its [`GuestMessage::TestFinished`]; the host looks for splats in them.
    KernelLog {
        /// [`PlannedTest::id`].
        id: u32,
        /// `[seconds.micros] text` lines.
        #[serde(with = "bytes")]
        bytes: Vec<u8>,
    },
    /// Files of a test that the guest did not send, or sent only in part, because of a limit
    /// of the plan's [`FileLimits`]: one message per limit, after the files it did send and
    /// before [`GuestMessage::TestFinished`].
    FilesHeldBack {
        /// The limit.
        why: HeldBack,
        /// Name (as in [`GuestMessage::FileChunk`]) of the first file concerned.
        #[serde(with = "bytes")]
        name: Vec<u8>,
        /// How many files.
        files: u64,
        /// Their size (for [`HeldBack::StillGrowing`], what they grew by; for
        /// [`HeldBack::SendTime`], what was not sent).
        bytes: u64,
    },
    /// The guest reached its restore point ([`Plan::restore_point`]): setup is done, nothing
    /// test-specific has run, and PID 1 waits on [`HOST_PORT`]. The host may save the VM now.
    Ready,
    /// PID 1 offers a shell on [`SHELL_PORT`] now ([`Plan::shell`]), in the environment of
    /// the test with this id; the next message on this port comes after the shell ended.
    Shell {
        /// [`PlannedTest::id`].
        id: u32,
    },
}

/// A message from the host to the guest, on [`HOST_PORT`]. Every variant starts with the
/// host's [`PROTOCOL_VERSION`], a layout that never changes, so that [`host_message_version`]
/// reads it from a message of any version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// The VM was restored from a snapshot taken at its restore point: PID 1 sets the wall
    /// clock to `unix_secs.unix_nanos` (the host's time when it sent this), mixes `seed` into
    /// the kernel's random pool and reseeds it (no two restores may draw the same random
    /// bytes), unpacks the [`HostMessage::Payload`] that follows, greets the host with
    /// [`GuestMessage::Hello`] and goes on with the payload's plan.
    Restored {
        /// The host's [`PROTOCOL_VERSION`].
        version: u32,
        /// The host's wall clock: seconds since the Unix epoch.
        unix_secs: i64,
        /// ... and nanoseconds (below 10^9).
        unix_nanos: u32,
        /// Random bytes from the host (at most [`MAX_SEED_LEN`]); empty: no reseed.
        #[serde(with = "bytes")]
        seed: Vec<u8>,
    },
    /// A piece of the run's payload: a newc archive of this run's files (the working
    /// directory, fixtures, the tests' modules) and its plan at [`PLAN_PATH`], which PID 1
    /// unpacks over `/` after [`HostMessage::Restored`] and before it reads the plan again.
    /// Pieces of at most [`PAYLOAD_CHUNK_LEN`] bytes, in order; `last` ends the archive.
    Payload {
        /// The host's [`PROTOCOL_VERSION`].
        version: u32,
        /// The archive's next bytes.
        #[serde(with = "bytes")]
        data: Vec<u8>,
        /// This is the archive's last piece.
        last: bool,
    },
}

/// Most archive bytes in one [`HostMessage::Payload`].
pub const PAYLOAD_CHUNK_LEN: usize = 1 << 20;

/// Most bytes of [`HostMessage::Restored::seed`] the guest mixes in.
pub const MAX_SEED_LEN: usize = 512;

/// The [`PROTOCOL_VERSION`] a [`HostMessage`] payload (a frame without its length) was
/// written with, read without decoding the rest.
pub fn host_message_version(payload: &[u8]) -> Result<u32, FrameError> {
    let (_variant, rest) = postcard::take_from_bytes::<u32>(payload)?;
    let (version, _) = postcard::take_from_bytes::<u32>(rest)?;
    Ok(version)
}

/// Decodes a [`HostMessage`] payload: its version first (a mismatch is
/// [`HostMessageError::Version`], as for the plan), then the message.
pub fn decode_host_message(payload: &[u8]) -> Result<HostMessage, HostMessageError> {
    let version = host_message_version(payload)?;
    VersionMismatch::check(Reader::Guest, version)?;
    let (message, rest) = postcard::take_from_bytes(payload).map_err(FrameError::from)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing { len: rest.len(), what: "frame payload's value" }.into());
    }
    Ok(message)
}

/// Why a [`HostMessage`] could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostMessageError {
    /// The host speaks another version.
    #[error(transparent)]
    Version(#[from] VersionMismatch),
    /// The frame is not a message.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The guest's `modprobe` asks the host for a module, by name or alias.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRequest {
    /// Must equal [`MODULE_PROTOCOL_VERSION`].
    pub version: u32,
    /// Random per request; every reply frame echoes it.
    pub nonce: u64,
    /// The module name or alias, as given to `modprobe` (at most [`MAX_MODULE_NAME_LEN`] bytes).
    pub name: String,
    /// Modules already loaded in the guest (from `/proc/modules`): the host leaves them out.
    pub loaded: Vec<String>,
}

/// One module of a [`ModuleReply::Modules`] answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleHeader {
    /// The module's name (`vxlan`).
    pub name: String,
    /// Size of its (decompressed) ELF image, sent in [`ModuleReply::Data`] frames.
    pub len: u64,
    /// `true` for a module the request named (its parameters apply), `false` for a dependency.
    pub wanted: bool,
}

/// The host's answer frames to a [`ModuleRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleReply {
    /// The modules to load, in load order (dependencies first). Their images follow as
    /// [`ModuleReply::Data`] frames, concatenated in this order. Empty when everything the
    /// request resolves to is loaded already.
    Modules {
        /// [`ModuleRequest::nonce`].
        nonce: u64,
        /// The modules, in load order.
        modules: Vec<ModuleHeader>,
    },
    /// The next bytes of the module images announced by [`ModuleReply::Modules`].
    Data {
        /// [`ModuleRequest::nonce`].
        nonce: u64,
        /// At most [`MODULE_CHUNK_LEN`] bytes.
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// The name is built into the kernel: nothing to load.
    BuiltIn {
        /// [`ModuleRequest::nonce`].
        nonce: u64,
    },
    /// The host cannot provide the module; `message` says why (`modprobe` prints it).
    Failed {
        /// [`ModuleRequest::nonce`].
        nonce: u64,
        /// Why, naming the module and the kernel.
        message: String,
    },
}

impl ModuleReply {
    /// The nonce of the request this frame answers.
    pub fn nonce(&self) -> u64 {
        match self {
            ModuleReply::Modules { nonce, .. }
            | ModuleReply::Data { nonce, .. }
            | ModuleReply::BuiltIn { nonce }
            | ModuleReply::Failed { nonce, .. } => *nonce,
        }
    }
}

/// Byte buffers as serde bytes rather than a sequence of `u8`: postcard writes both the same way
/// (a varint length, then the raw bytes), but bytes are copied in one go instead of one
/// `serialize_u8` per byte, which matters for megabytes of output in unoptimised builds.
mod bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(byte) = seq.next_element()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

/// Failures while encoding or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying reader or writer failed.
    #[error("failed to transfer frame: {0}")]
    Io(#[from] io::Error),
    /// The announced length is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// The payload is not a valid message.
    #[error("failed to decode frame payload: {0}")]
    Decode(#[from] postcard::Error),
    /// Bytes are left after the value (in a payload, or after a plan's frame).
    #[error("{len} unexpected bytes after the {what}")]
    Trailing {
        /// How many bytes.
        len: usize,
        /// `frame payload's value` or `frame`.
        what: &'static str,
    },
}

/// Encodes `value` as one frame.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    // `to_allocvec` copies byte buffers with `extend_from_slice`; postcard's `to_extend` goes
    // byte by byte, which unoptimised builds (tests are) feel for megabytes of file data.
    let payload = postcard::to_allocvec(value)?;
    let len = payload.len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: len as u64 });
    }
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge { len: len as u64 })?;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Writes `value` as one frame with a single `write_all`.
pub fn write_frame<T: Serialize>(writer: &mut impl Write, value: &T) -> Result<(), FrameError> {
    writer.write_all(&encode_frame(value)?)?;
    Ok(())
}

/// Decodes a buffer that holds exactly one frame (used for the plan file); bytes after it are
/// an error.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let mut rest = bytes;
    let mut reader = FrameReader::new(&mut rest);
    let value = match reader.next_frame()? {
        Some(value) => value,
        None => return Err(FrameError::Truncated { got: 0, want: 4 }),
    };
    if !rest.is_empty() {
        return Err(FrameError::Trailing { len: rest.len(), what: "frame" });
    }
    Ok(value)
}

/// Reads frames from a byte stream, bounding each frame's size.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        Self { inner, buf: Vec::new() }
    }

    /// Reads the next frame. `Ok(None)` on a clean end of stream between frames.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.next_header()? else { return Ok(None) };
        read_body(&mut self.inner, &mut self.buf, header, MAX_FRAME_LEN).map(Some)
    }

    /// Reads the next frame's payload without decoding it (see [`decode_host_message`]).
    /// `Ok(None)` on a clean end of stream between frames.
    pub fn next_payload(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let Some(header) = self.next_header()? else { return Ok(None) };
        read_payload(&mut self.inner, &mut self.buf, header, MAX_FRAME_LEN)?;
        Ok(Some(&self.buf))
    }

    fn next_header(&mut self) -> Result<Option<[u8; 4]>, FrameError> {
        let mut header = [0u8; 4];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(None);
        }
        if got < header.len() {
            return Err(FrameError::Truncated { got, want: header.len() });
        }
        Ok(Some(header))
    }
}

/// Largest frame on [`SHELL_PORT`] either side accepts (payload only).
pub const MAX_SHELL_FRAME_LEN: usize = 64 << 10;

/// Frames out of bytes that arrive in pieces (a reader that polls several descriptors):
/// [`FrameBuffer::push`] what was read, then take the whole frames with
/// [`FrameBuffer::next_frame`]. Holds at most one frame of `max_len` and what follows it.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    max_len: usize,
}

impl FrameBuffer {
    /// An empty buffer for frames of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self { buf: Vec::new(), max_len }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, or `Ok(None)` until more bytes arrive. A frame over `max_len` or
    /// one that does not hold exactly one value is an error (the stream cannot be trusted
    /// after it).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.buf.first_chunk::<4>() else { return Ok(None) };
        let len = u32::from_le_bytes(*header) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len: len as u64 });
        }
        let Some(payload) = self.buf.get(4..4 + len) else { return Ok(None) };
        let (value, rest) = postcard::take_from_bytes(payload)?;
        if !rest.is_empty() {
            return Err(FrameError::Trailing { len: rest.len(), what: "frame payload's value" });
        }
        self.buf.drain(..4 + len);
        Ok(Some(value))
    }
}

/// Reads the body of a frame whose length prefix is `header` into `buf` and decodes it; a
/// length over `max_len` is an error.
fn read_body<T: DeserializeOwned>(
    inner: &mut impl Read,
    buf: &mut Vec<u8>,
    header: [u8; 4],
    max_len: usize,
) -> Result<T, FrameError> {
    read_payload(inner, buf, header, max_len)?;
    let (value, rest) = postcard::take_from_bytes(buf)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing { len: rest.len(), what: "frame payload's value" });
    }
    Ok(value)
}

/// Reads the payload of a frame whose length prefix is `header` into `buf`.
fn read_payload(
    inner: &mut impl Read,
    buf: &mut Vec<u8>,
    header: [u8; 4],
    max_len: usize,
) -> Result<(), FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len: len as u64 });
    }
    // Read without zero-filling first (a per-byte loop in unoptimised builds); the buffer grows
    // only as bytes arrive, so a lying length costs no memory.
    buf.clear();
    let got = inner.take(len as u64).read_to_end(buf)?;
    if got < len {
        return Err(FrameError::Truncated { got, want: len });
    }
    Ok(())
}

/// Encodes `value` as one frame of [`MODULES_PORT`]: [`MODULE_FRAME_MAGIC`], then a frame as
/// [`encode_frame`] makes it.
pub fn encode_module_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let frame = encode_frame(value)?;
    let mut out = Vec::with_capacity(MODULE_FRAME_MAGIC.len() + frame.len());
    out.extend_from_slice(&MODULE_FRAME_MAGIC);
    out.extend_from_slice(&frame);
    Ok(out)
}

/// Reads [`MODULES_PORT`] frames from a byte stream: skips anything before the next
/// [`MODULE_FRAME_MAGIC`] (what a requester that died mid-exchange left behind), and bounds
/// each frame's size. After an error the stream is positioned past the bad frame's magic, so
/// the next call looks for the next frame.
pub struct ModuleFrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_len: usize,
}

impl<R: Read> ModuleFrameReader<R> {
    /// Wraps a reader; frames longer than `max_len` (and [`MAX_FRAME_LEN`]) are errors.
    pub fn new(inner: R, max_len: usize) -> Self {
        Self { inner, buf: Vec::new(), max_len: max_len.min(MAX_FRAME_LEN) }
    }

    /// Reads the next frame. `Ok(None)` when the stream ends before another magic.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if !self.find_magic()? {
            return Ok(None);
        }
        let mut header = [0u8; 4];
        let got = read_full(&mut self.inner, &mut header)?;
        if got < header.len() {
            return Err(FrameError::Truncated { got, want: header.len() });
        }
        read_body(&mut self.inner, &mut self.buf, header, self.max_len).map(Some)
    }

    /// Consumes bytes up to and including the next [`MODULE_FRAME_MAGIC`]; `false` at the end
    /// of the stream.
    fn find_magic(&mut self) -> io::Result<bool> {
        let mut matched = 0;
        let mut byte = [0u8; 1];
        while matched < MODULE_FRAME_MAGIC.len() {
            if read_full(&mut self.inner, &mut byte)? == 0 {
                return Ok(false);
            }
            matched = if byte[0] == MODULE_FRAME_MAGIC[matched] {
                matched + 1
            } else if byte[0] == MODULE_FRAME_MAGIC[0] {
                // The magic's first byte occurs nowhere else in it.
                1
            } else {
                0
            };
        }
        Ok(true)
    }
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_stream_of_messages() {
        let messages = vec![
            GuestMessage::Hello { version: PROTOCOL_VERSION, kernel_release: "6.12.0".into() },
            GuestMessage::TestFinished {
                id: 7,
                outcome: Outcome::Exited(101),
                duration_ms: 12,
                output: b"out\0\xff".to_vec(),
            },
            GuestMessage::Done,
        ];
        let mut wire = Vec::new();
        for m in &messages {
            write_frame(&mut wire, m).unwrap();
        }
        let mut reader = FrameReader::new(&wire[..]);
        let mut got = Vec::new();
        while let Some(m) = reader.next_frame::<GuestMessage>().unwrap() {
            got.push(m);
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn shell_frames_arrive_whole_from_any_split() {
        let input = vec![
            ShellInput::Start {
                version: PROTOCOL_VERSION,
                size: WindowSize { rows: 24, cols: 80 },
                term: "xterm".into(),
            },
            ShellInput::Data(b"echo $((6*7))\r\x03".to_vec()),
            ShellInput::Resize(WindowSize { rows: 50, cols: 132 }),
        ];
        let wire: Vec<u8> = input.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        for piece in [1, 2, 3, 5, 7, wire.len()] {
            let mut buffer = FrameBuffer::new(MAX_SHELL_FRAME_LEN);
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                buffer.push(chunk);
                while let Some(frame) = buffer.next_frame::<ShellInput>().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, input, "pieces of {piece} bytes");
        }
        let output = [ShellOutput::Data(b"42\r\n".to_vec()), ShellOutput::Exited(3)];
        let wire: Vec<u8> = output.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        let mut reader = FrameReader::new(&wire[..]);
        assert_eq!(reader.next_frame::<ShellOutput>().unwrap(), Some(output[0].clone()));
        assert_eq!(reader.next_frame::<ShellOutput>().unwrap(), Some(output[1].clone()));
        assert_eq!(reader.next_frame::<ShellOutput>().unwrap(), None);
    }

    #[test]
    fn a_shell_frame_over_its_bound_or_with_trailing_bytes_is_an_error() {
        let mut buffer = FrameBuffer::new(MAX_SHELL_FRAME_LEN);
        buffer.push(&(MAX_SHELL_FRAME_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(
            buffer.next_frame::<ShellInput>(),
            Err(FrameError::TooLarge { len }) if len == MAX_SHELL_FRAME_LEN as u64 + 1
        ));
        let mut frame = encode_frame(&ShellOutput::Exited(0)).unwrap();
        frame.push(0);
        frame[0] += 1;
        let mut buffer = FrameBuffer::new(MAX_SHELL_FRAME_LEN);
        buffer.push(&frame);
        assert!(matches!(
            buffer.next_frame::<ShellOutput>(),
            Err(FrameError::Trailing { len: 1, .. })
        ));
    }

    #[test]
    fn a_plan_says_when_to_offer_a_shell() {
        let mut plan = Plan::default();
        assert_eq!(plan.shell, ShellWhen::Never);
        plan.shell = ShellWhen::OnFailure;
        let decoded: Plan = decode_frame(&encode_frame(&plan).unwrap()).unwrap();
        assert_eq!(decoded.shell, ShellWhen::OnFailure);
    }

    #[test]
    fn rejects_oversized_frame_without_allocating() {
        let wire = u32::MAX.to_le_bytes();
        let err = FrameReader::new(&wire[..]).next_frame::<GuestMessage>().unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn reports_truncated_frame() {
        let mut wire = encode_frame(&GuestMessage::Log("hello".into())).unwrap();
        wire.truncate(wire.len() - 2);
        let err = FrameReader::new(&wire[..]).next_frame::<GuestMessage>().unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
        let err = FrameReader::new(&wire[..2]).next_frame::<GuestMessage>().unwrap_err();
        assert!(matches!(err, FrameError::Truncated { got: 2, want: 4 }), "{err}");
    }

    #[test]
    fn rejects_garbage_payload() {
        let mut wire = 3u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = FrameReader::new(&wire[..]).next_frame::<GuestMessage>().unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[test]
    fn byte_buffers_keep_the_sequence_wire_format() {
        // Frames as a `Vec<u8>`-as-sequence encoding produced them: byte fields are a varint
        // length followed by the raw bytes.
        let output =
            GuestMessage::Output { id: 1, stream: Stream::Stderr, bytes: vec![0, 1, 0xff] };
        assert_eq!(encode_frame(&output).unwrap(), [7, 0, 0, 0, 3, 1, 1, 3, 0, 1, 255]);
        let chunk = GuestMessage::FileChunk {
            name: b"a".to_vec(),
            offset: 0,
            data: vec![9, 8],
            last: true,
        };
        assert_eq!(encode_frame(&chunk).unwrap(), [8, 0, 0, 0, 5, 1, 97, 0, 2, 9, 8, 1]);
        let finished = GuestMessage::TestFinished {
            id: 300,
            outcome: Outcome::Exited(0),
            duration_ms: 5,
            output: vec![b'a'; 130],
        };
        let frame = encode_frame(&finished).unwrap();
        assert_eq!(frame.len(), 142);
        assert_eq!(frame[..16], [138, 0, 0, 0, 4, 172, 2, 0, 0, 5, 130, 1, 97, 97, 97, 97]);
        assert_eq!(decode_frame::<GuestMessage>(&frame).unwrap(), finished);
    }

    #[test]
    fn module_frames_round_trip_and_resynchronise_after_garbage() {
        let request = ModuleRequest {
            version: MODULE_PROTOCOL_VERSION,
            nonce: 7,
            name: "rtnl-link-vxlan".into(),
            loaded: vec!["dummy".into()],
        };
        let replies = [
            ModuleReply::Modules {
                nonce: 7,
                modules: vec![ModuleHeader { name: "vxlan".into(), len: 3, wanted: true }],
            },
            ModuleReply::Data { nonce: 7, data: vec![1, 2, 3] },
            ModuleReply::BuiltIn { nonce: 8 },
            ModuleReply::Failed { nonce: 9, message: "no".into() },
        ];
        // Leftovers of an exchange cut short: half a frame, stray magic bytes, garbage.
        let mut wire = encode_module_frame(&replies[1]).unwrap();
        wire.truncate(wire.len() - 2);
        wire.extend_from_slice(&MODULE_FRAME_MAGIC[..5]);
        wire.extend_from_slice(b"junk\xf7\xf7");
        for reply in &replies {
            wire.extend_from_slice(&encode_module_frame(reply).unwrap());
        }
        let mut reader = ModuleFrameReader::new(&wire[..], MAX_FRAME_LEN);
        // The truncated frame swallows bytes up to its announced length, then fails to decode
        // or decodes to a stale frame; either way the reader goes on to the real frames.
        let mut got = Vec::new();
        loop {
            match reader.next_frame::<ModuleReply>() {
                Ok(Some(reply)) => got.push(reply),
                Ok(None) => break,
                Err(_) => continue,
            }
        }
        assert!(got.ends_with(&replies), "{got:?}");
        assert_eq!(replies.iter().map(ModuleReply::nonce).collect::<Vec<_>>(), [7, 7, 8, 9]);

        let frame = encode_module_frame(&request).unwrap();
        assert!(frame.starts_with(&MODULE_FRAME_MAGIC));
        let mut reader = ModuleFrameReader::new(&frame[..], MAX_MODULE_REQUEST_LEN);
        assert_eq!(reader.next_frame::<ModuleRequest>().unwrap(), Some(request));
        assert_eq!(reader.next_frame::<ModuleRequest>().unwrap(), None);
    }

    #[test]
    fn module_frames_are_bounded() {
        let mut wire = MODULE_FRAME_MAGIC.to_vec();
        wire.extend_from_slice(&(MAX_MODULE_REQUEST_LEN as u32 + 1).to_le_bytes());
        let mut reader = ModuleFrameReader::new(&wire[..], MAX_MODULE_REQUEST_LEN);
        let err = reader.next_frame::<ModuleRequest>().unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        let mut wire = MODULE_FRAME_MAGIC.to_vec();
        wire.extend_from_slice(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        let mut reader = ModuleFrameReader::new(&wire[..], MAX_MODULE_REQUEST_LEN);
        assert!(matches!(reader.next_frame::<ModuleRequest>(), Err(FrameError::Decode(_))));
        assert!(matches!(reader.next_frame::<ModuleRequest>(), Ok(None)));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        // After the value inside a payload: the length says 3, the value takes 2.
        let mut frame = encode_frame(&GuestMessage::Log("x".into())).unwrap();
        frame[0] += 1;
        frame.push(0);
        let err = FrameReader::new(&frame[..]).next_frame::<GuestMessage>().unwrap_err();
        assert!(matches!(err, FrameError::Trailing { len: 1, .. }), "{err}");
        // After a plan's frame.
        let mut frame = encode_frame(&Plan::default()).unwrap();
        frame.extend_from_slice(b"junk");
        let err = decode_frame::<Plan>(&frame).unwrap_err();
        assert!(matches!(err, FrameError::Trailing { len: 4, what: "frame" }), "{err}");
        assert_eq!(err.to_string(), "4 unexpected bytes after the frame");
        // Module frames too.
        let mut frame = encode_module_frame(&ModuleReply::BuiltIn { nonce: 1 }).unwrap();
        frame[MODULE_FRAME_MAGIC.len()] += 2;
        frame.extend_from_slice(&[0, 0]);
        let mut reader = ModuleFrameReader::new(&frame[..], MAX_FRAME_LEN);
        assert!(matches!(reader.next_frame::<ModuleReply>(), Err(FrameError::Trailing { .. })));
    }

    #[test]
    fn the_plan_carries_the_version_first() {
        let frame = encode_frame(&Plan::default()).unwrap();
        assert_eq!(plan_version(&frame).unwrap(), PROTOCOL_VERSION);
        // A plan of another version whose other fields mean something else entirely.
        let other = encode_frame(&(99u32, "not a module list", 7u8)).unwrap();
        assert_eq!(plan_version(&other).unwrap(), 99);
        assert!(decode_frame::<Plan>(&other).is_err());
        // A version-2 plan had no version: its first field was the module list's length.
        assert!(plan_version(&[1, 0, 0, 0]).is_err());
    }

    #[test]
    fn a_version_mismatch_says_which_side_is_older_and_what_to_rebuild() {
        assert_eq!(VersionMismatch::check(Reader::Host, PROTOCOL_VERSION), Ok(()));
        let old_guest = VersionMismatch::check(Reader::Host, PROTOCOL_VERSION - 1).unwrap_err();
        let text = old_guest.to_string();
        assert!(text.starts_with(&format!(
            "the guest speaks vmtest protocol version {}, the host version {PROTOCOL_VERSION}: \
             the guest's vmtest-init is older than the host's vmtest: rebuild it",
            PROTOCOL_VERSION - 1
        )));
        assert!(text.contains("VMTEST_INIT"), "{text}");
        let old_host = VersionMismatch::check(Reader::Guest, PROTOCOL_VERSION - 1).unwrap_err();
        let text = old_host.to_string();
        assert!(text.starts_with(&format!(
            "the guest speaks vmtest protocol version {PROTOCOL_VERSION}, the host version {}: \
             the host's vmtest is older",
            PROTOCOL_VERSION - 1
        )));
        let new_guest = VersionMismatch::check(Reader::Host, PROTOCOL_VERSION + 1).unwrap_err();
        assert!(new_guest.to_string().contains("the host's vmtest is older"), "{new_guest}");
    }

    #[test]
    fn host_messages_carry_the_version_first_and_round_trip() {
        let restored = HostMessage::Restored {
            version: PROTOCOL_VERSION,
            unix_secs: 1_800_000_000,
            unix_nanos: 5,
            seed: vec![0xaa; 3],
        };
        let frame = encode_frame(&restored).unwrap();
        // Length, variant 0, the version, then the fields.
        assert_eq!(
            frame,
            [
                12,
                0,
                0,
                0,
                0,
                PROTOCOL_VERSION as u8,
                128,
                200,
                206,
                180,
                13,
                5,
                3,
                0xaa,
                0xaa,
                0xaa
            ]
        );
        let mut wire = frame.clone();
        wire.extend_from_slice(&frame);
        let mut reader = FrameReader::new(&wire[..]);
        for _ in 0..2 {
            let payload = reader.next_payload().unwrap().unwrap();
            assert_eq!(host_message_version(payload).unwrap(), PROTOCOL_VERSION);
            assert_eq!(decode_host_message(payload).unwrap(), restored);
        }
        assert!(reader.next_payload().unwrap().is_none());
    }

    #[test]
    fn a_host_message_of_another_version_is_a_version_mismatch() {
        // A future host's message whose fields mean something else entirely.
        let payload =
            postcard::to_allocvec(&(0u32, PROTOCOL_VERSION + 1, "other", [9u8; 4])).unwrap();
        let err = decode_host_message(&payload).unwrap_err();
        assert!(matches!(err, HostMessageError::Version(_)), "{err}");
        assert!(err.to_string().contains("the guest's vmtest-init is older"), "{err}");
        let payload = postcard::to_allocvec(&(0u32, PROTOCOL_VERSION - 1)).unwrap();
        let err = decode_host_message(&payload).unwrap_err();
        assert!(err.to_string().contains("the host's vmtest is older"), "{err}");
        // Garbage, and a valid message with bytes after it.
        assert!(matches!(decode_host_message(&[0xff; 3]), Err(HostMessageError::Frame(_))));
        let mut payload = postcard::to_allocvec(&HostMessage::Restored {
            version: PROTOCOL_VERSION,
            unix_secs: 0,
            unix_nanos: 0,
            seed: vec![],
        })
        .unwrap();
        payload.push(0);
        let err = decode_host_message(&payload).unwrap_err();
        assert!(
            matches!(err, HostMessageError::Frame(FrameError::Trailing { len: 1, .. })),
            "{err}"
        );
    }

    #[test]
    fn ready_keeps_the_other_messages_numbers() {
        // Appended: every older variant keeps its tag.
        assert_eq!(encode_frame(&GuestMessage::Done).unwrap(), [1, 0, 0, 0, 7]);
        assert_eq!(encode_frame(&GuestMessage::Ready).unwrap(), [1, 0, 0, 0, 10]);
    }

    #[test]
    fn plan_round_trips() {
        let plan = Plan {
            version: PROTOCOL_VERSION,
            modules: vec![],
            files: FileLimits { test_files: 3, ..FileLimits::default() },
            restore_point: true,
            shell: ShellWhen::Always,
            tests: vec![PlannedTest {
                id: 0,
                name: "a::b".into(),
                program: "/init".into(),
                args: vec![],
                env: vec![(TEST_ENV.into(), "a::b".into())],
                cwd: "/".into(),
                timeout_ms: 1000,
                capture: true,
            }],
        };
        assert_eq!(decode_frame::<Plan>(&encode_frame(&plan).unwrap()).unwrap(), plan);
    }
}
