//! Reading a kernel image's header: its architecture and, where the image has it, its version.
//!
//! Formats: the x86 bzImage (boot protocol header `HdrS` at 0x202, `kernel_version` pointer at
//! 0x20E), the arm64 and riscv64 `Image` (magic at 0x38; plain, as Debian ships arm64, or
//! gzip-compressed), and the EFI zboot wrapper (`MZ`, `zimg` at 4) with a gzip payload. The
//! bzImage's setup header is read here only ([`bzimage_payload`] gives PVH extraction its
//! compressed kernel).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::decompress::{self, Format};
use super::KernelError;
use crate::arch::Arch;

/// What a kernel image's header says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageInfo {
    /// The architecture the image boots on.
    pub arch: Arch,
    /// The kernel release (`uname -r`, e.g. `6.12.117+deb12-amd64`), when the image carries it.
    pub version: Option<String>,
}

/// Reads the architecture and version of the kernel image at `path`.
pub(crate) fn image_info(path: &Path) -> Result<ImageInfo, KernelError> {
    let io_err = |source| KernelError::io("read kernel image", path, source);
    let mut file = File::open(path).map_err(io_err)?;
    // Enough for the bzImage's version string, which a 16-bit pointer locates.
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut file).take(HEAD_LEN as u64).read_to_end(&mut head).map_err(io_err)?;
    let not_a_kernel =
        |reason: &str| KernelError::NotAKernel { path: path.to_owned(), reason: reason.to_owned() };

    if let Some(version) = bzimage_version(&head) {
        return Ok(ImageInfo { arch: Arch::X86_64, version });
    }
    if let Some(arch) = image_arch(&head) {
        let version = scan_banner(head.as_slice().chain(file)).map_err(io_err)?;
        return Ok(ImageInfo { arch, version });
    }
    if head.starts_with(&GZIP_MAGIC) {
        let file = File::open(path).map_err(io_err)?;
        return gzip_image(decompress::reader(Format::Gzip, file).map_err(io_err)?)
            .map_err(io_err)?
            .ok_or_else(|| not_a_kernel("gzip data that is not an arm64 or riscv64 Image"));
    }
    if head.len() >= 32 && &head[0..2] == b"MZ" && &head[4..8] == b"zimg" {
        let offset = u64::from(le32(&head, 8));
        let size = u64::from(le32(&head, 12));
        let comp = &head[24..32];
        let comp = String::from_utf8_lossy(comp.split(|&b| b == 0).next().unwrap_or(b""));
        if comp == "gzip" {
            let mut file = File::open(path).map_err(io_err)?;
            io::copy(&mut (&mut file).take(offset), &mut io::sink()).map_err(io_err)?;
            let payload = decompress::reader(Format::Gzip, file.take(size)).map_err(io_err)?;
            if let Some(info) = gzip_image(payload).map_err(io_err)? {
                return Ok(info);
            }
        }
        // Other payload compressions: the PE header still tells the machine.
        return match pe_machine(&head) {
            Some(arch) => Ok(ImageInfo { arch, version: None }),
            None => Err(not_a_kernel("an EFI zboot image for an unknown machine")),
        };
    }
    if head.starts_with(b"\x7fELF") {
        return Err(not_a_kernel(
            "an ELF file (an uncompressed vmlinux?); give the bootable image: \
             arch/x86/boot/bzImage or arch/arm64/boot/Image",
        ));
    }
    Err(not_a_kernel(
        "no x86 bzImage header (`HdrS` at 0x202), no arm64/riscv64 Image magic at 0x38, \
         not gzip, not EFI zboot",
    ))
}

const HEAD_LEN: usize = 0x200 + 0x10000;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `Some(version)` if `head` starts an x86 bzImage.
fn bzimage_version(head: &[u8]) -> Option<Option<String>> {
    SetupHeader::parse(head).map(|header| header.version())
}

/// The compressed kernel inside a bzImage (boot protocol 2.08 or later); otherwise why not.
pub(crate) fn bzimage_payload(bzimage: &[u8]) -> Result<&[u8], String> {
    SetupHeader::parse(bzimage).ok_or("not a bzImage (no HdrS signature)")?.payload()
}

/// The setup header of an x86 bzImage (the kernel's `Documentation/arch/x86/boot.rst`): the
/// one reader of it, for the version and the compressed payload.
struct SetupHeader<'a> {
    image: &'a [u8],
}

