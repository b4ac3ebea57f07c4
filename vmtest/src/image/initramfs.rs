//! Building the initramfs (newc cpio) the guest boots from.
//!
//! [`Initramfs`] collects entries in memory (host files only by path) and writes them as an
//! uncompressed newc archive, which the kernel unpacks into its rootfs before running `/init`.
//!
//! # Entries and duplicates
//! Guest paths are absolute (`/usr/lib/x`), UTF-8, without `..`; `.` and repeated slashes are
//! ignored. The parent directories of an entry are created (mode 0755) when missing. Adding an
//! entry at a path that already holds one replaces it: the last addition wins, whatever the kinds,
//! with two exceptions that would otherwise lose entries silently: a directory that has entries
//! below it cannot be replaced by a non-directory (re-adding it as a directory only changes its
//! mode), and nothing can be added below a path that is not a directory. Both are errors.
//!
//! # Output
//! Entries are written sorted by path (byte order), so parents precede their children and the
//! same entries always give the same bytes: owner root, mtime 0, inode numbers by position.
//!
//! # Dynamic binaries
//! [`Initramfs::add_elf_with_libraries`] adds a binary with its interpreter and library closure
//! (see [`crate::image::elf::loader`] for the search). The guest has no `/etc/ld.so.cache` and no host
//! symlinks, so the files are laid out where the guest's loader will look without them:
//! - the interpreter as a regular file at exactly its `PT_INTERP` path (the kernel opens that
//!   path), e.g. `/lib64/ld-linux-x86-64.so.2`;
//! - every library as a regular file named by its `DT_NEEDED` name in one directory: the
//!   directory the interpreter really lives in on the host (symlinks resolved), e.g.
//!   `/usr/lib/x86_64-linux-gnu` on Debian. glibc and musl install their loader in their first
//!   system library directory, which the loader always searches, so libraries that the host
//!   found through `RUNPATH`, `LD_LIBRARY_PATH` or `ld.so.conf` are found there too;
//! - a file reached under a second name (the loader itself as `ld-linux-x86-64.so.2`, a library
//!   needed by two names) becomes a symlink to the first copy.
//!
//! No directory symlinks of the host (`/lib -> usr/lib`) are reproduced: every guest directory is
//! a real directory, so later entries under `/lib` or `/usr/lib` never collide with them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cpio::newc::{self, ModeFileType};

use crate::image::elf::loader::{LibraryError, LibrarySearch};
use crate::image::elf::strip::{self, Piece};

const TRAILER_NAME: &str = "TRAILER!!!";

/// An initramfs under construction. See the [module docs](self) for the rules.
#[derive(Clone, Debug, Default)]
pub(crate) struct Initramfs {
    /// Keyed by the guest path without its leading `/`, as newc names are written.
    entries: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    node: Node,
    /// Permission bits only (`0o7777`); the file type comes from `node`.
    mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    Bytes(Vec<u8>),
    /// A host file, read when the archive is written.
    HostFile {
        path: PathBuf,
        /// Written without its DWARF sections (see `elf::strip`).
        strip_debug: bool,
    },
    Symlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
}

/// A failure to build or write an initramfs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitramfsError {
    /// The guest path is not absolute, has `..`, is the root, or is not UTF-8.
    #[error("failed to add {path} to the initramfs: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// An entry was added below a path that is not a directory.
    #[error("failed to add /{path} to the initramfs: /{parent} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    /// A non-directory would replace a directory that has entries below it.
    #[error("failed to add /{path} to the initramfs: it is a directory with entries below it")]
    ReplacesDirectory { path: String },
    /// A host file could not be read.
    #[error("failed to read {}: {source}", path.display())]
    ReadHost {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A host path given as a file is a directory, device, ...
    #[error("failed to add {} to the initramfs: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// A number does not fit a newc header field (a file of 4 GiB or more, too many entries).
    #[error(
        "failed to add /{path} to the initramfs: {what} {value} exceeds newc's limit of {max}"
    )]
    TooLarge { path: String, what: &'static str, value: u64, max: u64 },
    /// A host file changed size while it was being copied.
    #[error(
        "failed to add {} to the initramfs: it changed size while being written \
         (expected {expected} bytes, got {actual})",
        path.display()
    )]
    Changed { path: PathBuf, expected: u64, actual: u64 },
    /// The output could not be written.
    #[error("failed to write /{path} to the initramfs: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The libraries of a dynamic binary could not be found.
    #[error(transparent)]
    Library(#[from] LibraryError),
}

impl Initramfs {
    /// An empty initramfs.
    pub(crate) fn new() -> Initramfs {
        Initramfs::default()
    }

