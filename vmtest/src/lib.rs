//! Run Rust tests inside real Linux VMs under QEMU.
//!
//! ```no_run
//! // tests/kernel.rs, with `[[test]] name = "kernel" harness = false` in Cargo.toml
//! use vmtest::vm_test;
//!
//! #[vm_test(memory = "512M", timeout = "30s")]
//! fn runs_as_root() {
//!     assert_eq!(std::fs::read_to_string("/proc/self/status").unwrap().contains("Uid:\t0"), true);
//! }
//!
//! vmtest::main!();
//! ```
//!
//! `cargo test` then boots one VM per distinct VM configuration, runs every selected test inside
//! it (each in its own child process of the guest's PID 1) and prints libtest's output. See the
//! README for the attribute's keys and the environment variables.

#![deny(missing_docs)]

pub mod arch;
#[cfg(feature = "cli")]
pub mod cli;
mod error;
mod guest;
mod host;
mod image;
pub mod kernel;
mod meta;
mod notice;
mod partial;
mod registry;
mod rules;
pub mod userland;
mod vm;

pub(crate) use error::Error;

pub use guest::artifact::artifact;
pub use guest::module::{load_module, unload_module, ModuleError};
pub use guest::skip::skip;
pub use vmtest_macros::vm_test;

/// Defines `main` for a test binary with `harness = false`.
///
/// Invoke it in the crate's root file: it records that file's path (`file!()`), from which the
/// JUnit output names its classes as libtest does.
#[macro_export]
macro_rules! main {
    () => {
        fn main() {
            const CRATE_ROOT: &[&str] = &[
                $crate::__private::CRATE_ROOT_KEY,
                ::core::file!(),
                $crate::__private::MANIFEST_DIR_KEY,
                match ::core::option_env!("CARGO_MANIFEST_DIR") {
                    ::core::option::Option::Some(dir) => dir,
                    ::core::option::Option::None => "",
                },
            ];
            #[used]
            #[unsafe(link_section = "vmtest_tests")]
            static CRATE_ROOT_RECORD: [u8; $crate::__private::meta_len(CRATE_ROOT)] =
                $crate::__private::meta_record(CRATE_ROOT);
            $crate::__private::main(&CRATE_ROOT_RECORD)
        }
    };
}

/// The pieces `cargo xtask bench` measures or compares against; not part of the API.
#[doc(hidden)]
pub mod __bench {
    use std::path::Path;
    use std::process::Command;

    use crate::arch::Arch;

    /// The floor: QEMU as the harness would start it for `arch` (same machine, CPU, memory,
    /// accelerator and kernel arguments), without the control port, booting `kernel` with
    /// `initrd`. Also returns the accelerator's name.
    pub fn floor_command(
        arch: Arch,
        kernel: &Path,
        initrd: &Path,
    ) -> Result<(Command, &'static str), String> {
        let accel = crate::vm::accel::choose(arch).map_err(|e| e.to_string())?;
        let qemu = crate::vm::session::find_qemu(arch).map_err(|e| e.to_string())?;
        let spec = crate::vm::qemu::QemuCommand {
            arch,
            accel: accel.accel,
            kernel: kernel.to_owned(),
            initrd: initrd.to_owned(),
            memory_mib: 256,
            cpus: crate::vm::qemu::profile(arch).default_cpus,
            cmdline: Vec::new(),
            ports: Vec::new(),
            sandbox: crate::vm::qemu::sandbox(&qemu).map_err(|e| e.to_string())?,
            huge_pages: crate::vm::qemu::HugePages::for_accel(accel.accel)
                .map_err(|e| e.to_string())?,
            snapshot: Default::default(),
            debug: Default::default(),
        };
        Ok((spec.command(&qemu), accel.accel.qemu_name()))
    }

    /// What the harness boots of `kernel` for `arch` on this machine: under TCG the
    /// uncompressed PVH image where the kernel has one, else its image.
    pub fn boot_image(
        kernel: &crate::kernel::Kernel,
        arch: Arch,
    ) -> Result<std::path::PathBuf, String> {
        let accel = crate::vm::accel::choose(arch).map_err(|e| e.to_string())?;
        Ok(accel.accel.boot_image(kernel))
    }

