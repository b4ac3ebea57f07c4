//! `cargo vmtest`: manage the kernels vmtest boots (`cargo install vmtest --features cli`).

use std::process::ExitCode;

const USAGE: &str =
    "usage: cargo vmtest kernel <fetch|list|add> ... (see `cargo vmtest kernel help`)";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Cargo runs `cargo-vmtest vmtest <args>`; run directly, there is no `vmtest` first.
    if args.first().map(String::as_str) == Some("vmtest") {
        args.remove(0);
    }
    match args.split_first() {
        Some((cmd, rest)) if cmd == "kernel" => vmtest::kernel::cli::kernel("cargo vmtest", rest),
        Some((cmd, _)) if cmd == "-h" || cmd == "--help" || cmd == "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some((cmd, _)) => {
            eprintln!("error: unknown command `{cmd}`\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
