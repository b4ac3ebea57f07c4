//! Kernels: the store, name resolution, image headers and modules.

use std::path::PathBuf;

use crate::arch::Arch;

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Name as resolved.
    pub name: String,
    /// Architecture of the image.
    pub arch: Arch,
    /// Full version, when known.
    pub version: Option<String>,
    /// The bootable image.
    pub image: PathBuf,
    /// `lib/modules/<version>`, when known.
    pub modules_dir: Option<PathBuf>,
    /// The kernel's config, when known.
    pub config: Option<PathBuf>,
}

/// A kernel module file to load in the guest.
#[derive(Clone, Debug)]
pub struct ModuleFile {
    /// Module name.
    pub name: String,
    /// The file on the host.
    pub host_path: PathBuf,
}

/// Why a kernel could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No kernel matches.
    #[error("{0}")]
    NotFound(String),
}

/// Resolves a kernel spec (path or name), `VMTEST_KERNEL`, or the default.
pub fn resolve(spec: Option<&str>, arch: Arch) -> Result<Kernel, KernelError> {
    let spec = spec.map(str::to_owned).or_else(|| std::env::var("VMTEST_KERNEL").ok());
    let Some(spec) = spec else { return Err(KernelError::NotFound("no kernel".into())) };
    let image = PathBuf::from(&spec);
    if !image.is_file() {
        return Err(KernelError::NotFound(format!("kernel image {spec} does not exist")));
    }
    Ok(Kernel { name: spec, arch, version: None, image, modules_dir: None, config: None })
}

impl Kernel {
    /// Modules the harness needs that the kernel lacks built in.
    pub fn harness_modules(&self) -> Result<Vec<ModuleFile>, KernelError> {
        Ok(vec![])
    }

    /// The named modules and their dependencies, in load order.
    pub fn module_closure(&self, names: &[&str]) -> Result<Vec<ModuleFile>, KernelError> {
        if names.is_empty() {
            Ok(vec![])
        } else {
            Err(KernelError::NotFound("modules are not supported yet".into()))
        }
    }

    /// Checks that the image can run binaries of `arch`.
    pub fn check_arch(&self, _arch: Arch) -> Result<(), KernelError> {
        Ok(())
    }
}
