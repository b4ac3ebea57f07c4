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
//! A kernel given by path (`VMTEST_KERNEL=/path/to/bzImage`, as a kernel developer boots their
//! own build) has no store dir: its image is extracted into a dir of the store named by the
//! bzImage's SHA-256 (`x86_64/.pvh-by-content/<sha256>/`), so a rebuild with other bytes gets
//! its own, and the same bytes at another path reuse one. The hash is taken once per file
//! version: an index maps the file's identity (path, device, inode, size, mtime) to it
//! (`.pvh-by-content/ids/`). The least recently used content dirs beyond
//! [`KEEP_BY_CONTENT`] are removed once no run has used them for [`EVICT_AFTER`].
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
/// The store dir (per arch) of the extracted images of kernels given by path.
const BY_CONTENT_DIR: &str = ".pvh-by-content";
/// In it, the index from a file's identity to its content hash.
const IDS_DIR: &str = "ids";
/// Touched on each use of a content dir, for the eviction's "least recently used".
const USED_NAME: &str = ".used";
/// How many content dirs are kept at least.
const KEEP_BY_CONTENT: usize = 4;
/// A content dir beyond [`KEEP_BY_CONTENT`] goes only when unused for this long (a run that
/// just chose it may not have started QEMU yet).
const EVICT_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
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
            (None, Arch::X86_64) => {
                let store = super::Store::open().ok()?;
                let root = store.arch_dir(Arch::X86_64).join(BY_CONTENT_DIR);
                let dir = content_dir(&root, &self.image).ok()?;
                pvh_image(&self.image, &dir).unwrap_or(None)
            }
            _ => None,
        }
    }
}

