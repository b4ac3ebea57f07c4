//! The guest's image: the one builder of the initramfs and the plan inside it, for the host
//! harness, the plain runner and the benchmarks alike.
//!
//! An image has two parts. The [`Base`] is what every boot of one VM configuration shares: the
//! init binary (`/init`, with its libraries), `/dev/console`, the modules the harness itself
//! needs, and the userland beneath everything. The [`Payload`] is what one run brings: the
//! program it runs when that is not the init (`/main`), the `files = [...]` fixtures, the
//! working directory, the modules its tests ask for, and the tests with their environment,
//! which become the [`Plan`] at [`protocol::PLAN_PATH`]. [`GuestImage`] writes the two as one
//! archive; the base alone ([`Base::write`]) is what a guest boots before it has a payload.
//!
//! A warm VM (see `vm::warm`) boots the base with a plan that stops at the restore point
//! ([`Base::write_warm`]) and receives the payload, with its own plan, as a second archive
//! ([`Payload::write_warm`]) that the guest unpacks over the first.
//!
//! Where the parts meet, the payload wins: an entry of the base is left out where the payload
//! has one at its path (as the later addition won when the image was built in one go), and
//! the userland yields to both.

use std::io::Write;
use std::path::Path;

use vmtest_init::protocol::{self, FileLimits, Plan, PlannedTest, ShellWhen};

use crate::image::fixtures;
use crate::image::initramfs::Initramfs;
use crate::kernel::ModuleFile;
use crate::userland::GuestUserland;
use crate::Error;

/// Where the guest finds modules inside the initramfs.
pub(crate) const GUEST_MODULE_DIR: &str = "/vmtest/modules";

/// The guest's init, always at `/init`.
const INIT_PATH: &str = "/init";

/// Whether the guest's copies of the programs it runs (the init, `/main`) keep their DWARF
/// debug sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DebugInfo {
    /// As built: a backtrace printed in the guest names files and lines.
    Keep,
    /// Without them (see [`crate::image::elf::strip`]): a smaller image that the guest unpacks
    /// sooner; a backtrace names functions but no files or lines.
    Strip,
}

/// Chooses the guest's copies' debug sections: `keep`, `strip`, or (unset) keep them only when
/// a backtrace is asked for.
pub(crate) const DEBUG_INFO_ENV: &str = "VMTEST_DEBUG_INFO";

impl DebugInfo {
    /// What [`DEBUG_INFO_ENV`] says; unset or empty: [`DebugInfo::Keep`] when a backtrace is
    /// asked for (`RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` set to anything but `0`, as the
    /// standard library reads them), else [`DebugInfo::Strip`]. Another value is an error
    /// naming the allowed ones.
    pub(crate) fn from_env() -> Result<DebugInfo, Error> {
        let value = std::env::var_os(DEBUG_INFO_ENV).unwrap_or_default();
        let asked = |name| std::env::var_os(name).is_some_and(|value| value != "0");
        match value.to_str() {
            Some("keep") => Ok(DebugInfo::Keep),
            Some("strip") => Ok(DebugInfo::Strip),
            Some("") if asked("RUST_BACKTRACE") || asked("RUST_LIB_BACKTRACE") => {
                Ok(DebugInfo::Keep)
            }
            Some("") => Ok(DebugInfo::Strip),
            _ => Err(Error::Env(format!(
                "{DEBUG_INFO_ENV}={value:?} is not one of keep, strip (or unset: keep only when \
                 RUST_BACKTRACE asks for backtraces)"
            ))),
        }
    }
}

/// What every boot of one VM configuration shares: init, `/dev/console`, the harness's
/// modules, the userland.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    /// The init binary with its libraries, `/dev/console`, the harness's modules.
    tree: Initramfs,
    /// The plan's entries for the harness's modules (wanted by no test), in load order.
    modules: Vec<protocol::Module>,
    /// Laid beneath everything else.
    userland: GuestUserland,
}

