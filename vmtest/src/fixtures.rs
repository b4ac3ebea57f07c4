//! Host files a test lists in `files = [...]`, put into the initramfs at the same absolute path.
//!
//! - A directory is copied recursively, with its mode.
//! - A regular file keeps its mode. An executable ELF file also brings its interpreter and
//!   shared libraries (see [`Initramfs::add_elf_with_libraries`]).
//! - A symbolic link stays a link with the same target. When the link itself is listed, what it
//!   points to is added too (following chains), so `files = ["/usr/sbin/ip"]` works where
//!   `/usr/sbin/ip` links to `/bin/ip`. A link found inside a listed directory is copied as a
//!   link only.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::initramfs::Initramfs;
use crate::Error;

/// How many links in a row a listed path may go through.
const MAX_LINK_CHAIN: usize = 40;

/// Checks that every fixture still exists (the macro checked it at compile time) and is at a
/// path the guest can provide (not under `/proc`, `/sys` or `/dev`, where the guest mounts its
/// own file systems; `/dev/shm` is fine): a start-up error naming the first that is not.
pub(crate) fn check(files: &[&str]) -> Result<(), Error> {
    for file in files {
        if let Some(why) = vmtest_init::hidden_in_guest(&normalize(Path::new(file))) {
            return Err(Error::Config(format!(
                "failed to provide the test fixture {file} (listed in `files = [...]`) in the \
                 guest: {why}"
            )));
        }
        if let Err(e) = std::fs::symlink_metadata(file) {
            return Err(Error::io(
                format!("failed to find the test fixture {file} (listed in `files = [...]`)"),
                e,
            ));
        }
    }
    Ok(())
}

/// Adds the fixture `path` (absolute) at the same path.
pub(crate) fn add(initramfs: &mut Initramfs, path: &str) -> Result<(), Error> {
    let mut path = normalize(Path::new(path));
    for _ in 0..MAX_LINK_CHAIN {
        match add_entry(initramfs, &path)? {
            Some(target) => path = target,
            None => return Ok(()),
        }
    }
    Err(Error::Config(format!(
        "failed to add the test fixture {}: more than {MAX_LINK_CHAIN} symbolic links in a row",
        path.display()
    )))
}

/// Adds one entry (recursively for a directory). For a symlink, returns the path it points to.
fn add_entry(initramfs: &mut Initramfs, path: &Path) -> Result<Option<PathBuf>, Error> {
    let fail = |e| Error::io(format!("failed to add the test fixture {}", path.display()), e);
    let guest = guest_path(path)?;
    let metadata = std::fs::symlink_metadata(path).map_err(fail)?;
    let mode = metadata.permissions().mode() & 0o7777;
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        let target = std::fs::read_link(path).map_err(fail)?;
        let target_str = target.to_str().ok_or_else(|| not_utf8(&target))?;
        initramfs.add_symlink(guest, target_str)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        return Ok(Some(normalize(&parent.join(target))));
    }
    if file_type.is_dir() {
        initramfs.add_dir(guest, mode)?;
        add_dir_contents(initramfs, path)?;
    } else if file_type.is_file() {
        if mode & 0o111 != 0 && is_elf(path).map_err(fail)? {
            initramfs.add_elf_with_libraries(guest, path)?;
        }
        initramfs.add_host_file(guest, path, mode)?;
    } else {
        return Err(Error::Config(format!(
            "failed to add the test fixture {}: not a regular file, directory or symbolic link",
            path.display()
        )));
    }
    Ok(None)
}

fn add_dir_contents(initramfs: &mut Initramfs, dir: &Path) -> Result<(), Error> {
    let fail = |e| Error::io(format!("failed to read the test fixture {}", dir.display()), e);
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        children.push(entry.map_err(fail)?.path());
    }
    children.sort();
    for child in children {
        // A link inside a directory is copied as a link, not followed.
        add_entry(initramfs, &child)?;
    }
    Ok(())
}

fn is_elf(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"\x7fELF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn guest_path(path: &Path) -> Result<&str, Error> {
    path.to_str().ok_or_else(|| not_utf8(path))
}

