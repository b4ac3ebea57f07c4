//! The QEMU command line: the only place that spells QEMU flags.
//!
//! [`profile`] is the per-architecture table (binary, machine, CPU, console, transport);
//! [`QemuCommand`] turns a VM description into arguments; [`sandbox`] decides whether QEMU
//! runs under its seccomp filter (`-sandbox`), probing the binary once; [`HugePages`] whether
//! the host backs guest memory with transparent huge pages. [`SnapshotArgs`] are
//! the arguments of a VM that is saved or restored: its QMP monitor, `-incoming` and the
//! `vmgenid` device. [`DebugArgs`] are those of a VM a debugger attaches to: QEMU's gdb stub
//! with the guest paused before the kernel runs, and a port for a gdb server in the guest.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::arch::Arch;
use crate::vm::accel::Accel;
use crate::vm::memo::Memo;

/// How QEMU is spelled for one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArchProfile {
    /// The QEMU system emulator.
    pub binary: &'static str,
    /// Debian package that provides `binary`.
    pub package: &'static str,
    /// `-M` value.
    pub machine: &'static str,
    /// `-cpu` value under TCG.
    pub cpu_tcg: &'static str,
    /// `-cpu` value under KVM.
    pub cpu_kvm: &'static str,
    /// The kernel's name for the serial console QEMU's `-serial` provides.
    pub console: &'static str,
    /// The virtio-serial controller device.
    pub virtio_serial: &'static str,
    /// vCPUs when a test does not say.
    pub default_cpus: u32,
    /// Run several vCPUs on one host thread under TCG (`-accel tcg,thread=single`).
    pub tcg_one_thread: bool,
}

/// The per-architecture table.
pub(crate) const fn profile(arch: Arch) -> ArchProfile {
    match arch {
        // `-M microvm` boots faster but hangs in early boot under TCG about 1 in 8 times on
        // 2-core hosts (PIT-based TSC calibration never completes), so `pc` is the default.
        Arch::X86_64 => ArchProfile {
            binary: "qemu-system-x86_64",
            package: "qemu-system-x86",
            machine: "pc",
            // Without ERMS the kernel clears pages with `rep stosq` instead of `rep stosb`, and
            // copies to and from user memory by words: TCG runs a `rep` string instruction one
            // iteration at a time, so that is 8 times fewer iterations for every page zeroed
            // (the Debian kernels zero each page they allocate), and a faster boot the larger
            // the initramfs.
            cpu_tcg: "max,-erms",
            cpu_kvm: "host",
            console: "ttyS0",
            virtio_serial: "virtio-serial-pci",
            default_cpus: 1,
            // With one host thread per vCPU, an SMP kernel that patches its own code at boot
            // (static keys through int3) hits a stale translation now and then and oopses in
            // early boot; one thread for all vCPUs does not.
            tcg_one_thread: true,
        },
        // `pauth-impdef=on` makes pointer authentication cheap to emulate (more than 2x faster
        // boots under TCG than the architected algorithm).
        Arch::Aarch64 => ArchProfile {
            binary: "qemu-system-aarch64",
            package: "qemu-system-arm",
            machine: "virt",
            cpu_tcg: "max,pauth-impdef=on",
            cpu_kvm: "host",
            console: "ttyAMA0",
            virtio_serial: "virtio-serial-pci",
            default_cpus: 2,
            tcg_one_thread: false,
        },
        Arch::Riscv64 => ArchProfile {
            binary: "qemu-system-riscv64",
            package: "qemu-system-misc",
            machine: "virt",
            cpu_tcg: "rv64",
            cpu_kvm: "host",
            console: "ttyS0",
            virtio_serial: "virtio-serial-pci",
            default_cpus: 1,
            tcg_one_thread: false,
        },
    }
}

/// A virtio-serial port backed by a Unix socket that the host listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SocketPort {
    /// The port's name, as the guest sees it in `/sys/class/virtio-ports/*/name`.
    pub name: String,
    /// Path of the host's listening socket; QEMU connects to it at start-up.
    pub socket: PathBuf,
}

