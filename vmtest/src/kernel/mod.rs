//! Kernels: the store, the Debian source that fills it, name resolution, image formats,
//! decompression and modules. The [`Kernel`] type and [`KernelError`] live here; each concern
//! has its file (see ARCHITECTURE.md's code map), and the store imports no fetching.
//!
//! A test names its kernel (`kernel = "6.12"`), or gives a path, or leaves it to
//! `VMTEST_KERNEL` and then the default, [`DEFAULT_KERNEL`]. [`resolve`] turns that into a
//! [`Kernel`]: an image whose architecture and version come from its header, plus its modules
//! dir and config when known. Names are looked up in the [`Store`], which
//! `cargo vmtest kernel fetch` fills from Debian's packages.

mod alias;
pub(crate) mod apt;
mod debug_symbols;
mod decompress;
mod entry;
mod fetch;
mod headers;
mod image;
pub(crate) mod layout;
mod manifest;
pub(crate) mod modules;
mod ondemand;
mod pvh;
mod resolve;
pub(crate) mod store;

#[cfg(feature = "cli")]
pub mod cli;

use std::path::{Path, PathBuf};

use crate::arch::Arch;

/// In a module file's path in `modules = [...]`, stands for the booted kernel's release.
const RELEASE_PLACEHOLDER: &str = "{release}";

pub use debug_symbols::DebugSymbolsFetched;
pub use fetch::Fetched;
pub use headers::HeadersFetched;
pub(crate) use image::image_info;
pub(crate) use modules::ModuleFile;
#[cfg(test)]
pub(crate) use ondemand::tests::fixture_kernel;
pub(crate) use ondemand::{ModuleProvider, Resolved};
#[cfg(test)]
pub(crate) use pvh::tests::kernel_with_pvh_entry;
pub use resolve::resolve;
pub use store::Store;

/// The kernel used when neither the test nor `VMTEST_KERNEL` names one.
pub const DEFAULT_KERNEL: &str = "6.12";

/// A kernel to boot: an image, and what goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Its name in the store (`6.12.117+deb12-amd64`, or a user's `bpf-next`), or the image's
    /// file name for a kernel given by path.
    pub(crate) name: String,
    /// The architecture its image boots on (from the header).
    pub(crate) arch: Arch,
    /// The kernel release (`uname -r`), when known.
    pub(crate) version: Option<String>,
    /// The bootable image (bzImage, arm64 `Image`).
    pub(crate) image: PathBuf,
    /// Its `lib/modules/<release>` dir, if it has modules.
    pub(crate) modules_dir: Option<PathBuf>,
    /// Its `.config`, if known.
    pub(crate) config: Option<PathBuf>,
    /// Debian's flavour (`cloud`, `rt`), if not the default one.
    pub(crate) flavour: Option<String>,
    /// The Debian package it came from.
    pub(crate) package: Option<String>,
    /// Its dir in the store; `None` for a kernel given by path.
    pub(crate) store_dir: Option<PathBuf>,
}

