//! Host files a test lists in `files = [...]`, put into the initramfs at the same absolute path.
//!
//! - A path's `..` is resolved as the kernel resolves it (against the real directory reached so
//!   far, through any symlink), the same way `#[vm_test]` resolved it at compile time
//!   ([`resolve_dots`]); other symlinks on the way stay as written.
//! - A directory is copied recursively, with its mode, but never across a mount point (a
//!   directory on another file system is an error naming it) nor into itself (a bind mount
//!   loop is an error). A directory holding a `CACHEDIR.TAG` (Cargo's target directory, and
//!   other caches) is left out of a listed directory, so `files = ["."]` copies a crate
//!   without its build output; list such a directory itself to copy it.
//! - A regular file keeps its mode. An executable ELF file also brings its interpreter and
//!   shared libraries (see [`Initramfs::add_elf_with_libraries`]).
//! - A symbolic link stays a link with the same target. When the link itself is listed, what it
//!   points to is added too (following chains; a loop is an error), so
//!   `files = ["/usr/sbin/ip"]` works where `/usr/sbin/ip` links to `/bin/ip`. A link found
//!   inside a listed directory is copied as a link only.
//! - Anything else (a FIFO, a socket, a device) is an error naming it: reading a FIFO would
//!   block the run.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::image::initramfs::Initramfs;
use crate::Error;

/// How many links in a row a listed path may go through.
const MAX_LINK_CHAIN: usize = 40;
/// The first bytes of a valid `CACHEDIR.TAG` (the Cache Directory Tagging Specification).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// `files` as this run finds them: a fixture under the crate's directory at compile time
/// (`built_in`) moves with the crate to where this run has it (`run_in`, the run's
/// `CARGO_MANIFEST_DIR`), as when a test archive built on one machine runs in another checkout
/// (`cargo nextest run --workspace-remap`). Other paths, and all paths when the crate has not
/// moved or either dir is unknown, stay as they are.
pub(crate) fn follow_crate(files: &[String], built_in: Option<&str>, run_in: &str) -> Vec<String> {
    let moved = built_in.filter(|built| *built != run_in && run_in != "/" && !built.is_empty());
    let Some(built_in) = moved else { return files.to_vec() };
    files
        .iter()
        .map(|file| match Path::new(file).strip_prefix(built_in) {
            Ok(rest) if rest.as_os_str().is_empty() => run_in.to_owned(),
            Ok(rest) => Path::new(run_in).join(rest).to_string_lossy().into_owned(),
            Err(_) => file.clone(),
        })
        .collect()
}

/// Checks that every fixture still exists (the macro checked it at compile time), is a regular
/// file, directory or symbolic link, and is at a path the guest can provide (not under
/// `/proc`, `/sys` or `/dev`, where the guest mounts its own file systems; `/dev/shm` is fine):
/// a start-up error naming the first that is not.
pub(crate) fn check(files: &[&str]) -> Result<(), Error> {
    for file in files {
        let missing = |e| {
            Error::io(
                format!("failed to find the test fixture {file} (listed in `files = [...]`)"),
                e,
            )
        };
        let path = resolve_dots(Path::new(file)).map_err(missing)?;
        if let Some(why) = vmtest_init::hidden_in_guest(&path) {
            return Err(Error::Fixture(format!(
                "failed to provide the test fixture {file} (listed in `files = [...]`) in the \
                 guest: {why}"
            )));
        }
        let metadata = std::fs::symlink_metadata(&path).map_err(missing)?;
        if let Some(kind) = unsupported_kind(&metadata) {
            return Err(unsupported(&path, kind));
        }
    }
    Ok(())
}