    /// Adds a directory. Re-adding an existing directory changes only its mode.
    pub(crate) fn add_dir(
        &mut self,
        guest_path: &str,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(guest_path, Node::Dir, mode)
    }

    /// Adds a regular file with the given contents.
    pub(crate) fn add_bytes(
        &mut self,
        guest_path: &str,
        bytes: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(guest_path, Node::Bytes(bytes.into()), mode)
    }

    /// Adds a regular file whose contents are streamed from `host_path` by [`Self::write_to`].
    ///
    /// Symlinks are followed. The file must exist and be a regular file now (checked here, so a
    /// typo fails early); its contents are whatever it holds when the archive is written.
    pub(crate) fn add_host_file(
        &mut self,
        guest_path: &str,
        host_path: impl AsRef<Path>,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let path = host_path.as_ref().to_owned();
        let metadata = std::fs::metadata(&path)
            .map_err(|source| InitramfsError::ReadHost { path: path.clone(), source })?;
        if !metadata.is_file() {
            return Err(InitramfsError::NotAFile { path });
        }
        self.insert(guest_path, Node::HostFile { path, strip_debug: false }, mode)
    }

    /// Makes the ELF file added at `guest_path` go into the archive without its DWARF debug
    /// sections (see [`crate::image::elf::strip`]); a file that is not ELF, or has none, is
    /// written as it is. Does nothing unless `guest_path` is a host file.
    pub(crate) fn strip_debug_info(&mut self, guest_path: &str) {
        let Ok(key) = normalize(guest_path) else { return };
        if let Some(Entry { node: Node::HostFile { strip_debug, .. }, .. }) =
            self.entries.get_mut(&key)
        {
            *strip_debug = true;
        }
    }

