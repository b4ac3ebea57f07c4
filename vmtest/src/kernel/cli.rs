//! `kernel fetch|list|add|verify`: the commands behind `cargo vmtest kernel` and, in the vmtest
//! workspace, `cargo xtask kernel`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::entry::{self, EntryError};
use super::manifest::Depth;
use super::{human_size, Fetched, Store};
use crate::arch::Arch;

fn usage(program: &str) -> String {
    format!(
        "usage:
  {program} kernel fetch <series>... [--arch x86_64|aarch64]
      Fetch the current Debian kernel of each series (`6.12`, `6.1`, `6.1-cloud`) into the
      kernel store. --arch defaults to this machine's ({host}); arm64 is accepted for aarch64.
  {program} kernel list [--arch <arch>]
      Show the stored kernels: name, arch, version, flavour, size.
  {program} kernel add <name> --image <path> [--modules <dir>] [--config <path>]
      Register your own build (its arch and version are read from the image header).
      --modules is lib/modules/<release> or an INSTALL_MOD_PATH holding one.
  {program} kernel verify [<name>...] [--arch <arch>]
      Hash every file of the stored kernels (or those named) and compare with the checksums
      recorded when they were added; names each damaged one and the command that repairs it
      (`kernel fetch <series>` for Debian's). Exits 1 if any is damaged.

The store is $VMTEST_KERNELS, else $XDG_CACHE_HOME/vmtest/kernels, else ~/.cache/vmtest/kernels.",
        host = Arch::host()
    )
}

/// A command line that does not parse.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

/// Runs `args` (starting after `kernel`); `program` is how the user invoked it
/// (`cargo vmtest`), for messages.
pub fn kernel(program: &str, args: &[String]) -> ExitCode {
    match parse(args) {
        Ok(Command::Help) => {
            print_all(&format!("{}\n", usage(program)));
            ExitCode::SUCCESS
        }
        Ok(command) => match execute(program, command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(UsageError(message)) => {
            eprintln!("error: {message}\n\n{}", usage(program));
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Fetch { specs: Vec<String>, arch: Arch },
    List { arch: Option<Arch> },
    Add { name: String, image: PathBuf, modules: Option<PathBuf>, config: Option<PathBuf> },
    Verify { names: Vec<String>, arch: Option<Arch> },
}

/// `--flag value` pairs, in order.
pub(crate) type Options<'a> = Vec<(&'a str, &'a str)>;

/// Splits arguments into positionals and `--flag value` / `--flag=value` options.
pub(crate) fn split<'a>(
    args: &'a [String],
    flags: &[&str],
) -> Result<(Vec<&'a str>, Options<'a>), UsageError> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "-h" || arg == "--help" {
            return Err(UsageError(String::new()));
        }
        if let Some(flag) = arg.strip_prefix("--") {
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (flag, None),
            };
            if !flags.contains(&flag) {
                return Err(UsageError(format!("unknown option `--{flag}`")));
            }
            let value = match value {
                Some(v) => v,
                None => {
                    iter.next().ok_or_else(|| UsageError(format!("`--{flag}` needs a value")))?
                }
            };
            if options.iter().any(|(f, _)| *f == flag) {
                return Err(UsageError(format!("`--{flag}` given twice")));
            }
            options.push((flag, value));
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(UsageError(format!("unknown option `{arg}`")));
        } else {
            positional.push(arg.as_str());
        }
    }
    Ok((positional, options))
}

pub(crate) fn option<'a>(options: &[(&str, &'a str)], flag: &str) -> Option<&'a str> {
    options.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v)
}

pub(crate) fn parse_arch(value: Option<&str>) -> Result<Option<Arch>, UsageError> {
    value.map(|v| v.parse::<Arch>().map_err(|e| UsageError(e.to_string()))).transpose()
}

fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(UsageError("missing a command: fetch, list, add or verify".into()));
    };
    let parsed = match sub.as_str() {
        "help" | "-h" | "--help" => return Ok(Command::Help),
        "fetch" => split(rest, &["arch"]).and_then(|(pos, opts)| {
            if pos.is_empty() {
                return Err(UsageError("`fetch` needs at least one series, e.g. `6.12`".into()));
            }
            Ok(Command::Fetch {
                specs: pos.into_iter().map(str::to_owned).collect(),
                arch: parse_arch(option(&opts, "arch"))?.unwrap_or(Arch::host()),
            })
        }),
        "list" => split(rest, &["arch"]).and_then(|(pos, opts)| {
            if let Some(extra) = pos.first() {
                return Err(UsageError(format!("`list` takes no argument, got `{extra}`")));
            }
            Ok(Command::List { arch: parse_arch(option(&opts, "arch"))? })
        }),
        "add" => split(rest, &["image", "modules", "config"]).and_then(|(pos, opts)| {
            let [name] = pos.as_slice() else {
                return Err(UsageError(format!(
                    "`add` takes exactly one name, got {}",
                    if pos.is_empty() { "none".to_owned() } else { pos.join(" ") }
                )));
            };
            let image = option(&opts, "image")
                .ok_or_else(|| UsageError("`add` needs `--image <path>`".into()))?;
            Ok(Command::Add {
                name: (*name).to_owned(),
                image: image.into(),
                modules: option(&opts, "modules").map(PathBuf::from),
                config: option(&opts, "config").map(PathBuf::from),
            })
        }),
        "verify" => split(rest, &["arch"]).and_then(|(pos, opts)| {
            Ok(Command::Verify {
                names: pos.into_iter().map(str::to_owned).collect(),
                arch: parse_arch(option(&opts, "arch"))?,
            })
        }),
        other => Err(UsageError(format!(
            "unknown command `{other}`: expected fetch, list, add or verify"
        ))),
    };
    match parsed {
        Err(UsageError(m)) if m.is_empty() => Ok(Command::Help),
        other => other,
    }
}

fn execute(program: &str, command: Command) -> Result<ExitCode, super::KernelError> {
    let store = Store::open()?;
    match command {
        Command::Help => unreachable!("handled by the caller"),
        Command::Fetch { specs, arch } => {
            let mut failed = 0;
            for spec in &specs {
                let mut progress = |line: &str| eprintln!("[{spec} {arch}] {line}");
                match store.fetch(spec, arch, &mut progress) {
                    Ok(Fetched::Added(_) | Fetched::AlreadyPresent(_)) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
                    let package = super::store::meta_field(&dir, "package");
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

    fn p(args: &[&str]) -> Result<Command, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args).map_err(|e| e.0)
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            p(&["fetch", "6.1", "6.12", "--arch", "arm64"]).unwrap(),
            Command::Fetch { specs: vec!["6.1".into(), "6.12".into()], arch: Arch::Aarch64 }
        );
        assert_eq!(
            p(&["fetch", "6.12"]).unwrap(),
            Command::Fetch { specs: vec!["6.12".into()], arch: Arch::host() }
        );
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
        assert_eq!(p(&["fetch", "--help"]).unwrap(), Command::Help);
        assert_eq!(
            p(&["verify", "6.1.0-57-amd64", "--arch", "x86_64"]).unwrap(),
            Command::Verify { names: vec!["6.1.0-57-amd64".into()], arch: Some(Arch::X86_64) }
        );
        assert_eq!(p(&["verify"]).unwrap(), Command::Verify { names: vec![], arch: None });
    }

    #[test]
    fn usage_errors_are_clear() {
        assert!(p(&[]).unwrap_err().contains("missing a command"));
        assert!(p(&["fetch"]).unwrap_err().contains("at least one series"));
        assert!(p(&["fetch", "6.1", "--arch"]).unwrap_err().contains("`--arch` needs a value"));
        assert!(p(&["fetch", "6.1", "--arch", "sparc"])
            .unwrap_err()
            .contains("unknown architecture `sparc`"));
        assert!(p(&["fetch", "6.1", "--force"]).unwrap_err().contains("unknown option `--force`"));
        assert!(p(&["add", "x"]).unwrap_err().contains("--image"));
        assert!(p(&["add", "--image", "i"]).unwrap_err().contains("exactly one name"));
        assert!(p(&["list", "extra"]).unwrap_err().contains("no argument"));
        assert!(p(&["frobnicate"]).unwrap_err().contains("unknown command `frobnicate`"));
        assert!(p(&["verify", "--arch", "sparc"]).unwrap_err().contains("unknown architecture"));
    }
}
