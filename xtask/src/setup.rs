//! `cargo xtask setup`: install what the test suite needs on a Debian machine.
//!
//! QEMU and the host tools the suite runs (`ip`, `strace`; clang and libbpf's headers for the
//! BPF programs; make, pahole and each arch's gcc-12 for the out-of-tree module) from Debian's
//! packages (when missing; needs root), cargo-nextest (the sharding test runs an archive with
//! it), the musl rustup targets, and the kernels the suite boots (with their build trees, for
//! the out-of-tree module) and the guest userland (Debian's static busybox) of each arch they
//! boot, fetched into the kernel store, with what the debugger tests attach with: the debug
//! images of [`DEBUG_KERNELS`] and the host arch's gdbserver.

use std::process::ExitCode;

use vmtest::arch::Arch;
use vmtest::kernel::Store;

use crate::exec::{have, run};

/// The programs and files the suite uses on the host (QEMU's system emulators; `ip` for the
/// network namespace tests; `strace` for the store's write-order test; clang and libbpf's
/// headers to build the kernel suite's BPF programs; make, pahole and each arch's gcc-12 to
/// build its out-of-tree module; gdb, and gdb-multiarch for other arches' guests, for the
/// `VMTEST_GDB` tests) and the Debian packages that provide them. A name with a `/` is a file,
/// others are programs on `PATH`.
const HOST_TOOLS: [(&str, &str); 12] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("ip", "iproute2"),
    ("strace", "strace"),
    ("clang", "clang"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("make", "make"),
    ("pahole", "dwarves"),
    ("x86_64-linux-gnu-gcc-12", "gcc-12"),
    ("aarch64-linux-gnu-gcc-12", "gcc-12-aarch64-linux-gnu"),
    ("gdb", "gdb"),
    ("gdb-multiarch", "gdb-multiarch"),
];

/// The kernels whose debug images (`vmlinux` with symbols) the `VMTEST_GDB=kernel` tests read.
pub const DEBUG_KERNELS: [(Arch, &str); 2] = [(Arch::X86_64, "6.12"), (Arch::Aarch64, "6.12")];

/// The kernels the workspace's suites boot, per architecture.
pub const SUITE_KERNELS: [(Arch, &[&str]); 2] =
    [(Arch::X86_64, &["6.1", "6.12"]), (Arch::Aarch64, &["6.12"])];

pub fn run_setup() -> ExitCode {
    match setup() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn setup() -> Result<(), String> {
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(tool, _)| {
            if tool.contains('/') {
                !std::path::Path::new(tool).is_file()
            } else {
                !have(tool)
            }
        })
        .map(|&(_, package)| package)
        .collect();
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "the host tools of the suite are missing (Debian packages {}); install them with \
                 `sudo apt-get install -y --no-install-recommends {}`",
                missing.join(", "),
                missing.join(" ")
            ));
        }
        eprintln!("setup: installing {}", missing.join(" "));
        run("apt-get", &["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
        install.extend(&missing);
        run("apt-get", &install)?;
    }
    if !have("cargo-nextest") {
        eprintln!("setup: installing cargo-nextest (cargo install cargo-nextest --locked)");
        run("cargo", &["install", "cargo-nextest", "--locked"])?;
    }
    if have("rustup") {
        let targets: Vec<&str> = Arch::ALL[..2].iter().map(|a| a.musl_target()).collect();
        let mut add = vec!["target", "add"];
        add.extend(&targets);
        run("rustup", &add)?;
    } else {
        eprintln!("setup: rustup not found; cross-arch runs need the musl targets installed");
    }
    let store = Store::open().map_err(|e| e.to_string())?;
    for (arch, series) in SUITE_KERNELS {
        for spec in series {
            let fetched = store
                .fetch(spec, arch, &mut |step| eprintln!("setup: kernel {spec} ({arch}): {step}"))
                .map_err(|e| e.to_string())?;
            eprintln!("setup: kernel {spec} ({arch}): {}", fetched.kernel().describe());
            store
                .fetch_headers(fetched.kernel(), &mut |step| {
                    eprintln!("setup: headers {spec} ({arch}): {step}")
                })
                .map_err(|e| e.to_string())?;
            if DEBUG_KERNELS.contains(&(arch, spec)) {
                store
                    .fetch_debug_symbols(fetched.kernel(), &mut |step| {
                        eprintln!("setup: debug symbols {spec} ({arch}): {step}")
                    })
                    .map_err(|e| e.to_string())?;
            }
        }
        let userland = store
            .fetch_userland(arch, &mut |step| eprintln!("setup: userland ({arch}): {step}"))
            .map_err(|e| e.to_string())?;
        eprintln!("setup: userland ({arch}): busybox {}", userland.version);
    }
    let arch = Arch::host();
    let gdbserver = store
        .fetch_gdbserver(arch, &mut |step| eprintln!("setup: gdbserver ({arch}): {step}"))
        .map_err(|e| e.to_string())?;
    eprintln!("setup: gdbserver ({arch}): {}", gdbserver.display());
    Ok(())
}
