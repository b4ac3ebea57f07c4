//! `userland fetch|list`: the commands behind `cargo vmtest userland` and, in the vmtest
//! workspace, `cargo xtask userland`.

use std::process::ExitCode;

use super::USERLAND_ENV;
use crate::arch::Arch;
use crate::kernel::cli::{option, parse_arch, print_all, split, UsageError};
use crate::kernel::{human_size, KernelError, Store};

fn usage(program: &str) -> String {
    format!(
        "usage:
  {program} userland fetch [--arch x86_64|aarch64]
      Fetch Debian's current busybox-static for the guest's arch into the kernel store: the
      shell and tools every guest gets (/bin/sh, ls, ip, mount, ...). --arch defaults to this
      machine's ({host}); arm64 is accepted for aarch64. A run fetches it by itself when it is
      missing and apt is installed.
  {program} userland list
      Show the stored userland of each arch.

{USERLAND_ENV}=none runs guests without it; {USERLAND_ENV}=<path> uses a static busybox of your own.",
        host = Arch::host()
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Fetch { arch: Arch },
    List,
}

/// Runs `args` (starting after `userland`); `program` is how the user invoked it
/// (`cargo vmtest`), for messages.
pub fn userland(program: &str, args: &[String]) -> ExitCode {
    match parse(args) {
        Ok(Command::Help) => {
            print_all(&format!("{}\n", usage(program)));
            ExitCode::SUCCESS
        }
        Ok(command) => match execute(program, command) {
            Ok(()) => ExitCode::SUCCESS,
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

fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(UsageError("missing a command: fetch or list".into()));
    };
    let parsed = match sub.as_str() {
        "help" | "-h" | "--help" => return Ok(Command::Help),
        "fetch" => split(rest, &["arch"]).and_then(|(pos, opts)| {
            if let Some(extra) = pos.first() {
                return Err(UsageError(format!(
                    "`fetch` takes no argument, got `{extra}` (choose the arch with --arch)"
                )));
            }
            Ok(Command::Fetch { arch: parse_arch(option(&opts, "arch"))?.unwrap_or(Arch::host()) })
        }),
        "list" => split(rest, &[]).and_then(|(pos, _)| match pos.first() {
            Some(extra) => Err(UsageError(format!("`list` takes no argument, got `{extra}`"))),
            None => Ok(Command::List),
        }),
        other => Err(UsageError(format!("unknown command `{other}`: expected fetch or list"))),
    };
    match parsed {
        Err(UsageError(m)) if m.is_empty() => Ok(Command::Help),
        other => other,
    }
}

fn execute(program: &str, command: Command) -> Result<(), KernelError> {
    let store = Store::open()?;
    match command {
        Command::Help => unreachable!("handled by the caller"),
        Command::Fetch { arch } => {
            let userland =
                store.fetch_userland(arch, &mut |line| eprintln!("[userland {arch}] {line}"))?;
            println!("busybox {} ({arch}) at {}", userland.version, userland.busybox.display());
        }
        Command::List => {
            let mut out = format!("kernel store: {}\n", store.root().display());
            for arch in Arch::ALL {
                match store.userland(arch)? {
                    Some(u) => {
                        let size = std::fs::metadata(&u.busybox).map_or(0, |m| m.len());
                        out += &format!(
                            "{arch}: busybox {} ({}), {} applets{}, {}\n",
                            u.version,
                            human_size(size),
                            u.applet_count,
                            if u.located { "" } else { " (dirs unknown)" },
                            u.dir.display()
                        );
                    }
                    None => {
                        out += &format!(
                            "{arch}: none; fetch it with `{program} userland fetch --arch {arch}`\n"
                        )
                    }
                }
            }
            print_all(&out);
        }
    }
    Ok(())
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
        assert_eq!(p(&["fetch"]).unwrap(), Command::Fetch { arch: Arch::host() });
        assert_eq!(
            p(&["fetch", "--arch", "arm64"]).unwrap(),
            Command::Fetch { arch: Arch::Aarch64 }
        );
        assert_eq!(p(&["list"]).unwrap(), Command::List);
        assert_eq!(p(&["fetch", "--help"]).unwrap(), Command::Help);
        assert!(p(&[]).unwrap_err().contains("missing a command"));
        assert!(p(&["fetch", "6.12"]).unwrap_err().contains("--arch"));
        assert!(p(&["fetch", "--arch", "sparc"]).unwrap_err().contains("`sparc`"));
        assert!(p(&["list", "--arch", "x86_64"]).unwrap_err().contains("unknown option"));
        assert!(p(&["install"]).unwrap_err().contains("unknown command `install`"));
    }
}
