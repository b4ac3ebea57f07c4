//! The restore point ([`crate::protocol::Plan::restore_point`]): PID 1 says it is ready and
//! waits for the host; whatever the host restores from a snapshot taken there wakes up here.
//!
//! After a restore the guest is a copy of the saved one: its wall clock is the snapshot's and
//! its random number generator would repeat the same bytes in every copy. So, on
//! [`HostMessage::Restored`], PID 1:
//! 1. sets `CLOCK_REALTIME` to the host's time carried by the message;
//! 2. mixes the message's seed into the kernel's input pool (`RNDADDENTROPY`, crediting it)
//!    and forces a reseed of the CRNG (`RNDRESEEDCRNG`), so the next `getrandom` of every
//!    process draws from the new state (on x86_64 QEMU's `vmgenid` device, when present,
//!    makes the kernel reseed too);
//! 3. unpacks the run's payload (its files and plan, [`HostMessage::Payload`]) over `/`, and
//!    gives `/tmp`, `/run` and `/dev/shm` their modes again (the archive makes the parents of
//!    its paths, a checkout under `/tmp` say, with mode 0755);
//! 4. greets the new host with `Hello`, as at boot, and goes on with the payload's plan.
//!
//! The VM that was saved goes on the same way: the host sends it a seed and a payload too, so
//! that it shares no random state with the snapshot's later restores.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::ports::{self, Control};
use crate::protocol::{
    decode_host_message, FrameReader, GuestMessage, HostMessage, HOST_PORT, MAX_SEED_LEN,
    PROTOCOL_VERSION,
};
use crate::unpack;

/// How long to wait for the host port to appear at the restore point.
const PORT_PATIENCE: Duration = Duration::from_secs(5);
/// How long to wait between reads that found the host gone (between the saved QEMU and the
/// restored one, the port reads as closed).
const RECONNECT_WAIT: Duration = Duration::from_millis(5);

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`, the same number on every Linux arch vmtest runs.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` (Linux 4.17+).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Says `Ready`, waits for the host's [`HostMessage::Restored`], applies it and unpacks the
/// payload that follows over `/`.
pub(crate) fn wait_for_restore(control: &Control) -> Result<(), String> {
    // Open before saying `Ready`: a snapshot taken right after it finds PID 1 reading.
    let port = ports::open_port_for_reading(
        Path::new(ports::VIRTIO_PORTS_DIR),
        Path::new("/dev"),
        HOST_PORT,
        PORT_PATIENCE,
    )?;
    control.send(&GuestMessage::Ready)?;
    let mut reader = FrameReader::new(&port);
    match read_message(&mut reader)? {
        HostMessage::Restored { unix_secs, unix_nanos, seed, .. } => {
            set_clock(unix_secs, unix_nanos)?;
            if !seed.is_empty() {
                reseed(&seed)?;
            }
        }
        HostMessage::Payload { .. } => {
            return Err(format!("the host sent a payload on {HOST_PORT} before `Restored`"))
        }
    }
    let payload = PayloadReader { frames: reader, piece: Vec::new(), at: 0, ended: false };
    let unpacked = unpack::unpack(payload, Path::new("/"))?;
    for problem in crate::mounts::reset_modes() {
        crate::console::say(problem);
    }
    crate::console::say(format_args!(
        "restored; the run's payload: {} entries, {} bytes",
        unpacked.entries, unpacked.bytes
    ));
    let kernel_release = rustix::system::uname().release().to_string_lossy().into_owned();
    control.send(&GuestMessage::Hello { version: PROTOCOL_VERSION, kernel_release })
}

/// The archive carried by [`HostMessage::Payload`] frames, as one stream.
struct PayloadReader<'a> {
    frames: FrameReader<&'a File>,
    piece: Vec<u8>,
    /// Bytes of `piece` already read.
    at: usize,
    /// The last piece arrived.
    ended: bool,
}

impl Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            match read_message(&mut self.frames).map_err(std::io::Error::other)? {
                HostMessage::Payload { data, last, .. } => {
                    (self.piece, self.at, self.ended) = (data, 0, last);
                }
                HostMessage::Restored { .. } => {
                    return Err(std::io::Error::other(format!(
                        "the host sent `Restored` on {HOST_PORT} inside the payload"
                    )))
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The next host message on `reader`'s port; reads that find the host gone are retried.
fn read_message(reader: &mut FrameReader<&File>) -> Result<HostMessage, String> {
    loop {
        match reader.next_payload() {
            Ok(Some(payload)) => {
                return decode_host_message(payload)
                    .map_err(|e| format!("failed to read the host's message on {HOST_PORT}: {e}"))
            }
            Ok(None) => std::thread::sleep(RECONNECT_WAIT),
            Err(e) => return Err(format!("failed to read the host's message on {HOST_PORT}: {e}")),
        }
    }
}

/// Sets the wall clock.
fn set_clock(secs: i64, nanos: u32) -> Result<(), String> {
    let time = libc::timespec { tv_sec: secs as _, tv_nsec: nanos as _ };
    // SAFETY: `time` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("failed to set the wall clock to {secs}.{nanos:09}: {e}"));
    }
    Ok(())
}

/// Mixes `seed` into the kernel's input pool and reseeds the CRNG from it.
fn reseed(seed: &[u8]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let random = File::options()
        .write(true)
        .open("/dev/random")
        .map_err(|e| format!("failed to open /dev/random to reseed it: {e}"))?;
    let info = rand_pool_info(seed);
    // SAFETY: `info` is a `struct rand_pool_info` (two ints, then `buf_size` bytes) in a
    // u32-aligned buffer that outlives the call; the kernel only reads it.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "failed to add the host's seed to the random pool (RNDADDENTROPY): {e}"
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("failed to reseed the kernel's CRNG (RNDRESEEDCRNG): {e}"));
    }
    Ok(())
}

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` holding (at most
/// [`MAX_SEED_LEN`] bytes of) `seed`, its bits all credited as entropy.
fn rand_pool_info(seed: &[u8]) -> Vec<u32> {
    let seed = &seed[..seed.len().min(MAX_SEED_LEN)];
    let mut bytes: Vec<u8> = Vec::with_capacity(8 + seed.len() + 3);
    bytes.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    bytes.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    bytes.extend_from_slice(seed);
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    bytes.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_info_holds_the_seed_after_its_sizes() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(info.len(), 4);
        assert_eq!(info[0], 40, "bits credited");
        assert_eq!(info[1], 5, "bytes");
        let bytes: Vec<u8> = info[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 0, 0, 0]);
        let long = rand_pool_info(&[7; MAX_SEED_LEN + 100]);
        assert_eq!(long[1] as usize, MAX_SEED_LEN);
        assert_eq!(long.len(), 2 + MAX_SEED_LEN / 4);
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr.
        let ioc = |dir: libc::c_ulong, nr: libc::c_ulong, size: libc::c_ulong| {
            dir << 30 | size << 16 | (b'R' as libc::c_ulong) << 8 | nr
        };
        assert_eq!(RNDADDENTROPY, ioc(1, 3, 8));
        assert_eq!(RNDRESEEDCRNG, ioc(0, 7, 0));
    }
}
