//! The uncompressed x86_64 kernel, booted through PVH.
//!
//! A bzImage decompresses itself in the guest before it boots, which under TCG is a large part
//! of a boot (about a second of five for Debian's 6.12). The same kernel as an ELF `vmlinux`
//! whose notes carry a PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`, `CONFIG_PVH`) is loaded
//! by QEMU directly. It is extracted once per store kernel, next to the bzImage, and reused by
//! every run; a kernel that cannot boot this way (no PVH note, a compression vmtest does not
//! read) is noted as such and boots from its bzImage.
//!
//! Several VM threads and processes may want the same kernel at once: one extracts it while
//! holding an flock on `.vmlinux-pvh.lock` in the kernel's dir, the others wait and reuse its
//! work. It is written under a temp name, its size checked, and renamed into place; an image
//! that is not a whole ELF (cut short by anything) is extracted again. A temp file found while
//! holding the lock was left by a run that was killed, and is removed.
//!
//! This module offers the image ([`Kernel::pvh_image`]); the host chooses what to boot
//! (`Accel::boot_image`), and only TCG boots the PVH image. Under KVM decompression runs at native speed, and a KVM that
//! cannot run the guest fails loudly on the bzImage ("KVM internal error"), which the fallback
//! to TCG relies on; on the PVH image it hangs silently instead.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use object::elf::{FileHeader64, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::decompress::{decompress, Format};
use super::image::bzimage_payload;
use super::{Kernel, KernelError};
use crate::arch::Arch;

/// The extracted kernel, in the kernel's store dir.
const PVH_NAME: &str = "vmlinux-pvh";
/// Left instead when the kernel cannot boot through PVH; holds the reason.
const NO_PVH_NAME: &str = "vmlinux-pvh.none";
/// Held (flock) while the image is extracted.
const LOCK_NAME: &str = ".vmlinux-pvh.lock";
/// Prefix of the temp names the image is written under.
const TMP_PREFIX: &str = ".vmlinux-pvh.tmp-";
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point.
const PHYS32_ENTRY: u32 = 18;

impl Kernel {
    /// For a store x86_64 kernel that can boot through PVH, its uncompressed ELF (extracted on
    /// first use); `None` for other kernels, and for one that cannot boot that way. Which
    /// image to boot is the host's choice, by accelerator (`Accel::boot_image`).
    ///
    /// Extraction problems are not errors: the bzImage still boots.
    pub(crate) fn pvh_image(&self) -> Option<PathBuf> {
        match (&self.store_dir, self.arch) {
            (Some(dir), Arch::X86_64) => pvh_image(&self.image, dir).unwrap_or(None),
            _ => None,
        }
    }
}