/// Everything QEMU needs to boot one VM.
#[derive(Clone, Debug)]
pub(crate) struct QemuCommand {
    pub arch: Arch,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Extra kernel arguments, appended after vmtest's own.
    pub cmdline: Vec<String>,
    /// virtio-serial ports, in order.
    pub ports: Vec<SocketPort>,
    /// QEMU's seccomp filter.
    pub sandbox: Sandbox,
    /// Whether the host may back guest memory with transparent huge pages.
    pub huge_pages: HugePages,
    /// What a VM that is saved or restored adds (nothing by default).
    pub snapshot: SnapshotArgs,
    /// What a VM a debugger attaches to adds (nothing by default).
    pub debug: DebugArgs,
}

/// The arguments of a VM a debugger may attach to (`VMTEST_GDB`); nothing by default, so a
/// normal run's command line is unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DebugArgs {
    /// QEMU's gdb stub on a Unix socket QEMU listens on (`-gdb`), with the guest paused before
    /// the kernel runs (`-S`) until the debugger says `continue`; the kernel is booted without
    /// address randomisation (`nokaslr`), so its symbols are where the debug image says.
    pub kernel_stub: Option<PathBuf>,
    /// A virtio-serial port whose host end is a Unix socket QEMU listens on, for a debugger to
    /// reach a gdb server in the guest.
    pub guest_port: Option<SocketPort>,
}

/// The arguments of a VM that is saved or restored (see `vm::snapshot`). A restore uses the
/// saved VM's arguments with [`SnapshotArgs::incoming`] added; nothing else may differ but
/// paths of host-side sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SnapshotArgs {
    /// A QMP monitor on a Unix socket that the host listens on; QEMU connects at start-up.
    pub qmp: Option<PathBuf>,
    /// Load the guest's state instead of booting (`-incoming`).
    pub incoming: Option<Incoming>,
    /// QEMU's `vmgenid` device (x86_64 only: QEMU 7.2 has none for arm64): a new generation
    /// id at every start, which Linux (CONFIG_VMGENID) takes as a cue to reseed its random
    /// number generator after a restore.
    pub vmgenid: bool,
}

/// Where a restored VM's state comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A file QEMU inherits open on this descriptor, positioned at the migration stream.
    /// (`exec:` would start a shell, which the sandbox forbids; QEMU 7.2 has no `file:`.)
    Fd(i32),
}

/// Environment variable: whether QEMU runs under its seccomp filter.
pub(crate) const SANDBOX_ENV: &str = "VMTEST_QEMU_SANDBOX";

/// QEMU's seccomp filter, `-sandbox on,...`: once the guest runs, QEMU may not use obsolete
/// system calls, change its privileges, start processes or change scheduling and resource
/// limits. None of it is needed to boot a kernel from files and talk over Unix sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sandbox {
    Off,
    On,
}

const SANDBOX_OPTIONS: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The sandbox for QEMU `binary` as [`SANDBOX_ENV`] asks: `auto` (the default) turns it on
/// when this QEMU was built with seccomp and the kernel lets it install the filter; `on`
/// requires that; `off` never uses it.
pub(crate) fn sandbox(binary: &Path) -> Result<Sandbox, crate::Error> {
    match sandbox_wanted()? {
        Some(true) if !sandbox_works(binary, &Memo::none()) => Err(crate::Error::Env(format!(
            "{SANDBOX_ENV}=on, but {} cannot run under its seccomp sandbox (built without \
             seccomp, or the kernel refuses the filter); set {SANDBOX_ENV}=off or auto",
            binary.display()
        ))),
        Some(false) => Ok(Sandbox::Off),
        _ if sandbox_works(binary, &Memo::none()) => Ok(Sandbox::On),
        _ => Ok(Sandbox::Off),
    }
}

/// Checks [`SANDBOX_ENV`] before the first boot: a bad value, or `on` where `binary` cannot
/// sandbox itself, is an error now. Under `auto` the probe starts in the background, so the
/// first boot does not wait for it; its answer is taken from `memo` when that has one for
/// this binary on this boot of this kernel.
pub(crate) fn check_sandbox(binary: &Path, memo: &Memo) -> Result<(), crate::Error> {
    if sandbox_wanted()?.is_none() {
        let (binary, memo) = (binary.to_owned(), memo.clone());
        std::thread::spawn(move || sandbox_works(&binary, &memo));
        return Ok(());
    }
    sandbox_works(binary, memo);
    sandbox(binary).map(drop)
}

