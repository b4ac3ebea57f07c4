//! Builds the kernel suite's out-of-tree module (`tests/kernel-suite/kmod/`) against the build
//! tree of each suite kernel of an arch, as a module author would:
//! `make -C "$(cargo vmtest kernel path <kernel> --build)" M=<dir> modules`, one dir per kernel
//! release under `kmod/build/<release>/`, which the suite's tests bring into the guest
//! (`files = ["kmod"]`) and load with `vmtest::load_module`.
//!
//! A kernel whose build tree the store lacks (`cargo xtask setup` fetches them) or an arch
//! whose compiler is missing is skipped with a note, and the tests that need the module skip
//! naming it; with `VMTEST_REQUIRE_ALL=1` (CI) either is an error.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmtest::arch::Arch;

use crate::exec::{have, status};
use crate::setup::SUITE_KERNELS;

/// The module's sources, copied into each build dir.
const SOURCES: [&str; 2] = ["kst_chardev.c", "Kbuild"];

/// The compiler each arch's Debian build tree asks for (its `.kernelvariables`), and the
/// Debian package that provides it.
fn compiler(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Aarch64 => ("aarch64-linux-gnu-gcc-12", "gcc-12-aarch64-linux-gnu"),
        _ => ("x86_64-linux-gnu-gcc-12", "gcc-12"),
    }
}

/// Builds the module for every suite kernel of `arch`.
pub fn build_suite_modules(arch: Arch) -> Result<(), String> {
    let required = std::env::var("VMTEST_REQUIRE_ALL").as_deref() == Ok("1");
    let kmod = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/kernel-suite/kmod");
    let kmod =
        kmod.canonicalize().map_err(|e| format!("failed to find {}: {e}", kmod.display()))?;
    let missing = |what: String| -> Result<(), String> {
        if required {
            Err(format!("VMTEST_REQUIRE_ALL=1 but {what}"))
        } else {
            eprintln!("xtask: kmod: skipped: {what}; its tests will skip");
            Ok(())
        }
    };
    let (cc, package) = compiler(arch);
    if !have(cc) || !have("pahole") || !have("make") {
        return missing(format!(
            "building modules for {arch} needs {cc}, pahole and make \
             (`apt-get install --no-install-recommends {package} dwarves make`)"
        ));
    }
    for (suite_arch, series) in SUITE_KERNELS {
        if suite_arch != arch {
            continue;
        }
        for spec in series {
            let kernel = vmtest::kernel::resolve(Some(spec), arch).map_err(|e| e.to_string())?;
            let Some(tree) = kernel.build_dir() else {
                missing(format!(
                    "the store has no build tree of {} (`cargo xtask kernel fetch {spec} --arch \
                     {arch} --headers`)",
                    kernel.name()
                ))?;
                continue;
            };
            let dir = kmod.join("build").join(kernel.name());
            build(&kmod, &dir, &tree)?;
            eprintln!("xtask: kmod: built {}", dir.join("kst_chardev.ko").display());
        }
    }
    Ok(())
}

/// Copies the sources into `dir` and runs kbuild there against `tree`.
fn build(sources: &Path, dir: &Path, tree: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    for name in SOURCES {
        let (from, to) = (sources.join(name), dir.join(name));
        // Unchanged sources keep their mtime, so make rebuilds only what changed.
        if std::fs::read(&from).ok() != std::fs::read(&to).ok() {
            std::fs::copy(&from, &to).map_err(|e| {
                format!("failed to copy {} to {}: {e}", from.display(), to.display())
            })?;
        }
    }
    status(
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(tree)
            .arg(format!("M={}", dir.display()))
            .arg("modules"),
        &format!("make -C {} M={} modules", tree.display(), dir.display()),
    )
}
