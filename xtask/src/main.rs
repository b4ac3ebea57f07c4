//! `cargo xtask`: development tasks for the vmtest workspace.

fn main() {
    eprintln!("usage: cargo xtask <command>");
    std::process::exit(2);
}
