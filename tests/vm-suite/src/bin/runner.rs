//! `runner <binary> [args]`: the library code behind `cargo vmtest run`, as a binary of this
//! package so `tests/runner.rs` can run it without building the `cli` feature.
//! `runner --shell [--arch A] [--kernel K]`: the code behind `cargo vmtest shell`, for
//! `tests/shell.rs`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--shell") {
        let value = |flag: &str| {
            args.iter().position(|a| a == flag).and_then(|at| args.get(at + 1)).map(String::as_str)
        };
        let arch = value("--arch").map(|a| a.parse().expect("an arch"));
        return vmtest::cli::runner::shell(value("--kernel"), arch);
    }
    let Some((binary, rest)) = args.split_first() else {
        eprintln!("usage: runner <binary> [args] | runner --shell [--arch A] [--kernel K]");
        return std::process::ExitCode::from(2);
    };
    vmtest::cli::runner::run(std::path::Path::new(binary), rest)
}
