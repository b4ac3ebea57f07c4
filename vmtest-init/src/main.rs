//! Static PID 1 for running arbitrary programs inside a vmtest VM (runner mode).

fn main() {
    if vmtest_init::invoked_as_modprobe() {
        vmtest_init::modprobe_main();
    }
    vmtest_init::run_pid1()
}