/// [`SANDBOX_ENV`]: `Some(true)` for `on`, `Some(false)` for `off`, `None` for `auto`.
fn sandbox_wanted() -> Result<Option<bool>, crate::Error> {
    let value = std::env::var(SANDBOX_ENV).unwrap_or_default();
    match value.as_str() {
        "" | "auto" => Ok(None),
        "on" => Ok(Some(true)),
        "off" => Ok(Some(false)),
        _ => Err(crate::Error::Env(format!("{SANDBOX_ENV}={value:?} is not one of auto, on, off"))),
    }
}

/// Whether QEMU `binary` runs under its seccomp sandbox here: asked once per process (a run
/// of `binary -sandbox ... -device help`, about 40 ms), and remembered in `memo` for the same
/// binary, boot of the kernel and seccomp state of this process (which QEMU inherits).
fn sandbox_works(binary: &Path, memo: &Memo) -> bool {
    static PROBED: Mutex<BTreeMap<PathBuf, bool>> = Mutex::new(BTreeMap::new());
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    *probed.entry(binary.to_owned()).or_insert_with(|| remembered_probe(binary, memo))
}

/// [`probe_sandbox`], or its answer from `memo`.
fn remembered_probe(binary: &Path, memo: &Memo) -> bool {
    let probe = || Ok::<_, std::convert::Infallible>(probe_sandbox(binary).to_string());
    let answer = match sandbox_environment() {
        Some(environment) => {
            let fact = format!("qemu -sandbox {SANDBOX_OPTIONS} {environment}");
            memo.get(&fact, binary, |answer| answer.parse::<bool>().is_ok(), probe)
        }
        None => probe(),
    };
    answer.is_ok_and(|answer| answer == "true")
}

/// What decides, besides QEMU's binary, whether it may install its seccomp filter: the running
/// kernel (its boot id) and this process's own seccomp mode and `no_new_privs`, which QEMU
/// inherits. `None` when they cannot be read (nothing is remembered then).
fn sandbox_environment() -> Option<String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let state: Vec<&str> = status
        .lines()
        .filter(|line| line.starts_with("Seccomp:") || line.starts_with("NoNewPrivs:"))
        .collect();
    (state.len() == 2).then(|| format!("{} {}", boot_id.trim(), state.join(" ")))
}

/// Whether `binary` installs the filter vmtest asks for: it does so before it handles
/// `-device help`, and exits with an error when it cannot.
fn probe_sandbox(binary: &Path) -> bool {
    let mut args = Args::default();
    args.opt("-sandbox", SANDBOX_OPTIONS)
        .opt("-M", "none")
        .flag("-nodefaults")
        .flag("-no-user-config")
        .opt("-display", "none")
        .opt("-device", "help");
    Command::new(binary)
        .args(args.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Environment variable: whether the host backs guest memory with transparent huge pages.
pub(crate) const THP_ENV: &str = "VMTEST_QEMU_THP";

/// Whether the host kernel may back QEMU's memory with transparent huge pages (QEMU asks for
/// them for guest memory with `madvise`, so they are used wherever the host's THP mode is
/// `madvise` or `always`).
///
/// Under TCG they cost more than they give: a guest's first touch of a 2 MiB region makes the
/// host zero all of it, which on a host that is itself a VM also faults every page in from the
/// hypervisor. A cold boot under TCG spent about a quarter of QEMU's time in the host's
/// `clear_page` and ran up to 1.4 s faster with them off (docs/benchmark.md). Under KVM the guest
/// runs on the host's page tables, where huge pages save TLB misses for all of its run, so
/// QEMU's default stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HugePages {
    /// QEMU's default: the host's THP mode decides.
    Allowed,
    /// `prctl(PR_SET_THP_DISABLE)` for QEMU's process: 4 KiB pages only.
    Disabled,
}

impl HugePages {
    /// What [`THP_ENV`] asks for a VM under `accel`: `auto` (the default) disables them under
    /// TCG, `on` leaves QEMU's default, `off` always disables them.
    pub(crate) fn for_accel(accel: Accel) -> Result<HugePages, crate::Error> {
        HugePages::parse(&std::env::var(THP_ENV).unwrap_or_default(), accel)
    }

    fn parse(value: &str, accel: Accel) -> Result<HugePages, crate::Error> {
        match (value, accel) {
            ("" | "auto", Accel::Tcg) | ("off", _) => Ok(HugePages::Disabled),
            ("" | "auto", Accel::Kvm) | ("on", _) => Ok(HugePages::Allowed),
            _ => Err(crate::Error::Env(format!("{THP_ENV}={value:?} is not one of auto, on, off"))),
        }
    }

    /// Makes `command`'s process start with them as `self` says.
    fn apply(self, command: &mut Command) {
        if self == HugePages::Allowed {
            return;
        }
        // SAFETY: the closure runs between fork and exec and calls only prctl(2), which is
        // async-signal-safe. The flag is kept across exec. A kernel that refuses it has no
        // huge pages to avoid, so its answer is ignored.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
                Ok(())
            });
        }
    }
}

