//! Finding the shared libraries a dynamic ELF file needs, the way the dynamic loader would.
//!
//! The search follows glibc's `ld.so(8)` order for each `DT_NEEDED` name:
//! 1. `DT_RPATH` of the object and of the objects that loaded it (only when the object has no
//!    `DT_RUNPATH`);
//! 2. `LD_LIBRARY_PATH` as it was when the [`LibrarySearch`] was made;
//! 3. `DT_RUNPATH` of the object;
//! 4. the directories of `/etc/ld.so.conf` (standing in for `/etc/ld.so.cache`, which is built
//!    from them);
//! 5. the default directories: `/lib/<multiarch>`, `/usr/lib/<multiarch>`, `/lib64`,
//!    `/usr/lib64`, `/lib`, `/usr/lib`.
//!
//! A candidate whose ELF machine or class differs from the binary's is skipped, as the loader
//! does (a 32-bit `libc.so.6` in `/usr/lib32` never satisfies a 64-bit binary). A name is resolved
//! once per closure: the loader, too, reuses an already loaded object of the same name.
//! `$LIB` and `$PLATFORM` in run paths and glibc's `hwcaps` subdirectories are not expanded.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use super::{read_elf, ElfError, ElfInfo};

/// A failure to find the libraries of a dynamic ELF file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LibraryError {
    /// The binary or one of its libraries could not be read.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// A `DT_NEEDED` library is nowhere the loader would look.
    #[error(
        "failed to find library {library} (needed by {}) for {}: not in {}",
        needed_by.display(),
        binary.display(),
        display_dirs(searched)
    )]
    Missing { library: String, needed_by: PathBuf, binary: PathBuf, searched: Vec<PathBuf> },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    let dirs: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    dirs.join(", ")
}

/// A binary plus everything the loader maps before running it.
#[derive(Clone, Debug)]
pub(crate) struct Closure {
    /// The interpreter (`PT_INTERP`) as named in the binary; the kernel opens exactly this path.
    pub(crate) interp: Option<PathBuf>,
    /// Every library of the transitive `DT_NEEDED` closure, in breadth-first (load) order.
    pub(crate) libraries: Vec<Library>,
}

/// One resolved `DT_NEEDED` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Library {
    /// The name as written in `DT_NEEDED` (usually the soname, e.g. `libc.so.6`).
    pub(crate) name: String,
    /// Where it was found on the host (not canonicalized: may be a symlink).
    pub(crate) path: PathBuf,
}

/// Where to look for libraries: the host's loader configuration, captured once.
#[derive(Clone, Debug, Default)]
pub(crate) struct LibrarySearch {
    /// `LD_LIBRARY_PATH` directories.
    pub(crate) env_dirs: Vec<PathBuf>,
    /// Directories listed by `/etc/ld.so.conf` and the files it includes.
    pub(crate) conf_dirs: Vec<PathBuf>,
    /// Whether to search the default directories. Tests turn this off to work on a fake tree.
    pub(crate) default_dirs: bool,
}

impl LibrarySearch {
    /// The host's configuration: `LD_LIBRARY_PATH`, `/etc/ld.so.conf` (a missing or unreadable
    /// file counts as empty) and the default directories.
    pub(crate) fn host() -> LibrarySearch {
        let env_dirs = std::env::var_os("LD_LIBRARY_PATH")
            .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        let mut conf_dirs = Vec::new();
        read_ld_so_conf(Path::new("/etc/ld.so.conf"), 0, &mut conf_dirs);
        LibrarySearch { env_dirs, conf_dirs, default_dirs: true }
    }

