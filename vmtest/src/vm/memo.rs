//! Facts about a file that cost time to learn (the SHA-256 of a 60 MB kernel image, what a QEMU
//! binary says its version is), remembered on disk across processes, so that a warm start in a
//! new process (`cargo nextest` runs one per test) does not learn them again.
//!
//! A fact is keyed by its name and the file's identity: its path, device, inode, size, and
//! modification and change times. Writing to a file, or replacing it, changes its change time
//! or inode, which the kernel sets and a user cannot set back; so a changed file is never
//! answered from the memo. Entries are written atomically (a unique temporary file renamed into
//! place), at most [`MAX_ENTRIES`] are kept (the oldest go first), and everything is best
//! effort: a memo that cannot be read or written is learned again.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Most entries kept; each is a few dozen bytes, and a new one comes only with a new file.
const MAX_ENTRIES: usize = 256;
/// Suffix of an entry's file.
const SUFFIX: &str = "fact";

/// A directory of remembered facts, or none (each process learns again).
#[derive(Clone, Debug)]
pub(crate) struct Memo {
    dir: Option<PathBuf>,
}

impl Memo {
    /// Facts remembered in `dir` (made when the first one is written).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Memo {
        Memo { dir: Some(dir.into()) }
    }

    /// No memo: every fact is learned.
    pub fn none() -> Memo {
        Memo { dir: None }
    }

    /// The fact `name` about the file at `path` as it is now: remembered, or learned with
    /// `learn` (and remembered) when the file is new or changed. `valid` rejects a remembered
    /// value that cannot be right (a damaged entry), which is then learned again.
    pub fn get<E>(
        &self,
        name: &str,
        path: &Path,
        valid: impl Fn(&str) -> bool,
        learn: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        let entry = self.dir.as_ref().and_then(|dir| Some(dir.join(entry_name(name, path)?)));
        if let Some(value) = entry.as_ref().and_then(|entry| fs::read_to_string(entry).ok()) {
            if valid(&value) {
                return Ok(value);
            }
        }
        let value = learn()?;
        if let (Some(dir), Some(entry)) = (&self.dir, &entry) {
            // Only if the file is still what it was when the fact was learned.
            if entry_name(name, path).is_some_and(|again| entry.ends_with(again)) {
                remember(dir, entry, &value);
            }
        }
        Ok(value)
    }
}

/// The entry's file name: the SHA-256 of the fact's name and the file's identity, or `None`
/// when the file cannot be looked at (then nothing is remembered).
fn entry_name(name: &str, path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let mut hasher = Sha256::new();
    for field in [
        name.as_bytes(),
        path.as_os_str().as_encoded_bytes(),
        format!(
            "{} {} {} {}.{} {}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        )
        .as_bytes(),
    ] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    Some(format!("{}.{SUFFIX}", hex(&hasher.finalize())))
}

/// `bytes` in lowercase hex, as digests are written in entries and file names.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `value` to `entry` in `dir` atomically, then keeps the newest [`MAX_ENTRIES`].
fn remember(dir: &Path, entry: &Path, value: &str) {
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(mut temp) = tempfile::Builder::new().prefix(".fact-").tempfile_in(dir) else {
        return;
    };
    if temp.write_all(value.as_bytes()).is_err() || temp.persist(entry).is_err() {
        return;
    }
    prune(dir, MAX_ENTRIES);
}

/// Removes the oldest entries of `dir` beyond `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut facts: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == SUFFIX))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if facts.len() <= keep {
        return;
    }
    facts.sort();
    for (_, path) in &facts[..facts.len() - keep] {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn count(learned: &Cell<u32>, value: &str) -> Result<String, String> {
        learned.set(learned.get() + 1);
        Ok(value.to_owned())
    }

    /// A temp dir with a file `name` in it and a memo in its `memo/`.
    fn file_and_memo(name: &str) -> (tempfile::TempDir, PathBuf, Memo) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        fs::write(&file, b"contents").unwrap();
        let memo = Memo::in_dir(dir.path().join("memo"));
        (dir, file, memo)
    }

    #[test]
    fn a_fact_is_learned_once_until_the_file_changes() {
        let (dir, file, memo) = file_and_memo("kernel");
        let learned = Cell::new(0);
        let any = |_: &str| true;
        assert_eq!(memo.get("size", &file, any, || count(&learned, "3")).unwrap(), "3");
        // Another process (another Memo on the same dir) finds it.
        let again = Memo::in_dir(dir.path().join("memo"));
        assert_eq!(again.get("size", &file, any, || count(&learned, "x")).unwrap(), "3");
        assert_eq!(learned.get(), 1);
        // Another fact about the same file is its own.
        assert_eq!(memo.get("other", &file, any, || count(&learned, "o")).unwrap(), "o");
        assert_eq!(learned.get(), 2);
        // Rewritten, even to the same size: its change time moved.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, b"CONTENTS").unwrap();
        assert_eq!(memo.get("size", &file, any, || count(&learned, "3'")).unwrap(), "3'");
        assert_eq!(learned.get(), 3);
    }

    #[test]
    fn a_damaged_entry_is_learned_again_and_no_memo_learns_each_time() {
        let (dir, file, memo) = file_and_memo("qemu");
        let learned = Cell::new(0);
        let hex = |v: &str| v.len() == 4 && v.chars().all(|c| c.is_ascii_hexdigit());
        memo.get("digest", &file, hex, || count(&learned, "beef")).unwrap();
        let entry = fs::read_dir(dir.path().join("memo")).unwrap().next().unwrap().unwrap();
        fs::write(entry.path(), b"be").unwrap();
        assert_eq!(memo.get("digest", &file, hex, || count(&learned, "beef")).unwrap(), "beef");
        assert_eq!(learned.get(), 2);
        // Nothing is left behind but the entry itself.
        let names: Vec<_> = fs::read_dir(dir.path().join("memo")).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);

        let none = Memo::none();
        none.get("digest", &file, hex, || count(&learned, "beef")).unwrap();
        none.get("digest", &file, hex, || count(&learned, "beef")).unwrap();
        assert_eq!(learned.get(), 4);
    }

    #[test]
    fn a_failure_to_learn_is_the_callers_and_nothing_is_remembered() {
        let (dir, file, memo) = file_and_memo("qemu");
        let err = memo.get("v", &file, |_| true, || Err::<String, _>("no")).unwrap_err();
        assert_eq!(err, "no");
        assert!(!dir.path().join("memo").exists());
        // A file that does not exist has no identity: learned, not remembered.
        let missing = dir.path().join("missing");
        assert_eq!(memo.get("v", &missing, |_| true, || Ok::<_, ()>("x".into())).unwrap(), "x");
        assert!(!dir.path().join("memo").exists());
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let path = dir.path().join(format!("{i}.{SUFFIX}"));
            fs::write(&path, b"x").unwrap();
            let time = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i);
            fs::File::options().write(true).open(&path).unwrap().set_modified(time).unwrap();
        }
        fs::write(dir.path().join("other"), b"not an entry").unwrap();
        prune(dir.path(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [format!("3.{SUFFIX}"), format!("4.{SUFFIX}"), "other".to_owned()]);
    }
}
