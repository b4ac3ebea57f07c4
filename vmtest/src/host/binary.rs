//! A test binary and the vmtest tests it holds, decoded from their ELF records: the running
//! process's through its registry, or, without executing it, from the file's section (a binary
//! of another architecture alike).

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::meta::{self, TestMeta};
use crate::Error;

/// A test binary and the vmtest tests it holds: what the engine runs.
#[derive(Clone, Debug)]
pub(crate) struct TestBinary {
    /// The binary; it becomes the guest's `/init`.
    pub path: PathBuf,
    /// Its architecture (from its ELF header), which the guest must have.
    pub arch: Arch,
    /// Its tests, in any order.
    pub tests: Vec<TestMeta>,
    /// Its crate's root file, as recorded by `vmtest::main!()`.
    pub crate_root: Option<String>,
    /// Its crate's directory when it was built, as recorded by `vmtest::main!()`.
    pub manifest_dir: Option<String>,
}

impl TestBinary {
    /// The running binary, with the tests registered in it; `crate_root` is the record
    /// `vmtest::main!()` made.
    pub(crate) fn current(crate_root: &[u8]) -> Result<TestBinary, Error> {
        let path =
            std::env::current_exe().map_err(|e| Error::io("failed to find the test binary", e))?;
        let section = meta::decode(crate_root).unwrap_or_default();
        let tests = crate::registry::decode_all().map_err(|e| {
            Error::Config(format!("failed to read the vmtest tests of {}: {e}", path.display()))
        })?;
        Ok(TestBinary {
            path,
            arch: Arch::host(),
            tests,
            crate_root: section.crate_root,
            manifest_dir: section.manifest_dir,
        })
    }

    /// Reads the binary at `path` without executing it: its architecture from the ELF header,
    /// its tests from the `vmtest_tests` section. `None` when it has no such section (it was
    /// not built with vmtest).
    pub(crate) fn read(path: &Path) -> Result<Option<TestBinary>, Error> {
        let arch = elf_arch(path)?;
        let section = crate::image::elf::read_section(path, meta::SECTION)
            .map_err(|e| Error::Config(e.to_string()))?;
        let Some(section) = section else { return Ok(None) };
        let decoded = meta::decode(&section).map_err(|e| {
            Error::Config(format!(
                "failed to read the vmtest tests of {} (section {}): {e}",
                path.display(),
                meta::SECTION
            ))
        })?;
        Ok(Some(TestBinary {
            path: path.to_owned(),
            arch,
            tests: decoded.tests,
            crate_root: decoded.crate_root,
            manifest_dir: decoded.manifest_dir,
        }))
    }
}

/// The architecture of the ELF file at `path`.
pub(crate) fn elf_arch(path: &Path) -> Result<Arch, Error> {
    let info = crate::image::elf::read_elf(path).map_err(|e| Error::Config(e.to_string()))?;
    Arch::from_elf_machine(info.machine).ok_or_else(|| {
        Error::Config(format!(
            "{} is for ELF machine {}, which vmtest cannot boot",
            path.display(),
            info.machine
        ))
    })
}
