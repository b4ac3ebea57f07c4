//! BPF through bpf(2): maps, a socket filter on real loopback traffic, the verifier, BTF.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use vmtest::vm_test;

use crate::sys::{check, owned};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `union bpf_attr`, zero-filled, as 128 bytes the tests fill field by field.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn default() -> Self {
        Attr([0; 128])
    }

    fn u32(mut self, offset: usize, value: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, value: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable 128-byte bpf_attr; pointers inside it point at
    // buffers that outlive the call (the callers keep them borrowed).
    check(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) }, what)
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (dst & 0xf) | (src << 4);
    let mut bytes = [0u8; 8];
    bytes[0] = code;
    bytes[1] = regs;
    bytes[2..4].copy_from_slice(&off.to_ne_bytes());
    bytes[4..8].copy_from_slice(&imm.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const JGT_K: u8 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// Loads a socket filter; on failure the error carries the verifier log.
fn load_socket_filter(insns: &[u64]) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 << 10];
    let mut attr = Attr::default()
        .u32(0, BPF_PROG_TYPE_SOCKET_FILTER)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1) // log_level
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr, "load a socket filter") {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

fn map_elem(
    cmd: libc::c_long,
    map: &OwnedFd,
    key: &u32,
    value: Option<&mut u64>,
) -> io::Result<()> {
    let value = value.map_or(0, |v| v as *mut u64 as u64);
    let mut attr = Attr::default()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key as *const u32 as u64)
        .u64(16, value);
    bpf(cmd, &mut attr, "operate on a map element").map(drop)
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn bpf_hash_map_update_lookup_delete() {
    let mut attr = Attr::default().u32(0, BPF_MAP_TYPE_HASH).u32(4, 4).u32(8, 8).u32(12, 16);
    let map = owned(bpf(BPF_MAP_CREATE, &mut attr, "create a hash map").unwrap());

    // The kernel describes the map it made in the descriptor's fdinfo.
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map.as_raw_fd())).unwrap();
    assert!(fdinfo.contains("map_type:\t1\n"), "{fdinfo}");
    assert!(fdinfo.contains("max_entries:\t16\n"), "{fdinfo}");
    assert!(fdinfo.contains("value_size:\t8\n"), "{fdinfo}");

    let mut value = 0xdead_beef_u64;
    map_elem(BPF_MAP_UPDATE_ELEM, &map, &7, Some(&mut value)).unwrap();
    let mut got = 0u64;
    map_elem(BPF_MAP_LOOKUP_ELEM, &map, &7, Some(&mut got)).unwrap();
    assert_eq!(got, 0xdead_beef);
    let err = map_elem(BPF_MAP_LOOKUP_ELEM, &map, &8, Some(&mut got)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

    map_elem(BPF_MAP_DELETE_ELEM, &map, &7, None).unwrap();
    let err = map_elem(BPF_MAP_LOOKUP_ELEM, &map, &7, Some(&mut got)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "deleted key still found: {err}");
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn bpf_socket_filter_drops_large_loopback_datagrams() {
    // Keep a datagram whose skb (UDP header and payload) is at most 50 bytes, drop the rest:
    //   r0 = skb->len; if r0 > 50 goto drop; return r0; drop: return 0
    let program = [
        insn(LDX_W, 0, 1, 0, 0),
        insn(JGT_K, 0, 0, 1, 50),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV64_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let filter = load_socket_filter(&program).map_err(|(e, log)| format!("{e}\n{log}")).unwrap();

    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    let small = b"small".to_vec();
    let large = vec![b'L'; 200];
    let mut buf = [0u8; 512];

    // Without the filter, the large datagram arrives.
    sender.send_to(&large, to).unwrap();
    let n = receiver.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &large[..]);

    let fd = filter.as_raw_fd();
    // SAFETY: setsockopt with a pointer to a live int and its size.
    let ret = unsafe {
        libc::setsockopt(
            receiver.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_BPF,
            (&fd as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    check(ret as libc::c_long, "attach the filter").unwrap();

    // Large ones are dropped in the kernel: the receiver sees only the small ones, in order.
    for round in 0..2u8 {
        sender.send_to(&large, to).unwrap();
        let mut marked = small.clone();
        marked.push(b'0' + round);
        sender.send_to(&marked, to).unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &marked[..], "a datagram the filter should drop got through");
    }
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn bpf_verifier_rejects_reading_an_unset_register() {
    // `exit` with r0 never written: the verifier must refuse it and say why.
    let (err, log) = load_socket_filter(&[insn(EXIT, 0, 0, 0, 0)]).map(drop).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(log.contains("R0 !read_ok"), "verifier log: {log}");

    // The same program with r0 set is accepted, so the rejection was about r0.
    load_socket_filter(&[insn(MOV64_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)])
        .map_err(|(e, log)| format!("{e}\n{log}"))
        .unwrap();
}

#[vm_test(kernels = ["6.1", "6.12"], modules = ["dummy", "veth"], memory = "512M", timeout = "120s")]
fn btf_of_vmlinux_is_well_formed() {
    let path = "/sys/kernel/btf/vmlinux";
    let btf = match std::fs::read(path) {
        Ok(btf) => btf,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            vmtest::skip("the kernel has no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF off)")
        }
        Err(e) => panic!("failed to read {path}: {e}"),
    };
    let u32_at = |at: usize| u32::from_ne_bytes(btf[at..at + 4].try_into().unwrap());
    assert!(btf.len() > 24, "{path} has only {} bytes", btf.len());
    assert_eq!(u16::from_ne_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    assert_eq!(btf[2], 1, "BTF version");
    let (hdr_len, type_off, type_len, str_off, str_len) = (
        u32_at(4) as usize,
        u32_at(8) as usize,
        u32_at(12) as usize,
        u32_at(16) as usize,
        u32_at(20) as usize,
    );
    assert!(hdr_len >= 24 && type_len > 0 && str_len > 0);
    assert_eq!(
        hdr_len + type_off.max(str_off) + if str_off > type_off { str_len } else { type_len },
        btf.len()
    );
    let strings = &btf[hdr_len + str_off..hdr_len + str_off + str_len];
    assert!(
        strings.split(|&b| b == 0).any(|s| s == b"task_struct"),
        "no task_struct in BTF strings"
    );
}