    /// Resolves the interpreter and the transitive `DT_NEEDED` closure of `binary`.
    ///
    /// A static binary (no `PT_INTERP`, no `DT_NEEDED`) has an empty closure.
    pub(crate) fn closure(&self, binary: &Path) -> Result<Closure, LibraryError> {
        let info = read_elf(binary)?;
        let interp = info.interp.as_ref().map(PathBuf::from);
        let exe_rpath: &[String] = if info.runpath_is_rpath { &info.runpath } else { &[] };

        let mut libraries = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // (object, its info, the DT_RPATH of the objects that loaded it, nearest first)
        let mut queue = VecDeque::from([(binary.to_owned(), info.clone(), Vec::new())]);
        while let Some((object, object_info, loaders_rpath)) = queue.pop_front() {
            let own_rpath: &[String] =
                if object_info.runpath_is_rpath { &object_info.runpath } else { &[] };
            let chain: Vec<String> = own_rpath.iter().chain(&loaders_rpath).cloned().collect();
            // DT_RUNPATH, when present, disables every DT_RPATH (the executable's included).
            let dirs = if object_info.runpath_is_rpath || object_info.runpath.is_empty() {
                let rpath: Vec<String> = chain.iter().chain(exe_rpath).cloned().collect();
                self.search_dirs(&info, &rpath, &[])
            } else {
                self.search_dirs(&info, &[], &object_info.runpath)
            };
            for name in &object_info.needed {
                if !seen.insert(name.clone()) {
                    continue;
                }
                let Some((path, lib_info)) = find(name, &dirs, &info)? else {
                    return Err(LibraryError::Missing {
                        library: name.clone(),
                        needed_by: object.clone(),
                        binary: binary.to_owned(),
                        searched: dirs,
                    });
                };
                libraries.push(Library { name: name.clone(), path: path.clone() });
                queue.push_back((path, lib_info, chain.clone()));
            }
        }
        Ok(Closure { interp, libraries })
    }

    /// The directories to try, in order, for a library needed by an object with these run paths.
    fn search_dirs(&self, binary: &ElfInfo, rpath: &[String], runpath: &[String]) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut push = |dir: PathBuf| {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        };
        let expandable = |d: &&String| !d.contains('$');
        rpath.iter().filter(expandable).for_each(|d| push(PathBuf::from(d)));
        self.env_dirs.iter().for_each(|d| push(d.clone()));
        runpath.iter().filter(expandable).for_each(|d| push(PathBuf::from(d)));
        self.conf_dirs.iter().for_each(|d| push(d.clone()));
        if self.default_dirs {
            default_dirs(binary.machine, binary.is_64).into_iter().for_each(push);
        }
        dirs
    }
}

/// Finds `name` in `dirs`, skipping files that are not ELF or are for another machine or class.
fn find(
    name: &str,
    dirs: &[PathBuf],
    binary: &ElfInfo,
) -> Result<Option<(PathBuf, ElfInfo)>, ElfError> {
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        dirs.iter().map(|dir| dir.join(name)).collect()
    };
    for candidate in candidates {
        if !candidate.is_file() {
            continue;
        }
        match read_elf(&candidate) {
            Ok(info) if info.machine == binary.machine && info.is_64 == binary.is_64 => {
                return Ok(Some((candidate, info)))
            }
            Ok(_) | Err(ElfError::NotElf { .. }) | Err(ElfError::Malformed { .. }) => continue,
            Err(e @ ElfError::Io { .. }) => return Err(e),
        }
    }
    Ok(None)
}

/// Debian's multiarch tuple for an ELF machine and class.
pub(crate) fn multiarch_tuple(machine: u16, is_64: bool) -> Option<&'static str> {
    use object::elf::{EM_386, EM_AARCH64, EM_ARM, EM_RISCV, EM_X86_64};
    match (machine, is_64) {
        (EM_X86_64, true) => Some("x86_64-linux-gnu"),
        (EM_X86_64, false) => Some("x86_64-linux-gnux32"),
        (EM_386, false) => Some("i386-linux-gnu"),
        (EM_AARCH64, true) => Some("aarch64-linux-gnu"),
        (EM_ARM, false) => Some("arm-linux-gnueabihf"),
        (EM_RISCV, true) => Some("riscv64-linux-gnu"),
        _ => None,
    }
}

/// The loader's built-in directories, covering multiarch (Debian), lib64 (Fedora) and plain lib
/// (Arch, Alpine) layouts.
fn default_dirs(machine: u16, is_64: bool) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(tuple) = multiarch_tuple(machine, is_64) {
        dirs.push(Path::new("/lib").join(tuple));
        dirs.push(Path::new("/usr/lib").join(tuple));
    }
    if is_64 {
        dirs.push(PathBuf::from("/lib64"));
        dirs.push(PathBuf::from("/usr/lib64"));
    }
    dirs.push(PathBuf::from("/lib"));
    dirs.push(PathBuf::from("/usr/lib"));
    dirs
}

