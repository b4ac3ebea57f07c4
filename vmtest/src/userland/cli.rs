//! `userland fetch|list`: the commands behind `cargo vmtest userland` and, in the vmtest
//! workspace, `cargo xtask userland`.

use std::process::ExitCode;

use super::USERLAND_ENV;
use crate::arch::Arch;
use crate::kernel::cli::{print_all, STORE_HELP};
use crate::kernel::{human_size, KernelError, Store};

/// `userland <command>`: manage the guest's busybox userland.
#[derive(Debug, clap::Args)]
#[command(after_help = format!(
    "{USERLAND_ENV}=none runs guests without it; {USERLAND_ENV}=<path> uses a static busybox \
     of your own. {STORE_HELP}"
))]
pub struct UserlandArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
enum Command {
    /// Fetch Debian's current busybox-static for the guest's arch into the kernel store: the
    /// shell and tools every guest gets (/bin/sh, ls, ip, mount, ...). A run fetches it by
    /// itself when it is missing and apt is installed.
    Fetch {
        /// Guest architecture: x86_64, aarch64 (or arm64), riscv64 [default: this machine's].
        #[arg(long, default_value_t = Arch::host(), hide_default_value = true)]
        arch: Arch,
        /// Also fetch Debian's current gdbserver for that arch, for `VMTEST_GDB=test` (a run
        /// fetches it by itself when it is missing and apt is installed).
        #[arg(long)]
        gdbserver: bool,
    },
    /// Show the stored userland of each arch.
    List,
}

/// Runs a parsed `userland` command line.
pub fn run(program: &str, args: UserlandArgs) -> ExitCode {
    crate::notice::install(crate::notice::to_stderr);
    match execute(program, args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(program: &str, command: Command) -> Result<(), KernelError> {
    let store = Store::open()?;
    match command {
        Command::Fetch { arch, gdbserver } => {
            let userland =
                store.fetch_userland(arch, &mut |line| eprintln!("[userland {arch}] {line}"))?;
            println!("busybox {} ({arch}) at {}", userland.version, userland.busybox.display());
            if gdbserver {
                let binary = store
                    .fetch_gdbserver(arch, &mut |line| eprintln!("[gdbserver {arch}] {line}"))?;
                println!("gdbserver ({arch}) at {}", binary.display());
            }
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
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: UserlandArgs,
    }

    fn p(args: &[&str]) -> Result<Command, String> {
        Cli::try_parse_from(std::iter::once("userland").chain(args.iter().copied()))
            .map(|cli| cli.args.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_commands() {
        assert_eq!(p(&["fetch"]).unwrap(), Command::Fetch { arch: Arch::host(), gdbserver: false });
        assert_eq!(
            p(&["fetch", "--arch", "arm64", "--gdbserver"]).unwrap(),
            Command::Fetch { arch: Arch::Aarch64, gdbserver: true }
        );
        assert_eq!(p(&["list"]).unwrap(), Command::List);
        assert!(p(&["fetch", "--help"]).unwrap_err().contains("--arch <ARCH>  Guest architecture"));
        assert!(p(&[]).unwrap_err().contains("Usage: userland <COMMAND>"));
        assert!(p(&["fetch", "6.12"]).unwrap_err().contains("unexpected argument '6.12'"));
        assert!(p(&["fetch", "--arch", "sparc"]).unwrap_err().contains("`sparc`"));
        assert!(p(&["list", "--arch", "x86_64"]).unwrap_err().contains("unexpected argument"));
        assert!(p(&["install"]).unwrap_err().contains("unrecognized subcommand 'install'"));
    }
}
