//! vm_tests with known outcomes, most of them failures; `tests/outcomes.rs` runs this binary
//! and checks what it prints.

use std::time::Duration;

use vmtest::vm_test;

#[vm_test]
fn passes() {}

#[vm_test]
fn panics() {
    panic!("deliberate panic");
}

#[vm_test]
fn assertion_fails() {
    println!("captured stdout line");
    eprintln!("captured stderr line");
    assert_eq!(1 + 1, 3, "arithmetic");
}

#[vm_test]
fn exits_with_3() {
    std::process::exit(3);
}

#[vm_test(timeout = "2s")]
fn hangs() {
    let grandchild = background_grandchild();
    std::fs::write(HANGS_GRANDCHILD, grandchild.to_string()).unwrap();
    println!("hang started");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[vm_test]
fn returns_err() -> Result<(), String> {
    Err("deliberate error".to_owned())
}

#[vm_test]
#[should_panic]
fn does_not_panic_as_required() {}

#[vm_test]
fn prints_kernel_release() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!("kernel release: {}", release.trim());
}

/// Where `hangs` leaves the pid of its background grandchild for `hangs_left_nothing_running`.
const HANGS_GRANDCHILD: &str = "/tmp/fixture-failing-hangs-grandchild";

/// Runs after `hangs` in the same VM (tests run in name order): its timeout killed everything it
/// started, the grandchild its exited child left behind included.
#[vm_test]
fn hangs_left_nothing_running() {
    let pid = std::fs::read_to_string(HANGS_GRANDCHILD).expect("`hangs` ran before in this VM");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    assert!(stat.is_err(), "the grandchild of the timed-out test still runs: {stat:?}");
}

/// Forks a child that forks a grandchild sleeping forever and exits: the grandchild runs in the
/// background, orphaned, in the test's process group. Returns its pid.
fn background_grandchild() -> libc::pid_t {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only calls async-signal-safe functions (fork, write, pause, _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            let grandchild = libc::fork();
            if grandchild == 0 {
                loop {
                    libc::pause();
                }
            }
            libc::write(fds[1], (&grandchild as *const libc::pid_t).cast(), 4);
            libc::_exit(0);
        }
    }
    assert!(child > 0, "fork failed: {}", std::io::Error::last_os_error());
    let mut grandchild: libc::pid_t = 0;
    // SAFETY: reads 4 bytes into `grandchild`; reaps the child, which has exited or will.
    unsafe {
        libc::close(fds[1]);
        assert_eq!(libc::read(fds[0], (&mut grandchild as *mut libc::pid_t).cast(), 4), 4);
        libc::close(fds[0]);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    grandchild
}

vmtest::main!();