    /// Adds a symbolic link to `target` (stored as given: relative targets are relative to the
    /// link's directory in the guest).
    pub(crate) fn add_symlink(
        &mut self,
        guest_path: &str,
        target: &str,
    ) -> Result<&mut Self, InitramfsError> {
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::InvalidPath {
                path: guest_path.to_owned(),
                reason: "a symlink target must be non-empty and without NUL",
            });
        }
        self.insert(guest_path, Node::Symlink(target.to_owned()), 0o777)
    }

    /// Adds a character device node, e.g. `/dev/console` (5, 1).
    pub(crate) fn add_char_device(
        &mut self,
        guest_path: &str,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(guest_path, Node::CharDevice { major, minor }, mode)
    }

    /// Adds the ELF file `host_path` at `guest_path` (mode 0755) plus, when it is dynamically
    /// linked, its interpreter and transitive `DT_NEEDED` closure as found by the host's loader
    /// configuration ([`LibrarySearch::host`]). A static binary adds only itself. See the
    /// [module docs](self) for where libraries go in the guest.
    pub(crate) fn add_elf_with_libraries(
        &mut self,
        guest_path: &str,
        host_path: impl AsRef<Path>,
    ) -> Result<&mut Self, InitramfsError> {
        self.add_elf_with_libraries_from(&LibrarySearch::host(), guest_path, host_path)
    }

    /// [`Self::add_elf_with_libraries`] with an explicit library search configuration.
    pub(crate) fn add_elf_with_libraries_from(
        &mut self,
        search: &LibrarySearch,
        guest_path: &str,
        host_path: impl AsRef<Path>,
    ) -> Result<&mut Self, InitramfsError> {
        let host_path = host_path.as_ref();
        let closure = search.closure(host_path)?;
        self.add_host_file(guest_path, host_path, 0o755)?;

        // Canonical host file -> the guest path it was first added at.
        let mut placed: HashMap<PathBuf, String> = HashMap::new();
        let mut lib_dir = None;
        if let Some(interp) = &closure.interp {
            let real = canonicalize(interp)?;
            let guest = guest_str(interp)?;
            self.add_host_file(guest, &real, 0o755)?;
            lib_dir = real.parent().map(Path::to_owned);
            placed.insert(real, guest.to_owned());
        }
        for library in &closure.libraries {
            let real = canonicalize(&library.path)?;
            let guest = if library.name.contains('/') {
                PathBuf::from(&library.name)
            } else {
                let dir = lib_dir.as_deref().or(real.parent()).unwrap_or(Path::new("/lib"));
                dir.join(&library.name)
            };
            let guest = guest_str(&guest)?;
            match placed.get(&real) {
                Some(first) if first != guest => {
                    let first = first.clone();
                    self.add_symlink(guest, &first)?;
                }
                _ => {
                    self.add_host_file(guest, &real, 0o755)?;
                    placed.insert(real, guest.to_owned());
                }
            }
        }
        Ok(self)
    }

    /// Adds the entries of `lower` that do not collide with this initramfs's: an entry of
    /// `lower` is left out when this one has an entry at its path (whatever the kinds) or a
    /// non-directory at one of its parents. What this initramfs holds wins, whichever was
    /// built first, and nothing fails.
    pub(crate) fn add_beneath(&mut self, lower: Initramfs) {
        for (key, entry) in lower.entries {
            if self.entries.contains_key(&key) {
                continue;
            }
            let blocked = key.match_indices('/').any(|(i, _)| {
                self.entries.get(&key[..i]).is_some_and(|parent| parent.node != Node::Dir)
            });
            if !blocked {
                // `lower` lists parents before their children, so every parent is here by now.
                self.entries.insert(key, entry);
            }
        }
    }

    /// Whether the initramfs has an entry at `guest_path`.
    pub(crate) fn contains(&self, guest_path: &str) -> bool {
        normalize(guest_path).is_ok_and(|key| self.entries.contains_key(&key))
    }

    /// Writes the archive (uncompressed newc) to `w`, returning the number of bytes written.
    ///
    /// Host files are streamed, never held in memory whole. `w` gets many small writes: pass a
    /// `BufWriter` when it is a file.
    pub(crate) fn write_to(&self, w: impl Write) -> Result<u64, InitramfsError> {
        let mut out = CountingWriter { inner: w, count: 0 };
        for (index, (name, entry)) in self.entries.iter().enumerate() {
            let ino = newc_field(name, "entry count", index as u64 + 1)?;
            let write_err = |source| InitramfsError::Write { path: name.clone(), source };
            let (file_type, nlink) = match entry.node {
                Node::Dir => (ModeFileType::Directory, 2),
                Node::Bytes(_) | Node::HostFile { .. } => (ModeFileType::Regular, 1),
                Node::Symlink(_) => (ModeFileType::Symlink, 1),
                Node::CharDevice { .. } => (ModeFileType::Char, 1),
            };
            let mut header = newc::Builder::new(name)
                .ino(ino)
                .mode(entry.mode)
                .set_mode_file_type(file_type)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(0);
            if let Node::CharDevice { major, minor } = entry.node {
                header = header.rdev_major(major).rdev_minor(minor);
            }
            match &entry.node {
                Node::Dir | Node::CharDevice { .. } => {
                    header.write(&mut out, 0).finish().map_err(write_err)?;
                }
                Node::Bytes(bytes) => write_all(header, &mut out, name, bytes)?,
                Node::Symlink(target) => write_all(header, &mut out, name, target.as_bytes())?,
                Node::HostFile { path, strip_debug } => {
                    write_host_file(header, &mut out, name, path, *strip_debug)?
                }
            }
        }
        newc::trailer(&mut out)
            .map_err(|source| InitramfsError::Write { path: TRAILER_NAME.into(), source })?;
        out.flush()
            .map_err(|source| InitramfsError::Write { path: TRAILER_NAME.into(), source })?;
        Ok(out.count)
    }

    fn insert(
        &mut self,
        guest_path: &str,
        node: Node,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let key = normalize(guest_path)?;
        // Check the whole path before changing anything, so an error leaves `self` as it was.
        let mut parents = Vec::new();
        for (i, _) in key.match_indices('/') {
            let parent = &key[..i];
            match self.entries.get(parent) {
                Some(Entry { node: Node::Dir, .. }) => {}
                Some(_) => {
                    return Err(InitramfsError::ParentNotDirectory {
                        path: key.clone(),
                        parent: parent.to_owned(),
                    })
                }
                None => parents.push(parent.to_owned()),
            }
        }
        let is_dir = node == Node::Dir;
        if !is_dir && self.has_children(&key) {
            return Err(InitramfsError::ReplacesDirectory { path: key });
        }
        for parent in parents {
            self.entries.insert(parent, Entry { node: Node::Dir, mode: 0o755 });
        }
        self.entries.insert(key, Entry { node, mode: mode & 0o7777 });
        Ok(self)
    }

    fn has_children(&self, key: &str) -> bool {
        let prefix = format!("{key}/");
        self.entries.range(prefix.clone()..).next().is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// The entries in archive order, as (guest path, mode with file type), for tests.
    #[cfg(test)]
    pub(crate) fn listing(&self) -> Vec<(String, u32)> {
        self.entries
            .iter()
            .map(|(k, e)| {
                let file_type: u32 = match e.node {
                    Node::Dir => 0o040000,
                    Node::Bytes(_) | Node::HostFile { .. } => 0o100000,
                    Node::Symlink(_) => 0o120000,
                    Node::CharDevice { .. } => 0o020000,
                };
                (format!("/{k}"), file_type | e.mode)
            })
            .collect()
    }
}

