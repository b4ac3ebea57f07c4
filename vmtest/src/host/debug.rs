//! Debuggers for a run's VMs, `VMTEST_GDB`: what it asks for, what each VM adds for it, and the
//! `gdb` command line the user is told to attach with.
//!
//! - `kernel`: QEMU's gdb stub on a Unix socket in the VM's temp dir, the guest paused before
//!   the kernel runs (`-S`) and booted without KASLR; gdb gets the kernel's debug image from
//!   the store when it is there (`kernel fetch <series> --debug-symbols`).
//! - `test`: each test process waits, before its test runs, until a gdb server in the guest
//!   (Debian's `gdbserver`, see [`crate::userland::gdbserver`]) has attached to it; gdb reaches
//!   that server through a virtio-serial port whose host end is a Unix socket QEMU listens on,
//!   with the host's test binary for symbols.
//!
//! Either way every timeout of the run (boot, test, the host's waits) is suspended
//! ([`SUSPENDED`]): a guest stopped in a debugger says nothing for as long as it likes. When
//! `VMTEST_GDB` is unset nothing of this is in the run: no argument, port, file or wait.

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::kernel::Kernel;
use crate::vm::qemu::{DebugArgs, SocketPort};
use crate::Error;

pub(crate) use crate::vm::session::SUSPENDED;

/// Environment variable: which debugger the run's VMs wait for.
pub(crate) const GDB_ENV: &str = "VMTEST_GDB";
/// The name of the virtio-serial port of the gdb server in the guest.
pub(crate) const GDB_PORT: &str = vmtest_init::protocol::GDB_PORT;
/// The gdb stub's socket in a VM's temp dir.
const STUB_SOCKET: &str = "gdb-kernel.sock";
/// The host end of the gdb server's port in a VM's temp dir.
const SERVER_SOCKET: &str = "gdb-test.sock";

/// A run's debugger, found before the first boot.
#[derive(Clone, Debug)]
pub(crate) struct Debugging {
    /// What the VMs wait for.
    pub debugger: Debugger,
    /// The gdb server put into each guest ([`Debugger::Test`] only).
    pub gdbserver: Option<PathBuf>,
}

/// What `VMTEST_GDB` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Debugger {
    /// The kernel, through QEMU's gdb stub.
    Kernel,
    /// The test process, through a gdb server in the guest.
    Test,
}

impl Debugger {
    /// [`GDB_ENV`]'s value: `None` when it is unset or empty.
    pub(crate) fn from_env() -> Result<Option<Debugger>, Error> {
        match std::env::var_os(GDB_ENV) {
            None => Ok(None),
            Some(value) => Debugger::parse(&value.to_string_lossy()).map_err(Error::Env),
        }
    }

    fn parse(value: &str) -> Result<Option<Debugger>, String> {
        match value {
            "" => Ok(None),
            "kernel" => Ok(Some(Debugger::Kernel)),
            "test" => Ok(Some(Debugger::Test)),
            _ => Err(format!(
                "{GDB_ENV}={value:?} is not one of `kernel` (debug the guest's kernel through \
                 QEMU's gdb stub) or `test` (debug the test process through a gdb server in \
                 the guest)"
            )),
        }
    }

    /// What the VM whose temp dir is `workdir` adds for this debugger.
    pub(crate) fn vm_args(self, workdir: &Path) -> DebugArgs {
        match self {
            Debugger::Kernel => {
                DebugArgs { kernel_stub: Some(workdir.join(STUB_SOCKET)), guest_port: None }
            }
            Debugger::Test => DebugArgs {
                kernel_stub: None,
                guest_port: Some(SocketPort {
                    name: GDB_PORT.to_owned(),
                    socket: workdir.join(SERVER_SOCKET),
                }),
            },
        }
    }
}

/// The gdb that debugs code of `arch` on this machine.
fn gdb_for(arch: Arch, rust: bool) -> &'static str {
    match (arch == Arch::host(), rust) {
        (true, true) => "rust-gdb",
        (true, false) => "gdb",
        // rust-gdb runs `gdb`, which knows only the host's arch in Debian's build.
        (false, _) => "gdb-multiarch",
    }
}