/// What can go wrong finding, fetching or reading a kernel, or fetching the guest userland.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// An I/O operation on a path failed.
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a kernel image vmtest can read.
    #[error("failed to read a kernel image header from {}: not a kernel image ({reason})", path.display())]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// No stored kernel has that name.
    #[error("{}", unknown_kernel_message(spec, *arch, store, stored, *fetchable))]
    UnknownKernel {
        /// The name asked for.
        spec: String,
        /// The architecture asked for.
        arch: Arch,
        /// The store's root.
        store: PathBuf,
        /// What is stored for that arch.
        stored: Vec<String>,
        /// Whether `fetch` accepts the name (a series such as `6.12`).
        fetchable: bool,
    },
    /// The kernel's image is for another architecture than the test binary.
    #[error(
        "failed to match kernel `{kernel}` to the test binary: the image {} is for {kernel_arch}, \
         the test binary is for {binary_arch}{}",
        image.display(),
        fetch_hint(kernel_spec_hint(kernel), *binary_arch)
    )]
    ArchMismatch {
        /// The kernel's name.
        kernel: String,
        /// Its image.
        image: PathBuf,
        /// The image's architecture.
        kernel_arch: Arch,
        /// The test binary's architecture.
        binary_arch: Arch,
    },
    /// A module name the kernel does not have.
    #[error(
        "failed to find module `{module}` in kernel `{kernel}`{}",
        if close.is_empty() { String::new() } else { format!(" (close matches: {})", close.join(", ")) }
    )]
    UnknownModule {
        /// The module asked for.
        module: String,
        /// The kernel.
        kernel: String,
        /// Module names that look like it.
        close: Vec<String>,
    },
    /// Modules were asked for but the kernel has no modules dir.
    #[error(
        "failed to load module `{module}`: kernel `{kernel}` has no modules dir \
         (for a kernel given by path set VMTEST_KERNEL_MODULES; for your own build \
         `cargo vmtest kernel add <name> --image <path> --modules <dir>`)"
    )]
    NoModules {
        /// The module asked for.
        module: String,
        /// The kernel.
        kernel: String,
    },
    /// The kernel can provide no driver the harness needs.
    #[error(
        "failed to find the {module} driver in kernel `{kernel}`: {symbol} is neither built in \
         nor a module in its modules dir; the harness needs it"
    )]
    MissingHarnessDriver {
        /// The module name.
        module: &'static str,
        /// The config symbol that builds it.
        symbol: &'static str,
        /// The kernel.
        kernel: String,
    },
    /// A module file in `modules = [...]` cannot be loaded.
    #[error("failed to load module file {}: {reason}", path.display())]
    ModuleFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A module file in `modules = [...]` was built for another kernel.
    #[error(
        "failed to load module file {}: it was built for kernel {built_for}, the test boots \
         `{kernel}` ({release}); build it against that kernel's tree \
         (`cargo vmtest kernel path {kernel} --build`)",
        path.display()
    )]
    ModuleForOtherKernel {
        /// The file.
        path: PathBuf,
        /// The release in its `vermagic`.
        built_for: String,
        /// The kernel the test boots.
        kernel: String,
        /// That kernel's release.
        release: String,
    },
    /// The store cannot provide the kernel's build tree.
    #[error("failed to fetch the build tree (headers) of kernel `{kernel}`: {reason}")]
    NoHeaders {
        /// The kernel.
        kernel: String,
        /// Why.
        reason: String,
    },
    /// The store cannot provide the kernel's debug image.
    #[error("failed to fetch the debug symbols of kernel `{kernel}`: {reason}")]
    NoDebugSymbols {
        /// The kernel.
        kernel: String,
        /// Why.
        reason: String,
    },
    /// A module's `.modinfo` could not be read.
    #[error("failed to read .modinfo of {}: {reason}", path.display())]
    Modinfo {
        /// The module file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A store entry's metadata is unreadable.
    #[error("failed to read kernel metadata {}: {reason}", path.display())]
    Metadata {
        /// The `kernel.meta` file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The stored kernel asked for is damaged (and no other stored kernel matches).
    #[error(
        "failed to use kernel `{name}` from the store: the entry {} is damaged ({reason}); \
         repair it with {repair}",
        entry.display()
    )]
    Damaged {
        /// The kernel's name.
        name: String,
        /// Its dir in the store.
        entry: PathBuf,
        /// What is wrong.
        reason: String,
        /// The command that repairs it.
        repair: String,
    },
    /// Neither `VMTEST_KERNELS`, `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("failed to locate the kernel store: set VMTEST_KERNELS (or XDG_CACHE_HOME or HOME)")]
    NoStore,
    /// A name `add` cannot use.
    #[error("failed to add kernel `{name}`: invalid name, {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `add` of a name already stored.
    #[error("failed to add kernel `{name}`: already in the store at {}; remove that dir first", path.display())]
    AlreadyStored {
        /// The name.
        name: String,
        /// Where it is.
        path: PathBuf,
    },
    /// `fetch` of something that is not a series.
    #[error(
        "failed to fetch `{spec}`: name a series such as `6.12` or `6.1`, optionally with a \
         Debian flavour (`6.1-cloud`)"
    )]
    BadFetchSpec {
        /// What was asked for.
        spec: String,
    },
    /// A tool fetching needs is not installed.
    #[error("failed to find `{tool}` on PATH: fetching kernels uses Debian's tools; install them with `apt-get install {package}`")]
    ToolMissing {
        /// The tool.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// apt knows no package for the series.
    #[error(
        "failed to find a Debian kernel package for `{spec}` on {arch}{}",
        if available.is_empty() { " (apt knows no linux-image packages for that arch and flavour; check the sources in /etc/apt)".to_owned() }
        else { format!("; series apt has for it: {}", available.join(", ")) }
    )]
    NoPackage {
        /// What was asked for.
        spec: String,
        /// The arch.
        arch: Arch,
        /// The series apt has.
        available: Vec<String>,
    },
    /// apt has no `busybox-static` for the arch.
    #[error(
        "failed to find Debian's busybox-static package for {arch} (apt knows none; check the \
         sources in /etc/apt)"
    )]
    NoUserlandPackage {
        /// The arch.
        arch: Arch,
    },
    /// A downloaded package is not laid out as expected.
    #[error("failed to unpack {package}: {reason}")]
    BadPackage {
        /// The package.
        package: String,
        /// What is wrong.
        reason: String,
    },
    /// An external command failed.
    #[error("failed to run `{command}`: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and the end of its stderr.
        reason: String,
    },
}