    /// The name of the QEMU system emulator for `arch`, as the harness looks it up on `PATH`.
    pub fn qemu_binary(arch: Arch) -> &'static str {
        crate::vm::qemu::profile(arch).binary
    }

    /// Writes the base of the guest image the harness would make around `init` (with its
    /// libraries, `/dev/console` and the userland of an `arch` guest; no modules, no plan) to
    /// `out`, `init` without its debug sections as when no backtrace is asked for; returns its
    /// size.
    pub fn write_initramfs(init: &Path, arch: Arch, out: &Path) -> Result<u64, String> {
        let userland = crate::userland::GuestUserland::for_run(arch).map_err(|e| e.to_string())?;
        let debug_info = crate::image::guest_image::DebugInfo::Strip;
        let base = crate::image::guest_image::Base::new(init, userland, debug_info);
        base.and_then(|base| base.write(out)).map_err(|e| e.to_string())
    }
}

/// Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz`); not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    use std::path::Path;

    /// Decodes a `vmtest_tests` section.
    pub fn test_metadata(section: &[u8]) {
        let _ = crate::meta::decode(section);
    }

    /// Reads `path` as a test binary (its ELF header, its tests, its loader's view) and as a
    /// busybox (its applet tables, as `VMTEST_USERLAND=<path>` reads them).
    pub fn binary_file(path: &Path) {
        let _ = crate::host::binary::TestBinary::read(path);
        let _ = crate::image::elf::read_elf(path);
        if let Ok(bytes) = std::fs::read(path) {
            let _ = crate::userland::applets::read(&bytes);
        }
    }

    /// Reads `path` as a kernel image.
    pub fn kernel_image(path: &Path) {
        let _ = crate::kernel::image_info(path);
    }

    /// Finds the splats in kernel log text and judges them.
    pub fn kernel_log(text: &str) {
        let _ = crate::host::splat::failure(text, false);
    }

    /// Serves the bytes as the guest's side of the modules port (for a kernel without modules),
    /// and reads them as a `modules.alias` file and a `modules.builtin.modinfo`, looking names
    /// up in both.
    pub fn module_requests(data: &[u8]) {
        let kernel = crate::kernel::Kernel {
            name: "fuzz".into(),
            arch: crate::arch::Arch::X86_64,
            version: None,
            image: "/nonexistent".into(),
            modules_dir: None,
            config: None,
            flavour: None,
            package: None,
            store_dir: None,
        };
        crate::vm::modserver::serve(data, std::io::sink(), &kernel.module_provider());
        crate::kernel::fuzz_aliases(data);
    }
}

/// Snapshots of a booted guest, for the workspace's own boot test of them; not part of the API.
#[doc(hidden)]
pub mod __snapshot {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    pub use vmtest_init::protocol::{
        GuestMessage, HostMessage, Outcome, Plan, PlannedTest, PROTOCOL_VERSION, TEST_ENV,
    };

    use crate::arch::Arch;
    use crate::vm::live::{live_command, LiveVm};
    use crate::vm::qemu::QemuCommand;
    use crate::vm::snapshot::{self, Lookup, SnapshotCache, SnapshotKey};

    /// A guest to boot and restore: `init` as PID 1 with `plan`, on `kernel`.
    pub struct Guest {
        qemu: PathBuf,
        command: QemuCommand,
        key: SnapshotKey,
    }

    /// A snapshot directory.
    pub struct Cache(SnapshotCache);

    impl Cache {
        /// The user's cache: `VMTEST_SNAPSHOTS`, else `snapshots/` under the kernel store at
        /// `store_root`, with the default bound.
        pub fn open(store_root: &Path) -> Cache {
            Cache(SnapshotCache::open(store_root))
        }

        /// Its directory.
        pub fn dir(&self) -> &Path {
            self.0.dir()
        }

        /// A cache in `dir` of at most `max_bytes`.
        pub fn at(dir: &Path, max_bytes: u64) -> Cache {
            Cache(SnapshotCache::at(dir, max_bytes))
        }
    }

    /// A running VM.
    pub struct Vm(LiveVm);

    /// A saved snapshot.
    #[derive(Debug)]
    pub struct Saved {
        /// Where it is.
        pub path: PathBuf,
        /// Its size in bytes.
        pub bytes: u64,
        /// Snapshots the cache removed to stay within its bound.
        pub evicted: Vec<PathBuf>,
    }

