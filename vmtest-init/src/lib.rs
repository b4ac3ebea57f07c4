//! The guest side of vmtest.
//!
//! Inside the VM the test binary (or the static `vmtest-init` binary, in runner mode) is PID 1.
//! [`run_pid1`] reads the [`protocol::Plan`] that the host packed into the initramfs, prepares
//! the system (mounts, loopback, hostname and `/etc`, kernel modules), waits at its restore
//! point when the plan has one (`restore.rs`), runs each planned program in a child process
//! and reports over a named virtio-serial port with [`protocol`] frames, then powers off.
//!
//! Started as `modprobe` ([`invoked_as_modprobe`]), the same binary is the guest's module
//! loader: [`modprobe_main`] fetches modules from the host on demand (see `modprobe.rs`).
//!
//! [`protocol`] is also the host's decoder: both sides share one definition of the wire format.
//!
//! The console (fd 1 and 2 of PID 1) only carries short `vmtest-init:` diagnostics; results
//! travel on the control port alone.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod child;
mod console;
mod files;
mod forks;
mod identity;
mod kmsg;
mod modprobe;
mod modules;
mod mounts;
mod net;
mod output;
mod ports;
mod power;
mod process;
pub mod protocol;
mod restore;
mod shell;
mod timeline;
mod unpack;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use forks::RunTest;
pub use modprobe::{invoked_as_modprobe, modprobe_main};
pub use mounts::hidden_in_guest;

/// The device of the virtio-serial port called `name` (`/dev/vport0p3`), if the guest has one.
pub fn port_device(name: &str) -> Option<std::path::PathBuf> {
    match ports::find_port(Path::new(ports::VIRTIO_PORTS_DIR), name) {
        ports::Lookup::Found(entry) => Some(Path::new("/dev").join(entry)),
        ports::Lookup::NotNamed | ports::Lookup::NoPorts => None,
    }
}
use ports::Control;
use protocol::{GuestMessage, Plan, PlannedTest, CONTROL_PORT, PLAN_PATH, PROTOCOL_VERSION};

/// Where this crate's source lives, so a host without a prebuilt static `vmtest-init` can build
/// one for any architecture (`cargo vmtest run` does, once, into its cache).
pub const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// This crate's version; a cached static `vmtest-init` is kept per version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long to wait for the control port to appear at boot.
const PORT_PATIENCE: Duration = Duration::from_secs(5);
/// How long the host may take to drain the control port at the end of a clean run, and then to
/// stop the VM.
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);
/// How long the fatal path waits for anything (the port, the writer).
const FATAL_PATIENCE: Duration = Duration::from_secs(5);

/// The control port, once open (and greeted with `Hello`); the fatal path reports through it.
static CONTROL: OnceLock<Control> = OnceLock::new();
/// The message of the last panic, recorded by the panic hook.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Whether this process is PID 1 (of the machine, or of a PID namespace).
pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// Whether this process runs in a vmtest guest: the plan at
/// [`PLAN_PATH`], which only the initramfs vmtest makes has, exists.
/// PID 1 alone is no proof: a test binary started as the first process of a container is PID
/// 1 too.
pub fn in_vmtest_guest() -> bool {
    Path::new(PLAN_PATH).is_file()
}

/// Whether this process is the init of a vmtest VM: PID 1 in a vmtest guest.
pub fn is_vmtest_init() -> bool {
    is_pid1() && in_vmtest_guest()
}

/// Runs the guest side as PID 1: prepares the system, runs the plan at
/// [`PLAN_PATH`], reports on the control port, and powers the VM off.
///
/// Never returns and never unwinds: any error or panic is reported as
/// [`GuestMessage::Fatal`] (when the control port is open) and on the console, then the VM is
/// powered off.
///
/// Called by a process that is not PID 1, or without a plan (PID 1 of a container), it refuses,
/// prints why and exits with status 2, rather than mount over or power off the machine it runs
/// on.
pub fn run_pid1() -> ! {
    run_pid1_inner(None)
}

/// [`run_pid1`] for a binary that holds its tests: a planned test whose program is this
/// binary is started by forking a copy of PID 1 made before the first test, which then calls
/// `run` with the test's name, instead of by executing the binary again (see `forks.rs`).
pub fn run_pid1_with_tests(run: RunTest) -> ! {
    run_pid1_inner(Some(run))
}

