//! A user namespace with a mount namespace: the uid mapping and a private mount as other
//! processes see them.

use vmtest::vm_test;

use crate::sys::{fork_with, wait, Pipe};

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn user_and_mount_namespace_isolate_uid_map_and_mounts() {
    if !std::path::Path::new("/proc/self/ns/user").exists() {
        vmtest::skip("the kernel has no user namespaces (CONFIG_USER_NS off)");
    }
    let dir = "/tmp/kst-private";
    std::fs::create_dir_all(dir).unwrap();
    let to_child = Pipe::new().unwrap();
    let to_parent = Pipe::new().unwrap();
    // The child reports each step as a byte: an upper-case letter when it succeeded.
    let child = fork_with(|| {
        // SAFETY: (whole closure) only system calls on local data; the forked child allocates nothing.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                to_parent.send(b'u');
                return 1;
            }
            // Unmapped so far: the kernel shows the overflow uid.
            to_parent.send(if libc::getuid() == 65534 { b'U' } else { b'o' });
            if to_child.recv() != Some(b'm') {
                return 2;
            }
            // Mapped by the parent: uid 0 inside is uid 0 outside.
            to_parent.send(if libc::getuid() == 0 { b'M' } else { b'n' });
            let none: *const libc::c_char = std::ptr::null();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                to_parent.send(b'p');
                return 3;
            }
            let mounted = libc::mount(
                c"kst".as_ptr(),
                c"/tmp/kst-private".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            );
            to_parent.send(if mounted == 0 { b'T' } else { b't' });
            // Stay alive (and mounted) until the parent has looked.
            to_child.recv();
            0
        }
    })
    .unwrap();
    let step = |want: u8| {
        let got = to_parent.recv();
        assert_eq!(got.map(char::from), Some(char::from(want)), "child step failed");
    };

    step(b'U');
    let mine = std::fs::read_link("/proc/self/ns/user").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{child}/ns/user")).unwrap();
    assert_ne!(mine, theirs, "the child shares our user namespace");
    std::fs::write(format!("/proc/{child}/uid_map"), "0 0 1\n").unwrap();
    let map = std::fs::read_to_string(format!("/proc/{child}/uid_map")).unwrap();
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", "0", "1"], "{map}");
    assert!(to_child.send(b'm'));
    step(b'M');
    step(b'T');

    let theirs = std::fs::read_to_string(format!("/proc/{child}/mountinfo")).unwrap();
    let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let tmpfs_here = |info: &str| {
        info.lines().any(|l| l.contains(" /tmp/kst-private ") && l.contains(" tmpfs "))
    };
    assert!(tmpfs_here(&theirs), "the child's mount is missing in its namespace:\n{theirs}");
    assert!(!tmpfs_here(&ours), "the child's mount leaked into ours:\n{ours}");

    assert!(to_child.send(b'x'));
    let status = wait(child).unwrap();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
}