/// The PVH image of `bzimage` in `dir`, extracting it if this has not been tried yet. `None`
/// when it was tried and the kernel cannot boot that way.
fn pvh_image(bzimage: &Path, dir: &Path) -> Result<Option<PathBuf>, KernelError> {
    let pvh = dir.join(PVH_NAME);
    let none = dir.join(NO_PVH_NAME);
    let done = || {
        if is_whole_elf(&pvh) {
            Some(Some(pvh.clone()))
        } else if none.is_file() {
            Some(None)
        } else {
            None
        }
    };
    if let Some(done) = done() {
        return Ok(done);
    }
    let lock_path = dir.join(LOCK_NAME);
    let lock = fs::File::create(&lock_path)
        .map_err(|e| KernelError::io("create the PVH extraction lock", &lock_path, e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| KernelError::io("lock", &lock_path, e.into()))?;
    // Another thread or process may have extracted it while this one waited.
    if let Some(done) = done() {
        return Ok(done);
    }
    remove_stale_temps(dir);
    eprintln!(
        "vmtest: extracting the uncompressed kernel from {} for PVH boot (once per kernel)",
        bzimage.display()
    );
    let bytes = fs::read(bzimage).map_err(|e| KernelError::io("read kernel image", bzimage, e))?;
    let (target, contents) = match extract(&bytes) {
        Ok(elf) => (pvh.clone(), elf),
        Err(reason) => (none, reason.into_bytes()),
    };
    write_atomically(dir, &target, &contents)?;
    Ok((target == pvh).then_some(pvh))
}

/// Writes `contents` to `target` in `dir` under a temp name unique to this process and call,
/// checks its size, and renames it into place.
fn write_atomically(dir: &Path, target: &Path, contents: &[u8]) -> Result<(), KernelError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{write}", std::process::id()));
    let (mut file, partial) =
        crate::vm::process::create_partial(&tmp).map_err(|e| KernelError::io("create", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| KernelError::io("write", &tmp, e))?;
    let written = file.metadata().map_err(|e| KernelError::io("check", &tmp, e))?.len();
    if written != contents.len() as u64 {
        let short = std::io::Error::other(format!(
            "{written} bytes on disk where {} were written",
            contents.len()
        ));
        return Err(KernelError::io("check", &tmp, short));
    }
    drop(file);
    partial.persist(target).map_err(|e| KernelError::io("rename into place", target, e))
}

/// Removes the temp files of extractions that were cut short. Call with the lock held.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether `path` is a 64-bit ELF file as long as its headers say: its program headers' file
/// data and its section header table (at the end of a `vmlinux`) all lie within it.
fn is_whole_elf(path: &Path) -> bool {
    let Ok(mut file) = fs::File::open(path) else { return false };
    let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
    let mut head = Vec::new();
    if (&mut file).take(64 * 1024).read_to_end(&mut head).is_err() {
        return false;
    }
    let Ok(header) = FileHeader64::<Endianness>::parse(head.as_slice()) else { return false };
    let Ok(endian) = header.endian() else { return false };
    let Ok(segments) = header.program_headers(endian, head.as_slice()) else { return false };
    let sections_end = header.e_shoff.get(endian).checked_add(
        u64::from(header.e_shnum.get(endian)) * u64::from(header.e_shentsize.get(endian)),
    );
    let segments_end = segments.iter().try_fold(0u64, |end, s| {
        Some(end.max(s.p_offset(endian).checked_add(s.p_filesz(endian))?))
    });
    sections_end.zip(segments_end).is_some_and(|(a, b)| a.max(b) <= len)
}

/// The ELF kernel inside a bzImage, if it has a PVH entry point; otherwise why not.
pub(crate) fn extract(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let payload = bzimage_payload(bzimage)?;
    // The build appends the uncompressed size (4 bytes) to the compressed stream.
    let stream = payload.get(..payload.len().saturating_sub(4)).unwrap_or_default();
    let Some(format) = Format::of_magic(stream) else {
        let magic: Vec<String> = stream.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(format!("payload compression not read by vmtest (magic {})", magic.join(" ")));
    };
    let elf = decompress(format, std::io::Cursor::new(stream.to_vec()))
        .map_err(|e| format!("failed to decompress the {} payload: {e}", format.name()))?;
    if has_pvh_entry(&elf)? {
        Ok(elf)
    } else {
        Err("the kernel has no PVH entry point (built without CONFIG_PVH)".to_owned())
    }
}

/// Whether `elf` is a 64-bit ELF whose notes hold a Xen `PHYS32_ENTRY`.
fn has_pvh_entry(elf: &[u8]) -> Result<bool, String> {
    let header = FileHeader64::<Endianness>::parse(elf)
        .map_err(|e| format!("the payload is not a 64-bit ELF: {e}"))?;
    let endian = header.endian().map_err(|e| format!("the payload's ELF header: {e}"))?;
    let segments =
        header.program_headers(endian, elf).map_err(|e| format!("the payload's segments: {e}"))?;
    for segment in segments.iter().filter(|s| s.p_type(endian) == PT_NOTE) {
        let Ok(Some(mut notes)) = segment.notes(endian, elf) else { continue };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == PHYS32_ENTRY {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage around `payload`: setup header fields only, as `payload` reads them.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0; 16]);
        image.extend_from_slice(payload);
        image
    }

    /// A minimal ELF64 (x86_64) whose one PT_NOTE segment holds a Xen note of type `n_type`.
    fn elf_with_xen_note(n_type: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&n_type.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        let mut phdr = vec![0u8; 56];
        phdr[..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        phdr[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        phdr[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        phdr[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_memsz
        phdr[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        elf.extend_from_slice(&phdr);
        elf.extend_from_slice(&note);
        elf
    }

    fn gzip_with_size(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = Vec::new();
        let mut encoder = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap();
        gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
        gz
    }

    #[test]
    fn extracts_an_elf_with_a_pvh_entry_once_and_notes_one_without() {
        let dir = crate::image::elf::test_support::temp_dir("pvh");
        let store_kernel = |name: &str, n_type: u32| {
            store_kernel(
                &dir.path().join(name),
                &bzimage(&gzip_with_size(&elf_with_xen_note(n_type))),
            )
        };

        let pvh = store_kernel("pvh", PHYS32_ENTRY);
        let booted = pvh.pvh_image().unwrap();
        assert_eq!(booted, dir.path().join("pvh").join(PVH_NAME));
        assert_eq!(fs::read(&booted).unwrap(), elf_with_xen_note(PHYS32_ENTRY));
        // Reused, not extracted again: the same file stays.
        let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
        let first = inode(&booted);
        assert_eq!(inode(&pvh.pvh_image().unwrap()), first);
        // TCG boots it, KVM the bzImage.
        assert_eq!(crate::vm::accel::Accel::Tcg.boot_image(&pvh), booted);
        assert_eq!(crate::vm::accel::Accel::Kvm.boot_image(&pvh), pvh.image);

        let plain = store_kernel("plain", 17);
        assert_eq!(plain.pvh_image(), None);
        let reason = fs::read_to_string(dir.path().join("plain").join(NO_PVH_NAME)).unwrap();
        assert!(reason.contains("no PVH entry point"), "{reason}");
        assert_eq!(plain.pvh_image(), None);
        // No temp file is left behind.
        for kdir in ["pvh", "plain"] {
            let names: Vec<String> = fs::read_dir(dir.path().join(kdir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        }
    }

    fn store_kernel(dir: &Path, image_bytes: &[u8]) -> Kernel {
        fs::create_dir_all(dir).unwrap();
        let image = dir.join("vmlinuz");
        fs::write(&image, image_bytes).unwrap();
        Kernel {
            name: "k".to_owned(),
            arch: Arch::X86_64,
            version: None,
            image,
            modules_dir: None,
            config: None,
            flavour: None,
            package: None,
            store_dir: Some(dir.to_owned()),
        }
    }

    /// An ELF with a PVH note, `padding` bytes of code, and a section header table at its
    /// end (as a `vmlinux` has).
    fn big_elf(padding: usize) -> Vec<u8> {
        let mut elf = elf_with_xen_note(PHYS32_ENTRY);
        elf.resize(elf.len() + padding, 0x90);
        let shoff = elf.len() as u64;
        elf[40..48].copy_from_slice(&shoff.to_le_bytes()); // e_shoff
        elf[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf[60..62].copy_from_slice(&1u16.to_le_bytes()); // e_shnum
        elf.resize(elf.len() + 64, 0);
        elf
    }

    #[test]
    fn threads_extracting_the_same_kernel_at_once_all_get_it_whole() {
        let dir = crate::image::elf::test_support::temp_dir("pvh-race");
        let elf = big_elf(24 << 20);
        let kernel = store_kernel(dir.path(), &bzimage(&gzip_with_size(&elf)));
        // Leftovers of an extraction that was killed.
        fs::write(dir.path().join(format!("{TMP_PREFIX}1-0")), b"cut short").unwrap();
        let threads = 8;
        let barrier = std::sync::Barrier::new(threads);
        let booted: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        kernel.pvh_image().unwrap_or_else(|| kernel.image.clone())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let pvh = dir.path().join(PVH_NAME);
        assert!(booted.iter().all(|b| *b == pvh), "some thread boots the bzImage: {booted:?}");
        assert!(fs::read(&pvh).unwrap() == elf, "the extracted kernel is not the ELF");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(TMP_PREFIX)), "{names:?}");
    }

    #[test]
    fn an_image_cut_short_is_extracted_again() {
        let dir = crate::image::elf::test_support::temp_dir("pvh-cut");
        let elf = big_elf(1 << 20);
        let kernel = store_kernel(dir.path(), &bzimage(&gzip_with_size(&elf)));
        let pvh = dir.path().join(PVH_NAME);
        fs::write(&pvh, &elf[..elf.len() / 2]).unwrap();
        assert!(!is_whole_elf(&pvh));
        assert_eq!(kernel.pvh_image(), Some(pvh.clone()));
        assert!(fs::read(&pvh).unwrap() == elf);
        assert!(is_whole_elf(&pvh));
    }

    #[test]
    fn a_kernel_given_by_path_boots_as_given() {
        let kernel = Kernel {
            name: "k".into(),
            arch: Arch::X86_64,
            version: None,
            image: "/nonexistent/bzImage".into(),
            modules_dir: None,
            config: None,
            flavour: None,
            package: None,
            store_dir: None,
        };
        assert_eq!(kernel.pvh_image(), None);
    }

    #[test]
    fn finds_the_payload_from_the_setup_header() {
        assert_eq!(bzimage_payload(&bzimage(b"compressed")).unwrap(), b"compressed");
    }

    #[test]
    fn rejects_what_is_not_a_bzimage_or_lies_about_its_payload() {
        assert!(bzimage_payload(&[0; 4096]).unwrap_err().contains("HdrS"));
        let mut image = bzimage(b"abc");
        image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(bzimage_payload(&image).unwrap_err().contains("beyond the file's end"));
        let mut old = bzimage(b"abc");
        old[0x206..0x208].copy_from_slice(&0x206u16.to_le_bytes());
        assert!(bzimage_payload(&old).unwrap_err().contains("boot protocol"));
    }

    #[test]
    fn unknown_compression_and_non_elf_payloads_are_reasons() {
        let error = extract(&bzimage(b"LZ4!data1234")).unwrap_err();
        assert!(error.contains("compression not read"), "{error}");
        let error = extract(&bzimage(&gzip_with_size(b"not an ELF at all"))).unwrap_err();
        assert!(error.contains("not a 64-bit ELF"), "{error}");
    }
}
