//! Modules on demand: these tests list no `modules = [...]`. The kernel asks for what it lacks
//! (`request_module`: a socket family, a link type) and the guest's `modprobe` fetches it, with
//! its dependencies, from the host; a test may also run `modprobe` itself.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmtest::vm_test;

use crate::net::{attr, delete_link, ifinfomsg, name_z, Request};
use crate::sys::{check, owned};

/// `IFLA_VXLAN_ID` of `IFLA_INFO_DATA` for a vxlan link.
const IFLA_VXLAN_ID: u16 = 1;

fn loaded(module: &str) -> bool {
    Path::new("/sys/module").join(module).exists()
}

/// The kernel log's records that mention `needle` (`/dev/kmsg`, message text only).
pub(crate) fn kernel_log_lines(needle: &str) -> Vec<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .unwrap();
    let mut lines = Vec::new();
    let mut record = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                let message = text.split_once(';').map_or("", |(_, m)| m).trim_end();
                if message.contains(needle) {
                    lines.push(message.to_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) => panic!("failed to read /dev/kmsg: {e}"),
        }
    }
    lines
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_owned()
}

/// Runs first in its VM (tests run in name order): booting and setting up the guest ask for
/// no module, so a run whose tests ask for none never talks to the modules port.
#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn a_boot_requests_no_module() {
    assert_eq!(kernel_log_lines("vmtest modprobe:"), Vec::<String>::new());
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn af_alg_hash_socket_loads_its_modules_and_computes_sha256() {
    assert!(!loaded("af_alg") && !loaded("algif_hash"), "loaded before the test asked");
    let started = Instant::now();
    // The kernel has no AF_ALG yet: it requests `net-pf-38`, an alias of af_alg.
    // SAFETY: socket(2) with constant arguments; checked.
    let fd = check(
        unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
        "open an AF_ALG socket",
    )
    .unwrap();
    let fd = owned(fd);
    println!("socket(AF_ALG) took {:?}", started.elapsed());
    assert!(loaded("af_alg"));

    // SAFETY: sockaddr_alg is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_alg = unsafe { std::mem::zeroed() };
    addr.salg_family = libc::AF_ALG as libc::sa_family_t;
    addr.salg_type[..4].copy_from_slice(b"hash");
    addr.salg_name[..6].copy_from_slice(b"sha256");
    let started = Instant::now();
    // Binding to the `hash` type requests `algif-hash`, the module algif_hash.
    // SAFETY: `addr` is a valid sockaddr_alg of the size passed.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_alg).cast(),
            std::mem::size_of::<libc::sockaddr_alg>() as libc::socklen_t,
        )
    };
    check(bound as libc::c_long, "bind the AF_ALG socket to hash/sha256").unwrap();
    println!("bind(hash, sha256) took {:?}", started.elapsed());
    assert!(loaded("algif_hash"));

    // SAFETY: accept(2) on a bound AF_ALG socket, without an address.
    let op = check(
        unsafe { libc::accept4(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), 0) }
            as libc::c_long,
        "accept an AF_ALG operation socket",
    )
    .unwrap();
    let op = owned(op);
    // SAFETY: the buffer is valid for its length.
    let sent = unsafe { libc::write(op.as_raw_fd(), b"abc".as_ptr().cast(), 3) };
    assert_eq!(check(sent as libc::c_long, "write to the hash").unwrap(), 3);
    let mut digest = [0u8; 32];
    // SAFETY: the buffer is valid and writable for its length.
    let got = unsafe { libc::read(op.as_raw_fd(), digest.as_mut_ptr().cast(), digest.len()) };
    assert_eq!(check(got as libc::c_long, "read the digest").unwrap(), 32);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn a_vxlan_link_request_loads_vxlan_and_its_dependencies() {
    assert!(!loaded("vxlan"), "vxlan loaded before the test asked");
    let started = Instant::now();
    // `ip link add kst-vx0 type vxlan id 42`: the kernel requests `rtnl-link-vxlan`.
    let mut request = Request::new(libc::RTM_NEWLINK, libc::NLM_F_CREATE | libc::NLM_F_EXCL);
    request.body = ifinfomsg(0, 0, 0);
    attr(&mut request.body, libc::IFLA_IFNAME, &name_z("kst-vx0"));
    let mut data = Vec::new();
    attr(&mut data, IFLA_VXLAN_ID, &42u32.to_ne_bytes());
    let mut info = Vec::new();
    attr(&mut info, libc::IFLA_INFO_KIND, b"vxlan");
    attr(&mut info, libc::IFLA_INFO_DATA, &data);
    attr(&mut request.body, libc::IFLA_LINKINFO, &info);
    request.send().unwrap();
    println!("RTM_NEWLINK vxlan took {:?}", started.elapsed());
    println!("{:?}", kernel_log_lines("vmtest modprobe:"));
    // Loaded after what it depends on (`depends=udp_tunnel,ip6_udp_tunnel`).
    for module in ["vxlan", "udp_tunnel", "ip6_udp_tunnel"] {
        assert!(loaded(module), "{module} is not loaded");
    }
    let kind = std::fs::read_to_string("/sys/class/net/kst-vx0/uevent").unwrap();
    assert!(kind.contains("DEVTYPE=vxlan"), "{kind}");
    delete_link("kst-vx0").unwrap();
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn modprobe_loads_a_module_with_parameters_and_removes_it() {
    assert!(!loaded("dummy"), "dummy loaded before the test asked");
    let started = Instant::now();
    let output = Command::new("modprobe").args(["dummy", "numdummies=2"]).output().unwrap();
    println!("modprobe dummy took {:?}", started.elapsed());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(loaded("dummy"));
    // The parameter reached the module: two links instead of the default one.
    assert!(Path::new("/sys/class/net/dummy1").exists(), "numdummies=2 did not apply");
    // The kernel log says what was loaded for which request.
    let notes = kernel_log_lines("vmtest modprobe: dummy:");
    println!("{notes:?}");
    assert!(notes.iter().any(|n| n.contains("dummy: loaded dummy (")), "{notes:?}");
    // Loaded already: nothing to do, and success.
    let again = Command::new("/sbin/modprobe").arg("dummy").status().unwrap();
    assert!(again.success());

    // `-r` unloads it (retried while the links it made are still going away).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = Command::new("/usr/sbin/modprobe").args(["-r", "dummy"]).output().unwrap();
        if output.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(Instant::now() < deadline, "modprobe -r dummy: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!loaded("dummy"), "dummy is still loaded");
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn an_unknown_module_fails_cleanly() -> io::Result<()> {
    let output = Command::new("modprobe").arg("kst-no-such-module").output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("modprobe: FATAL: Module kst-no-such-module not found"), "{stderr}");
    assert!(stderr.contains(&release()), "the message names the kernel: {stderr}");
    // Quiet, as the kernel runs it: the same status, nothing said.
    let quiet = Command::new("modprobe").args(["-q", "--", "kst-no-such-module"]).output()?;
    assert_eq!(quiet.status.code(), Some(1));
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    // Options this modprobe does not have are refused, not ignored.
    let unsupported = Command::new("modprobe").args(["--first-time", "dummy"]).output()?;
    assert_eq!(unsupported.status.code(), Some(1));
    assert!(!loaded("dummy"));
    Ok(())
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn concurrent_requests_take_turns_and_all_load() {
    // One virtio-serial port serves every request: these wait for each other, none fails.
    let modules = ["ifb", "macvlan", "nlmon", "vcan", "geneve", "team"];
    for module in modules {
        assert!(!loaded(module), "{module} loaded before the test asked");
    }
    let children: Vec<_> = modules
        .iter()
        .map(|module| Command::new("modprobe").arg(module).spawn().unwrap())
        .collect();
    for (module, mut child) in modules.iter().zip(children) {
        assert!(child.wait().unwrap().success(), "modprobe {module} failed");
        assert!(loaded(module), "{module} is not loaded");
    }
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn a_filesystem_type_loads_its_module() {
    assert!(!loaded("squashfs"), "squashfs loaded before the test asked");
    std::fs::create_dir_all("/mnt/kst-squashfs").unwrap();
    // The kernel knows no squashfs yet: it requests `fs-squashfs`, then fails on the source,
    // which is no squashfs image.
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let ret = unsafe {
        libc::mount(
            c"/nonexistent".as_ptr(),
            c"/mnt/kst-squashfs".as_ptr(),
            c"squashfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let error = io::Error::last_os_error();
    assert_eq!(ret, -1, "mounted a squashfs from nothing");
    assert_ne!(error.raw_os_error(), Some(libc::ENODEV), "no squashfs filesystem type: {error}");
    assert!(loaded("squashfs"));
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap();
    assert!(filesystems.lines().any(|l| l.ends_with("\tsquashfs")), "{filesystems}");
}

#[vm_test(kernels = ["6.1", "6.12"], memory = "512M", timeout = "120s")]
fn ip_link_add_type_bridge_loads_bridge() {
    if !Path::new("/sbin/ip").exists() {
        vmtest::skip("no `ip` in the guest (VMTEST_USERLAND=none, or busybox not fetched)");
    }
    assert!(!loaded("bridge"), "bridge loaded before the test asked");
    let output = Command::new("ip").args(["link", "add", "kst-br0", "type", "bridge"]).output();
    let output = output.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(loaded("bridge"), "the rtnl-link-bridge request did not load bridge");
    assert!(Path::new("/sys/class/net/kst-br0/bridge").is_dir());
    let deleted = Command::new("ip").args(["link", "del", "kst-br0"]).status().unwrap();
    assert!(deleted.success());
}
