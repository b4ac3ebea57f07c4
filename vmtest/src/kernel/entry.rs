//! One kernel store entry in use: its use lock, the check against its manifest before a run
//! trusts it, the repair of the files runs derive from it, and the migration of entries
//! written before manifests existed.
//!
//! Every process that uses an entry holds a shared `flock` on `<arch>/.locks/<name>.use` until
//! it exits (one per process and entry, kept in [`HELD`]); replacing an entry (`fetch`) takes
//! it exclusively, so no run ever sees a half-replaced entry and no entry changes under a
//! running test. The first process to use an entry when no other does gets the lock
//! exclusively for a moment, and records the manifest of an entry that has none (or new
//! mtimes of files that were touched but are intact) before it shares the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{flock, FlockOperation};

use super::layout::{meta_value, open_lock_file, parse_meta, META};
use super::manifest::{self, Depth, Manifest, SUMS};
use super::{image_info, Kernel, KernelError};
use crate::arch::Arch;

/// The use locks this process holds, by lock file, and how thoroughly each entry was checked
/// since.
static HELD: Mutex<BTreeMap<PathBuf, Held>> = Mutex::new(BTreeMap::new());
/// Entries this process already warned about.
static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

struct Held {
    file: Arc<File>,
    checked: Option<Depth>,
}

/// Checks a derived file; `Err` says what is wrong with it.
type DerivedCheck = fn(&Path) -> Result<(), String>;

/// Files that runs derive from an entry and keep in its dir; each is removed when damaged
/// and made again when needed.
const DERIVED: [(&str, DerivedCheck); 3] = [
    ("vmlinux-pvh", check_elf),
    ("vmlinux-pvh.none", |p| check_not_empty(p).map_err(|e| format!("it {e}"))),
    ("modules.alias", |p| check_not_empty(p).map_err(|e| format!("it {e}"))),
];

/// Why an entry cannot be used.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The entry is damaged: what is wrong with it.
    Damaged(String),
    /// The store itself could not be read or locked.
    Store(KernelError),
}

impl From<KernelError> for EntryError {
    fn from(e: KernelError) -> EntryError {
        EntryError::Store(e)
    }
}

/// A checked entry.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) kernel: Kernel,
    /// The number of files and bytes its manifest lists; `None` for an entry without one yet
    /// (checked by sizes and headers only).
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    pub(crate) manifest: Option<(usize, u64)>,
}

/// `<arch dir>/.locks/<name>.use` for the entry `dir`.
fn use_lock_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.parent().unwrap_or(Path::new(".")).join(".locks").join(format!("{name}.use"))
}

/// Takes (once per process) the shared use lock of the entry `dir` and checks it to `depth`.
pub(crate) fn open(dir: &Path, depth: Depth) -> Result<Opened, EntryError> {
    let lock = use_lock_path(dir);
    let checked = HELD.lock().unwrap_or_else(|e| e.into_inner()).get(&lock).map(|h| h.checked);
    let mut verified = None;
    match checked {
        Some(Some(done)) if done == Depth::Full || depth == Depth::Quick => {
            return read(dir).map(|(kernel, _)| Opened { kernel, manifest: None });
        }
        Some(_) => {}
        None => {
            let Some(file) = open_lock_file(&lock).ok().or_else(|| File::open(&lock).ok()) else {
                // A store this user cannot write (a read-only cache): nothing can replace the
                // entry meanwhile, and nothing is recorded; check it each time.
                return check(dir, depth);
            };
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                // No other process uses the entry: bring it up to date. Failures show in the
                // check below, which an entry the upgrade found intact does not need again.
                verified = upgrade(dir).ok().flatten();
            }
            flock(&file, FlockOperation::LockShared)
                .map_err(|e| KernelError::io("lock", &lock, e.into()))?;
            HELD.lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(lock.clone())
                .or_insert(Held { file: Arc::new(file), checked: None });
        }
    }
    let opened = match verified {
        Some(opened) if depth == Depth::Quick => opened,
        _ => check(dir, depth)?,
    };
    if let Some(held) = HELD.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&lock) {
        held.checked = Some(depth);
    }
    Ok(opened)
}

