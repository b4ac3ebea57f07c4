//! Unpacks a run's payload (a newc archive, as the host's initramfs writer makes it) over the
//! guest's root after a restore: directories, regular files and symbolic links. An entry
//! replaces what is at its path (a directory stays and takes the entry's mode); a name that
//! is absolute or climbs out with `..`, another file type or a malformed header is an error
//! naming the entry.

use std::fs::{self, File, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// `070701`, the new portable format without checksums.
const MAGIC: &[u8; 6] = b"070701";
/// Magic and thirteen 8-digit hex fields.
const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// Longest entry name accepted.
const MAX_NAME_LEN: usize = 4096;
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// What [`unpack`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// Entries written (the trailer not counted).
    pub entries: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
}

/// Unpacks the archive read from `archive` under `root`.
pub(crate) fn unpack(mut archive: impl Read, root: &Path) -> Result<Unpacked, String> {
    let mut done = Unpacked::default();
    // Bytes read so far, for the 4-byte alignment of names and data.
    let mut offset: u64 = 0;
    loop {
        let mut header = [0u8; HEADER_LEN];
        read_exact(&mut archive, &mut header, &mut offset, "an entry's header")?;
        if &header[..6] != MAGIC {
            return Err(format!(
                "failed to unpack the payload: an entry at byte {} has no newc magic",
                offset - HEADER_LEN as u64
            ));
        }
        let field = |index: usize| -> Result<u32, String> {
            let start = 6 + index * 8;
            std::str::from_utf8(&header[start..start + 8])
                .ok()
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    format!("failed to unpack the payload: header field {index} is not hex")
                })
        };
        let mode = field(1)?;
        let size = u64::from(field(6)?);
        let name_len = field(11)? as usize;
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(format!("failed to unpack the payload: a name of {name_len} bytes"));
        }
        let mut name = vec![0u8; name_len];
        read_exact(&mut archive, &mut name, &mut offset, "an entry's name")?;
        skip_padding(&mut archive, &mut offset)?;
        if name.pop() != Some(0) {
            return Err("failed to unpack the payload: an entry's name does not end in NUL".into());
        }
        let name = String::from_utf8(name)
            .map_err(|_| "failed to unpack the payload: an entry's name is not UTF-8".to_owned())?;
        if name == TRAILER {
            return Ok(done);
        }
        let path = guest_path(root, &name)?;
        let failed = |what: &str, e: io::Error| {
            format!("failed to unpack the payload: failed to {what} {}: {e}", path.display())
        };
        let permissions = Permissions::from_mode(mode & 0o7777);
        match mode & S_IFMT {
            S_IFDIR => {
                if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    remove(&path).map_err(|e| failed("replace", e))?;
                    fs::create_dir(&path).map_err(|e| failed("create", e))?;
                }
                fs::set_permissions(&path, permissions)
                    .map_err(|e| failed("set the mode of", e))?;
                skip(&mut archive, size, &mut offset)?;
            }
            S_IFREG => {
                remove(&path).map_err(|e| failed("replace", e))?;
                let mut file = File::create(&path).map_err(|e| failed("create", e))?;
                let copied = io::copy(&mut (&mut archive).take(size), &mut file)
                    .map_err(|e| failed("write", e))?;
                offset += copied;
                if copied != size {
                    return Err(format!(
                        "failed to unpack the payload: it ends inside {} ({copied} of {size} bytes)",
                        path.display()
                    ));
                }
                file.set_permissions(permissions).map_err(|e| failed("set the mode of", e))?;
                done.bytes += size;
            }
            S_IFLNK => {
                if size > MAX_NAME_LEN as u64 {
                    return Err(format!(
                        "failed to unpack the payload: the link {} has a target of {size} bytes",
                        path.display()
                    ));
                }
                let mut target = vec![0u8; size as usize];
                read_exact(&mut archive, &mut target, &mut offset, "a link's target")?;
                remove(&path).map_err(|e| failed("replace", e))?;
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
                std::os::unix::fs::symlink(target, &path).map_err(|e| failed("create", e))?;
            }
            other => {
                return Err(format!(
                    "failed to unpack the payload: {} is of file type {other:o}, which a payload \
                     cannot carry",
                    path.display()
                ))
            }
        }
        skip_padding(&mut archive, &mut offset)?;
        done.entries += 1;
    }
}