impl QemuCommand {
    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let profile = profile(self.arch);
        let mut args = vec![
            format!("console={}", profile.console),
            // Let QEMU exit (with -no-reboot) instead of hanging on a kernel panic.
            "panic=-1".to_owned(),
            // Boot messages cost time on a serial console; warnings (level 4) and worse stay
            // visible so the harness can attribute them to tests.
            "loglevel=5".to_owned(),
            "mitigations=off".to_owned(),
            "rdinit=/init".to_owned(),
        ];
        if self.debug.kernel_stub.is_some() {
            args.push("nokaslr".to_owned());
        }
        if self.arch == Arch::X86_64 {
            // Under TCG the TSC is stable; skipping the watchdog's check saves boot time.
            args.push("tsc=reliable".to_owned());
            args.push("no_timer_check".to_owned());
            // PCI interrupts through the chipset's router, not ACPI: routing the virtio-serial
            // device's legacy interrupt through ACPI runs the AML interpreter, 90 ms of its
            // probe under TCG, though the device then uses MSI-X.
            args.push("acpi=noirq".to_owned());
        }
        args.extend(self.cmdline.iter().cloned());
        args.join(" ")
    }

    /// QEMU `binary` with these arguments, its process set up as [`QemuCommand::huge_pages`]
    /// says.
    pub fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        command.args(self.args());
        self.huge_pages.apply(&mut command);
        command
    }

    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<OsString> {
        let profile = profile(self.arch);
        let cpu = match self.accel {
            Accel::Kvm => profile.cpu_kvm,
            Accel::Tcg => profile.cpu_tcg,
        };
        let accel = match self.accel {
            Accel::Tcg if self.cpus > 1 && profile.tcg_one_thread => "tcg,thread=single",
            accel => accel.qemu_name(),
        };
        let mut args = Args::default();
        args.flag("-nodefaults").flag("-no-user-config").flag("-no-reboot");
        if self.sandbox == Sandbox::On {
            args.opt("-sandbox", SANDBOX_OPTIONS);
        }
        args.opt("-display", "none")
            .opt("-M", profile.machine)
            .opt("-accel", accel)
            .opt("-cpu", cpu)
            .opt("-m", format!("{}M", self.memory_mib))
            .opt("-smp", self.cpus.to_string())
            // The guest's wall clock starts at the host's time: the kernel sets its clock from
            // this RTC at boot (CONFIG_RTC_HCTOSYS). QEMU's default, spelled out.
            .opt("-rtc", "base=utc")
            // The kernel console goes to QEMU's stdout, which the host reads and logs.
            .opt("-serial", "stdio");
        if !self.ports.is_empty() || self.debug.guest_port.is_some() {
            args.opt("-device", format!("{},id=vser0", profile.virtio_serial));
            for (index, port) in self.ports.iter().enumerate() {
                args.opt("-chardev", chardev_socket(&format!("port{index}"), &port.socket)).opt(
                    "-device",
                    format!("virtserialport,bus=vser0.0,chardev=port{index},name={}", port.name),
                );
            }
            if let Some(port) = &self.debug.guest_port {
                args.opt("-chardev", chardev_server("gdbport", &port.socket)).opt(
                    "-device",
                    format!("virtserialport,bus=vser0.0,chardev=gdbport,name={}", port.name),
                );
            }
        }
        if let Some(stub) = &self.debug.kernel_stub {
            args.opt("-chardev", chardev_server("gdbstub", stub))
                .opt("-gdb", "chardev:gdbstub")
                .flag("-S");
        }
        if self.snapshot.vmgenid {
            args.opt("-device", "vmgenid,guid=auto");
        }
        if let Some(qmp) = &self.snapshot.qmp {
            args.opt("-chardev", chardev_socket("qmp", qmp))
                .opt("-mon", "chardev=qmp,mode=control");
        }
        args.opt("-kernel", &self.kernel)
            .opt("-initrd", &self.initrd)
            .opt("-append", self.kernel_cmdline());
        match self.snapshot.incoming {
            Some(Incoming::Fd(fd)) => {
                args.opt("-incoming", format!("fd:{fd}"));
            }
            None => {}
        }
        args.0
    }
}