impl<'a> SetupHeader<'a> {
    /// `None` unless `image` starts a bzImage: `HdrS` at 0x202, the header readable to 0x210.
    fn parse(image: &'a [u8]) -> Option<SetupHeader<'a>> {
        (image.len() >= 0x210 && &image[0x202..0x206] == b"HdrS").then_some(SetupHeader { image })
    }

    /// The release the `kernel_version` pointer (0x20E) leads to, when the image has it.
    fn version(&self) -> Option<String> {
        let head = self.image;
        let ptr = usize::from(le16(head, 0x20E));
        if ptr == 0 {
            return None;
        }
        // The pointer is relative to the end of the 0x200-byte boot sector.
        let text = head.get(ptr + 0x200..)?;
        let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
        String::from_utf8_lossy(text).split_whitespace().next().map(str::to_owned)
    }

    /// The compressed kernel: `payload_offset` (0x248) and `payload_length` (0x24C), counted
    /// from the end of the setup sectors.
    fn payload(&self) -> Result<&'a [u8], String> {
        let image = self.image;
        let u32_at = |at: usize| {
            image.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let version = le16(image, 0x206);
        if version < 0x208 {
            return Err(format!("boot protocol {version:#x} has no payload fields"));
        }
        let setup_sects = match image[0x1f1] {
            0 => 4,
            n => usize::from(n),
        };
        let start = (setup_sects + 1) * 512;
        let (offset, len) = u32_at(0x248).zip(u32_at(0x24c)).ok_or("truncated setup header")?;
        start
            .checked_add(offset)
            .and_then(|from| image.get(from..from.checked_add(len)?))
            .ok_or_else(|| format!("payload ({len} bytes at {offset:#x}) beyond the file's end"))
    }
}

/// The architecture of a plain arm64 or riscv64 `Image`.
fn image_arch(head: &[u8]) -> Option<Arch> {
    match head.get(0x38..0x3C)? {
        b"ARM\x64" => Some(Arch::Aarch64),
        b"RSC\x05" => Some(Arch::Riscv64),
        _ => None,
    }
}

/// The machine of a PE image (the EFI stub of a zboot image).
fn pe_machine(head: &[u8]) -> Option<Arch> {
    let pe = usize::try_from(le32(head, 0x3C)).ok()?;
    if head.get(pe..pe + 4)? != b"PE\0\0" || head.len() < pe + 6 {
        return None;
    }
    match le16(head, pe + 4) {
        0xAA64 => Some(Arch::Aarch64),
        0x5064 => Some(Arch::Riscv64),
        0x8664 => Some(Arch::X86_64),
        _ => None,
    }
}

/// Reads a decompressed stream that should be an arm64 or riscv64 `Image`.
fn gzip_image(mut data: impl Read) -> io::Result<Option<ImageInfo>> {
    let mut head = Vec::with_capacity(64);
    (&mut data).take(64).read_to_end(&mut head)?;
    let Some(arch) = image_arch(&head) else {
        return Ok(None);
    };
    let version = scan_banner(head.as_slice().chain(data))?;
    Ok(Some(ImageInfo { arch, version }))
}

/// Finds `Linux version <release> ` (the kernel's `linux_banner`) in an uncompressed image.
fn scan_banner(mut data: impl Read) -> io::Result<Option<String>> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut buf = vec![0u8; 1 << 20];
    let mut carry = 0usize; // bytes kept from the previous chunk
    loop {
        let n = data.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(None);
        }
        let filled = carry + n;
        let mut from = 0;
        while let Some(pos) = find(&buf[from..filled], NEEDLE) {
            let start = from + pos + NEEDLE.len();
            let rest = &buf[start..filled];
            match rest.iter().position(|&b| b == b' ' || b == 0) {
                Some(end) if end > 0 && rest[0].is_ascii_digit() => {
                    return Ok(Some(String::from_utf8_lossy(&rest[..end]).into_owned()));
                }
                // Cut off at the chunk's end: keep it for the next round.
                None if rest.len() < 256 => break,
                _ => from = start,
            }
        }
        // Keep the tail in case the banner straddles two chunks.
        let keep = 512.min(filled);
        buf.copy_within(filled - keep..filled, 0);
        carry = keep;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal bzImage: boot sector, `HdrS`, and a version string the header points to.
    pub(crate) fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x2000];
        img[0..2].copy_from_slice(b"MZ");
        img[0x1FE] = 0x55;
        img[0x1FF] = 0xAA;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        let ptr: u16 = 0x1300; // past the first 4 KiB, as in real images
        img[0x20E..0x210].copy_from_slice(&ptr.to_le_bytes());
        let text = format!("{version} (builder@host) #1 SMP PREEMPT_DYNAMIC\0");
        let at = usize::from(ptr) + 0x200;
        img[at..at + text.len()].copy_from_slice(text.as_bytes());
        img
    }

    /// A minimal arm64 `Image` with a banner somewhere in its body.
    pub(crate) fn fake_arm64_image(version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x3000];
        img[0..2].copy_from_slice(b"MZ");
        img[0x38..0x3C].copy_from_slice(b"ARM\x64");
        let banner = format!("Linux version {version} (builder@host) (gcc) #1 SMP\n\0");
        img[0x2100..0x2100 + banner.len()].copy_from_slice(banner.as_bytes());
        img
    }

    fn write_temp(name: &str, bytes: &[u8]) -> (super::super::tests::Scratch, std::path::PathBuf) {
        let dir = super::super::tests::scratch_dir(name);
        let path = dir.join("image");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn synthetic_bzimage() {
        let (_dir, path) = write_temp("bzimage", &fake_bzimage("6.9.0-test"));
        let info = image_info(&path).unwrap();
        assert_eq!(info, ImageInfo { arch: Arch::X86_64, version: Some("6.9.0-test".into()) });
    }

    #[test]
    fn synthetic_arm64_plain_and_gzip() {
        let img = fake_arm64_image("6.13.0-rc1+");
        let (_dir, path) = write_temp("arm64", &img);
        let want = ImageInfo { arch: Arch::Aarch64, version: Some("6.13.0-rc1+".into()) };
        assert_eq!(image_info(&path).unwrap(), want);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &img).unwrap();
        let (_dir, path) = write_temp("arm64-gz", &gz.finish().unwrap());
        assert_eq!(image_info(&path).unwrap(), want);
    }

    #[test]
    fn synthetic_zboot() {
        let img = fake_arm64_image("6.14.0");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &img).unwrap();
        let payload = gz.finish().unwrap();
        let mut zboot = vec![0u8; 0x200];
        zboot[0..2].copy_from_slice(b"MZ");
        zboot[4..8].copy_from_slice(b"zimg");
        zboot[8..12].copy_from_slice(&0x200u32.to_le_bytes());
        zboot[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        zboot[24..28].copy_from_slice(b"gzip");
        zboot[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        zboot[0x80..0x84].copy_from_slice(b"PE\0\0");
        zboot[0x84..0x86].copy_from_slice(&0xAA64u16.to_le_bytes());
        zboot.extend_from_slice(&payload);
        let (_dir, path) = write_temp("zboot", &zboot);
        let info = image_info(&path).unwrap();
        assert_eq!(info, ImageInfo { arch: Arch::Aarch64, version: Some("6.14.0".into()) });

        // An unknown payload compression still yields the machine from the PE header.
        zboot[24..28].copy_from_slice(b"lz4\0");
        let (_dir, path) = write_temp("zboot-lz4", &zboot);
        assert_eq!(image_info(&path).unwrap(), ImageInfo { arch: Arch::Aarch64, version: None });
    }

    #[test]
    fn banner_across_chunks() {
        let mut data = vec![b'x'; (1 << 20) - 20];
        data.extend_from_slice(b"Linux version 6.1.0-56-amd64 (debian-kernel)");
        let got = scan_banner(data.as_slice()).unwrap();
        assert_eq!(got.as_deref(), Some("6.1.0-56-amd64"));
    }

    #[test]
    fn not_a_kernel_names_the_path() {
        let (_dir, path) = write_temp("not-a-kernel", b"#!/bin/sh\necho hello\n");
        let err = image_info(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not a kernel image"), "{err}");
        let missing = path.with_file_name("missing");
        let err = image_info(&missing).unwrap_err().to_string();
        assert!(err.contains("failed to read kernel image") && err.contains("missing"), "{err}");
    }
}