/// Adds the fixture `path` (absolute) at the same path.
pub(crate) fn add(initramfs: &mut Initramfs, path: &str) -> Result<(), Error> {
    let resolve = |p: &Path| {
        resolve_dots(p)
            .map_err(|e| Error::io(format!("failed to add the test fixture {}", p.display()), e))
    };
    let mut path = resolve(Path::new(path))?;
    let mut seen = vec![path.clone()];
    for _ in 0..MAX_LINK_CHAIN {
        let Some(target) = add_entry(initramfs, &path, None)? else { return Ok(()) };
        path = resolve(&target)?;
        if seen.contains(&path) {
            let chain: Vec<String> = seen.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::Fixture(format!(
                "failed to add the test fixture {}: its symbolic links loop ({} -> {})",
                seen[0].display(),
                chain.join(" -> "),
                path.display()
            )));
        }
        seen.push(path.clone());
    }
    Err(Error::Fixture(format!(
        "failed to add the test fixture {}: more than {MAX_LINK_CHAIN} symbolic links in a row",
        path.display()
    )))
}

/// The directory being copied: its file system and the directories above, for the checks
/// against crossing mount points and copying a directory into itself.
struct Walk {
    root: PathBuf,
    dev: u64,
    ancestors: HashSet<(u64, u64)>,
}

/// Adds one entry (recursively for a directory). For a symlink, returns the path it points to.
fn add_entry(
    initramfs: &mut Initramfs,
    path: &Path,
    walk: Option<&mut Walk>,
) -> Result<Option<PathBuf>, Error> {
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
        return Ok(Some(parent.join(target)));
    }
    if file_type.is_dir() {
        let mut own;
        let walk = match walk {
            Some(walk) => {
                if metadata.dev() != walk.dev {
                    return Err(Error::Fixture(format!(
                        "failed to add the test fixture {}: {} is a mount point (another file \
                         system), and vmtest does not copy across mount points; list it in \
                         `files = [...]` itself if the test needs it",
                        walk.root.display(),
                        path.display()
                    )));
                }
                walk
            }
            None => {
                own =
                    Walk { root: path.to_owned(), dev: metadata.dev(), ancestors: HashSet::new() };
                &mut own
            }
        };
        if !walk.ancestors.insert((metadata.dev(), metadata.ino())) {
            return Err(Error::Fixture(format!(
                "failed to add the test fixture {}: {} is a directory above it again (a bind \
                 mount loop), so copying it would never end",
                walk.root.display(),
                path.display()
            )));
        }
        initramfs.add_dir(guest, mode)?;
        add_dir_contents(initramfs, path, walk)?;
        walk.ancestors.remove(&(metadata.dev(), metadata.ino()));
    } else if file_type.is_file() {
        if mode & 0o111 != 0 && is_elf(path).map_err(fail)? {
            initramfs.add_elf_with_libraries(guest, path)?;
        }
        initramfs.add_host_file(guest, path, mode)?;
    } else {
        return Err(unsupported(path, unsupported_kind(&metadata).unwrap_or("special file")));
    }
    Ok(None)
}

fn add_dir_contents(initramfs: &mut Initramfs, dir: &Path, walk: &mut Walk) -> Result<(), Error> {
    let fail = |e| Error::io(format!("failed to read the test fixture {}", dir.display()), e);
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        children.push(entry.map_err(fail)?.path());
    }
    children.sort();
    for child in children {
        if is_cache_dir(&child) {
            continue;
        }
        // A link inside a directory is copied as a link, not followed.
        add_entry(initramfs, &child, Some(walk))?;
    }
    Ok(())
}

/// Whether `dir` is a directory tagged as a cache by a valid `CACHEDIR.TAG` (as Cargo tags its
/// target directory).
fn is_cache_dir(dir: &Path) -> bool {
    let Ok(metadata) = std::fs::symlink_metadata(dir) else { return false };
    if !metadata.is_dir() {
        return false;
    }
    let Ok(mut tag) = crate::image::initramfs::open_regular(&dir.join("CACHEDIR.TAG")) else {
        return false;
    };
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    tag.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
}