/// `word` as a shell reads it back: as it is when it has nothing special, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn command_line(words: &[String]) -> String {
    words.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" ")
}

/// The lines telling the user how to attach gdb to the kernel of the VM that runs `tests`,
/// whose stub listens at `args`' socket.
pub(crate) fn kernel_announcement(
    kernel: &Kernel,
    arch: Arch,
    args: &DebugArgs,
    tests: &[&str],
    fetch_hint: &str,
) -> String {
    let stub = args.kernel_stub.as_deref().unwrap_or(Path::new("?"));
    let mut words = vec![gdb_for(arch, false).to_owned()];
    let symbols = kernel.debug_image();
    if let Some(image) = &symbols {
        words.push(image.display().to_string());
    }
    words.push("-ex".to_owned());
    words.push(format!("target remote {}", stub.display()));
    let mut text = format!(
        "vmtest: {GDB_ENV}=kernel: the VM for {} is paused before its kernel runs (timeouts \
         are suspended); attach with\n    {}\n  and `continue` to boot it",
        tests.join(", "),
        command_line(&words)
    );
    if symbols.is_none() {
        text.push_str(&format!(
            "\n  (no symbols: the store has no debug image of kernel {}; {fetch_hint})",
            kernel.name
        ));
    }
    text
}

/// How to get the debug image of `kernel`, for [`kernel_announcement`].
pub(crate) fn fetch_hint(kernel: &Kernel, arch: Arch) -> String {
    match (&kernel.store_dir, &kernel.package) {
        (Some(_), Some(_)) => format!(
            "`cargo vmtest kernel fetch {} --arch {arch} --debug-symbols` brings it",
            series(kernel.version.as_deref().unwrap_or(&kernel.name), kernel.flavour.as_deref())
        ),
        _ => "give gdb the vmlinux of the kernel's own build".to_owned(),
    }
}

/// The Debian series of a kernel release (`6.12.117+deb12-amd64` → `6.12`), with its flavour.
fn series(release: &str, flavour: Option<&str>) -> String {
    let numbers: Vec<&str> = release.split(|c: char| !c.is_ascii_digit()).take(2).collect();
    let series = numbers.join(".");
    match flavour {
        Some(flavour) => format!("{series}-{flavour}"),
        None => series,
    }
}

/// The lines telling the user how to attach gdb to the tests of a VM whose gdb server's port
/// is at `args`' socket; `exe` is the host's test binary and `tests` are `(shown name, function
/// path)` of the VM's tests.
pub(crate) fn test_announcement(
    exe: &Path,
    arch: Arch,
    args: &DebugArgs,
    tests: &[(&str, String)],
) -> String {
    let socket = args.guest_port.as_ref().map_or(Path::new("?"), |p| p.socket.as_path());
    let words = [
        gdb_for(arch, true).to_owned(),
        exe.display().to_string(),
        "-ex".to_owned(),
        "set remotetimeout 60".to_owned(),
        "-ex".to_owned(),
        format!("target remote {}", socket.display()),
    ];
    let breaks: Vec<String> =
        tests.iter().map(|(name, function)| format!("{name}: `break {function}`")).collect();
    format!(
        "vmtest: {GDB_ENV}=test: each test of this VM waits for a debugger before it runs \
         (timeouts are suspended); attach to each in turn with\n    {}\n  then set breakpoints \
         ({}) and `continue`",
        command_line(&words),
        breaks.join(", ")
    )
}

/// The variable that tells a test process in the guest where the gdb server is.
pub(crate) const GDBSERVER_ENV: &str = vmtest_init::protocol::GDBSERVER_ENV;
/// Where the gdb server is put in the guest.
pub(crate) const GUEST_GDBSERVER: &str = "/vmtest/gdbserver";

