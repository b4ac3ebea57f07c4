//! Each kernel store entry's manifest, `kernel.sums`: the size, modification time and SHA-256
//! of every file the entry was made of (image, config, each module), and the durable writes
//! (temp name, fsync, rename, fsync of the dir) the store makes with it.
//!
//! ```text
//! # vmtest kernel store checksums: sha256 size mtime path
//! 3b1f...e0 12085184 1731585376.000000000 vmlinuz
//! ```
//! Checking is cheap by default ([`Depth::Quick`]): a size that differs is damage; a file whose
//! size matches but whose mtime does not is hashed; the rest is trusted. [`Depth::Full`] hashes
//! every file (`cargo vmtest kernel verify`, `kernel fetch`).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::KernelError;

/// The manifest's file name in an entry's dir.
pub(crate) const SUMS: &str = "kernel.sums";
const HEADER: &str = "# vmtest kernel store checksums: sha256 size mtime path";

/// How thoroughly to check an entry against its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Sizes always, contents only of files whose mtime changed.
    Quick,
    /// Every file's contents.
    Full,
}

/// One file of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileSum {
    /// Relative to the entry's dir, `/`-separated.
    path: String,
    size: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    /// Lowercase hex, compared as text (parsing thousands of them per check costs more).
    sha256: String,
}

/// The files of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    files: Vec<FileSum>,
}

/// What [`Manifest::check`] found.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The first damage found, naming the file.
    pub(crate) damage: Option<String>,
    /// When files were touched but their contents still match: the manifest with their new
    /// mtimes, to record so the next check need not hash them again.
    pub(crate) refreshed: Option<Manifest>,
}

impl Manifest {
    /// The manifest of the files under `roots` (names in `dir`: a file, or a dir taken
    /// recursively; symlinks are skipped, as the store never copies them).
    pub(crate) fn compute(dir: &Path, roots: &[&str]) -> Result<Manifest, KernelError> {
        let mut paths = Vec::new();
        for root in roots {
            collect(dir, Path::new(root), &mut paths)?;
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        for rel in paths {
            let path = dir.join(&rel);
            let text = rel.to_str().filter(|t| !t.contains(['\n', '\r']));
            let Some(text) = text else {
                return Err(KernelError::io(
                    "record the checksum of",
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "unusable file name"),
                ));
            };
            let meta = fs::metadata(&path).map_err(|e| KernelError::io("stat", &path, e))?;
            let sha256 = hash_file(&path).map_err(|e| KernelError::io("hash", &path, e))?;
            files.push(FileSum {
                path: text.to_owned(),
                size: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                sha256,
            });
        }
        Ok(Manifest { files })
    }

    /// Whether the manifest lists the file or dir `name` (a top-level name of the entry).
    pub(crate) fn covers(&self, name: &str) -> bool {
        self.files.iter().any(|f| {
            f.path == name || f.path.strip_prefix(name).is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The number of files and their total size.
    pub(crate) fn totals(&self) -> (usize, u64) {
        (self.files.len(), self.files.iter().map(|f| f.size).sum())
    }

    pub(crate) fn to_text(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for f in &self.files {
            text += &format!("{} {} {}.{:09} {}\n", f.sha256, f.size, f.mtime.0, f.mtime.1, f.path);
        }
        text
    }

    pub(crate) fn parse(text: &str) -> Result<Manifest, String> {
        let mut files = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            let mut parts = line.splitn(4, ' ');
            let (Some(hex), Some(size), Some(mtime), Some(path)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("fewer than 4 fields"));
            };
            let is_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
            if hex.len() != 64 || !hex.bytes().all(is_hex) {
                return Err(bad("not a SHA-256"));
            }
            let size = size.parse().map_err(|_| bad("bad size"))?;
            let mtime = mtime
                .split_once('.')
                .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)))
                .ok_or_else(|| bad("bad mtime"))?;
            let plain = path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            if !plain {
                return Err(bad("the path is not relative"));
            }
            files.push(FileSum { path: path.to_owned(), size, mtime, sha256: hex.to_owned() });
        }
        if files.is_empty() {
            return Err("it lists no file".to_owned());
        }
        Ok(Manifest { files })
    }

    /// Checks the files in `dir` against the manifest.
    pub(crate) fn check(&self, dir: &Path, depth: Depth) -> Checked {
        let mut touched = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            let path = dir.join(&f.path);
            let damage = |what: String| Checked { damage: Some(what), refreshed: None };
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return damage(format!("`{}` is not a regular file", f.path)),
                Err(e) => return damage(format!("`{}` cannot be read: {e}", f.path)),
            };
            if meta.len() != f.size {
                return damage(format!(
                    "`{}` is {} bytes, its checksum was taken of {} bytes",
                    f.path,
                    meta.len(),
                    f.size
                ));
            }
            let mtime = (meta.mtime(), meta.mtime_nsec());
            if depth == Depth::Quick && mtime == f.mtime {
                continue;
            }
            match hash_file(&path) {
                Ok(sum) if sum == f.sha256 => {}
                Ok(_) => return damage(format!("`{}` does not match its SHA-256", f.path)),
                Err(e) => return damage(format!("`{}` cannot be read: {e}", f.path)),
            }
            if mtime != f.mtime {
                touched.push((i, mtime));
            }
        }
        let refreshed = (!touched.is_empty()).then(|| {
            let mut refreshed = self.clone();
            for (i, mtime) in touched {
                refreshed.files[i].mtime = mtime;
            }
            refreshed
        });
        Checked { damage: None, refreshed }
    }
}