/// A QEMU argument list under construction.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, flag: &str) -> &mut Self {
        self.0.push(flag.into());
        self
    }

    fn opt(&mut self, option: &str, value: impl Into<OsString>) -> &mut Self {
        self.0.push(option.into());
        self.0.push(value.into());
        self
    }
}

/// `socket,id=ID,path=P`: QEMU connects to the host's listening socket at start-up.
fn chardev_socket(id: &str, path: &std::path::Path) -> OsString {
    let mut arg = OsString::from(format!("socket,id={id},path="));
    // QEMU option values escape ',' by doubling it.
    let escaped = path.to_string_lossy().replace(',', ",,");
    arg.push(escaped);
    arg
}

/// `socket,id=ID,path=P,server=on,wait=off`: QEMU listens at `P` (for a debugger) and starts
/// without waiting for a connection.
fn chardev_server(id: &str, path: &std::path::Path) -> OsString {
    let mut arg = chardev_socket(id, path);
    arg.push(",server=on,wait=off");
    arg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(arch: Arch, accel: Accel) -> QemuCommand {
        QemuCommand {
            arch,
            accel,
            kernel: "/k/vmlinuz".into(),
            initrd: "/t/initrd,1".into(),
            memory_mib: 512,
            cpus: 2,
            cmdline: vec!["foo=1".into()],
            ports: vec![SocketPort { name: "vmtest.control".into(), socket: "/t/ctl.sock".into() }],
            sandbox: Sandbox::Off,
            huge_pages: HugePages::Disabled,
            snapshot: SnapshotArgs::default(),
            debug: DebugArgs::default(),
        }
    }

    #[test]
    fn huge_pages_by_knob_and_accelerator() {
        use HugePages::{Allowed, Disabled};
        for (value, tcg, kvm) in [
            ("", Disabled, Allowed),
            ("auto", Disabled, Allowed),
            ("on", Allowed, Allowed),
            ("off", Disabled, Disabled),
        ] {
            assert_eq!(HugePages::parse(value, Accel::Tcg).unwrap(), tcg, "{value:?} under TCG");
            assert_eq!(HugePages::parse(value, Accel::Kvm).unwrap(), kvm, "{value:?} under KVM");
        }
        let err = HugePages::parse("never", Accel::Tcg).unwrap_err().to_string();
        assert!(err.contains("VMTEST_QEMU_THP=\"never\" is not one of auto, on, off"), "{err}");
    }

    /// The flag reaches the process, as the kernel reports it (`THP_enabled`, Linux 5.0 on).
    #[test]
    fn disabled_huge_pages_reach_the_child() {
        let thp_enabled = |huge_pages: HugePages| {
            let mut command = Command::new("grep");
            command.args(["^THP_enabled:", "/proc/self/status"]);
            huge_pages.apply(&mut command);
            let output = command.output().unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned()
        };
        assert_eq!(thp_enabled(HugePages::Disabled), "0");
        // Allowed changes nothing: the child has this process's setting (0 as well on a kernel
        // without huge pages, or under a parent that disabled them).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let own = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).unwrap().trim();
        assert_eq!(thp_enabled(HugePages::Allowed), own);
    }

    fn joined(c: &QemuCommand) -> String {
        c.args().iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn x86_64_tcg_golden() {
        assert_eq!(
            joined(&command(Arch::X86_64, Accel::Tcg)),
            "-nodefaults -no-user-config -no-reboot -display none -M pc -accel tcg,thread=single \
             -cpu max,-erms -m 512M -smp 2 -rtc base=utc -serial stdio -device virtio-serial-pci,id=vser0 \
             -chardev socket,id=port0,path=/t/ctl.sock \
             -device virtserialport,bus=vser0.0,chardev=port0,name=vmtest.control \
             -kernel /k/vmlinuz -initrd /t/initrd,1 \
             -append console=ttyS0 panic=-1 loglevel=5 mitigations=off rdinit=/init \
             tsc=reliable no_timer_check acpi=noirq foo=1"
        );
    }

    #[test]
    fn aarch64_tcg_golden() {
        assert_eq!(
            joined(&command(Arch::Aarch64, Accel::Tcg)),
            "-nodefaults -no-user-config -no-reboot -display none -M virt -accel tcg \
             -cpu max,pauth-impdef=on -m 512M -smp 2 -rtc base=utc -serial stdio \
             -device virtio-serial-pci,id=vser0 -chardev socket,id=port0,path=/t/ctl.sock \
             -device virtserialport,bus=vser0.0,chardev=port0,name=vmtest.control \
             -kernel /k/vmlinuz -initrd /t/initrd,1 \
             -append console=ttyAMA0 panic=-1 loglevel=5 mitigations=off rdinit=/init foo=1"
        );
    }

    #[test]
    fn one_x86_64_vcpu_keeps_multi_threaded_tcg() {
        let mut c = command(Arch::X86_64, Accel::Tcg);
        c.cpus = 1;
        assert!(joined(&c).contains("-accel tcg -cpu max,-erms -m 512M -smp 1 "), "{}", joined(&c));
    }

    #[test]
    fn the_sandbox_comes_first() {
        let mut c = command(Arch::Aarch64, Accel::Tcg);
        c.sandbox = Sandbox::On;
        assert!(
            joined(&c).starts_with(
                "-nodefaults -no-user-config -no-reboot -sandbox on,obsolete=deny,\
                 elevateprivileges=deny,spawn=deny,resourcecontrol=deny -display none "
            ),
            "{}",
            joined(&c)
        );
    }

    #[test]
    fn the_sandbox_probe_tells_a_qemu_from_something_else() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let Ok(qemu) = crate::vm::session::find_qemu(arch) else {
                crate::__testing::missing(&format!(
                    "for {arch}: no {} on PATH",
                    profile(arch).binary
                ));
                continue;
            };
            // Debian's QEMU is built with seccomp; this kernel accepts the filter.
            assert!(probe_sandbox(&qemu), "{}", qemu.display());
        }
        assert!(!probe_sandbox(Path::new("/bin/false")));
        assert!(!probe_sandbox(Path::new("/nonexistent/qemu")));
    }

    #[test]
    fn the_sandbox_probes_answer_is_remembered_for_the_same_binary() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = dir.path().join("qemu-system-x86_64");
        std::fs::copy("/bin/false", &qemu).unwrap();
        let memo = Memo::in_dir(dir.path().join("memo"));
        assert!(!remembered_probe(&qemu, &memo));
        let entries: Vec<_> =
            std::fs::read_dir(dir.path().join("memo")).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1);
        let entry = entries[0].path();
        assert_eq!(std::fs::read_to_string(&entry).unwrap(), "false");
        // The next process takes the remembered answer and runs no probe: a remembered yes
        // (which this binary would never give) is what it says.
        std::fs::write(&entry, "true").unwrap();
        assert!(remembered_probe(&qemu, &memo));
        assert!(!remembered_probe(&qemu, &Memo::none()));
        // A damaged answer is probed again.
        std::fs::write(&entry, "tru").unwrap();
        assert!(!remembered_probe(&qemu, &memo));
        // Another binary at the same path is probed again.
        std::fs::write(&entry, "true").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::copy("/bin/false", &qemu).unwrap();
        assert!(!remembered_probe(&qemu, &memo));
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let args = joined(&command(Arch::X86_64, Accel::Kvm));
        assert!(args.contains("-accel kvm -cpu host"), "{args}");
    }

    #[test]
    fn ports_share_one_controller() {
        let mut c = command(Arch::X86_64, Accel::Tcg);
        c.ports.push(SocketPort { name: "vmtest.modules".into(), socket: "/t/mod.sock".into() });
        assert!(joined(&c).contains(
            "-device virtio-serial-pci,id=vser0 -chardev socket,id=port0,path=/t/ctl.sock \
             -device virtserialport,bus=vser0.0,chardev=port0,name=vmtest.control \
             -chardev socket,id=port1,path=/t/mod.sock \
             -device virtserialport,bus=vser0.0,chardev=port1,name=vmtest.modules "
        ));
    }

    #[test]
    fn a_saved_vm_has_a_monitor_and_a_restored_one_its_incoming_state() {
        let mut c = command(Arch::X86_64, Accel::Tcg);
        c.snapshot =
            SnapshotArgs { qmp: Some("/t/q,mp.sock".into()), incoming: None, vmgenid: true };
        let saved = joined(&c);
        assert!(
            saved.contains(
                "name=vmtest.control -device vmgenid,guid=auto \
                 -chardev socket,id=qmp,path=/t/q,,mp.sock -mon chardev=qmp,mode=control \
                 -kernel /k/vmlinuz "
            ),
            "{saved}"
        );
        c.snapshot.incoming = Some(Incoming::Fd(3));
        let restored = joined(&c);
        assert_eq!(restored, format!("{saved} -incoming fd:3"));
        // Nothing of it without a snapshot.
        let plain = joined(&command(Arch::X86_64, Accel::Tcg));
        for flag in ["vmgenid", "-mon", "-incoming", "qmp"] {
            assert!(!plain.contains(flag), "{plain}");
        }
    }

    #[test]
    fn escapes_commas_in_socket_paths() {
        let mut c = command(Arch::X86_64, Accel::Tcg);
        c.ports[0].socket = "/tmp/a,b/ctl.sock".into();
        assert!(joined(&c).contains("path=/tmp/a,,b/ctl.sock "));
    }

    #[test]
    fn a_kernel_debugged_vm_starts_paused_with_its_stub_and_nothing_else_changes() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let plain = command(arch, Accel::Tcg);
            let mut debugged = plain.clone();
            debugged.debug.kernel_stub = Some("/t/g,db.sock".into());
            let (plain, debugged) = (joined(&plain), joined(&debugged));
            // The stub's arguments just before the kernel's; the kernel boots unrandomised,
            // `nokaslr` after vmtest's own arguments and before the test's.
            let expected = plain
                .replace(
                    " -kernel ",
                    " -chardev socket,id=gdbstub,path=/t/g,,db.sock,server=on,wait=off \
                     -gdb chardev:gdbstub -S -kernel ",
                )
                .replace(" rdinit=/init ", " rdinit=/init nokaslr ");
            assert_eq!(debugged, expected);
            for word in ["-S", "-gdb", "nokaslr", "gdbstub", "server=on"] {
                assert!(!plain.contains(word), "{word} in a plain VM's arguments: {plain}");
            }
        }
    }

    #[test]
    fn a_test_debugged_vm_has_one_more_port_that_qemu_listens_on() {
        let plain = command(Arch::X86_64, Accel::Tcg);
        let mut debugged = plain.clone();
        debugged.debug.guest_port =
            Some(SocketPort { name: "vmtest.gdb".into(), socket: "/t/gdbserver.sock".into() });
        let (plain, debugged) = (joined(&plain), joined(&debugged));
        assert_eq!(
            debugged,
            plain.replace(
                "name=vmtest.control ",
                "name=vmtest.control -chardev socket,id=gdbport,path=/t/gdbserver.sock,\
                 server=on,wait=off -device virtserialport,bus=vser0.0,chardev=gdbport,\
                 name=vmtest.gdb "
            )
        );
        assert!(!debugged.contains("-S ") && !debugged.contains("nokaslr"), "{debugged}");
        assert!(!plain.contains("gdb"), "{plain}");
    }
}
