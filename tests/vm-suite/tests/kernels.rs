//! vm_tests across kernels: a kernel matrix, a kernel whose virtio drivers are modules, and
//! user-named modules loaded with their dependencies.

use std::path::Path;

use vmtest::vm_test;

/// Creates a network link of `kind` named `name` with one RTM_NEWLINK netlink request, the way
/// `ip link add <name> type <kind>` does.
fn create_link(name: &str, kind: &str) -> std::io::Result<()> {
    fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(payload);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }
    let mut name_z = name.as_bytes().to_vec();
    name_z.push(0);
    let mut info = Vec::new();
    attr(&mut info, libc::IFLA_INFO_KIND, kind.as_bytes());
    let mut body = vec![0u8; std::mem::size_of::<libc::ifinfomsg>()];
    attr(&mut body, libc::IFLA_IFNAME, &name_z);
    attr(&mut body, libc::IFLA_LINKINFO, &info);
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut message = Vec::new();
    message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(&body);

    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we own; from here on OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: `message` is a valid buffer of the given length; the kernel is the destination
    // (a zeroed sockaddr_nl) because the socket is unconnected and send(2) goes to the kernel.
    if unsafe { libc::send(raw, message.as_ptr().cast(), message.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: `reply` is a valid, writable buffer of the given length.
    let n = unsafe { libc::recv(raw, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 20 {
        return Err(std::io::Error::last_os_error());
    }
    // An NLMSG_ERROR reply carries the errno (0 is the acknowledgement) after the header.
    let errno = i32::from_ne_bytes(reply[16..20].try_into().unwrap());
    match errno {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(-e)),
    }
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy"])]
fn dummy_module_loads_and_makes_links() {
    assert!(Path::new("/sys/module/dummy").exists(), "the dummy module is not loaded");
    create_link("vmtest0", "dummy").expect("failed to create a dummy link over netlink");
    let kind = std::fs::read_to_string("/sys/class/net/vmtest0/uevent").unwrap();
    assert!(kind.contains("INTERFACE=vmtest0"), "{kind}");
    assert!(Path::new("/sys/class/net/vmtest0").exists());
}

#[vm_test(kernels = ["6.1", "6.12"])]
fn runs_on_the_named_kernel_series() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let instance = std::env::var("VMTEST_TEST_INSTANCE").unwrap();
    let series = instance.rsplit_once('[').and_then(|(_, s)| s.strip_suffix(']')).unwrap();
    assert!(release.starts_with(&format!("{series}.")), "{instance} runs on {release}");
}

#[vm_test(kernel = "6.1")]
fn modular_virtio_is_loaded_by_the_harness() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(release.starts_with("6.1."), "{release}");
    // The control port works only because the harness loaded these before reporting.
    for module in ["virtio_pci", "virtio_console"] {
        assert!(Path::new("/sys/module").join(module).exists(), "{module} not loaded");
    }
}

#[vm_test(kernel = "6.12", modules = ["veth"])]
fn compressed_modules_load_with_dependencies() {
    assert!(Path::new("/sys/module/veth").exists(), "veth not loaded");
    create_link("vmtest-veth0", "veth").expect("failed to create a veth pair over netlink");
    assert!(Path::new("/sys/class/net/vmtest-veth0").exists());
}

vmtest::main!();
