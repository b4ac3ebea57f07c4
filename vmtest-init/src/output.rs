//! Bounding captured output.

use std::collections::VecDeque;

use crate::protocol::MAX_FRAME_LEN;

/// Most bytes of captured output sent back; beyond that the tail is kept. The output plus the
/// rest of a `TestFinished` frame must fit in one frame.
pub(crate) const CAPTURE_LIMIT: usize = 7 << 20;

const _: () = assert!(CAPTURE_LIMIT + 128 + (64 << 10) <= MAX_FRAME_LEN);

/// Keeps the last `limit` bytes written to it and counts the ones it dropped.
#[derive(Debug)]
pub(crate) struct TailBuffer {
    limit: usize,
    kept: VecDeque<u8>,
    dropped: u64,
}

impl TailBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, kept: VecDeque::new(), dropped: 0 }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.limit {
            let skip = bytes.len() - self.limit;
            self.dropped += skip as u64;
            &bytes[skip..]
        } else {
            bytes
        };
        let excess = (self.kept.len() + bytes.len()).saturating_sub(self.limit);
        self.kept.drain(..excess);
        self.dropped += excess as u64;
        self.kept.extend(bytes);
    }

    /// The kept bytes, preceded by a one-line note when anything was dropped.
    pub(crate) fn finish(self) -> Vec<u8> {
        let kept = Vec::from(self.kept);
        if self.dropped == 0 {
            return kept;
        }
        let mut out = format!(
            "[vmtest-init: output truncated: {} earlier bytes dropped, last {} kept]\n",
            self.dropped,
            kept.len()
        )
        .into_bytes();
        out.extend_from_slice(&kept);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_limit() {
        let mut buf = TailBuffer::new(8);
        buf.push(b"abc");
        buf.push(b"defgh");
        assert_eq!(buf.finish(), b"abcdefgh");
    }

    #[test]
    fn keeps_the_tail_and_notes_the_truncation() {
        let mut buf = TailBuffer::new(4);
        buf.push(b"abc");
        buf.push(b"def");
        buf.push(b"");
        assert_eq!(
            String::from_utf8(buf.finish()).unwrap(),
            "[vmtest-init: output truncated: 2 earlier bytes dropped, last 4 kept]\ncdef"
        );
    }

    #[test]
    fn one_huge_write_is_cut_to_its_tail() {
        let mut buf = TailBuffer::new(3);
        buf.push(b"xy");
        buf.push(b"0123456789");
        let out = buf.finish();
        assert!(out.ends_with(b"\n789"), "{}", String::from_utf8_lossy(&out));
        assert!(String::from_utf8_lossy(&out).contains("9 earlier bytes dropped"));
    }
}