/// Appends the directories listed in an `ld.so.conf` file, following `include` lines.
///
/// Comments (`#`), blank lines and `hwcap` lines are ignored; relative `include` patterns are
/// relative to the including file's directory; a file that cannot be read adds nothing.
pub(crate) fn read_ld_so_conf(path: &Path, depth: usize, dirs: &mut Vec<PathBuf>) {
    const MAX_DEPTH: usize = 8;
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("include") => {
                if depth >= MAX_DEPTH {
                    continue;
                }
                for pattern in words {
                    let pattern = path.parent().unwrap_or(Path::new("/")).join(pattern);
                    for file in glob(&pattern) {
                        read_ld_so_conf(&file, depth + 1, dirs);
                    }
                }
            }
            Some("hwcap") => {}
            _ => {
                // Old syntax allowed "dir=TYPE" and separators other than newlines.
                for dir in line.split([' ', '\t', ',', ':']).filter(|d| !d.is_empty()) {
                    let dir = PathBuf::from(dir.split('=').next().unwrap_or(dir));
                    if dir.is_absolute() && !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
            }
        }
    }
}

/// Expands `*` and `?` in any component of an absolute path pattern, in sorted order (as
/// glibc's `ldconfig` does with `glob(3)`). Matches that do not exist are dropped.
pub(crate) fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut matches = vec![PathBuf::from("/")];
    for component in pattern.components().skip(1) {
        let component = component.as_os_str().to_string_lossy();
        let mut next = BTreeSet::new();
        for base in &matches {
            if component.contains(['*', '?']) {
                let Ok(entries) = fs::read_dir(base) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if !name.starts_with('.') && wildcard_match(&component, &name) {
                        next.insert(base.join(&*name));
                    }
                }
            } else {
                let path = base.join(&*component);
                if path.symlink_metadata().is_ok() {
                    next.insert(path);
                }
            }
        }
        matches = next.into_iter().collect();
    }
    matches
}