impl Base {
    /// A base that boots `init` (with its libraries) as `/init`, over `userland`.
    pub(crate) fn new(
        init: &Path,
        userland: GuestUserland,
        debug_info: DebugInfo,
    ) -> Result<Base, Error> {
        let mut tree = Initramfs::new();
        tree.add_elf_with_libraries(INIT_PATH, init)?;
        if debug_info == DebugInfo::Strip {
            tree.strip_debug_info(INIT_PATH);
        }
        // The kernel opens /dev/console for PID 1's stdio before devtmpfs is mounted.
        tree.add_char_device("/dev/console", 5, 1, 0o600)?;
        Ok(Base { tree, modules: Vec::new(), userland })
    }

    /// Adds a module the harness itself needs (loaded before any test, wanted by none).
    pub(crate) fn add_module(&mut self, module: &ModuleFile) -> Result<(), Error> {
        self.modules.push(add_module(&mut self.tree, module, Vec::new())?);
        Ok(())
    }

    /// The base alone, the userland beneath it: no plan, nothing of a run.
    pub(crate) fn initramfs(&self) -> Result<Initramfs, Error> {
        let mut tree = self.tree.clone();
        self.userland.add_beneath(&mut tree)?;
        Ok(tree)
    }

    /// Writes [`Self::initramfs`] to `path`; returns its size.
    pub(crate) fn write(&self, path: &Path) -> Result<u64, Error> {
        write_file(&self.initramfs()?, path)
    }

    /// Writes the image a warm VM boots to `path`: the base with a plan that loads the
    /// harness's modules and stops at the restore point, no tests. Returns its size.
    pub(crate) fn write_warm(&self, path: &Path) -> Result<u64, Error> {
        let mut tree = self.tree.clone();
        let mut plan = Plan::new(self.modules.clone(), Vec::new());
        plan.restore_point = true;
        tree.add_bytes(protocol::PLAN_PATH, encode_plan(&plan)?, 0o644)?;
        self.userland.add_beneath(&mut tree)?;
        write_file(&tree, path)
    }
}

/// What one run brings: its program, fixtures, working directory, modules and tests.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    /// The program (when it is not the init), fixtures and the tests' modules.
    tree: Initramfs,
    /// The plan's entries for the tests' modules, in load order.
    modules: Vec<protocol::Module>,
    tests: Vec<PlannedTest>,
    files: FileLimits,
    /// The tests' working directory, made (mode 0755) unless the image has it.
    cwd: String,
    shell: ShellWhen,
}

impl Payload {
    /// An empty payload whose tests run in `cwd`, with the default file limits.
    pub(crate) fn new(cwd: &str) -> Payload {
        Payload {
            tree: Initramfs::new(),
            modules: Vec::new(),
            tests: Vec::new(),
            files: FileLimits::default(),
            cwd: cwd.to_owned(),
            shell: ShellWhen::Never,
        }
    }

    /// Adds the ELF program `host_path` (with its libraries) at `guest_path`, for tests to run
    /// other than the init (the plain runner's `/main`, a gdb server).
    pub(crate) fn add_program(
        &mut self,
        guest_path: &str,
        host_path: &Path,
        debug_info: DebugInfo,
    ) -> Result<(), Error> {
        self.tree.add_elf_with_libraries(guest_path, host_path)?;
        if debug_info == DebugInfo::Strip {
            self.tree.strip_debug_info(guest_path);
        }
        Ok(())
    }

    /// Adds a `files = [...]` fixture at its host path (see [`fixtures::add`]).
    pub(crate) fn add_fixture(&mut self, path: &str) -> Result<(), Error> {
        fixtures::add(&mut self.tree, path)
    }

    /// Adds a module the tests `wanted_by` (ids) ask for; loaded after the base's.
    pub(crate) fn add_module(
        &mut self,
        module: &ModuleFile,
        wanted_by: Vec<u32>,
    ) -> Result<(), Error> {
        self.modules.push(add_module(&mut self.tree, module, wanted_by)?);
        Ok(())
    }

    /// Adds a test to run, after those added before it.
    pub(crate) fn add_test(&mut self, test: PlannedTest) {
        self.tests.push(test);
    }

