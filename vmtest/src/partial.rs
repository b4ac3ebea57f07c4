//! Files written under a temporary name ([`create_partial`]): each is removed unless it is
//! renamed into place, on drop (an error, a panic that unwinds) and by [`remove_all`], which the
//! cleanup of an interrupted or panicking harness calls. Beneath every other module: the kernel
//! store, the VM and the host all write such files.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The files being written under a temporary name, and whether the process is ending.
struct Registry {
    paths: BTreeSet<PathBuf>,
    /// [`remove_all`] ran: no new file may be registered (the process is about to end).
    stopping: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { paths: BTreeSet::new(), stopping: false });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file being written under a temporary name: removed on drop unless [`persist`]ed (renamed
/// into place), and by [`remove_all`].
///
/// [`persist`]: PartialFile::persist
pub(crate) struct PartialFile {
    path: PathBuf,
    persisted: bool,
}

/// Creates (truncating) the file `path` as a [`PartialFile`]; refused once [`remove_all`] ran,
/// so the cleanup cannot miss it.
pub(crate) fn create_partial(path: &Path) -> io::Result<(File, PartialFile)> {
    create_partial_with(path, |path| File::create(path))
}

/// [`create_partial`] with `create` making the file (e.g. with `O_EXCL`).
pub(crate) fn create_partial_with(
    path: &Path,
    create: impl FnOnce(&Path) -> io::Result<File>,
) -> io::Result<(File, PartialFile)> {
    let mut registry = registry();
    if registry.stopping {
        return Err(io::Error::other("the harness is stopping"));
    }
    let file = create(path)?;
    registry.paths.insert(path.to_owned());
    Ok((file, PartialFile { path: path.to_owned(), persisted: false }))
}

/// Removes every file still being written and refuses new ones: the process is ending.
pub(crate) fn remove_all() {
    let mut registry = registry();
    registry.stopping = true;
    for path in &registry.paths {
        let _ = std::fs::remove_file(path);
    }
}

impl PartialFile {
    /// Renames the file to `to`. On error it is removed.
    pub(crate) fn persist(mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
        registry().paths.remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_are_removed_unless_persisted() {
        let root = tempfile::Builder::new().prefix("partial-").tempdir().unwrap();
        let kept = root.path().join("kept.vmtest-partial");
        let (mut file, partial) = create_partial(&kept).unwrap();
        io::Write::write_all(&mut file, b"whole").unwrap();
        partial.persist(&root.path().join("kept")).unwrap();
        assert_eq!(std::fs::read(root.path().join("kept")).unwrap(), b"whole");
        assert!(!registry().paths.contains(&kept));

        let dropped = root.path().join("dropped.partial");
        let (_file, partial) = create_partial(&dropped).unwrap();
        assert!(registry().paths.contains(&dropped));
        drop(partial);
        assert!(!dropped.exists());
        assert!(!registry().paths.contains(&dropped));
    }
}
