//! cgroup v2: a memory limit the kernel enforces with the OOM killer.

use std::path::Path;

use vmtest::vm_test;

use crate::sys::{fork_with, wait, Pipe};

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn memory_max_oom_kills_a_child_in_the_cgroup() {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
        .unwrap_or_else(|e| vmtest::skip(format!("no cgroup v2 hierarchy at /sys/fs/cgroup: {e}")));
    if !controllers.split_whitespace().any(|c| c == "memory") {
        vmtest::skip(format!(
            "the memory controller is not available (controllers: {})",
            controllers.trim()
        ));
    }
    std::fs::write(root.join("cgroup.subtree_control"), "+memory").unwrap();
    let group = root.join("kst-oom");
    std::fs::create_dir(&group).unwrap();
    std::fs::write(group.join("memory.max"), "16M").unwrap();
    if group.join("memory.swap.max").exists() {
        std::fs::write(group.join("memory.swap.max"), "0").unwrap();
    }
    assert_eq!(std::fs::read_to_string(group.join("memory.max")).unwrap().trim(), "16777216");

    let go = Pipe::new().unwrap();
    let child = fork_with(|| {
        // Wait until the parent has moved us into the cgroup, then touch 128 MiB.
        if go.recv() != Some(b'g') {
            return 2;
        }
        let len = 128 << 20;
        // SAFETY: an anonymous private mapping; only this process uses it.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return 3;
        }
        for page in (0..len).step_by(4096) {
            // SAFETY: `page` is inside the mapping made above.
            unsafe { mem.cast::<u8>().add(page).write_volatile(1) };
        }
        0
    })
    .unwrap();
    std::fs::write(group.join("cgroup.procs"), child.to_string()).unwrap();
    let members = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert_eq!(members.trim(), child.to_string(), "the child is not in the cgroup");
    assert!(go.send(b'g'));

    let status = wait(child).unwrap();
    assert!(libc::WIFSIGNALED(status), "the child was not killed (wait status {status:#x})");
    assert_eq!(libc::WTERMSIG(status), libc::SIGKILL);
    let events = std::fs::read_to_string(group.join("memory.events")).unwrap();
    let oom_kills: u64 = events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .unwrap_or_else(|| panic!("no oom_kill in memory.events: {events}"))
        .parse()
        .unwrap();
    assert_eq!(oom_kills, 1, "memory.events: {events}");
    std::fs::remove_dir(&group).unwrap();
    assert!(!group.exists());
}
