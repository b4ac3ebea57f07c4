//! Static PID 1 for running arbitrary programs inside a vmtest VM (runner mode).

fn main() {
    eprintln!("vmtest-init: not yet implemented");
}