/// What kind of file `metadata` describes, when it is one a fixture cannot be.
fn unsupported_kind(metadata: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    if file_type.is_file() || file_type.is_dir() || file_type.is_symlink() {
        None
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_socket() {
        Some("a socket")
    } else if file_type.is_block_device() || file_type.is_char_device() {
        Some("a device")
    } else {
        Some("a special file")
    }
}

fn unsupported(path: &Path, kind: &str) -> Error {
    Error::Fixture(format!(
        "failed to add the test fixture {}: it is {kind}; only regular files, directories and \
         symbolic links can be fixtures",
        path.display()
    ))
}

fn is_elf(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = crate::image::initramfs::open_regular(path)?;
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
    Error::Fixture(format!(
        "failed to add the test fixture {}: the path is not UTF-8",
        path.display()
    ))
}

/// `path` (absolute) without `.`, `..` and repeated separators, each `..` resolved as the
/// kernel does: against the real directory the path has reached (so `/a/link/..` is the parent
/// of where `link` points, not `/a`). Symlinks not followed by a `..` stay as written. The same
/// rule as `#[vm_test]`'s at compile time. Fails when a directory before a `..` does not exist.
pub(crate) fn resolve_dots(path: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out = std::fs::canonicalize(&out)?;
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures_under_the_crate_follow_it_and_others_stay() {
        let files: Vec<String> =
            ["/b/crate/tests/data", "/b/crate", "/b/crate-other/x", "/etc/hosts"]
                .map(String::from)
                .into();
        assert_eq!(
            follow_crate(&files, Some("/b/crate"), "/r/ws/crate"),
            ["/r/ws/crate/tests/data", "/r/ws/crate", "/b/crate-other/x", "/etc/hosts"]
        );
        assert_eq!(follow_crate(&files, Some("/b/crate"), "/b/crate"), files, "not moved");
        assert_eq!(follow_crate(&files, None, "/r/ws/crate"), files, "not recorded");
        assert_eq!(follow_crate(&files, Some("/b/crate"), "/"), files, "no CARGO_MANIFEST_DIR");
    }

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
        let interp = crate::image::elf::loader::LibrarySearch::host().closure(&exe).unwrap().interp;
        if let Some(interp) = interp {
            assert!(initramfs.contains(interp.to_str().unwrap()), "{}", interp.display());
        }
    }

    #[test]
    fn dots_resolve_as_the_kernel_resolves_them() {
        let dir = scratch();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("real/deep")).unwrap();
        std::fs::create_dir(root.join("other")).unwrap();
        symlink(root.join("real/deep"), root.join("other/link")).unwrap();
        // `link/..` is `real`, where the link points, not `other` as text would have it.
        assert_eq!(resolve_dots(&root.join("other/link/../x")).unwrap(), root.join("real/x"));
        // A symlink not followed by `..` stays as written; `.` and `//` go.
        assert_eq!(resolve_dots(&root.join("other/./link//y")).unwrap(), root.join("other/link/y"));
        assert_eq!(resolve_dots(Path::new("/../usr/./bin")).unwrap(), Path::new("/usr/bin"));
        assert!(resolve_dots(&root.join("missing/../x")).is_err());
    }

    #[test]
    fn a_fixture_behind_dots_and_a_link_is_added_where_the_kernel_finds_it() {
        let dir = scratch();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("real/deep")).unwrap();
        std::fs::write(root.join("real/data.txt"), "data").unwrap();
        symlink(root.join("real/deep"), root.join("link")).unwrap();
        let listed = root.join("link/../data.txt");
        check(&[listed.to_str().unwrap()]).unwrap();
        let mut initramfs = Initramfs::new();
        add(&mut initramfs, listed.to_str().unwrap()).unwrap();
        assert!(initramfs.contains(root.join("real/data.txt").to_str().unwrap()));
        assert!(!initramfs.contains(root.join("data.txt").to_str().unwrap()));
    }

    #[test]
    fn a_fifo_is_refused_with_its_path() {
        let dir = scratch();
        let fifo = dir.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = check(&[fifo.to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains(&format!("{}: it is a FIFO", fifo.display())), "{err}");
        // Inside a listed directory too, where `check` does not look.
        let mut initramfs = Initramfs::new();
        let err = add(&mut initramfs, dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains(&format!("{}: it is a FIFO", fifo.display())), "{err}");
        assert!(err.contains("only regular files, directories and symbolic links"), "{err}");
    }

    #[test]
    fn a_listed_symlink_loop_is_an_error_naming_it() {
        let dir = scratch();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        let mut initramfs = Initramfs::new();
        let err = add(&mut initramfs, a.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("symbolic links loop"), "{err}");
        assert!(err.contains(&format!("{} -> {} -> {}", a.display(), b.display(), a.display())));
    }

    #[test]
    fn a_listed_directory_leaves_out_cargo_target_dirs() {
        let dir = scratch();
        let root = dir.path();
        std::fs::write(root.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::write(root.join("target/debug/big"), "build output").unwrap();
        std::fs::write(
            root.join("target/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n# created by cargo\n",
        )
        .unwrap();
        // A tag without the signature is an ordinary file.
        std::fs::create_dir(root.join("kept")).unwrap();
        std::fs::write(root.join("kept/CACHEDIR.TAG"), "not a tag").unwrap();
        let mut initramfs = Initramfs::new();
        add(&mut initramfs, root.to_str().unwrap()).unwrap();
        let has = |p: &str| initramfs.contains(root.join(p).to_str().unwrap());
        assert!(has("Cargo.toml") && has("kept/CACHEDIR.TAG"));
        assert!(!has("target"), "the target dir was copied");
        // Listed itself, it is copied.
        let mut initramfs = Initramfs::new();
        add(&mut initramfs, root.join("target").to_str().unwrap()).unwrap();
        assert!(initramfs.contains(root.join("target/debug/big").to_str().unwrap()));
    }

    /// A mount made for a test and removed (lazily) when it ends.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }

    /// Mounts with `mount`, or says why the test cannot run (not root, no mount allowed).
    fn try_mount(
        what: &str,
        mount: impl FnOnce() -> rustix::io::Result<()>,
        at: &Path,
    ) -> Option<Mounted> {
        match mount() {
            Ok(()) => Some(Mounted(at.to_owned())),
            Err(e) => {
                crate::__testing::missing(&format!("cannot mount {what} here ({e}); needs root"));
                None
            }
        }
    }

    #[test]
    fn a_directory_copy_stops_at_a_mount_point() {
        let dir = scratch();
        let inner = dir.path().join("mnt");
        std::fs::create_dir(&inner).unwrap();
        let mount = || {
            rustix::mount::mount("tmpfs", &inner, "tmpfs", rustix::mount::MountFlags::empty(), None)
        };
        let Some(_mounted) = try_mount("a tmpfs", mount, &inner) else { return };
        let mut initramfs = Initramfs::new();
        let err = add(&mut initramfs, dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains(&format!("{} is a mount point", inner.display())), "{err}");
        // Listed itself, it is copied.
        let mut initramfs = Initramfs::new();
        add(&mut initramfs, inner.to_str().unwrap()).unwrap();
    }

    #[test]
    fn a_bind_mount_loop_is_an_error_not_an_endless_copy() {
        let dir = scratch();
        let inner = dir.path().join("again");
        std::fs::create_dir(&inner).unwrap();
        let mount = || rustix::mount::mount_bind(dir.path(), &inner);
        let Some(_mounted) = try_mount("a bind mount", mount, &inner) else { return };
        let mut initramfs = Initramfs::new();
        let err = add(&mut initramfs, dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} is a directory above it again", inner.display())),
            "{err}"
        );
    }
}
