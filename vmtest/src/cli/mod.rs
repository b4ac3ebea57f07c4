//! `cargo vmtest` (the `cli` feature): the target runner ([`runner`]), the boot of a binary
//! that is not a vmtest harness under a static `vmtest-init` (`plain`), and the finding or
//! building of that init (`init_build`).

pub(crate) mod init_build;
pub(crate) mod plain;
pub mod runner;
pub(crate) mod target;

/// Readies a cargo subcommand's command line (`std::env::args()`) for clap: drops `name` where
/// cargo passes it first (`cargo-vmtest vmtest <args>`; run directly, or as an alias such as
/// `cargo xtask`, it is not there), and returns second what clap must not parse but pass on
/// verbatim: everything after `run <binary>` (cargo's runner protocol: the test binary's own
/// `--help`, `--` and the rest) and everything from `test`'s first `--` on (the test binaries'
/// arguments).
pub fn split_command_line(mut args: Vec<String>, name: &str) -> (Vec<String>, Vec<String>) {
    if args.get(1).is_some_and(|first| first == name) {
        args.remove(1);
    }
    let verbatim = match args.get(1..3) {
        Some([run, binary]) if run == "run" && !binary.starts_with('-') => args.split_off(3),
        _ if args.get(1).is_some_and(|first| first == "test") => {
            match args.iter().position(|a| a == "--") {
                Some(at) => args.split_off(at),
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    (args, verbatim)
}

/// Prints a clap error (help and version to stdout, an error with the usage to stderr) and
/// returns the exit code it asks for.
pub fn clap_exit(error: &clap::Error) -> std::process::ExitCode {
    let _ = error.print();
    std::process::ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

/// Prints the warnings and progress notes of vmtest's library code (the kernel store, the guest
/// userland) on stderr as `vmtest: ...` lines, from now on; without it they reach no one. The
/// `cargo vmtest` commands ([`runner::run`], `kernel`, `userland`) do this themselves; a
/// program that calls the kernel API directly calls it first.
pub fn print_notices() {
    crate::notice::install(crate::notice::to_stderr);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(args: &[&str]) -> (Vec<String>, Vec<String>) {
        split_command_line(args.iter().map(|a| (*a).to_owned()).collect(), "vmtest")
    }

    #[test]
    fn the_name_cargo_passes_first_is_dropped() {
        assert_eq!(
            split(&["cargo-vmtest", "vmtest", "kernel", "list"]).0,
            ["cargo-vmtest", "kernel", "list"]
        );
        assert_eq!(
            split(&["cargo-vmtest", "kernel", "vmtest"]).0,
            ["cargo-vmtest", "kernel", "vmtest"]
        );
    }

    #[test]
    fn what_follows_run_binary_and_tests_dashes_is_verbatim() {
        let (parsed, verbatim) = split(&["p", "vmtest", "run", "/t/bin", "--help", "--", "x"]);
        assert_eq!(
            (parsed, verbatim),
            (
                vec!["p".into(), "run".into(), "/t/bin".into()],
                vec!["--help".into(), "--".into(), "x".into()]
            )
        );
        let (parsed, verbatim) = split(&["p", "run", "--help"]);
        assert_eq!((parsed.len(), verbatim.len()), (3, 0), "run's own --help is clap's");
        let (parsed, verbatim) = split(&["p", "test", "--arch", "arm64", "--", "--arch"]);
        assert_eq!(parsed, ["p", "test", "--arch", "arm64"]);
        assert_eq!(verbatim, ["--", "--arch"]);
        assert_eq!(
            split(&["p", "test", "-q"]),
            (vec!["p".into(), "test".into(), "-q".into()], vec![])
        );
        assert_eq!(split(&["p", "kernel", "--", "x"]).1, Vec::<String>::new());
    }
}