fn collect(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), KernelError> {
    let path = dir.join(rel);
    let meta = fs::symlink_metadata(&path).map_err(|e| KernelError::io("stat", &path, e))?;
    if meta.is_file() {
        out.push(rel.to_owned());
    } else if meta.is_dir() {
        for entry in fs::read_dir(&path).map_err(|e| KernelError::io("read", &path, e))? {
            let entry = entry.map_err(|e| KernelError::io("read", &path, e))?;
            collect(dir, &rel.join(entry.file_name()), out)?;
        }
    }
    Ok(())
}

/// The SHA-256 of the file at `path`, in lowercase hex.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes `contents` to `path` so that a crash leaves either the old file or the new one:
/// a temp name of this process, fsync, rename, fsync of the dir.
pub(crate) fn write_durably(path: &Path, contents: &[u8]) -> Result<(), KernelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(KernelError::io("write", path, e));
    }
    sync_dir(dir)
}

/// fsyncs a dir, making the names created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), KernelError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| KernelError::io("sync", dir, e))
}

/// Flushes everything written on the filesystem holding `dir` (one `syncfs` rather than an
/// fsync per module file).
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), KernelError> {
    let d = File::open(dir).map_err(|e| KernelError::io("open", dir, e))?;
    rustix::fs::syncfs(&d).map_err(|e| KernelError::io("sync the filesystem of", dir, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::scratch_dir;

    fn entry(dir: &Path) {
        fs::create_dir_all(dir.join("modules/kernel/net")).unwrap();
        fs::write(dir.join("vmlinuz"), b"image bytes").unwrap();
        fs::write(dir.join("config"), b"CONFIG_X=y\n").unwrap();
        fs::write(dir.join("modules/kernel/net/dummy.ko"), b"module").unwrap();
        fs::write(dir.join("modules/modules.builtin"), b"").unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("modules/build")).unwrap();
    }

    #[test]
    fn round_trips_and_covers_what_it_was_made_of() {
        let dir = scratch_dir("sums-roundtrip");
        entry(&dir);
        let m = Manifest::compute(&dir, &["vmlinuz", "config", "modules"]).unwrap();
        assert_eq!(m.totals(), (4, 11 + 11 + 6));
        let text = m.to_text();
        assert!(text.contains(" modules/kernel/net/dummy.ko\n"), "{text}");
        assert!(!text.contains("build"), "symlinks are not entry files: {text}");
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        assert!(m.covers("modules") && m.covers("vmlinuz") && !m.covers("modul"));
        let fresh = m.check(&dir, Depth::Full);
        assert!(fresh.damage.is_none() && fresh.refreshed.is_none(), "{fresh:?}");
    }

    #[test]
    fn finds_truncation_by_size_and_same_size_damage_by_hash() {
        let dir = scratch_dir("sums-damage");
        entry(&dir);
        let m = Manifest::compute(&dir, &["vmlinuz", "config", "modules"]).unwrap();

        // Same size, same mtime: only a full check reads the contents.
        let image = dir.join("vmlinuz");
        let mtime = fs::metadata(&image).unwrap().modified().unwrap();
        fs::write(&image, b"IMAGE BYTES").unwrap();
        File::options().write(true).open(&image).unwrap().set_modified(mtime).unwrap();
        assert!(m.check(&dir, Depth::Quick).damage.is_none());
        let full = m.check(&dir, Depth::Full).damage.unwrap();
        assert!(full.contains("`vmlinuz` does not match its SHA-256"), "{full}");

        // Same size, new mtime: a quick check hashes it.
        let newer = mtime + std::time::Duration::from_secs(5);
        File::options().write(true).open(&image).unwrap().set_modified(newer).unwrap();
        let quick = m.check(&dir, Depth::Quick).damage.unwrap();
        assert!(quick.contains("`vmlinuz` does not match"), "{quick}");

        // Restored contents under a new mtime: fine, and the new mtime is offered for recording.
        fs::write(&image, b"image bytes").unwrap();
        File::options().write(true).open(&image).unwrap().set_modified(newer).unwrap();
        let checked = m.check(&dir, Depth::Quick);
        assert!(checked.damage.is_none(), "{checked:?}");
        let refreshed = checked.refreshed.unwrap();
        assert!(refreshed.check(&dir, Depth::Quick).refreshed.is_none());

        // A truncated module is caught by its size alone, a missing one by its absence.
        fs::write(dir.join("modules/kernel/net/dummy.ko"), b"").unwrap();
        let quick = m.check(&dir, Depth::Quick).damage.unwrap();
        assert!(quick.contains("`modules/kernel/net/dummy.ko` is 0 bytes"), "{quick}");
        fs::remove_file(dir.join("config")).unwrap();
        let quick = m.check(&dir, Depth::Quick).damage.unwrap();
        assert!(quick.contains("`config` cannot be read"), "{quick}");
    }

    #[test]
    fn rejects_malformed_manifests() {
        let sum = "00".repeat(32);
        for (text, why) in [
            (String::new(), "lists no file"),
            (format!("{sum} 12 1.0"), "fewer than 4"),
            ("zz 12 1.0 vmlinuz".to_owned(), "not a SHA-256"),
            (format!("{sum} -1 1.0 vmlinuz"), "bad size"),
            (format!("{sum} 1 x vmlinuz"), "bad mtime"),
            (format!("{sum} 1 1.0 ../../etc/passwd"), "not relative"),
            (format!("{sum} 1 1.0 /etc/passwd"), "not relative"),
        ] {
            let err = Manifest::parse(&text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn durable_writes_replace_whole_files_and_leave_no_temp() {
        let dir = scratch_dir("sums-durable");
        let path = dir.join("kernel.meta");
        write_durably(&path, b"one").unwrap();
        write_durably(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&*dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["kernel.meta"]);
        sync_filesystem(&dir).unwrap();
    }
}