impl KernelError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> KernelError {
        KernelError::Io { action, path: path.to_owned(), source }
    }
}

fn fetch_command(spec: &str, arch: Arch) -> String {
    format!(
        "`cargo vmtest kernel fetch {spec} --arch {arch}` (`cargo install vmtest --features cli` \
         provides `cargo vmtest`; in the vmtest workspace: \
         `cargo xtask kernel fetch {spec} --arch {arch}`)"
    )
}

/// The series of a Debian kernel's name (`6.12.117+deb12-amd64` -> `6.12`), for hints.
fn kernel_spec_hint(name: &str) -> Option<String> {
    let mut parts = name.split(['.', '-', '+']);
    let (major, minor) = (parts.next()?, parts.next()?);
    let spec = format!("{major}.{minor}");
    resolve::Series::parse(&spec).map(|_| spec)
}

fn fetch_hint(spec: Option<String>, arch: Arch) -> String {
    match spec {
        Some(spec) => format!("; fetch a kernel for {arch} with {}", fetch_command(&spec, arch)),
        None => String::new(),
    }
}

fn unknown_kernel_message(
    spec: &str,
    arch: Arch,
    store: &Path,
    stored: &[String],
    fetchable: bool,
) -> String {
    let stored = if stored.is_empty() {
        format!("nothing is stored for {arch}")
    } else {
        format!("stored for {arch}: {}", stored.join(", "))
    };
    let how = if fetchable {
        format!("fetch it with {}", fetch_command(spec, arch))
    } else {
        format!(
            "register your own build with `cargo vmtest kernel add {spec} --image <path> \
             [--modules <dir>] [--config <path>]`, or fetch a Debian series with {}",
            fetch_command(DEFAULT_KERNEL, arch)
        )
    };
    format!(
        "failed to find kernel `{spec}` for {arch} in the store {} ({stored}); {how}",
        store.display()
    )
}

