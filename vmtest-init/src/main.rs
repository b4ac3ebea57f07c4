//! Static PID 1 for running arbitrary programs inside a vmtest VM (runner mode).

fn main() {
    vmtest_init::run_pid1()
}
