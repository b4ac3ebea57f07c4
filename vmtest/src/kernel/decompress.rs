//! Decompression of what kernels ship compressed: modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) and
//! the compressed kernel inside a bzImage or an EFI zboot image. One reader per format
//! ([`reader`]), chosen by magic or file name, and the streaming LZMA2 reader of Kbuild's
//! module `.xz` layout ([`xz_lzma2`]).
//!
//! xz streams as a whole go through xz4rust, which reads the x86 BCJ filter of the kernel's
//! own xz payload; the LZMA2 data of a module's `.xz` through lzma-rust2, which streams (so a
//! read can stop early) at twice xz4rust's speed.

use std::io::{self, Read};

/// A compression format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Gzip,
    Xz,
    Zstd,
}

impl Format {
    /// The format whose magic `data` starts with.
    pub(crate) fn of_magic(data: &[u8]) -> Option<Format> {
        if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Format::Zstd)
        } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Format::Xz)
        } else if data.starts_with(&[0x1f, 0x8b]) {
            Some(Format::Gzip)
        } else {
            None
        }
    }

    /// The format a file name's extension (`.xz`, `.zst`, `.gz`) says.
    pub(crate) fn of_file_name(name: &str) -> Option<Format> {
        if name.ends_with(".xz") {
            Some(Format::Xz)
        } else if name.ends_with(".zst") {
            Some(Format::Zstd)
        } else if name.ends_with(".gz") {
            Some(Format::Gzip)
        } else {
            None
        }
    }

    /// Its name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
        }
    }
}

/// A reader of `input` decompressed as `format`. A zstd frame header is read here, so a
/// damaged one is an error now; other damage shows when reading.
pub(crate) fn reader(format: Format, input: impl Read + 'static) -> io::Result<Box<dyn Read>> {
    Ok(match format {
        Format::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Format::Xz => Box::new(xz4rust::XzReader::new(input)),
        Format::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        ),
    })
}

/// All of `input`, decompressed as `format`.
pub(crate) fn decompress(format: Format, input: impl Read + 'static) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader(format, input)?.read_to_end(&mut out)?;
    Ok(out)
}

/// The LZMA2 data of a single-block `.xz` stream whose only filter is LZMA2 (as Kbuild
/// compresses modules), as a reader of the decompressed bytes; `None` for any other layout.
/// The stream's index and check, after the data, are not read.
pub(crate) fn xz_lzma2(mut input: impl Read + 'static) -> io::Result<Option<Box<dyn Read>>> {
    // Stream header: magic, flags, CRC32.
    let mut header = [0u8; 12];
    input.read_exact(&mut header)?;
    if header[..6] != *b"\xfd7zXZ\0" {
        return Ok(None);
    }
    // Block header: its size, flags, optional sizes, one filter (ID 0x21, one property byte),
    // padding, CRC32.
    let mut size = [0u8; 1];
    input.read_exact(&mut size)?;
    if size[0] == 0 {
        return Ok(None); // No block: an empty stream.
    }
    let mut block = vec![0u8; usize::from(size[0]) * 4 + 3];
    input.read_exact(&mut block)?;
    let flags = block[0];
    if flags & 0x3f != 0 {
        return Ok(None); // More than one filter, or reserved bits.
    }
    let mut at = 1;
    for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
        if present {
            // A variable-length integer: bytes with the top bit set continue it.
            while block.get(at).is_some_and(|b| b & 0x80 != 0) {
                at += 1;
            }
            at += 1;
        }
    }
    let (Some(&0x21), Some(&1), Some(&dict)) =
        (block.get(at), block.get(at + 1), block.get(at + 2))
    else {
        return Ok(None);
    };
    // Kbuild's modules use 1 MiB (`--lzma2=dict=1MiB`); anything past 64 MiB is read in full.
    if dict > 29 {
        return Ok(None);
    }
    let dict_size = (2 | u32::from(dict & 1)) << (dict / 2 + 11);
    Ok(Some(Box::new(lzma_rust2::Lzma2Reader::new(input, dict_size, None))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lzma2_data_of_an_xz_stream() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut data.as_slice(), &mut xz).unwrap();
        let mut stream = xz_lzma2(std::io::Cursor::new(xz.clone())).unwrap().unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        // Two filters (a BCJ before LZMA2, say): not this reader's.
        let mut two_filters = xz.clone();
        two_filters[13] |= 0x01;
        assert!(xz_lzma2(std::io::Cursor::new(two_filters)).unwrap().is_none());
        assert!(xz_lzma2(std::io::Cursor::new(b"not xz at all".to_vec())).unwrap().is_none());
        assert!(xz_lzma2(std::io::Cursor::new(xz[..5].to_vec())).is_err());
    }

    #[test]
    fn every_format_round_trips_and_is_told_by_magic_and_name() {
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut data.as_slice(), &mut xz).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        for (format, bytes, name) in [(Format::Xz, xz, "m.ko.xz"), (Format::Gzip, gz, "m.ko.gz")] {
            assert_eq!(Format::of_magic(&bytes), Some(format));
            assert_eq!(Format::of_file_name(name), Some(format));
            assert_eq!(decompress(format, std::io::Cursor::new(bytes)).unwrap(), data);
        }
        assert_eq!(Format::of_magic(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some(Format::Zstd));
        assert_eq!(Format::of_file_name("m.ko.zst"), Some(Format::Zstd));
        assert_eq!(Format::of_magic(b"LZ4!"), None);
        assert_eq!(Format::of_file_name("m.ko"), None);
        assert!(reader(Format::Zstd, std::io::Cursor::new(b"not zstd".to_vec())).is_err());
    }
}