/// Runs `f` with the entry `dir`'s use lock held exclusively (waiting for the runs using it,
/// after calling `on_wait`), then gives back this process's shared lock, if it had one.
pub(crate) fn exclusive<T>(
    dir: &Path,
    on_wait: &mut dyn FnMut(),
    f: impl FnOnce() -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    let lock = use_lock_path(dir);
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner()).get(&lock).map(|h| h.file.clone());
    let file = match &held {
        Some(file) => file.clone(),
        None => Arc::new(open_lock_file(&lock)?),
    };
    if flock(&*file, FlockOperation::NonBlockingLockExclusive).is_err() {
        on_wait();
        flock(&*file, FlockOperation::LockExclusive)
            .map_err(|e| KernelError::io("lock", &lock, e.into()))?;
    }
    let result = f();
    if held.is_some() {
        if let Some(held) = HELD.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&lock) {
            held.checked = None;
        }
        flock(&*file, FlockOperation::LockShared)
            .map_err(|e| KernelError::io("lock", &lock, e.into()))?;
    }
    result
}

/// The entry's metadata and its text.
fn read(dir: &Path) -> Result<(Kernel, String), EntryError> {
    let path = dir.join(META);
    let text = fs::read_to_string(&path)
        .map_err(|e| EntryError::Damaged(format!("its {META} cannot be read: {e}")))?;
    let kernel = parse_meta(dir, &text)
        .map_err(|reason| EntryError::Damaged(format!("its {META} is corrupt: {reason}")))?;
    Ok((kernel, text))
}

/// Checks the entry `dir` against its manifest (or, for an entry without one, its files'
/// presence, sizes and image header) and removes damaged derived files.
pub(crate) fn check(dir: &Path, depth: Depth) -> Result<Opened, EntryError> {
    let (kernel, text) = read(dir)?;
    remove_damaged_derived(dir);
    let Some(sums) = meta_value(&text, "sums") else {
        legacy_check(&kernel).map_err(EntryError::Damaged)?;
        return Ok(Opened { kernel, manifest: None });
    };
    let manifest = read_manifest(dir, &sums).map_err(EntryError::Damaged)?;
    opened_against(kernel, &manifest, || manifest.check(dir, depth).damage)
}

/// The entry opened against its `manifest`, which must list the entry's own files; then
/// `check` (the files checked against it) must find no damage.
fn opened_against(
    kernel: Kernel,
    manifest: &Manifest,
    check: impl FnOnce() -> Option<String>,
) -> Result<Opened, EntryError> {
    for name in roots(&kernel) {
        if !manifest.covers(&name) {
            return Err(EntryError::Damaged(format!("its {SUMS} does not list `{name}`")));
        }
    }
    if let Some(damage) = check() {
        return Err(EntryError::Damaged(damage));
    }
    Ok(Opened { manifest: Some(manifest.totals()), kernel })
}

fn read_manifest(dir: &Path, sums: &str) -> Result<Manifest, String> {
    if sums != SUMS {
        return Err(format!("its {META} names the manifest `{sums}`, not `{SUMS}`"));
    }
    let text = fs::read_to_string(dir.join(SUMS))
        .map_err(|e| format!("its {SUMS} cannot be read: {e}"))?;
    Manifest::parse(&text).map_err(|e| format!("its {SUMS} is corrupt: {e}"))
}