fn not_utf8(path: &Path) -> Error {
    Error::Config(format!(
        "failed to add the test fixture {}: the path is not UTF-8",
        path.display()
    ))
}

/// `path` without `.`, `..` and repeated separators, resolved lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("vmtest-fixtures-").tempdir().unwrap()
    }

    #[test]
    fn missing_fixture_is_an_error_naming_it() {
        let dir = scratch();
        let missing = dir.path().join("gone.txt");
        let missing = missing.to_str().unwrap();
        let err = check(&[dir.path().to_str().unwrap(), missing]).unwrap_err().to_string();
        assert!(err.contains(missing), "{err}");
        assert!(err.contains("fixture"), "{err}");
    }

    #[test]
    fn a_fixture_the_guest_mounts_over_is_an_error_naming_it() {
        for (file, fstype) in [
            ("/proc/cpuinfo", "proc"),
            ("/sys/kernel", "sysfs"),
            ("/dev/null", "devtmpfs"),
            ("/tmp/../dev/zero", "devtmpfs"),
        ] {
            let err = check(&[file]).unwrap_err().to_string();
            assert!(err.contains(file), "{err}");
            assert!(err.contains("files = [...]"), "{err}");
            assert!(err.contains(&format!("mounts {fstype} on")), "{err}");
        }
    }

    #[test]
    fn fixtures_under_tmp_and_dev_shm_are_fine() {
        for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            if !base.is_dir() {
                continue;
            }
            let dir =
                tempfile::Builder::new().prefix("vmtest-fixtures-").tempdir_in(&base).unwrap();
            check(&[dir.path().to_str().unwrap()]).unwrap();
        }
    }

    #[test]
    fn copies_directories_files_and_links() {
        let dir = scratch();
        let root = dir.path();
        std::fs::create_dir(root.join("data")).unwrap();
        std::fs::write(root.join("data/a.txt"), "a").unwrap();
        std::fs::set_permissions(root.join("data/a.txt"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::create_dir(root.join("data/sub")).unwrap();
        std::fs::write(root.join("data/sub/script"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            root.join("data/sub/script"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("a.txt", root.join("data/link")).unwrap();
        symlink("/nowhere", root.join("data/dangling")).unwrap();
        std::fs::write(root.join("target.txt"), "t").unwrap();
        symlink("target.txt", root.join("outer-link")).unwrap();

        let mut initramfs = Initramfs::new();
        let data = root.join("data");
        add(&mut initramfs, data.to_str().unwrap()).unwrap();
        add(&mut initramfs, root.join("outer-link").to_str().unwrap()).unwrap();
        let listing: std::collections::BTreeMap<String, u32> =
            initramfs.listing().into_iter().collect();
        let at = |p: &str| listing.get(root.join(p).to_str().unwrap()).copied();
        let mode_of =
            |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(at("data"), Some(0o040000 | mode_of("data")));
        assert_eq!(at("data/a.txt"), Some(0o100640));
        assert_eq!(at("data/sub/script"), Some(0o100755));
        assert_eq!(at("data/link"), Some(0o120777));
        assert_eq!(at("data/dangling"), Some(0o120777), "a dangling link is kept");
        assert_eq!(at("outer-link"), Some(0o120777));
        assert_eq!(
            at("target.txt"),
            Some(0o100000 | mode_of("target.txt")),
            "a listed link's target comes too"
        );
    }

    #[test]
    fn an_executable_elf_brings_its_libraries() {
        let exe = std::env::current_exe().unwrap();
        let mut initramfs = Initramfs::new();
        add(&mut initramfs, exe.to_str().unwrap()).unwrap();
        assert!(initramfs.contains(exe.to_str().unwrap()));
        let interp = crate::elf::loader::LibrarySearch::host().closure(&exe).unwrap().interp;
        if let Some(interp) = interp {
            assert!(initramfs.contains(interp.to_str().unwrap()), "{}", interp.display());
        }
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("/usr/sbin/../bin//ip")), Path::new("/usr/bin/ip"));
        assert_eq!(normalize(Path::new("/../x/./y")), Path::new("/x/y"));
    }
}