    /// Bounds the files the guest sends after each test.
    pub(crate) fn set_file_limits(&mut self, files: FileLimits) {
        self.files = files;
    }

    /// When the guest offers an interactive shell.
    pub(crate) fn set_shell(&mut self, shell: ShellWhen) {
        self.shell = shell;
    }

    /// The plan over `base`: the base's modules, then the payload's; the tests; the limits.
    pub(crate) fn plan(&self, base: &Base) -> Plan {
        self.plan_with(base.modules.iter().chain(&self.modules).cloned().collect())
    }

    /// The plan with `modules` to load: the tests, the limits, the shell.
    fn plan_with(&self, modules: Vec<protocol::Module>) -> Plan {
        let mut plan = Plan::new(modules, self.tests.clone());
        plan.files = self.files;
        plan.shell = self.shell;
        plan
    }

    /// Writes the archive a warm VM unpacks over `base` (booted with [`Base::write_warm`],
    /// whose modules are loaded already) to `path`: the payload's files, the working
    /// directory unless either part has it, and a plan with the payload's modules and the
    /// tests. Returns its size.
    pub(crate) fn write_warm(&self, base: &Base, path: &Path) -> Result<u64, Error> {
        let mut tree = self.tree.clone();
        let cwd = &self.cwd;
        if cwd != "/" && !tree.contains(cwd) && !base.initramfs()?.contains(cwd) {
            tree.add_dir(cwd, 0o755)?;
        }
        let plan = self.plan_with(self.modules.clone());
        tree.add_bytes(protocol::PLAN_PATH, encode_plan(&plan)?, 0o644)?;
        write_file(&tree, path)
    }
}

fn encode_plan(plan: &Plan) -> Result<Vec<u8>, Error> {
    protocol::encode_frame(plan)
        .map_err(|e| Error::Config(format!("failed to encode the guest's plan: {e}")))
}

/// A base and a payload, written as one archive.
#[derive(Clone, Debug)]
pub(crate) struct GuestImage {
    pub(crate) base: Base,
    pub(crate) payload: Payload,
}

impl GuestImage {
    /// The whole image: the payload over the base, the working directory, the encoded plan at
    /// [`protocol::PLAN_PATH`], the userland beneath.
    pub(crate) fn initramfs(&self) -> Result<Initramfs, Error> {
        let mut tree = self.payload.tree.clone();
        tree.add_beneath(self.base.tree.clone());
        let cwd = &self.payload.cwd;
        if cwd != "/" && !tree.contains(cwd) {
            tree.add_dir(cwd, 0o755)?;
        }
        tree.add_bytes(protocol::PLAN_PATH, encode_plan(&self.payload.plan(&self.base))?, 0o644)?;
        self.base.userland.add_beneath(&mut tree)?;
        Ok(tree)
    }

    /// Writes [`Self::initramfs`] to `path`; returns its size.
    pub(crate) fn write(&self, path: &Path) -> Result<u64, Error> {
        write_file(&self.initramfs()?, path)
    }
}

/// Adds `module` under [`GUEST_MODULE_DIR`] by its file name; returns its plan entry.
fn add_module(
    tree: &mut Initramfs,
    module: &ModuleFile,
    wanted_by: Vec<u32>,
) -> Result<protocol::Module, Error> {
    let file = module.host_path.file_name().map(|f| f.to_string_lossy().into_owned());
    let guest = format!("{GUEST_MODULE_DIR}/{}", file.unwrap_or_else(|| module.name.clone()));
    tree.add_host_file(&guest, &module.host_path, 0o644)?;
    Ok(protocol::Module { name: module.name.clone(), path: guest, wanted_by })
}

/// Writes `tree` as a newc archive to a new file at `path`; returns its size.
fn write_file(tree: &Initramfs, path: &Path) -> Result<u64, Error> {
    let file = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))?;
    let mut out = std::io::BufWriter::new(file);
    let size = tree.write_to(&mut out)?;
    out.flush().map_err(|e| Error::io(format!("failed to write {}", path.display()), e))?;
    Ok(size)
}

#[cfg(test)]
mod tests;