/// `name` under `root`, refused when it is absolute or climbs out.
fn guest_path(root: &Path, name: &str) -> Result<PathBuf, String> {
    let relative = Path::new(name);
    if !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!(
            "failed to unpack the payload: the entry {name:?} is not a plain relative path"
        ));
    }
    Ok(root.join(relative))
}

/// Removes what is at `path` unless it is a directory; nothing there is fine.
fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn read_exact(
    archive: &mut impl Read,
    buf: &mut [u8],
    offset: &mut u64,
    what: &str,
) -> Result<(), String> {
    archive
        .read_exact(buf)
        .map_err(|e| format!("failed to unpack the payload: failed to read {what}: {e}"))?;
    *offset += buf.len() as u64;
    Ok(())
}

fn skip(archive: &mut impl Read, len: u64, offset: &mut u64) -> Result<(), String> {
    let skipped = io::copy(&mut archive.take(len), &mut io::sink())
        .map_err(|e| format!("failed to unpack the payload: {e}"))?;
    *offset += skipped;
    if skipped != len {
        return Err("failed to unpack the payload: it ends inside an entry".to_owned());
    }
    Ok(())
}

/// Skips to the next multiple of 4 bytes.
fn skip_padding(archive: &mut impl Read, offset: &mut u64) -> Result<(), String> {
    let pad = (4 - *offset % 4) % 4;
    skip(archive, pad, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One newc entry as the host's writer makes it.
    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let fields = [1, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(MAGIC);
        for value in fields {
            out.extend_from_slice(format!("{value:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, mode, data) in entries {
            entry(&mut out, name, *mode, data);
        }
        entry(&mut out, TRAILER, 0, b"");
        out
    }

    #[test]
    fn files_dirs_and_links_land_and_replace_what_was_there() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("vmtest")).unwrap();
        fs::write(root.path().join("vmtest/plan"), b"old plan, longer than the new one").unwrap();
        fs::write(root.path().join("work"), b"a file where a dir goes").unwrap();
        let bytes = archive(&[
            ("vmtest", S_IFDIR | 0o755, b""),
            ("vmtest/plan", S_IFREG | 0o644, b"new"),
            ("work", S_IFDIR | 0o700, b""),
            ("work/data.bin", S_IFREG | 0o600, &[7; 4099]),
            ("work/link", S_IFLNK | 0o777, b"data.bin"),
        ]);
        let done = unpack(&bytes[..], root.path()).unwrap();
        assert_eq!(done, Unpacked { entries: 5, bytes: 3 + 4099 });
        assert_eq!(fs::read(root.path().join("vmtest/plan")).unwrap(), b"new");
        let work = fs::metadata(root.path().join("work")).unwrap();
        assert!(work.is_dir());
        assert_eq!(work.permissions().mode() & 0o7777, 0o700);
        assert_eq!(fs::read(root.path().join("work/link")).unwrap(), vec![7; 4099]);
        let data = fs::metadata(root.path().join("work/data.bin")).unwrap();
        assert_eq!(data.permissions().mode() & 0o7777, 0o600);
    }

    #[test]
    fn names_that_climb_out_other_types_and_cut_archives_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let climbing = archive(&[("../escaped", S_IFREG | 0o644, b"x")]);
        let e = unpack(&climbing[..], root.path()).unwrap_err();
        assert!(e.contains("\"../escaped\" is not a plain relative path"), "{e}");
        assert!(!root.path().parent().unwrap().join("escaped").exists());
        let absolute = archive(&[("/etc/passwd", S_IFREG | 0o644, b"x")]);
        assert!(unpack(&absolute[..], root.path()).unwrap_err().contains("/etc/passwd"));
        let fifo = archive(&[("fifo", 0o010_644, b"")]);
        let e = unpack(&fifo[..], root.path()).unwrap_err();
        assert!(e.contains("fifo is of file type 10000"), "{e}");
        let whole = archive(&[("big", S_IFREG | 0o644, &[1; 100])]);
        let e = unpack(&whole[..150], root.path()).unwrap_err();
        assert!(e.contains("it ends inside"), "{e}");
        let e = unpack(&[b'x'; HEADER_LEN][..], root.path()).unwrap_err();
        assert!(e.contains("no newc magic"), "{e}");
    }
}
