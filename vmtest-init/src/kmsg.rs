//! The kernel log as the tests see it happen.
//!
//! PID 1 opens `/dev/kmsg` once, positioned after the boot messages, and after each test drains
//! the records logged while it ran. The host decides what in them is a splat; the guest only
//! collects, formatted like `dmesg` (`[seconds.micros] message`), bounded in size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// Most bytes of kernel log reported for one test; beyond it the start is kept (the first
/// splat is what matters) and a line says how much was dropped.
pub const MAX_TEST_LOG: usize = 256 << 10;

/// The largest record `/dev/kmsg` returns (the kernel's `CONSOLE_EXT_LOG_MAX` is 8 KiB).
const RECORD_BUF: usize = 16 << 10;

/// A reader of the kernel log from a point on.
pub struct Kmsg {
    file: File,
}

impl Kmsg {
    /// Opens `/dev/kmsg` positioned after every record logged so far.
    pub fn open() -> Result<Kmsg, String> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open("/dev/kmsg")
            .map_err(|e| format!("failed to open /dev/kmsg: {e}"))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| format!("failed to seek /dev/kmsg to its end: {e}"))?;
        Ok(Kmsg { file })
    }

    /// The records logged since the last call (or since [`Kmsg::open`]), as text lines.
    pub fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dropped = 0usize;
        let mut buf = vec![0; RECORD_BUF];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let line = format_record(&buf[..n]);
                    if out.len() + line.len() <= MAX_TEST_LOG {
                        out.extend_from_slice(&line);
                    } else {
                        dropped += line.len();
                    }
                }
                // Records were overwritten before we read them: the next read resumes at the
                // oldest one still there.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {
                    out.extend_from_slice(b"[vmtest: kernel log records were lost]\n");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.extend_from_slice(
                        format!("[vmtest: failed to read /dev/kmsg: {e}]\n").as_bytes(),
                    );
                    break;
                }
            }
        }
        if dropped > 0 {
            out.extend_from_slice(
                format!("[vmtest: {dropped} more bytes of kernel log dropped]\n").as_bytes(),
            );
        }
        out
    }
}

/// Formats one `/dev/kmsg` record (`prio,seq,usec,flags[,...];text\n[ KEY=value\n]...`) as
/// `[sec.usec] text\n`. Continuation lines (dictionary) are dropped; text escapes (`\x0a`)
/// are kept as the kernel wrote them. A record that does not parse is passed through.
pub fn format_record(record: &[u8]) -> Vec<u8> {
    let first = record.split(|&b| b == b'\n').next().unwrap_or_default();
    let Some(semi) = first.iter().position(|&b| b == b';') else {
        let mut line = first.to_vec();
        line.push(b'\n');
        return line;
    };
    let (header, text) = (&first[..semi], &first[semi + 1..]);
    let usec = header
        .split(|&b| b == b',')
        .nth(2)
        .and_then(|field| std::str::from_utf8(field).ok())
        .and_then(|field| field.parse::<u64>().ok());
    let mut line = match usec {
        Some(usec) => format!("[{:5}.{:06}] ", usec / 1_000_000, usec % 1_000_000).into_bytes(),
        None => Vec::new(),
    };
    line.extend_from_slice(text);
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_record_like_dmesg() {
        let record = b"4,1234,5123456,-;WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2\n SUBSYSTEM=x\n";
        assert_eq!(
            format_record(record),
            b"[    5.123456] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1/0x2\n".to_vec()
        );
    }

    #[test]
    fn passes_through_what_does_not_parse() {
        assert_eq!(format_record(b"no header here"), b"no header here\n".to_vec());
        assert_eq!(format_record(b"6,1,x,-;text"), b"text\n".to_vec());
    }
}