fn run_pid1_inner(run: Option<RunTest>) -> ! {
    if !is_pid1() {
        console::say("not PID 1: run_pid1 only runs as the init of a vmtest VM; refusing");
        std::process::exit(2);
    }
    if !in_vmtest_guest() {
        console::say(format!(
            "no {PLAN_PATH}: run_pid1 only runs as the init of a vmtest VM, not of a container; \
             refusing"
        ));
        std::process::exit(2);
    }
    panic::set_hook(Box::new(on_panic));
    let message = match panic::catch_unwind(|| guest_main(run)) {
        Ok(Ok(())) => power::power_off(),
        Ok(Err(message)) => message,
        Err(payload) => panic_message(payload.as_ref()),
    };
    fatal(&message)
}

fn guest_main(run: Option<RunTest>) -> Result<(), String> {
    timeline::mark("started");
    // First: PID 1's session, and the resource limits before anything could change them.
    let session = process::init_pid1();
    console::ensure_stdio();
    let mut logs: Vec<String> = session.err().into_iter().collect();
    logs.extend(mounts::mount_all());
    timeline::mark("mounted");
    // Now that devtmpfs is on /dev, a console exists even if the initramfs had none.
    console::ensure_stdio();
    if let Err(e) = net::bring_up_loopback() {
        logs.push(e);
    }
    logs.extend(identity::set_up(Path::new("/")));
    for line in &logs {
        console::say(line);
    }

    timeline::mark("set up");
    let mut plan = read_plan(Path::new(PLAN_PATH))?;
    let mut loaded = modules::load_all(&plan.modules)?;
    timeline::mark("modules loaded");
    // After the harness's own setup, so that only the tests' requests reach the host.
    logs.extend(modprobe::install());
    // Forked while PID 1 still has one thread: the control port starts the first others.
    let server = run.and_then(|run| {
        forks::ForkServer::start(run)
            .map_err(|e| logs.push(format!("tests are executed, not forked: {e}")))
            .ok()
    });
    timeline::mark("fork server");
    let control = open_control(PORT_PATIENCE)?;
    timeline::mark("hello");
    // Opened after the modules: their load messages are not any test's.
    let mut kmsg = kmsg::Kmsg::open().map_err(|e| logs.push(e)).ok();
    for line in logs {
        control.send(&GuestMessage::Log(line))?;
    }
    if plan.restore_point {
        // Everything above is what a snapshot holds; everything below is this run's: the
        // payload brought its plan (with its tests and modules) over the snapshot's.
        timeline::mark("ready");
        restore::wait_for_restore(control)?;
        timeline::mark("restored");
        plan = read_plan(Path::new(PLAN_PATH))?;
        if plan.restore_point {
            return Err("the run's payload brought no plan of its own".to_owned());
        }
        loaded = modules::load_all(&plan.modules)?;
    }
    let mut vm_bytes_left = plan.files.vm_bytes;
    let send_time = Duration::from_millis(plan.files.send_ms);
    timeline::mark("tests");
    for test in &plan.tests {
        control.send_written(&GuestMessage::TestStarted { id: test.id })?;
        let mut out = files::OutDir::create(test.id)?;
        let finished = match loaded.failures.get(&test.id) {
            Some(failures) => unrunnable(failures),
            None if plan.shell == protocol::ShellWhen::Instead => {
                let start = Instant::now();
                let outcome = shell::offer(control, test, "(no test runs)", false)?;
                let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                child::Finished { outcome, duration_ms, output: Vec::new() }
            }
            None => child::run(test, control, &out, server.as_ref())?,
        };
        let shell_after = shell::wanted_after(plan.shell, &finished.outcome)
            .then(|| format!("after {} {}", test.name, describe(&finished.outcome)));
        if !matches!(finished.outcome, protocol::Outcome::Exited(0) | protocol::Outcome::Skipped(_))
        {
            out.save_kernel_log();
        }
        if let Some(kmsg) = &mut kmsg {
            let bytes = kmsg.drain();
            if !bytes.is_empty() {
                control.send(&GuestMessage::KernelLog { id: test.id, bytes })?;
            }
        }
        out.send(control, &plan.files, &mut vm_bytes_left, Instant::now() + send_time)?;
        report(control, test, finished)?;
        child::reap(None);
        if let Some(why) = shell_after {
            if let protocol::Outcome::Error(e) = shell::offer(control, test, &why, true)? {
                control.send(&GuestMessage::Log(e))?;
            }
            // What the shell made the kernel say is no test's.
            if let Some(kmsg) = &mut kmsg {
                kmsg.drain();
            }
        }
    }
    timeline::mark("done");
    // Before `Done`: the host stops the VM once it has that.
    timeline::say();
    control.send(&GuestMessage::Done)?;
    // `Done` is queued: from here on a problem is no longer the host's to hear about.
    match control.close(CLOSE_PATIENCE) {
        Ok(()) => power::wait_for_host_to_stop(CLOSE_PATIENCE),
        Err(e) => console::say(format_args!("failed to flush the control port: {e}")),
    }
    Ok(())
}