/// Turns `/a//b/./c` into `a/b/c`, rejecting what cannot be a guest path.
fn normalize(guest_path: &str) -> Result<String, InitramfsError> {
    let invalid = |reason| InitramfsError::InvalidPath { path: guest_path.to_owned(), reason };
    if !guest_path.starts_with('/') {
        return Err(invalid("a guest path must be absolute"));
    }
    if guest_path.contains('\0') {
        return Err(invalid("a guest path cannot contain NUL"));
    }
    let mut parts = Vec::new();
    for part in guest_path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("a guest path cannot contain `..`")),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(invalid("the root directory cannot be an entry"));
    }
    Ok(parts.join("/"))
}

fn guest_str(path: &Path) -> Result<&str, InitramfsError> {
    path.to_str().ok_or_else(|| InitramfsError::InvalidPath {
        path: path.display().to_string(),
        reason: "a guest path must be UTF-8",
    })
}

fn canonicalize(path: &Path) -> Result<PathBuf, InitramfsError> {
    std::fs::canonicalize(path)
        .map_err(|source| InitramfsError::ReadHost { path: path.to_owned(), source })
}

/// Converts a value for a 32-bit newc header field, or says which entry it broke.
fn newc_field(name: &str, what: &'static str, value: u64) -> Result<u32, InitramfsError> {
    u32::try_from(value).map_err(|_| InitramfsError::TooLarge {
        path: name.to_owned(),
        what,
        value,
        max: u32::MAX.into(),
    })
}

/// The size field of a newc header for a file of `len` bytes: 8 hex digits, so under 4 GiB.
fn newc_file_size(name: &str, len: u64) -> Result<u32, InitramfsError> {
    newc_field(name, "file size", len)
}

fn write_all<W: Write>(
    header: newc::Builder,
    out: W,
    name: &str,
    bytes: &[u8],
) -> Result<(), InitramfsError> {
    let size = newc_file_size(name, bytes.len() as u64)?;
    let write_err = |source| InitramfsError::Write { path: name.to_owned(), source };
    let mut writer = header.write(out, size);
    writer.write_all(bytes).map_err(write_err)?;
    writer.finish().map_err(write_err)?;
    Ok(())
}

/// Writes the host file at `path`; with `strip_debug`, an ELF file without its debug sections
/// (see `elf::strip`), or as it is when it has none to leave out or cannot be read as ELF.
fn write_host_file<W: Write>(
    header: newc::Builder,
    out: W,
    name: &str,
    path: &Path,
    strip_debug: bool,
) -> Result<(), InitramfsError> {
    let read_err = |source| InitramfsError::ReadHost { path: path.to_owned(), source };
    let write_err = |source| InitramfsError::Write { path: name.to_owned(), source };
    let file = open_regular(path).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => InitramfsError::NotAFile { path: path.to_owned() },
        _ => read_err(e),
    })?;
    let stripped = strip_debug.then(|| strip::layout(&file, path).ok().flatten()).flatten();
    let (pieces, len) = match stripped {
        Some(layout) => (layout.pieces, layout.len),
        None => {
            let len = file.metadata().map_err(read_err)?.len();
            (vec![Piece::Copy { offset: 0, len }], len)
        }
    };
    let mut writer = header.write(out, newc_file_size(name, len)?);
    let mut buf = vec![0u8; 256 * 1024];
    for piece in &pieces {
        match piece {
            Piece::Bytes(bytes) => writer.write_all(bytes).map_err(write_err)?,
            Piece::Zeros(len) => {
                let len = usize::try_from(*len).unwrap_or(usize::MAX);
                writer.write_all(&vec![0u8; len]).map_err(write_err)?;
            }
            Piece::Copy { offset, len } => {
                let mut copied = 0u64;
                while copied < *len {
                    let want = usize::try_from(len - copied).unwrap_or(usize::MAX).min(buf.len());
                    match file.read_at(&mut buf[..want], offset + copied) {
                        Ok(0) => {
                            return Err(InitramfsError::Changed {
                                path: path.to_owned(),
                                expected: offset + len,
                                actual: offset + copied,
                            })
                        }
                        Ok(n) => {
                            writer.write_all(&buf[..n]).map_err(write_err)?;
                            copied += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(read_err(e)),
                    }
                }
            }
        }
    }
    writer.finish().map_err(write_err)?;
    Ok(())
}

/// Opens `path` (following symlinks) for reading if it is a regular file, without blocking on
/// anything else: a FIFO put where a file was (between the check and the copy) would block an
/// ordinary open forever. Anything but a regular file is an [`io::ErrorKind::InvalidInput`]
/// error.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if file.metadata()?.is_file() {
        // O_NONBLOCK does nothing for a regular file's reads.
        Ok(file)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