/// The entry's own files, by their names in its dir: image, config, modules.
fn roots(kernel: &Kernel) -> Vec<String> {
    [Some(&kernel.image), kernel.config.as_ref(), kernel.modules_dir.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// What can be checked of an entry without a manifest: a readable kernel image header, a
/// config that is not empty, a modules dir.
fn legacy_check(kernel: &Kernel) -> Result<(), String> {
    let name =
        |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    check_not_empty(&kernel.image).map_err(|e| format!("`{}` {e}", name(&kernel.image)))?;
    image_info(&kernel.image).map_err(|e| format!("`{}`: {e}", name(&kernel.image)))?;
    if let Some(config) = &kernel.config {
        check_not_empty(config).map_err(|e| format!("`{}` {e}", name(config)))?;
    }
    if let Some(modules) = &kernel.modules_dir {
        if !modules.is_dir() {
            return Err(format!("`{}` is not a directory", name(modules)));
        }
    }
    Ok(())
}

/// With the use lock held exclusively: records the manifest of an entry without one (if it
/// passes the checks that are possible without one) or the new mtimes of intact files.
/// Returns what [`check`] at [`Depth::Quick`] would, when it checked an entry with a manifest
/// and found it intact (no file can change while the lock is held).
fn upgrade(dir: &Path) -> Result<Option<Opened>, KernelError> {
    let Ok((kernel, text)) = read(dir) else { return Ok(None) };
    remove_damaged_derived(dir);
    match meta_value(&text, "sums") {
        None => {
            if legacy_check(&kernel).is_err() {
                return Ok(None);
            }
            crate::notice::note(&format!(
                "recording the checksums of the kernel store entry {} (once per entry)",
                dir.display()
            ));
            let roots = roots(&kernel);
            let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
            let manifest = Manifest::compute(dir, &roots)?;
            manifest::write_durably(&dir.join(SUMS), manifest.to_text().as_bytes())?;
            let mut text = text;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text += &format!("sums={SUMS}\n");
            manifest::write_durably(&dir.join(META), text.as_bytes())?;
            Ok(None)
        }
        Some(sums) => {
            let Ok(manifest) = read_manifest(dir, &sums) else { return Ok(None) };
            let mut refreshed = None;
            let opened = opened_against(kernel, &manifest, || {
                let checked = manifest.check(dir, Depth::Quick);
                refreshed = checked.refreshed;
                checked.damage
            });
            if let Some(refreshed) = refreshed {
                manifest::write_durably(&dir.join(SUMS), refreshed.to_text().as_bytes())?;
            }
            Ok(opened.ok())
        }
    }
}

/// Removes derived files that are damaged (empty after a crash, a truncated ELF), with a
/// warning; they are made again when needed.
fn remove_damaged_derived(dir: &Path) {
    for (name, check) in DERIVED {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        if let Err(reason) = check(&path) {
            if fs::remove_file(&path).is_ok() {
                crate::notice::warn(&format!(
                    "removed the damaged {} ({reason}); it is made again when needed",
                    path.display()
                ));
            }
        }
    }
}

fn check_not_empty(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => Ok(()),
        Ok(m) if m.is_file() => Err("is empty".to_owned()),
        Ok(_) => Err("is not a regular file".to_owned()),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

/// A 64-bit ELF at least as long as its segments say (read from its first 64 KiB).
fn check_elf(path: &Path) -> Result<(), String> {
    use object::elf::FileHeader64;
    use object::read::elf::{FileHeader, ProgramHeader};
    check_not_empty(path).map_err(|e| format!("it {e}"))?;
    let mut head = Vec::new();
    let mut file = File::open(path).map_err(|e| format!("it cannot be read: {e}"))?;
    let len = file.metadata().map_err(|e| format!("it cannot be read: {e}"))?.len();
    file.by_ref()
        .take(64 << 10)
        .read_to_end(&mut head)
        .map_err(|e| format!("it cannot be read: {e}"))?;
    let header = FileHeader64::<object::Endianness>::parse(&*head)
        .map_err(|e| format!("it is not a 64-bit ELF: {e}"))?;
    let endian = header.endian().map_err(|e| format!("its ELF header: {e}"))?;
    let segments = header
        .program_headers(endian, &*head)
        .map_err(|e| format!("its segments cannot be read: {e}"))?;
    let end = segments
        .iter()
        .map(|s| s.p_offset(endian).saturating_add(s.p_filesz(endian)))
        .max()
        .unwrap_or(0);
    if end > len {
        return Err(format!("it is truncated: {len} bytes, its segments end at {end}"));
    }
    Ok(())
}

/// How to repair the entry `dir` of `arch`: fetch its Debian series again, or, for a kernel of
/// the user's own, add it again.
pub(crate) fn repair_hint(dir: &Path, arch: Arch, package: Option<&str>) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let debian = name
        .strip_suffix(arch.debian_name())
        .and_then(|rest| rest.strip_suffix('-'))
        .filter(|_| package.is_some() || name.starts_with(|c: char| c.is_ascii_digit()));
    match debian.zip(super::kernel_spec_hint(&name)) {
        Some((rest, series)) => {
            let flavour = rest
                .rsplit_once('-')
                .map(|(_, last)| last)
                .filter(|last| !last.is_empty() && last.chars().all(|c| c.is_ascii_lowercase()));
            let spec = match flavour {
                Some(f) => format!("{series}-{f}"),
                None => series,
            };
            format!(
                "{} (or remove the dir, if Debian's {spec} has moved to a newer release)",
                super::fetch_command(&spec, arch)
            )
        }
        None => format!(
            "`rm -r {}` and `cargo vmtest kernel add {name} --image <path> [--modules <dir>] \
             [--config <path>]`",
            dir.display()
        ),
    }
}

/// Warns (once per process and entry) that the entry `dir` is skipped.
pub(crate) fn warn_skipped(dir: &Path, reason: &str, repair: &str) {
    if WARNED.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_owned()) {
        crate::notice::warn(&format!(
            "skipping the damaged kernel store entry {}: {reason}; repair it with {repair}",
            dir.display()
        ));
    }
}