/// How a test ended, for the shell's first line.
fn describe(outcome: &protocol::Outcome) -> String {
    match outcome {
        protocol::Outcome::Exited(0) => "passed".to_owned(),
        protocol::Outcome::Exited(code) => format!("failed (exit status {code})"),
        protocol::Outcome::Signaled(signal) => format!("failed (killed by signal {signal})"),
        protocol::Outcome::TimedOut { after_ms } => format!("timed out after {after_ms} ms"),
        protocol::Outcome::Error(e) => format!("could not run ({e})"),
        protocol::Outcome::Skipped(reason) => format!("skipped itself ({reason})"),
    }
}

fn unrunnable(failures: &[String]) -> child::Finished {
    child::Finished {
        outcome: protocol::Outcome::Error(failures.join("; ")),
        duration_ms: 0,
        output: Vec::new(),
    }
}

fn report(control: &Control, test: &PlannedTest, finished: child::Finished) -> Result<(), String> {
    control.send(&GuestMessage::TestFinished {
        id: test.id,
        outcome: finished.outcome,
        duration_ms: finished.duration_ms,
        output: finished.output,
    })
}

fn read_plan(path: &Path) -> Result<Plan, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("failed to read the plan {}: {e}", path.display()))?;
    let decode_error = |e| format!("failed to decode the plan {}: {e}", path.display());
    // The version first: a plan of another version may not decode at all.
    let version = protocol::plan_version(&bytes).map_err(decode_error)?;
    protocol::VersionMismatch::check(protocol::Reader::Guest, version)
        .map_err(|e| format!("failed to read the plan {}: {e}", path.display()))?;
    protocol::decode_frame(&bytes).map_err(decode_error)
}

/// Opens the control port and greets the host, once; later calls return the same port.
fn open_control(patience: Duration) -> Result<&'static Control, String> {
    if let Some(control) = CONTROL.get() {
        return Ok(control);
    }
    let port = ports::open_port(
        Path::new(ports::VIRTIO_PORTS_DIR),
        Path::new("/dev"),
        CONTROL_PORT,
        patience,
    )?;
    let control = Control::start(port)?;
    let kernel_release = rustix::system::uname().release().to_string_lossy().into_owned();
    control.send(&GuestMessage::Hello { version: PROTOCOL_VERSION, kernel_release })?;
    Ok(CONTROL.get_or_init(|| control))
}

/// Reports `message` wherever it can and powers off.
fn fatal(message: &str) -> ! {
    // Nothing here may unwind past PID 1's frame: a panic while reporting is swallowed.
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        console::say(format_args!("fatal: {message}"));
        let deadline = Instant::now() + FATAL_PATIENCE;
        let control = match open_control(Duration::from_millis(200)) {
            Ok(control) => control,
            Err(e) => return console::say(format_args!("cannot report the error: {e}")),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = control
            .send_within(&GuestMessage::Fatal(message.to_owned()), left)
            .and_then(|()| control.close(deadline.saturating_duration_since(Instant::now())));
        match sent {
            // The host stops the VM once it has read the error (the fatal path's patience
            // bounds the wait).
            Ok(()) => {
                power::wait_for_host_to_stop(deadline.saturating_duration_since(Instant::now()))
            }
            Err(e) => console::say(format_args!("cannot report the error: {e}")),
        }
    }));
    power::power_off()
}

fn on_panic(info: &panic::PanicHookInfo<'_>) {
    let mut message = payload_text(info.payload());
    if let Some(location) = info.location() {
        message = format!("panicked at {location}: {message}");
    }
    console::say(&message);
    *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
    if cfg!(panic = "abort") {
        // No unwinding will reach `run_pid1`: report from here.
        fatal(&message);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let recorded = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
    recorded.unwrap_or_else(|| payload_text(payload))
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