    /// What a restore found.
    pub enum Restore {
        /// The restored VM, running.
        Running(Box<Vm>),
        /// No snapshot of this guest.
        Miss,
        /// A snapshot that cannot be used (removed), and why.
        Unusable(String),
    }

    impl Guest {
        /// Writes the initramfs (`init` with its libraries, `/dev/console`, the plan) into
        /// `dir` and describes the VM: the harness's machine for `arch`, 256 MiB, the
        /// profile's CPUs, `vmgenid` if asked.
        pub fn new(
            kernel: &crate::kernel::Kernel,
            arch: Arch,
            init: &Path,
            plan: &Plan,
            vmgenid: bool,
            dir: &Path,
        ) -> Result<Guest, String> {
            let initrd = dir.join("initrd");
            let mut initramfs = crate::image::initramfs::Initramfs::new();
            initramfs.add_elf_with_libraries("/init", init).map_err(|e| e.to_string())?;
            initramfs.add_char_device("/dev/console", 5, 1, 0o600).map_err(|e| e.to_string())?;
            let frame = vmtest_init::protocol::encode_frame(plan).map_err(|e| e.to_string())?;
            initramfs
                .add_bytes(vmtest_init::protocol::PLAN_PATH, frame, 0o644)
                .map_err(|e| e.to_string())?;
            let file = std::fs::File::create(&initrd).map_err(|e| e.to_string())?;
            let mut writer = std::io::BufWriter::new(file);
            initramfs.write_to(&mut writer).map_err(|e| e.to_string())?;
            std::io::Write::flush(&mut writer).map_err(|e| e.to_string())?;
            let accel = crate::vm::accel::choose(arch).map_err(|e| e.to_string())?.accel;
            let qemu = crate::vm::session::find_qemu(arch).map_err(|e| e.to_string())?;
            let command = QemuCommand {
                arch,
                accel,
                kernel: accel.boot_image(kernel),
                initrd,
                memory_mib: 256,
                cpus: crate::vm::qemu::profile(arch).default_cpus,
                cmdline: Vec::new(),
                ports: Vec::new(),
                sandbox: crate::vm::qemu::sandbox(&qemu).map_err(|e| e.to_string())?,
                huge_pages: crate::vm::qemu::HugePages::for_accel(accel)
                    .map_err(|e| e.to_string())?,
                snapshot: crate::vm::qemu::SnapshotArgs { vmgenid, ..Default::default() },
                debug: Default::default(),
            };
            let version = snapshot::qemu_version(&qemu).map_err(|e| e.to_string())?;
            let key = SnapshotKey::new(
                &live_command(command.clone(), Path::new("/")),
                &qemu,
                &version,
                &crate::vm::memo::Memo::none(),
            )
            .map_err(|e| e.to_string())?;
            Ok(Guest { qemu, command, key })
        }

        /// The QEMU arguments of a VM whose sockets are in `dir`.
        pub fn args(&self, dir: &Path) -> Vec<std::ffi::OsString> {
            live_command(self.command.clone(), dir).args()
        }

        /// Boots it cold, sockets in `dir`.
        pub fn boot(&self, dir: &Path, timeout: Duration) -> Result<Vm, String> {
            let command = live_command(self.command.clone(), dir);
            LiveVm::boot(&self.qemu, &command, dir, Instant::now() + timeout)
                .map(Vm)
                .map_err(|e| e.to_string())
        }

        /// Restores it from `cache`, sockets in `dir`.
        pub fn restore(
            &self,
            cache: &Cache,
            dir: &Path,
            timeout: Duration,
        ) -> Result<Restore, String> {
            let snapshot = match cache.0.lookup(&self.key) {
                Lookup::Hit(snapshot) => snapshot,
                Lookup::Miss => return Ok(Restore::Miss),
                Lookup::Unusable(why) => return Ok(Restore::Unusable(why)),
            };
            let command = live_command(self.command.clone(), dir);
            LiveVm::restore(&self.qemu, &command, dir, &snapshot, Instant::now() + timeout)
                .map(|vm| Restore::Running(Box::new(Vm(vm))))
                .map_err(|e| e.to_string())
        }
    }

    impl Vm {
        /// The guest's next message.
        pub fn next_message(&mut self, timeout: Duration) -> Result<GuestMessage, String> {
            self.0.next_message(Instant::now() + timeout).map_err(|e| e.to_string())
        }

