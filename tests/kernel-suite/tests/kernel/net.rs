//! Modules `dummy` and `veth`: links made over rtnetlink, a veth pair across two network
//! namespaces carrying a real datagram, and cleanup down to unloading the module.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vmtest::vm_test;

use crate::sys::{check, owned};

const VETH_INFO_PEER: u16 = 1;

/// A netlink request under construction: header, fixed part, attributes.
pub(crate) struct Request {
    kind: u16,
    flags: u16,
    pub(crate) body: Vec<u8>,
}

pub(crate) fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

pub(crate) fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut msg = vec![0u8; 16]; // family, pad, type: 0
    msg[4..8].copy_from_slice(&index.to_ne_bytes());
    msg[8..12].copy_from_slice(&flags.to_ne_bytes());
    msg[12..16].copy_from_slice(&change.to_ne_bytes());
    msg
}

pub(crate) fn name_z(name: &str) -> Vec<u8> {
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    z
}

impl Request {
    pub(crate) fn new(kind: u16, extra_flags: i32) -> Self {
        Request {
            kind,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK | extra_flags) as u16,
            body: Vec::new(),
        }
    }

    /// Sends the request on a NETLINK_ROUTE socket of the calling thread's network namespace
    /// and returns the kernel's answer (0 or an errno).
    pub(crate) fn send(self) -> io::Result<()> {
        let mut message = Vec::new();
        message.extend_from_slice(&((16 + self.body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&self.kind.to_ne_bytes());
        message.extend_from_slice(&self.flags.to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(&self.body);
        // SAFETY: socket(2) with constant arguments; checked.
        let fd = check(
            unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            } as libc::c_long,
            "open a netlink socket",
        )?;
        let fd = owned(fd);
        // SAFETY: `message` is a valid buffer of its length; an unconnected netlink socket
        // sends to the kernel.
        let sent = unsafe { libc::send(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
        check(sent as libc::c_long, "send a netlink request")?;
        let mut reply = [0u8; 4096];
        // SAFETY: `reply` is a valid, writable buffer of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if check(n as libc::c_long, "receive the netlink answer")? < 20 {
            return Err(io::Error::other("failed to read the netlink answer: too short"));
        }
        match i32::from_ne_bytes(reply[16..20].try_into().unwrap()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    }
}

fn index_of(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no link named {name} in this network namespace");
    index
}

/// `ip link add <name> type <kind>`, optionally with a veth peer named `peer` in `peer_ns`.
pub(crate) fn add_link(name: &str, kind: &str, peer: Option<(&str, &OwnedFd)>) -> io::Result<()> {
    let mut request = Request::new(libc::RTM_NEWLINK, libc::NLM_F_CREATE | libc::NLM_F_EXCL);
    request.body = ifinfomsg(0, 0, 0);
    attr(&mut request.body, libc::IFLA_IFNAME, &name_z(name));
    let mut info = Vec::new();
    attr(&mut info, libc::IFLA_INFO_KIND, kind.as_bytes());
    if let Some((peer, ns)) = peer {
        let mut peer_msg = ifinfomsg(0, 0, 0);
        attr(&mut peer_msg, libc::IFLA_IFNAME, &name_z(peer));
        attr(&mut peer_msg, libc::IFLA_NET_NS_FD, &(ns.as_raw_fd() as u32).to_ne_bytes());
        let mut data = Vec::new();
        attr(&mut data, VETH_INFO_PEER, &peer_msg);
        attr(&mut info, libc::IFLA_INFO_DATA, &data);
    }
    attr(&mut request.body, libc::IFLA_LINKINFO, &info);
    request.send()
}

/// `ip link del <name>`.
pub(crate) fn delete_link(name: &str) -> io::Result<()> {
    let mut request = Request::new(libc::RTM_DELLINK, 0);
    request.body = ifinfomsg(index_of(name) as i32, 0, 0);
    request.send()
}

/// `ip link set <name> up` and `ip addr add <addr>/24 dev <name>`.
pub(crate) fn up_with_address(name: &str, addr: Ipv4Addr) -> io::Result<()> {
    let index = index_of(name);
    let mut up = Request::new(libc::RTM_NEWLINK, 0);
    up.body = ifinfomsg(index as i32, libc::IFF_UP as u32, libc::IFF_UP as u32);
    up.send()?;
    let mut add = Request::new(libc::RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_EXCL);
    add.body = vec![libc::AF_INET as u8, 24, 0, 0];
    add.body.extend_from_slice(&index.to_ne_bytes());
    attr(&mut add.body, libc::IFA_LOCAL, &addr.octets());
    attr(&mut add.body, libc::IFA_ADDRESS, &addr.octets());
    add.send()
}

/// Moves the calling thread into the network namespace `ns`.
pub(crate) fn enter(ns: &OwnedFd) {
    // SAFETY: setns(2) on a namespace descriptor we own; affects only this thread.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    check(ret as libc::c_long, "enter the network namespace").unwrap();
}

/// A new network namespace, kept alive by the returned descriptor.
pub(crate) fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        // SAFETY: unshare(2) of the network namespace affects only this short-lived thread.
        check(
            unsafe { libc::unshare(libc::CLONE_NEWNET) } as libc::c_long,
            "create a network namespace",
        )
        .unwrap();
        std::fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from).unwrap()
    })
    .join()
    .unwrap()
}