/// Matches `name` against a pattern of literal characters, `*` (any run) and `?` (any one).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "libc.conf"));
        assert!(wildcard_match("*.conf", ".conf"));
        assert!(!wildcard_match("*.conf", "libc.conf.bak"));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("?", ""));
        assert!(wildcard_match("*x*y", "axxby"));
    }

    #[test]
    fn ld_so_conf_follows_includes_in_sorted_order() {
        let dir = crate::image::elf::test_support::temp_dir("ldconf");
        let root = dir.path();
        fs::create_dir(root.join("conf.d")).unwrap();
        fs::write(
            root.join("ld.so.conf"),
            "# comment\n/opt/first\ninclude conf.d/*.conf\n\nhwcap 0 nosegneg\n/opt/last # x\n",
        )
        .unwrap();
        fs::write(root.join("conf.d/b.conf"), "/opt/b\n").unwrap();
        fs::write(root.join("conf.d/a.conf"), "/opt/a1\n/opt/a2\n").unwrap();
        fs::write(root.join("conf.d/ignored.txt"), "/opt/no\n").unwrap();
        let mut dirs = Vec::new();
        read_ld_so_conf(&root.join("ld.so.conf"), 0, &mut dirs);
        let want = ["/opt/first", "/opt/a1", "/opt/a2", "/opt/b", "/opt/last"];
        assert_eq!(dirs, want.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn ld_so_conf_include_cycle_terminates() {
        let dir = crate::image::elf::test_support::temp_dir("ldcycle");
        let conf = dir.path().join("ld.so.conf");
        fs::write(&conf, "/opt/x\ninclude ld.so.conf\n").unwrap();
        let mut dirs = Vec::new();
        read_ld_so_conf(&conf, 0, &mut dirs);
        assert_eq!(dirs, vec![PathBuf::from("/opt/x")]);
    }

    use crate::image::elf::test_support::{fake_elf, temp_dir, FakeElf};

    use object::elf::{EM_AARCH64, EM_X86_64};

    fn write_elf(path: &Path, spec: FakeElf<'_>) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, fake_elf(&spec)).unwrap();
    }

    /// A fake aarch64 tree: `bin/app` needs libx (in `b/`; `a/` has an x86_64 libx and a text
    /// file named liby that must be skipped), libx needs liby through its `$ORIGIN` RUNPATH.
    fn fake_tree(root: &Path) -> LibrarySearch {
        let app = FakeElf {
            machine: EM_AARCH64,
            interp: Some("/lib/ld-linux-aarch64.so.1"),
            needed: &["libx.so.1", "libc.so.6"],
            ..FakeElf::default()
        };
        write_elf(&root.join("bin/app"), app);
        write_elf(&root.join("a/libx.so.1"), FakeElf { machine: EM_X86_64, ..FakeElf::default() });
        fs::write(root.join("a/liby.so.2"), "INPUT(-lz)\n").unwrap();
        let libx = FakeElf {
            machine: EM_AARCH64,
            needed: &["liby.so.2", "libc.so.6"],
            runpath: Some("$ORIGIN/private"),
            ..FakeElf::default()
        };
        write_elf(&root.join("b/libx.so.1"), libx);
        write_elf(
            &root.join("b/private/liby.so.2"),
            FakeElf { machine: EM_AARCH64, ..FakeElf::default() },
        );
        write_elf(&root.join("b/libc.so.6"), FakeElf { machine: EM_AARCH64, ..FakeElf::default() });
        LibrarySearch {
            conf_dirs: vec![root.join("a"), root.join("b")],
            ..LibrarySearch::default()
        }
    }

    #[test]
    fn closure_follows_runpath_and_skips_foreign_candidates() {
        let dir = temp_dir("loader-tree");
        let root = dir.path();
        let search = fake_tree(root);
        let closure = search.closure(&root.join("bin/app")).unwrap();
        assert_eq!(closure.interp, Some(PathBuf::from("/lib/ld-linux-aarch64.so.1")));
        let found: Vec<(&str, PathBuf)> =
            closure.libraries.iter().map(|l| (l.name.as_str(), l.path.clone())).collect();
        assert_eq!(
            found,
            [
                ("libx.so.1", root.join("b/libx.so.1")),
                ("libc.so.6", root.join("b/libc.so.6")),
                ("liby.so.2", root.join("b/private/liby.so.2")),
            ]
        );
    }

    #[test]
    fn runpath_does_not_apply_to_grandchildren_but_rpath_does() {
        let dir = temp_dir("loader-rpath");
        let root = dir.path();
        // app (RUNPATH or RPATH = r) -> liba (in r) -> libb (only in r)
        let lib = FakeElf { machine: EM_AARCH64, needed: &["libb.so"], ..FakeElf::default() };
        write_elf(&root.join("r/liba.so"), lib);
        write_elf(&root.join("r/libb.so"), FakeElf { machine: EM_AARCH64, ..FakeElf::default() });
        let search = LibrarySearch::default();
        for as_rpath in [false, true] {
            let app = FakeElf {
                machine: EM_AARCH64,
                needed: &["liba.so"],
                runpath: Some("$ORIGIN/r"),
                as_rpath,
                ..FakeElf::default()
            };
            write_elf(&root.join("app"), app);
            let result = search.closure(&root.join("app"));
            if as_rpath {
                assert_eq!(result.unwrap().libraries.len(), 2);
            } else {
                let err = result.unwrap_err();
                assert!(err.to_string().starts_with("failed to find library libb.so"), "{err}");
            }
        }
    }

    #[test]
    fn missing_library_names_library_and_binary() {
        let dir = temp_dir("loader-missing");
        let root = dir.path();
        let search = fake_tree(root);
        fs::remove_file(root.join("b/private/liby.so.2")).unwrap();
        let err = search.closure(&root.join("bin/app")).unwrap_err();
        let libx = root.join("b/libx.so.1");
        let app = root.join("bin/app");
        assert_eq!(
            err.to_string(),
            format!(
                "failed to find library liby.so.2 (needed by {}) for {}: not in {}, {}, {}",
                libx.display(),
                app.display(),
                root.join("b/private").display(),
                root.join("a").display(),
                root.join("b").display(),
            )
        );
    }

    #[test]
    fn multiarch_defaults_come_first() {
        let dirs = default_dirs(object::elf::EM_AARCH64, true);
        assert_eq!(dirs[0], Path::new("/lib/aarch64-linux-gnu"));
        assert_eq!(dirs.last().unwrap(), Path::new("/usr/lib"));
    }
}