impl Kernel {
    /// A kernel given by the path of its image. Without `modules_dir`, a modules dir is looked
    /// for beside it: `<root>/lib/modules/<release>` for an image at `<root>/boot/` (an
    /// unpacked Debian package), `modules/` or `lib/modules/<release>` in the image's dir.
    pub(crate) fn from_image(
        image: &Path,
        modules_dir: Option<PathBuf>,
    ) -> Result<Kernel, KernelError> {
        let info = image_info(image)?;
        let dir = image.parent().unwrap_or(Path::new("."));
        let version = info.version.clone();
        let modules_dir = match modules_dir {
            Some(dir) => Some(dir),
            None => find_modules_near(dir, version.as_deref()),
        };
        let config = find_config_near(image, dir, version.as_deref());
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| image.display().to_string());
        Ok(Kernel {
            name,
            arch: info.arch,
            version,
            image: image.to_owned(),
            modules_dir,
            config,
            flavour: None,
            package: None,
            store_dir: None,
        })
    }

    /// Checks that this kernel boots binaries for `binary_machine` (the test binary's ELF
    /// machine); the error names both.
    pub(crate) fn check_arch(&self, binary_machine: Arch) -> Result<(), KernelError> {
        if self.arch == binary_machine {
            return Ok(());
        }
        Err(KernelError::ArchMismatch {
            kernel: self.name.clone(),
            image: self.image.clone(),
            kernel_arch: self.arch,
            binary_arch: binary_machine,
        })
    }

    /// The modules the guest must load before the harness's devices work: the
    /// [`modules::HARNESS_MODULES`] this kernel builds as modules (per its `modules.builtin` or config),
    /// with their dependencies, in load order. Empty when they are built in.
    pub(crate) fn harness_modules(&self) -> Result<Vec<ModuleFile>, KernelError> {
        let builtin = match &self.modules_dir {
            Some(dir) => modules::read_builtin(dir)?,
            None => None,
        };
        // The usual case (Debian's 6.12): `modules.builtin` lists every driver, and neither the
        // config nor the module tree needs reading.
        let all_built_in = builtin.as_ref().is_some_and(|builtin| {
            modules::HARNESS_MODULES.iter().all(|(module, _)| builtin.contains(*module))
        });
        if all_built_in {
            return Ok(Vec::new());
        }
        let config = self.config.as_deref().map(modules::read_config).transpose()?;
        let index = match &self.modules_dir {
            Some(dir) => Some(modules::ModuleIndex::scan(dir)?),
            None => None,
        };
        let mut wanted = Vec::new();
        for (module, provision) in
            modules::harness_provision(config.as_ref(), builtin.as_ref(), index.as_ref())
        {
            match provision {
                modules::Provision::BuiltIn => {}
                modules::Provision::Module => wanted.push(module),
                modules::Provision::Missing(symbol) => {
                    return Err(KernelError::MissingHarnessDriver {
                        module,
                        symbol,
                        kernel: self.name.clone(),
                    })
                }
            }
        }
        match (&index, wanted.is_empty()) {
            (_, true) => Ok(Vec::new()),
            (Some(index), false) => index.closure(&self.name, &wanted),
            (None, false) => unreachable!("a module is only wanted when its file was found"),
        }
    }

    /// The modules `wanted` with everything they depend on, dependencies first: names of this
    /// kernel's modules, and module files (an entry with a `/`: absolute paths, where
    /// `{release}` stands for this kernel's release), whose `vermagic` must name this kernel's
    /// release and whose `depends=` come from this kernel.
    pub(crate) fn modules_wanted(&self, wanted: &[&str]) -> Result<Vec<ModuleFile>, KernelError> {
        let (files, names): (Vec<&str>, Vec<&str>) = wanted.iter().partition(|w| w.contains('/'));
        let mut closure = self.module_closure(&names)?;
        for file in files {
            let file = match &self.version {
                Some(release) => file.replace(RELEASE_PLACEHOLDER, release),
                None => file.to_owned(),
            };
            let file = file.as_str();
            let path = Path::new(file);
            let bad = |reason: String| KernelError::ModuleFile { path: path.to_owned(), reason };
            if !path.is_file() {
                return Err(bad("no such file (is it built?)".to_owned()));
            }
            let info = modules::read_modinfo(path).map_err(|e| bad(e.to_string()))?;
            if let (Some(built_for), Some(release)) = (info.release(), self.version.as_deref()) {
                if built_for != release {
                    return Err(KernelError::ModuleForOtherKernel {
                        path: path.to_owned(),
                        built_for: built_for.to_owned(),
                        kernel: self.name.clone(),
                        release: release.to_owned(),
                    });
                }
            }
            let depends: Vec<&str> = info.depends.iter().map(String::as_str).collect();
            closure.extend(self.module_closure(&depends)?);
            let name = info.name.clone().unwrap_or_else(|| {
                let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                modules::normalize(
                    file_name.as_deref().unwrap_or(file).split('.').next().unwrap_or(file),
                )
            });
            closure.push(ModuleFile { name, host_path: path.to_owned() });
        }
        let mut seen = std::collections::HashSet::new();
        closure.retain(|module| seen.insert(module.name.clone()));
        Ok(closure)
    }

    /// The modules `names` with everything they depend on (from each `.modinfo`'s `depends=`),
    /// dependencies first. An unknown name is an error naming the kernel and close matches.
    pub(crate) fn module_closure(&self, names: &[&str]) -> Result<Vec<ModuleFile>, KernelError> {
        let Some(first) = names.first() else {
            return Ok(Vec::new());
        };
        let Some(dir) = &self.modules_dir else {
            return Err(KernelError::NoModules {
                module: modules::normalize(first),
                kernel: self.name.clone(),
            });
        };
        modules::ModuleIndex::scan(dir)?.closure(&self.name, names)
    }

    /// Its name in the store (`6.12.117+deb12-amd64`, or a user's `bpf-next`), or the image's
    /// file name for a kernel given by path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture its image boots on (from the image's header).
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The kernel release (`uname -r`), when known.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The bootable image (bzImage, arm64 `Image`).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Its `lib/modules/<release>` dir, if it has modules.
    pub fn modules_dir(&self) -> Option<&Path> {
        self.modules_dir.as_deref()
    }

    /// Its `.config`, if known.
    pub fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Its dir in the store; `None` for a kernel given by path.
    pub fn store_dir(&self) -> Option<&Path> {
        self.store_dir.as_deref()
    }

    /// A one-line description for listings and errors: `6.12.117+deb12-amd64` or
    /// `bpf-next (6.15.0-rc3+)`.
    pub fn describe(&self) -> String {
        match &self.version {
            Some(v) if *v != self.name => format!("{} ({v})", self.name),
            _ => self.name.clone(),
        }
    }
}