fn links_in(ns: &OwnedFd) -> String {
    let ns = ns.try_clone().unwrap();
    std::thread::spawn(move || {
        enter(&ns);
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    })
    .join()
    .unwrap()
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn dummy_link_is_created_and_deleted_over_netlink() {
    assert!(Path::new("/sys/module/dummy").exists(), "the dummy module is not loaded");
    add_link("kst-dummy0", "dummy", None).unwrap();
    let uevent = std::fs::read_to_string("/sys/class/net/kst-dummy0/uevent").unwrap();
    assert!(uevent.contains("INTERFACE=kst-dummy0"), "{uevent}");
    let kind = std::fs::read_to_string("/sys/class/net/kst-dummy0/type").unwrap();
    assert_eq!(kind.trim(), "1", "a dummy link is an Ethernet-type link");
    delete_link("kst-dummy0").unwrap();
    assert!(!Path::new("/sys/class/net/kst-dummy0").exists(), "the link survived its deletion");
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn veth_pair_carries_a_datagram_between_namespaces_and_unloads() {
    let peer_ns = new_netns();
    add_link("kst-veth0", "veth", Some(("kst-veth1", &peer_ns))).unwrap();
    // One end here, the other only in the peer namespace.
    assert!(Path::new("/sys/class/net/kst-veth0").exists());
    assert!(!Path::new("/sys/class/net/kst-veth1").exists(), "the peer stayed in this namespace");
    assert!(links_in(&peer_ns).contains("kst-veth1:"), "{}", links_in(&peer_ns));
    up_with_address("kst-veth0", Ipv4Addr::new(10, 199, 0, 1)).unwrap();

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = {
        let ns = peer_ns.try_clone().unwrap();
        std::thread::spawn(move || {
            enter(&ns);
            up_with_address("kst-veth1", Ipv4Addr::new(10, 199, 0, 2)).unwrap();
            let socket = UdpSocket::bind("10.199.0.2:7777").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = socket.recv_from(&mut buf).expect("no datagram crossed the veth pair");
            (buf[..n].to_vec(), from)
        })
    };
    if ready_rx.recv().is_err() {
        // The receiver failed before binding: its panic says why.
        std::panic::resume_unwind(
            receiver.join().expect_err("the receiver ended without being ready"),
        );
    }
    let sender = UdpSocket::bind("10.199.0.1:0").unwrap();
    // A datagram may be lost while the links come up (neighbour resolution); resend until
    // the receiver has one.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !receiver.is_finished() && Instant::now() < deadline {
        sender.send_to(b"across", "10.199.0.2:7777").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let (payload, from) = receiver.join().unwrap();
    assert_eq!(payload, b"across");
    assert_eq!(from.ip().to_string(), "10.199.0.1");

    // Deleting one end removes both.
    delete_link("kst-veth0").unwrap();
    assert!(!Path::new("/sys/class/net/kst-veth0").exists());
    assert!(!links_in(&peer_ns).contains("kst-veth1:"), "the peer end survived");
    drop(peer_ns);

    // With no veth left, the module unloads (built-in veth has no refcnt to unload).
    if !Path::new("/sys/module/veth/refcnt").exists() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // SAFETY: delete_module(2) with a NUL-terminated name and O_NONBLOCK.
        let ret =
            unsafe { libc::syscall(libc::SYS_delete_module, c"veth".as_ptr(), libc::O_NONBLOCK) };
        match check(ret, "unload veth") {
            Ok(_) => break,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::ResourceBusy
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!Path::new("/sys/module/veth").exists(), "veth is still loaded");
}