        /// Sends a message on the host port.
        pub fn send(&mut self, message: &HostMessage) -> Result<(), String> {
            self.0.send(message).map_err(|e| e.to_string())
        }

        /// Sends a payload that brings only `plan` (after [`HostMessage::Restored`]).
        pub fn send_plan(&mut self, plan: &Plan) -> Result<(), String> {
            let mut archive = crate::image::initramfs::Initramfs::new();
            let frame = vmtest_init::protocol::encode_frame(plan).map_err(|e| e.to_string())?;
            archive
                .add_bytes(vmtest_init::protocol::PLAN_PATH, frame, 0o644)
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::new();
            archive.write_to(&mut bytes).map_err(|e| e.to_string())?;
            self.0.send_payload(&mut &bytes[..]).map_err(|e| e.to_string())
        }

        /// Stops the VM and saves it into `cache`.
        pub fn save(
            &mut self,
            guest: &Guest,
            cache: &Cache,
            timeout: Duration,
        ) -> Result<Saved, String> {
            let saved = self
                .0
                .save(&cache.0, &guest.key, Instant::now() + timeout)
                .map_err(|e| e.to_string())?;
            Ok(Saved { path: saved.path, bytes: saved.bytes, evicted: saved.evicted })
        }

        /// The QEMU version its monitor greeted with (`7.2.22`).
        pub fn qemu_version(&self) -> String {
            self.0.qemu_version().to_owned()
        }

        /// Ends QEMU: what the harness does once the guest has said `Done` (the guest waits
        /// for it rather than power off).
        pub fn quit(self) {
            self.0.quit()
        }

        /// The kernel console so far.
        pub fn console(&self) -> String {
            self.0.console()
        }
    }
}

/// For the workspace's own tests: one place that decides what a missing requirement means.
#[doc(hidden)]
pub mod __testing {
    /// Environment variable that turns a missing requirement into a failure: set to `1` in CI,
    /// where every such requirement (kernels, userland, tools, root) is provided by setup.
    pub const REQUIRE_ALL_ENV: &str = "VMTEST_REQUIRE_ALL";

    /// A test cannot run because `what` is missing: panics naming it when
    /// [`REQUIRE_ALL_ENV`] is `1`, otherwise prints `skipped: {what}` (the caller then
    /// returns).
    #[track_caller]
    pub fn missing(what: &str) {
        if std::env::var_os(REQUIRE_ALL_ENV).is_some_and(|v| v == "1") {
            panic!("{REQUIRE_ALL_ENV}=1 but this test's requirement is missing: {what}");
        }
        eprintln!("skipped: {what}");
    }
}

#[doc(hidden)]
pub mod __private {
    pub use crate::meta::{
        encode as meta_record, encoded_len as meta_len, CRATE_ROOT_KEY, MANIFEST_DIR_KEY, SECTION,
    };
    pub use crate::meta::{DecodeError, TestMeta, VmMeta};
    pub use crate::registry::{TestDef, TestReturn, TESTS};
    pub use linkme;

    /// The entry point behind [`main!`](crate::main): guest PID 1, the guest's `modprobe`,
    /// guest test child (only inside a vmtest guest, whatever `VMTEST_TEST` says), or host
    /// harness. `crate_root` is the record naming the crate's root file.
    pub fn main(crate_root: &'static [u8]) -> ! {
        // Before the test child: a test that runs `modprobe` passes its VMTEST_TEST on.
        if vmtest_init::invoked_as_modprobe() {
            vmtest_init::modprobe_main();
        }
        // PID 1 alone is not the guest: a container's first process is PID 1 too, and must
        // not mount over /tmp or power off; it runs its tests in VMs like any host process.
        if vmtest_init::is_vmtest_init() {
            vmtest_init::run_pid1_with_tests(crate::guest::child::run_test);
        }
        if let Ok(name) = std::env::var(vmtest_init::protocol::TEST_ENV) {
            if !vmtest_init::in_vmtest_guest() {
                crate::guest::child::refuse_outside_guest(&name);
            }
            crate::guest::child::run_test(&name);
        }
        // The host harness: the library's warnings and notes go to stderr.
        crate::notice::install(crate::notice::to_stderr);
        crate::host::harness::run_host(crate_root)
    }
}
