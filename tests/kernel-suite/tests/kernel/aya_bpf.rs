//! BPF as BPF authors write it: programs in C compiled by clang (`build.rs`), loaded and
//! attached with aya, maps read from user space. `bpf.rs` shows the same kernel interfaces
//! underneath, through raw `bpf(2)`.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap};
use aya::programs::{ProgramError, TracePoint, Xdp, XdpFlags};
use aya::Ebpf;
use vmtest::vm_test;

use crate::net;

/// An object `build.rs` compiled, or a skip naming what was missing to build it.
macro_rules! bpf_object {
    ($name:literal) => {{
        if let Some(why) = option_env!("KERNEL_SUITE_BPF_MISSING") {
            vmtest::skip(why);
        }
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o"))
    }};
}

/// Locked memory for maps and programs: 6.1 still charges them to `RLIMIT_MEMLOCK`.
fn lift_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit(2) with a valid, initialized struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) }, 0);
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn aya_tracepoint_counts_this_processs_getpgid_calls_in_a_map() {
    lift_memlock();
    let mut bpf = Ebpf::load(bpf_object!("count")).unwrap();
    let program: &mut TracePoint = bpf.program_mut("count_getpgid").unwrap().try_into().unwrap();
    program.load().unwrap();
    program.attach("syscalls", "sys_enter_getpgid").unwrap();
    for _ in 0..25 {
        // SAFETY: getpgid(2) of the calling process.
        unsafe { libc::syscall(libc::SYS_getpgid, 0) };
    }
    let calls: HashMap<_, u32, u64> = HashMap::try_from(bpf.map("getpgid_calls").unwrap()).unwrap();
    assert_eq!(calls.get(&std::process::id(), 0).unwrap(), 25);
    // Detached with the object: later calls are not counted.
    drop(bpf);
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn aya_xdp_on_a_veth_drops_one_udp_port_across_namespaces_and_counts() {
    lift_memlock();
    let peer_ns = net::new_netns();
    net::add_link("kst-xveth0", "veth", Some(("kst-xveth1", &peer_ns))).unwrap();
    net::up_with_address("kst-xveth0", Ipv4Addr::new(10, 198, 0, 1)).unwrap();

    // The receiving side, in the peer namespace: XDP on its end of the pair, a socket on the
    // dropped port and one on a passed port.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let receiver = {
        let ns = peer_ns.try_clone().unwrap();
        std::thread::spawn(move || {
            net::enter(&ns);
            net::up_with_address("kst-xveth1", Ipv4Addr::new(10, 198, 0, 2)).unwrap();
            let mut bpf = Ebpf::load(bpf_object!("xdp")).unwrap();
            let program: &mut Xdp = bpf.program_mut("drop_udp_9999").unwrap().try_into().unwrap();
            program.load().unwrap();
            program.attach("kst-xveth1", XdpFlags::SKB_MODE).unwrap();
            let dropped = UdpSocket::bind("10.198.0.2:9999").unwrap();
            dropped.set_nonblocking(true).unwrap();
            let passed = UdpSocket::bind("10.198.0.2:9998").unwrap();
            passed.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            // The first datagram through shows the path works (neighbours resolved).
            let (n, _) = passed.recv_from(&mut buf).expect("no datagram reached port 9998");
            assert_eq!(&buf[..n], b"first");
            done_tx.send(()).unwrap();
            // The sender sends ten to 9999, then "fence" to 9998: when the fence arrives, the
            // ten went before it on the same link.
            loop {
                let (n, _) = passed.recv_from(&mut buf).expect("the fence did not arrive");
                if &buf[..n] == b"fence" {
                    break;
                }
            }
            let leaked = dropped.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec());
            let counts: Array<_, u64> = Array::try_from(bpf.map("udp_datagrams").unwrap()).unwrap();
            (leaked, counts.get(&0, 0).unwrap(), counts.get(&1, 0).unwrap())
        })
    };
    if ready_rx.recv().is_err() {
        std::panic::resume_unwind(receiver.join().expect_err("the receiver ended unready"));
    }
    let sender = UdpSocket::bind("10.198.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_rx.try_recv().is_err() && !receiver.is_finished() && Instant::now() < deadline {
        sender.send_to(b"first", "10.198.0.2:9998").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..10 {
        sender.send_to(b"dropped", "10.198.0.2:9999").unwrap();
    }
    while !receiver.is_finished() && Instant::now() < deadline {
        sender.send_to(b"fence", "10.198.0.2:9998").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let (leaked, passed, dropped) = receiver.join().unwrap();
    assert_eq!(leaked, None, "a datagram to the dropped port arrived");
    assert_eq!(dropped, 10, "XDP counted {dropped} dropped datagrams");
    assert!(passed >= 2, "XDP counted {passed} passed datagrams (first and fence at least)");
    net::delete_link("kst-xveth0").unwrap();
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn aya_load_of_a_program_the_verifier_rejects_carries_the_verifier_log() {
    lift_memlock();
    let mut bpf = Ebpf::load(bpf_object!("rejected")).unwrap();
    let program: &mut TracePoint = bpf.program_mut("unchecked_lookup").unwrap().try_into().unwrap();
    match program.load() {
        Err(ProgramError::LoadError { io_error, verifier_log }) => {
            assert_eq!(io_error.raw_os_error(), Some(libc::EACCES), "{io_error}");
            let log = verifier_log.to_string();
            assert!(log.contains("invalid mem access 'map_value_or_null'"), "{log}");
        }
        other => panic!("the verifier accepted an unchecked map lookup: {other:?}"),
    }
}