fn find_modules_near(dir: &Path, version: Option<&str>) -> Option<PathBuf> {
    let mut candidates = vec![dir.join("modules")];
    if let Some(v) = version {
        for base in [Some(dir), dir.parent()].into_iter().flatten() {
            candidates.push(base.join("lib/modules").join(v));
            candidates.push(base.join("usr/lib/modules").join(v));
        }
    }
    candidates.into_iter().find(|d| d.is_dir())
}

fn find_config_near(image: &Path, dir: &Path, version: Option<&str>) -> Option<PathBuf> {
    let mut candidates = vec![dir.join("config")];
    if let Some(v) = version {
        candidates.push(dir.join(format!("config-{v}")));
    }
    // In a kernel build tree: arch/<arch>/boot/<image> -> .config at the top.
    if image.components().rev().nth(1).is_some_and(|c| c.as_os_str() == "boot") {
        if let Some(tree) = image.ancestors().nth(4) {
            candidates.push(tree.join(".config"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Parses `data` as alias files and looks names taken from it up (`vmtest::__fuzz`).
pub(crate) fn fuzz_aliases(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let index = alias::AliasIndex::parse(&text);
    let builtin = alias::AliasIndex::parse_builtin_modinfo(data);
    for name in text.split_whitespace().take(16) {
        let name = alias::normalize(name);
        let _ = index.lookup(&name);
        let _ = builtin.lookup(&name);
    }
}

/// `98.3 MB`-style sizes for progress and listings.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
pub(crate) mod tests;