/// The gdb server for `arch`'s guests: the stored one, fetched when the store has none.
pub(crate) fn gdbserver(arch: Arch) -> Result<PathBuf, Error> {
    if arch != Arch::host() {
        return Err(Error::Env(format!(
            "{GDB_ENV}=test works for guests of the host's arch only: Debian's `{}` is \
             dynamically linked, and this {} host has no {arch} libraries to put beside it in \
             the guest; {GDB_ENV}=kernel works for {arch} guests",
            crate::userland::gdbserver::PACKAGE,
            Arch::host()
        )));
    }
    crate::userland::gdbserver::for_run(arch).map_err(|e| {
        Error::Env(format!(
            "{GDB_ENV}=test needs Debian's `{}` for {arch} guests: {e}; fetch it with \
             `cargo vmtest userland fetch --gdbserver --arch {arch}` (into the kernel store)",
            crate::userland::gdbserver::PACKAGE
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_takes_kernel_or_test() {
        assert_eq!(Debugger::parse(""), Ok(None));
        assert_eq!(Debugger::parse("kernel"), Ok(Some(Debugger::Kernel)));
        assert_eq!(Debugger::parse("test"), Ok(Some(Debugger::Test)));
        for bad in ["Kernel", "1", "gdb", "test "] {
            let err = Debugger::parse(bad).unwrap_err();
            assert!(err.starts_with(&format!("VMTEST_GDB={bad:?} is not one of")), "{err}");
            assert!(err.contains("`kernel`") && err.contains("`test`"), "{err}");
        }
    }

    #[test]
    fn each_debugger_adds_its_own_socket_in_the_vms_dir() {
        let kernel = Debugger::Kernel.vm_args(Path::new("/tmp/vm"));
        assert_eq!(kernel.kernel_stub.as_deref(), Some(Path::new("/tmp/vm/gdb-kernel.sock")));
        assert_eq!(kernel.guest_port, None);
        let test = Debugger::Test.vm_args(Path::new("/tmp/vm"));
        assert_eq!(test.kernel_stub, None);
        let port = test.guest_port.unwrap();
        assert_eq!(
            (port.name.as_str(), port.socket.as_path()),
            ("vmtest.gdb", Path::new("/tmp/vm/gdb-test.sock"))
        );
    }

    #[test]
    fn the_printed_commands_read_back_as_the_words_they_were() {
        assert_eq!(shell_word("/tmp/vmtest-1-a/gdb.sock"), "/tmp/vmtest-1-a/gdb.sock");
        assert_eq!(shell_word("target remote /x"), "'target remote /x'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        let other = if Arch::host() == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        assert_eq!(gdb_for(Arch::host(), false), "gdb");
        assert_eq!(gdb_for(Arch::host(), true), "rust-gdb");
        assert_eq!(gdb_for(other, true), "gdb-multiarch");
    }

    #[test]
    fn the_fetch_hint_names_the_series() {
        assert_eq!(series("6.12.117+deb12-amd64", None), "6.12");
        assert_eq!(series("6.1.0-57-cloud-amd64", Some("cloud")), "6.1-cloud");
    }

    #[test]
    fn the_kernel_announcement_names_the_stub_and_what_gives_symbols() {
        let (_dir, kernel) = crate::kernel::fixture_kernel("debug-announce");
        let args = Debugger::Kernel.vm_args(Path::new("/tmp/vm"));
        let text = kernel_announcement(&kernel, Arch::host(), &args, &["a", "b"], "HINT");
        assert!(text.contains("\n    gdb -ex 'target remote /tmp/vm/gdb-kernel.sock'\n"), "{text}");
        assert!(text.contains("the VM for a, b is paused"), "{text}");
        assert!(
            text.contains("no symbols: the store has no debug image") && text.ends_with("HINT)"),
            "{text}"
        );
    }

    #[test]
    fn the_test_announcement_names_the_binary_the_socket_and_the_tests() {
        let args = Debugger::Test.vm_args(Path::new("/tmp/vm"));
        let text = test_announcement(
            Path::new("/t/deps/suite-1234"),
            Arch::host(),
            &args,
            &[("works[6.12]", "suite::works".to_owned())],
        );
        assert!(
            text.contains(
                "\n    rust-gdb /t/deps/suite-1234 -ex 'set remotetimeout 60' \
                 -ex 'target remote /tmp/vm/gdb-test.sock'\n"
            ),
            "{text}"
        );
        assert!(text.contains("works[6.12]: `break suite::works`"), "{text}");
    }
}
