//! `kernel fetch|list|add|verify`: the commands behind `cargo vmtest kernel` and, in the vmtest
//! workspace, `cargo xtask kernel`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::entry::{self, EntryError};
use super::manifest::Depth;
use super::{human_size, Fetched, Store};
use crate::arch::Arch;

/// Where the kernel store is, for every command's help.
pub(crate) const STORE_HELP: &str =
    "The store is $VMTEST_KERNELS, else $XDG_CACHE_HOME/vmtest/kernels, \
                                     else ~/.cache/vmtest/kernels.";

/// `kernel <command>`: manage the kernels vmtest boots.
#[derive(Debug, clap::Args)]
#[command(after_help = STORE_HELP)]
pub struct KernelArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
enum Command {
    /// Fetch the current Debian kernel of each series into the kernel store.
    Fetch {
        /// Debian kernel series: `6.12`, `6.1`, `6.1-cloud`.
        #[arg(required = true, value_name = "SERIES")]
        specs: Vec<String>,
        /// Guest architecture: x86_64, aarch64 (or arm64), riscv64 [default: this machine's].
        #[arg(long, default_value_t = Arch::host(), hide_default_value = true)]
        arch: Arch,
        /// Also fetch each kernel's build tree (Debian's linux-headers and linux-kbuild), to
        /// build out-of-tree modules against it (see `kernel path --build`).
        #[arg(long)]
        headers: bool,
        /// Also fetch each kernel's debug image (the `vmlinux` of Debian's
        /// linux-image-<release>-dbg, about 1 GB to download, 350-450 MB kept), for
        /// `VMTEST_GDB=kernel`.
        #[arg(long)]
        debug_symbols: bool,
    },
    /// Print where a stored kernel is: its image, or with `--build` its build tree (for
    /// `make -C <dir> M=$PWD modules`).
    Path {
        /// The kernel: a series (`6.12`) or a stored name.
        #[arg(value_name = "KERNEL")]
        spec: String,
        /// Guest architecture [default: this machine's].
        #[arg(long, default_value_t = Arch::host(), hide_default_value = true)]
        arch: Arch,
        /// The build tree rather than the image (fetched with `kernel fetch <series> --headers`).
        #[arg(long, conflicts_with = "debug_symbols")]
        build: bool,
        /// The debug image (`vmlinux` with symbols, fetched with `kernel fetch <series>
        /// --debug-symbols`) rather than the image.
        #[arg(long)]
        debug_symbols: bool,
    },
    /// Show the stored kernels: name, arch, version, flavour, size.
    List {
        /// Only the kernels of this architecture.
        #[arg(long)]
        arch: Option<Arch>,
    },
    /// Register your own build (its arch and version are read from the image header).
    Add {
        /// The name runs use to pick it (`kernel = "<name>"`, VMTEST_KERNEL).
        name: String,
        /// The kernel image (bzImage, Image, vmlinuz).
        #[arg(long)]
        image: PathBuf,
        /// Its modules: lib/modules/<release>, or an INSTALL_MOD_PATH holding one.
        #[arg(long)]
        modules: Option<PathBuf>,
        /// Its .config.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Hash every file of the stored kernels (or those named) and compare with the checksums
    /// recorded when they were added; exits 1 if any is damaged.
    Verify {
        /// Kernels to verify (default: all).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Only the kernels of this architecture.
        #[arg(long)]
        arch: Option<Arch>,
    },
}

/// Runs a parsed `kernel` command line.
pub fn run(program: &str, args: KernelArgs) -> ExitCode {
    crate::notice::install(crate::notice::to_stderr);
    match execute(program, args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(program: &str, command: Command) -> Result<ExitCode, super::KernelError> {
    let store = Store::open()?;
    match command {
        Command::Fetch { specs, arch, headers, debug_symbols } => {
            let mut failed = 0;
            for spec in &specs {
                let mut progress = |line: &str| eprintln!("[{spec} {arch}] {line}");
                let fetched = store.fetch(spec, arch, &mut progress).and_then(|fetched| {
                    if headers {
                        store.fetch_headers(fetched.kernel(), &mut progress)?;
                    }
                    if debug_symbols {
                        store.fetch_debug_symbols(fetched.kernel(), &mut progress)?;
                    }
                    Ok(fetched)
                });
                match fetched {
                    Ok(Fetched::Added(_) | Fetched::AlreadyPresent(_)) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Path { spec, arch, build, debug_symbols } => {
            let kernel = super::resolve(Some(&spec), arch)?;
            if debug_symbols {
                let Some(path) = kernel.debug_image() else {
                    eprintln!(
                        "error: the store has no debug image of kernel `{}` ({arch}); fetch it \
                         with `{program} kernel fetch {spec} --arch {arch} --debug-symbols`",
                        kernel.name
                    );
                    return Ok(ExitCode::FAILURE);
                };
                println!("{}", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            if !build {
                println!("{}", kernel.image.display());
                return Ok(ExitCode::SUCCESS);
            }
            match kernel.build_dir() {
                Some(dir) => {
                    println!("{}", dir.display());
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "error: the store has no build tree of kernel `{}` ({arch}); fetch it \
                         with `{program} kernel fetch {spec} --arch {arch} --headers`",
                        kernel.name
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::List { arch } => {
            let listed_arch = arch;
            let kernels = match arch {
                Some(arch) => store.list_arch(arch)?,
                None => store.list()?,
            };
            let mut out = format!("kernel store: {}\n", store.root().display());
            if kernels.is_empty() {
                let arch = arch.unwrap_or(Arch::host());
                out += &format!(
                    "no kernels{}; fetch one with `{program} kernel fetch {} --arch {arch}`\n",
                    if listed_arch.is_some() { format!(" for {arch}") } else { String::new() },
                    super::DEFAULT_KERNEL,
                );
                print_all(&out);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = kernels
                .iter()
                .map(|k| {
                    [
                        k.name.clone(),
                        k.arch.to_string(),
                        k.version.clone().unwrap_or_else(|| "-".into()),
                        k.flavour.clone().unwrap_or_else(|| "-".into()),
                        human_size(store.size_of(k)),
                    ]
                })
                .collect();
            let header = ["NAME", "ARCH", "VERSION", "FLAVOUR", "SIZE"].map(String::from);
            let mut widths = header.clone().map(|h| h.len());
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.len());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let line: Vec<String> =
                    row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
                out += line.join("  ").trim_end();
                out.push('\n');
            }
            print_all(&out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { names, arch } => verify(&store, &names, arch),
        Command::Add { name, image, modules, config } => {
            let kernel = store.add(&name, &image, modules.as_deref(), config.as_deref())?;
            println!(
                "added {} ({}, version {}) at {}",
                kernel.name,
                kernel.arch,
                kernel.version.as_deref().unwrap_or("unknown"),
                kernel.store_dir.as_deref().unwrap_or(&kernel.image).display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kernel verify`: one line per entry, `ok`, `legacy` (no checksums recorded: the entry is in
/// use by a run; sizes and header checked) or `DAMAGED` with the reason and the repair.
fn verify(
    store: &Store,
    names: &[String],
    arch: Option<Arch>,
) -> Result<ExitCode, super::KernelError> {
    let mut out = format!("kernel store: {}\n", store.root().display());
    let (mut damaged, mut seen) = (0, Vec::new());
    for arch in arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        for dir in store.entry_dirs(arch)? {
            let name =
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !names.is_empty() && !names.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            let line = match entry::open(&dir, Depth::Full) {
                Ok(opened) => match opened.manifest {
                    Some((files, bytes)) => {
                        format!(
                            "ok       {name} ({arch}): {files} files, {} hashed",
                            human_size(bytes)
                        )
                    }
                    None => format!(
                        "legacy   {name} ({arch}): no checksums recorded yet (a run is using it); \
                         its files are present and its image header reads"
                    ),
                },
                Err(EntryError::Damaged(reason)) => {
                    damaged += 1;
                    let package = super::layout::meta_field(&dir, "package");
                    let repair = entry::repair_hint(&dir, arch, package.as_deref());
                    format!("DAMAGED  {name} ({arch}): {reason}; repair it with {repair}")
                }
                Err(EntryError::Store(e)) => return Err(e),
            };
            out += &line;
            out.push('\n');
        }
    }
    if let Some(missing) = names.iter().find(|n| !seen.contains(n)) {
        print_all(&out);
        eprintln!("error: no kernel named `{missing}` in the store (see `kernel list`)");
        return Ok(ExitCode::FAILURE);
    }
    if seen.is_empty() {
        out += "no kernels\n";
    }
    print_all(&out);
    Ok(if damaged == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints to stdout; a closed pipe (`| head`) ends the output quietly.
pub(crate) fn print_all(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: KernelArgs,
    }

    fn p(args: &[&str]) -> Result<Command, String> {
        Cli::try_parse_from(std::iter::once("kernel").chain(args.iter().copied()))
            .map(|cli| cli.args.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            p(&["fetch", "6.1", "6.12", "--arch", "arm64"]).unwrap(),
            Command::Fetch {
                specs: vec!["6.1".into(), "6.12".into()],
                arch: Arch::Aarch64,
                headers: false,
                debug_symbols: false
            }
        );
        assert_eq!(
            p(&["fetch", "6.12"]).unwrap(),
            Command::Fetch {
                specs: vec!["6.12".into()],
                arch: Arch::host(),
                headers: false,
                debug_symbols: false
            }
        );
        assert_eq!(
            p(&["fetch", "6.12", "--debug-symbols"]).unwrap(),
            Command::Fetch {
                specs: vec!["6.12".into()],
                arch: Arch::host(),
                headers: false,
                debug_symbols: true
            }
        );
        assert_eq!(
            p(&["path", "6.12", "--debug-symbols"]).unwrap(),
            Command::Path {
                spec: "6.12".into(),
                arch: Arch::host(),
                build: false,
                debug_symbols: true
            }
        );
        assert!(p(&["path", "6.12", "--debug-symbols", "--build"]).is_err());
        assert_eq!(
            p(&["list", "--arch=x86_64"]).unwrap(),
            Command::List { arch: Some(Arch::X86_64) }
        );
        assert_eq!(
            p(&["add", "bpf-next", "--image", "bzImage", "--modules", "m"]).unwrap(),
            Command::Add {
                name: "bpf-next".into(),
                image: "bzImage".into(),
                modules: Some("m".into()),
                config: None
            }
        );
        assert_eq!(
            p(&["verify", "6.1.0-57-amd64", "--arch", "x86_64"]).unwrap(),
            Command::Verify { names: vec!["6.1.0-57-amd64".into()], arch: Some(Arch::X86_64) }
        );
        assert_eq!(p(&["verify"]).unwrap(), Command::Verify { names: vec![], arch: None });
    }

    #[test]
    fn help_describes_every_flag() {
        let help = p(&["fetch", "--help"]).unwrap_err();
        assert!(help.contains("Usage: kernel fetch"), "{help}");
        assert!(help.contains("--arch <ARCH>    Guest architecture"), "{help}");
        assert!(help.contains("--debug-symbols  Also fetch each kernel's debug image"), "{help}");
        assert!(p(&["add", "-h"]).unwrap_err().contains("--modules <MODULES>"));
    }

    #[test]
    fn usage_errors_are_clear() {
        let err = |args: &[&str]| p(args).unwrap_err();
        assert!(err(&[]).contains("Usage: kernel <COMMAND>"));
        assert!(err(&["fetch"]).contains("<SERIES>"));
        assert!(err(&["fetch", "6.1", "--arch"]).contains("a value is required for '--arch"));
        assert!(err(&["fetch", "6.1", "--arch", "sparc"]).contains("unknown architecture `sparc`"));
        assert!(err(&["fetch", "6.1", "--force"]).contains("unexpected argument '--force'"));
        assert!(err(&["add", "x"]).contains("--image"));
        assert!(err(&["add", "--image", "i"]).contains("<NAME>"));
        assert!(err(&["list", "extra"]).contains("unexpected argument 'extra'"));
        assert!(err(&["frobnicate"]).contains("unrecognized subcommand 'frobnicate'"));
        assert!(err(&["verify", "--arch", "sparc"]).contains("unknown architecture"));
        assert!(err(&["fetch", "6.1", "--arch", "x86_64", "--arch", "x86_64"])
            .contains("cannot be used multiple times"));
    }
}
