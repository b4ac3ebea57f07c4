//! `runner <binary> [args]`: the library code behind `cargo vmtest run`, as a binary of this
//! package so `tests/runner.rs` can run it without building the `cli` feature.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((binary, rest)) = args.split_first() else {
        eprintln!("usage: runner <binary> [args]");
        return std::process::ExitCode::from(2);
    };
    vmtest::cli::runner::run(std::path::Path::new(binary), rest)
}