/// The dir under `root` for the bytes of the kernel image at `image`: named by their SHA-256,
/// looked up through the file's identity so that an unchanged file is hashed once. Marks the
/// dir as used and evicts old ones when it creates one.
fn content_dir(root: &Path, image: &Path) -> Result<PathBuf, KernelError> {
    use std::os::unix::fs::MetadataExt;
    let image = fs::canonicalize(image).map_err(|e| KernelError::io("resolve", image, e))?;
    let meta = fs::metadata(&image).map_err(|e| KernelError::io("read", &image, e))?;
    let identity = format!(
        "{}\0{}\0{}\0{}\0{}.{}",
        image.display(),
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let ids = root.join(IDS_DIR);
    let id_file = ids.join(hex_sha256(identity.as_bytes()));
    let known = fs::read_to_string(&id_file).ok().filter(|hash| is_hex_sha256(hash.trim()));
    let (hash, created) = match known {
        Some(hash) if root.join(hash.trim()).is_dir() => (hash.trim().to_owned(), false),
        _ => {
            let hash = super::manifest::hash_file(&image)
                .map_err(|e| KernelError::io("hash", &image, e))?;
            fs::create_dir_all(&ids).map_err(|e| KernelError::io("create", &ids, e))?;
            let created = !root.join(&hash).is_dir();
            fs::create_dir_all(root.join(&hash))
                .map_err(|e| KernelError::io("create", &root.join(&hash), e))?;
            write_atomically(&ids, &id_file, hash.as_bytes())?;
            (hash, created)
        }
    };
    let dir = root.join(&hash);
    let used = dir.join(USED_NAME);
    fs::write(&used, b"").map_err(|e| KernelError::io("mark as used", &used, e))?;
    if created {
        evict(root, &dir);
    }
    Ok(dir)
}

/// Removes the content dirs under `root` beyond the [`KEEP_BY_CONTENT`] most recently used,
/// if unused for [`EVICT_AFTER`] (never `keep`), and index entries whose dir is gone.
fn evict(root: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| is_hex_sha256(&e.file_name().to_string_lossy()))
        .map(|e| {
            let used = fs::metadata(e.path().join(USED_NAME)).and_then(|m| m.modified());
            (used.unwrap_or(std::time::UNIX_EPOCH), e.path())
        })
        .collect();
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.0));
    for (used, dir) in dirs.iter().skip(KEEP_BY_CONTENT) {
        let idle = used.elapsed().unwrap_or_default();
        if dir != keep && idle >= EVICT_AFTER {
            let _ = fs::remove_dir_all(dir);
        }
    }
    let Ok(ids) = fs::read_dir(root.join(IDS_DIR)) else { return };
    for id in ids.flatten() {
        let points_to = fs::read_to_string(id.path()).unwrap_or_default();
        if !root.join(points_to.trim()).is_dir() {
            let _ = fs::remove_file(id.path());
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
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
    crate::notice::note(&format!(
        "extracting the uncompressed kernel from {} for PVH boot (once per kernel)",
        bzimage.display()
    ));
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
        crate::partial::create_partial(&tmp).map_err(|e| KernelError::io("create", &tmp, e))?;
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
pub(crate) mod tests {
    use super::*;

    /// A store kernel in `dir` whose bzImage holds an ELF with a PVH entry point.
    pub(crate) fn kernel_with_pvh_entry(dir: &Path) -> Kernel {
        store_kernel(dir, &bzimage(&gzip_with_size(&elf_with_xen_note(PHYS32_ENTRY))))
    }

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

    #[test]
    fn a_kernel_by_path_is_extracted_once_per_content() {
        let dir = crate::image::elf::test_support::temp_dir("pvh-by-content");
        let root = dir.path().join("store/.pvh-by-content");
        let image = bzimage(&gzip_with_size(&elf_with_xen_note(PHYS32_ENTRY)));
        let first = dir.path().join("build/arch/x86/boot/bzImage");
        fs::create_dir_all(first.parent().unwrap()).unwrap();
        fs::write(&first, &image).unwrap();

        let content = content_dir(&root, &first).unwrap();
        let hash = content.file_name().unwrap().to_string_lossy().into_owned();
        assert!(is_hex_sha256(&hash), "{hash}");
        let pvh = pvh_image(&first, &content).unwrap().unwrap();
        assert_eq!(fs::read(&pvh).unwrap(), elf_with_xen_note(PHYS32_ENTRY));
        // Looked up again by identity: the same dir, nothing hashed or extracted again.
        assert_eq!(content_dir(&root, &first).unwrap(), content);
        // The same bytes elsewhere share the dir; other bytes get their own.
        let copy = dir.path().join("copy-of-bzImage");
        fs::write(&copy, &image).unwrap();
        assert_eq!(content_dir(&root, &copy).unwrap(), content);
        let mut rebuilt = image.clone();
        rebuilt.push(0);
        fs::write(&first, &rebuilt).unwrap();
        let other = content_dir(&root, &first).unwrap();
        assert_ne!(other, content, "a rebuilt image reused the old extraction");
        // A damaged index entry is hashed again, not trusted.
        for id in fs::read_dir(root.join(IDS_DIR)).unwrap() {
            fs::write(id.unwrap().path(), "../../etc").unwrap();
        }
        assert_eq!(content_dir(&root, &copy).unwrap(), content);
    }

    #[test]
    fn only_old_content_dirs_beyond_the_kept_ones_are_evicted() {
        let dir = crate::image::elf::test_support::temp_dir("pvh-evict");
        let root = dir.path();
        let make = |n: u8, idle: std::time::Duration| {
            let path = root.join(hex_sha256(&[n]));
            fs::create_dir_all(&path).unwrap();
            let used = fs::File::create(path.join(USED_NAME)).unwrap();
            used.set_modified(std::time::SystemTime::now() - idle).unwrap();
            path
        };
        let hour = EVICT_AFTER;
        let old: Vec<PathBuf> = (0..6).map(|n| make(n, hour * (u32::from(n) + 2))).collect();
        let recent = make(9, std::time::Duration::ZERO);
        evict(root, &recent);
        let alive: Vec<bool> = old.iter().map(|p| p.is_dir()).collect();
        // The 4 most recently used stay (the recent one and the 3 least idle), the rest go.
        assert_eq!(alive, [true, true, true, false, false, false]);
        assert!(recent.is_dir());
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
