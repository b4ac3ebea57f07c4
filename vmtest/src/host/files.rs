//! Files from the guest: each test's artifacts and LLVM profiles, received in chunks over the
//! control port and written where the host wants them.
//!
//! Nothing from the guest is trusted. A name must follow the rules of `crate::rules` (which
//! `vmtest::artifact` checks too, before anything is sent). Chunks must arrive in order; a file, a test's files (their number and their size) and a run's files are
//! bounded ([`Limits`]; the kernel log only by the file limit, the kernel bounds it). The guest
//! applies the same limits before it sends anything (the plan carries them) and says what it
//! held back; the host checks them again. Which test a file belongs to is the host's to say
//! (the test running on that VM), never the guest's.
//!
//! A file is written under a temporary name of its own (created exclusively, so it can be no
//! artifact's name) and renamed when its last chunk arrives, so a stream cut short (a dead VM)
//! leaves nothing half-written. A rejected file is reported and skipped; the run goes on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use vmtest_init::protocol::{FileLimits, HeldBack, KERNEL_LOG_NAME};

pub(crate) use crate::rules::Kind;
use crate::rules::{parse_name_bytes, parse_size};

/// Environment variable: the largest file accepted from the guest (`64M`, `2G`, bytes).
pub(crate) const FILE_LIMIT_ENV: &str = "VMTEST_FILE_LIMIT";
/// Environment variable: the most files one test may hand to the host.
pub(crate) const TEST_FILES_ENV: &str = "VMTEST_FILES_PER_TEST";
/// Environment variable: the most bytes of one test's files together.
pub(crate) const TEST_BYTES_ENV: &str = "VMTEST_BYTES_PER_TEST";
/// Environment variable: the most bytes of all files of a run together.
pub(crate) const RUN_BYTES_ENV: &str = "VMTEST_BYTES_PER_RUN";
/// Problems kept per test; more are counted.
const MAX_PROBLEMS: usize = 20;
/// Suffix of a file still being received (before a unique number).
const PARTIAL_SUFFIX: &str = ".vmtest-partial";

/// What a run accepts from its guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest file ([`FILE_LIMIT_ENV`]).
    pub file_bytes: u64,
    /// Most files per test ([`TEST_FILES_ENV`]).
    pub test_files: u64,
    /// Most bytes per test ([`TEST_BYTES_ENV`]).
    pub test_bytes: u64,
    /// Most bytes per run ([`RUN_BYTES_ENV`]).
    pub run_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let guest = FileLimits::default();
        Limits {
            file_bytes: guest.file_bytes,
            test_files: guest.test_files,
            test_bytes: guest.test_bytes,
            run_bytes: guest.vm_bytes,
        }
    }
}

impl Limits {
    /// The defaults, overridden by the environment variables; a bad value is an error naming it.
    pub(crate) fn from_env() -> Result<Limits, crate::Error> {
        Limits::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Limits, crate::Error> {
        let mut limits = Limits::default();
        let sizes = [
            (FILE_LIMIT_ENV, &mut limits.file_bytes, true),
            (TEST_FILES_ENV, &mut limits.test_files, false),
            (TEST_BYTES_ENV, &mut limits.test_bytes, true),
            (RUN_BYTES_ENV, &mut limits.run_bytes, true),
        ];
        for (name, slot, is_size) in sizes {
            let Some(value) = var(name) else { continue };
            let parsed = if is_size { parse_size(&value) } else { value.trim().parse().ok() };
            *slot = parsed.ok_or_else(|| {
                let like = if is_size { "a size (like 4096, 64M, 2G)" } else { "a number" };
                crate::Error::Env(format!("{name}={value:?} is not {like}"))
            })?;
        }
        Ok(limits)
    }

    /// The limits for a VM's plan: `run_bytes_left` of the run's budget is left, and the guest
    /// may spend `send_ms` sending a test's files after it ended.
    pub(crate) fn for_guest(&self, run_bytes_left: u64, send_ms: u64) -> FileLimits {
        FileLimits {
            file_bytes: self.file_bytes,
            test_files: self.test_files,
            test_bytes: self.test_bytes,
            vm_bytes: run_bytes_left,
            send_ms,
        }
    }

    /// Why files were held back or rejected, for a warning: the limit and its knob.
    fn describe(&self, why: HeldBack) -> String {
        match why {
            HeldBack::FileSize => {
                format!("over the limit of {} bytes per file ({FILE_LIMIT_ENV})", self.file_bytes)
            }
            HeldBack::TestFiles => {
                format!("over the limit of {} files per test ({TEST_FILES_ENV})", self.test_files)
            }
            HeldBack::TestBytes => {
                format!("over the limit of {} bytes per test ({TEST_BYTES_ENV})", self.test_bytes)
            }
            HeldBack::VmBytes => {
                format!("over the limit of {} bytes per run ({RUN_BYTES_ENV})", self.run_bytes)
            }
            HeldBack::SendTime | HeldBack::StillGrowing => String::new(),
        }
    }
}

/// What a test's files came to.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Files written, in arrival order.
    pub written: Vec<PathBuf>,
    /// Why files were rejected (at most [`MAX_PROBLEMS`], then how many more).
    pub problems: Vec<String>,
    /// Problems beyond [`MAX_PROBLEMS`].
    more_problems: u64,
    /// Files accepted (the one being received included).
    files: u64,
    /// Bytes of the files written.
    bytes: u64,
}

/// Where files go: `(test id, kind, path below the kind's directory)` to a host path, or `None`
/// when files of that kind are not wanted (profiles when the host run is not instrumented).
pub(crate) type Route<'a> = dyn Fn(u32, Kind, &Path) -> Option<PathBuf> + 'a;

/// Receives the file chunks of one VM.
pub(crate) struct Receiver<'a> {
    route: Box<Route<'a>>,
    limits: Limits,
    /// Bytes of the run's files so far, shared by the run's VMs.
    run_bytes: &'a AtomicU64,
    open: Option<OpenFile>,
    /// A file being skipped after it was rejected: (test, name).
    skipping: Option<(u32, Vec<u8>)>,
    tests: BTreeMap<u32, Received>,
    /// Files sent while no test was running, refused: why, per file.
    strays: Vec<String>,
    /// Numbers the temporary files.
    serial: u64,
}

struct OpenFile {
    id: u32,
    name: Vec<u8>,
    path: PathBuf,
    partial: PathBuf,
    file: File,
    /// Removes the partial file unless it is renamed into place (also on a panic, and when
    /// the harness is interrupted).
    guard: crate::partial::PartialFile,
    len: u64,
    /// Bytes of it counted in the run's total (all but the kernel log's).
    counted: u64,
}

impl OpenFile {
    /// Removes the partial file and gives its bytes back to the run's budget.
    fn discard(self, run_bytes: &AtomicU64) {
        drop(self.file);
        drop(self.guard);
        run_bytes.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl<'a> Receiver<'a> {
    pub(crate) fn new(route: Box<Route<'a>>, limits: Limits, run_bytes: &'a AtomicU64) -> Self {
        Receiver {
            route,
            limits,
            run_bytes,
            open: None,
            skipping: None,
            tests: BTreeMap::new(),
            strays: Vec::new(),
            serial: 0,
        }
    }

    /// Takes the guest's word that it held files of `running` back (or cut one short): a
    /// warning for the test, naming the limit. A file cut short is discarded.
    pub(crate) fn held_back(
        &mut self,
        running: Option<u32>,
        why: HeldBack,
        name: &[u8],
        files: u64,
        bytes: u64,
    ) {
        let Some(id) = running else {
            self.strays.push(format!("{}: held back while no test was running", printable(name)));
            return;
        };
        if why == HeldBack::SendTime
            && self.open.as_ref().is_some_and(|f| f.id == id && f.name == name)
        {
            let cut = self.open.take().expect("checked above");
            cut.discard(self.run_bytes);
        }
        let name = printable(name);
        let more = match files {
            0 | 1 => String::new(),
            n => format!(" and {} more files", n - 1),
        };
        let problem = match why {
            HeldBack::SendTime => format!(
                "{name}{more}: not sent ({bytes} bytes): still on their way when the time for \
                 sending a test's files ran out (scaled with VMTEST_TIMEOUT_SCALE)"
            ),
            HeldBack::StillGrowing => format!(
                "{name}{more}: sent as long as it was when sending began; it grew by {bytes} \
                 bytes meanwhile (a process that outlived the test still writes to it)"
            ),
            limit => {
                format!("{name}{more}: not sent ({bytes} bytes): {}", self.limits.describe(limit))
            }
        };
        self.problem(id, problem);
    }

    /// Takes one chunk for `running`, the test the host knows to be running on this VM (the
    /// guest sends a test's files after it ends and before it reports how it ended). A chunk
    /// while no test runs is refused (see [`Receiver::take_strays`]); other problems are
    /// recorded for the test (see [`Receiver::finish`]).
    pub(crate) fn chunk(
        &mut self,
        running: Option<u32>,
        name: &[u8],
        offset: u64,
        data: &[u8],
        last: bool,
    ) {
        let Some(id) = running else {
            if offset == 0 {
                self.strays
                    .push(format!("{}: refused: sent while no test was running", printable(name)));
            }
            return;
        };
        if self.skipping.as_ref().is_some_and(|(i, n)| *i == id && n == name) {
            if last {
                self.skipping = None;
            }
            return;
        }
        self.skipping = None;
        if self.open.as_ref().is_some_and(|f| f.id != id || f.name != name) {
            let cut = self.open.take().expect("checked above");
            self.problem(cut.id, format!("{}: ended without its last chunk", printable(&cut.name)));
            cut.discard(self.run_bytes);
        }
        if let Err(why) = self.write(id, name, offset, data, last) {
            if let Some(open) = self.open.take() {
                open.discard(self.run_bytes);
            }
            self.problem(id, format!("{}: rejected: {why}", printable(name)));
            if !last {
                self.skipping = Some((id, name.to_owned()));
            }
        }
    }

    fn write(
        &mut self,
        id: u32,
        name: &[u8],
        offset: u64,
        data: &[u8],
        last: bool,
    ) -> Result<(), String> {
        if self.open.is_none() {
            let (kind, relative) = parse_name_bytes(name)?;
            if offset != 0 {
                return Err(format!("its first chunk starts at offset {offset}"));
            }
            let Some(path) = (self.route)(id, kind, &relative) else {
                if !last {
                    self.skipping = Some((id, name.to_owned()));
                }
                return Ok(());
            };
            // The kernel log of a failed test is vmtest's own: only the file limit applies.
            if name != KERNEL_LOG_NAME.as_bytes() {
                let test = self.tests.entry(id).or_default();
                if test.files >= self.limits.test_files {
                    return Err(self.limits.describe(HeldBack::TestFiles));
                }
                test.files += 1;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
            }
            let (partial, file, guard) = self.create_partial(&path)?;
            let name = name.to_owned();
            self.open = Some(OpenFile { id, name, path, partial, file, guard, len: 0, counted: 0 });
        }
        let limits = self.limits;
        let test_bytes = self.tests.entry(id).or_default().bytes;
        let open = self.open.as_mut().expect("opened above");
        if offset != open.len {
            return Err(format!("a chunk at offset {offset} where {} was expected", open.len));
        }
        let chunk = data.len() as u64;
        let len = open.len + chunk;
        if len > limits.file_bytes {
            return Err(limits.describe(HeldBack::FileSize));
        }
        let kernel_log = open.name == KERNEL_LOG_NAME.as_bytes();
        if !kernel_log {
            if test_bytes + len > limits.test_bytes {
                return Err(limits.describe(HeldBack::TestBytes));
            }
            let run_bytes = self.run_bytes.fetch_add(chunk, Ordering::Relaxed) + chunk;
            if run_bytes > limits.run_bytes {
                self.run_bytes.fetch_sub(chunk, Ordering::Relaxed);
                return Err(limits.describe(HeldBack::VmBytes));
            }
            // Counted before the write, so that a discard gives back exactly what was counted.
            open.counted += chunk;
        }
        open.len = len;
        open.file
            .write_all(data)
            .map_err(|e| format!("failed to write {}: {e}", open.partial.display()))?;
        if last {
            let open = self.open.take().expect("opened above");
            let OpenFile { path, partial, file, guard, counted, .. } = open;
            drop(file);
            guard.persist(&path).map_err(|e| {
                self.run_bytes.fetch_sub(counted, Ordering::Relaxed);
                format!("failed to rename {} to {}: {e}", partial.display(), path.display())
            })?;
            let test = self.tests.entry(id).or_default();
            test.bytes += counted;
            test.written.push(path);
        }
        Ok(())
    }

    /// Creates the temporary file `path` is received into: beside it (so the rename stays on
    /// one file system), created exclusively under a name no file there has, so that it never
    /// replaces a file already received (an artifact named like a temporary file).
    /// Registered with the harness's cleanup, so an interrupt or a panic removes it too.
    fn create_partial(
        &mut self,
        path: &Path,
    ) -> Result<(PathBuf, File, crate::partial::PartialFile), String> {
        loop {
            self.serial += 1;
            let mut partial = path.as_os_str().to_owned();
            partial.push(format!("{PARTIAL_SUFFIX}-{}-{}", std::process::id(), self.serial));
            let partial = PathBuf::from(partial);
            let create = |p: &Path| File::options().write(true).create_new(true).open(p);
            match crate::partial::create_partial_with(&partial, create) {
                Ok((file, guard)) => return Ok((partial, file, guard)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("failed to create {}: {e}", partial.display())),
            }
        }
    }

    fn problem(&mut self, id: u32, problem: String) {
        let test = self.tests.entry(id).or_default();
        if test.problems.len() < MAX_PROBLEMS {
            test.problems.push(problem);
        } else {
            test.more_problems += 1;
        }
    }

    /// What test `id` sent, once it has finished: a file it left unfinished is discarded.
    pub(crate) fn finish(&mut self, id: u32) -> Received {
        if self.open.as_ref().is_some_and(|f| f.id == id) {
            let cut = self.open.take().expect("checked above");
            self.problem(id, format!("{}: ended without its last chunk", printable(&cut.name)));
            cut.discard(self.run_bytes);
        }
        if self.skipping.as_ref().is_some_and(|(i, _)| *i == id) {
            self.skipping = None;
        }
        let mut received = self.tests.remove(&id).unwrap_or_default();
        if received.more_problems > 0 {
            received.problems.push(format!("{} more problems like these", received.more_problems));
        }
        received
    }

    /// The files refused because no test was running when they came, since the last call.
    pub(crate) fn take_strays(&mut self) -> Vec<String> {
        std::mem::take(&mut self.strays)
    }
}

impl Drop for Receiver<'_> {
    /// A VM that ended mid-file leaves no half-written file.
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            open.discard(self.run_bytes);
        }
    }
}

/// `name` for a message: control characters escaped, and bytes that are not UTF-8 as `\xNN`.
pub(crate) fn printable(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(name) => name.escape_debug().to_string(),
        Err(_) => name.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmtest-files-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn receiver(root: &Path, limit: u64) -> Receiver<'static> {
        receiver_with(root, Limits { file_bytes: limit, ..Limits::default() })
    }

    fn receiver_with(root: &Path, limits: Limits) -> Receiver<'static> {
        let root = root.to_owned();
        let run_bytes = Box::leak(Box::new(AtomicU64::new(0)));
        Receiver::new(
            Box::new(move |id, kind, relative| {
                let kind = match kind {
                    Kind::Artifact => "a",
                    Kind::Profile => "p",
                };
                Some(root.join(format!("{id}-{kind}")).join(relative))
            }),
            limits,
            run_bytes,
        )
    }

    /// Every file below `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    out.push(
                        entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_kernel_log_never_replaces_the_tests_own_artifact() {
        let root = temp("dmesg");
        let mut rx = receiver(&root, 1 << 20);
        rx.chunk(Some(1), b"artifacts/dmesg.txt", 0, b"the test's own", true);
        rx.chunk(Some(1), KERNEL_LOG_NAME.as_bytes(), 0, b"kernel log", true);
        let received = rx.finish(1);
        assert_eq!(received.written, [root.join("1-a/dmesg.txt")]);
        assert_eq!(std::fs::read(root.join("1-a/dmesg.txt")).unwrap(), b"kernel log");
        let problems = received.problems.join("\n");
        assert!(
            problems.contains("artifacts/dmesg.txt: rejected: `dmesg.txt` is reserved"),
            "{problems}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_artifact_named_like_a_temporary_file_is_kept() {
        let root = temp("partial-names");
        let mut rx = receiver(&root, 1 << 20);
        let pid = std::process::id();
        let sneaky = format!("artifacts/x.vmtest-partial-{pid}-1");
        rx.chunk(Some(1), b"artifacts/x.vmtest-partial", 0, b"one", true);
        rx.chunk(Some(1), sneaky.as_bytes(), 0, b"two", true);
        rx.chunk(Some(1), b"artifacts/x", 0, b"three", false);
        rx.chunk(Some(1), b"artifacts/x", 5, b"!", true);
        let received = rx.finish(1);
        assert!(received.problems.is_empty(), "{:?}", received.problems);
        let read = |name: &str| std::fs::read_to_string(root.join("1-a").join(name)).unwrap();
        assert_eq!(read("x.vmtest-partial"), "one");
        assert_eq!(read(&sneaky["artifacts/".len()..]), "two");
        assert_eq!(read("x"), "three!");
        assert_eq!(tree(&root).len(), 3, "{:?}", tree(&root));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn names_that_are_not_utf8_or_hold_controls_are_refused_and_printed_escaped() {
        let root = temp("odd-names");
        let mut rx = receiver(&root, 1 << 20);
        // Two names that a lossy conversion would merge into one.
        rx.chunk(Some(1), b"artifacts/a\xff", 0, b"first", true);
        rx.chunk(Some(1), b"artifacts/a\xfe", 0, b"second", true);
        rx.chunk(Some(1), b"artifacts/\x1b]0;owned\x07", 0, b"x", true);
        let received = rx.finish(1);
        assert!(received.written.is_empty(), "{:?}", received.written);
        let problems = received.problems.join("\n");
        for expected in [
            "artifacts/a\\xff: rejected: a name that is not UTF-8",
            "artifacts/a\\xfe: rejected: a name that is not UTF-8",
            "artifacts/\\u{1b}]0;owned\\u{7}: rejected: a control character in the name",
        ] {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
        assert!(!problems.contains('\x1b'), "{problems:?}");
        assert!(tree(&root).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn files_belong_to_the_test_the_host_says_is_running() {
        let root = temp("owner");
        let mut rx = receiver(&root, 1 << 20);
        rx.chunk(Some(2), b"artifacts/mine", 0, b"x", true);
        assert!(rx.finish(1).written.is_empty());
        assert_eq!(rx.finish(2).written, [root.join("2-a/mine")]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn limits_come_from_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(Limits::from_vars(vars(&[])).unwrap(), Limits::default());
        let limits = Limits::from_vars(vars(&[
            ("VMTEST_FILE_LIMIT", "64M"),
            ("VMTEST_FILES_PER_TEST", "20"),
            ("VMTEST_BYTES_PER_TEST", "1G"),
            ("VMTEST_BYTES_PER_RUN", "4096"),
        ]))
        .unwrap();
        assert_eq!(
            limits,
            Limits { file_bytes: 64 << 20, test_files: 20, test_bytes: 1 << 30, run_bytes: 4096 }
        );
        let err = Limits::from_vars(vars(&[("VMTEST_FILES_PER_TEST", "1K")])).unwrap_err();
        assert!(err.to_string().contains("VMTEST_FILES_PER_TEST=\"1K\" is not a number"), "{err}");
        let err = Limits::from_vars(vars(&[("VMTEST_BYTES_PER_RUN", "lots")])).unwrap_err();
        assert!(err.to_string().contains("VMTEST_BYTES_PER_RUN=\"lots\" is not a size"), "{err}");
    }

    #[test]
    fn the_host_holds_tests_and_runs_to_their_totals() {
        let root = temp("totals");
        let limits = Limits { file_bytes: 100, test_files: 3, test_bytes: 10, run_bytes: 14 };
        let run_bytes = AtomicU64::new(0);
        let route =
            |id: u32, _: Kind, relative: &Path| Some(root.join(id.to_string()).join(relative));
        let mut rx = Receiver::new(Box::new(route), limits, &run_bytes);
        // A guest that ignores its limits: 25 files of 1 byte.
        for i in 0..25 {
            rx.chunk(Some(1), format!("artifacts/f{i:02}").as_bytes(), 0, b"x", true);
        }
        let received = rx.finish(1);
        assert_eq!(received.written.len(), 3);
        assert!(
            received.problems[0].contains(
                "artifacts/f03: rejected: over the limit of 3 files per test (VMTEST_FILES_PER_TEST)"
            ),
            "{:?}",
            received.problems
        );
        // 20 kept, the rest counted.
        assert_eq!(received.problems.len(), MAX_PROBLEMS + 1);
        assert_eq!(received.problems.last().unwrap(), "2 more problems like these");

        rx.chunk(Some(2), b"artifacts/a", 0, b"123456", true);
        rx.chunk(Some(2), b"artifacts/b", 0, b"12345", true);
        let received = rx.finish(2);
        assert_eq!(received.written, [root.join("2/a")]);
        assert!(received.problems[0].contains("per test (VMTEST_BYTES_PER_TEST)"));
        // 3 + 6 of the run's 14 bytes are spent: 5 are left.
        rx.chunk(Some(3), b"artifacts/a", 0, b"123", false);
        rx.chunk(Some(3), b"artifacts/a", 3, b"456", true);
        rx.chunk(Some(3), b"artifacts/b", 0, b"12", true);
        let received = rx.finish(3);
        assert_eq!(received.written, [root.join("3/b")]);
        assert!(received.problems[0].contains("per run (VMTEST_BYTES_PER_RUN)"));
        assert_eq!(run_bytes.load(Ordering::Relaxed), 11);
        drop(rx);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn what_the_guest_held_back_becomes_a_warning_naming_the_knob() {
        let root = temp("held");
        let mut rx = receiver(&root, 1 << 20);
        rx.chunk(Some(1), b"artifacts/cut", 0, b"part", false);
        rx.held_back(Some(1), HeldBack::SendTime, b"artifacts/cut", 1, 100);
        rx.held_back(Some(1), HeldBack::TestFiles, b"artifacts/f1000", 19_000, 19_000 * 16);
        rx.held_back(Some(1), HeldBack::FileSize, b"artifacts/sparse", 1, 1 << 40);
        rx.held_back(Some(1), HeldBack::StillGrowing, b"artifacts/log", 1, 4096);
        let received = rx.finish(1);
        let problems = received.problems.join("\n");
        for expected in [
            "artifacts/cut: not sent (100 bytes): still on their way when the time",
            "artifacts/f1000 and 18999 more files: not sent (304000 bytes): over the limit of \
             1000 files per test (VMTEST_FILES_PER_TEST)",
            "artifacts/sparse: not sent (1099511627776 bytes): over the limit of 1048576 bytes \
             per file (VMTEST_FILE_LIMIT)",
            "artifacts/log: sent as long as it was when sending began; it grew by 4096 bytes",
        ] {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
        // The file cut short is gone, not reported as unfinished.
        assert!(!problems.contains("without its last chunk"), "{problems}");
        assert!(tree(&root).is_empty(), "{:?}", tree(&root));
        // Held back while no test ran: a stray.
        rx.held_back(None, HeldBack::FileSize, b"artifacts/x", 1, 9);
        assert_eq!(rx.take_strays(), ["artifacts/x: held back while no test was running"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_kernel_log_counts_only_against_the_file_limit() {
        let root = temp("kernel-log-limits");
        let limits = Limits { file_bytes: 100, test_files: 1, test_bytes: 4, run_bytes: 4 };
        let run_bytes = AtomicU64::new(0);
        let route =
            |id: u32, _: Kind, relative: &Path| Some(root.join(id.to_string()).join(relative));
        let mut rx = Receiver::new(Box::new(route), limits, &run_bytes);
        rx.chunk(Some(1), b"artifacts/a", 0, b"1234", true);
        rx.chunk(Some(1), KERNEL_LOG_NAME.as_bytes(), 0, b"kernel log", true);
        let received = rx.finish(1);
        assert!(received.problems.is_empty(), "{:?}", received.problems);
        assert_eq!(received.written, [root.join("1/a"), root.join("1/dmesg.txt")]);
        assert_eq!(run_bytes.load(Ordering::Relaxed), 4);
        drop(rx);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn chunks_make_a_file_renamed_at_the_end() {
        let root = temp("chunks");
        let mut rx = receiver(&root, 1 << 20);
        rx.chunk(Some(1), b"artifacts/out/data.bin", 0, b"hello ", false);
        let partial = tree(&root);
        assert_eq!(partial.len(), 1);
        assert!(partial[0].starts_with("1-a/out/data.bin.vmtest-partial-"), "{partial:?}");
        rx.chunk(Some(1), b"artifacts/out/data.bin", 6, b"world", true);
        let received = rx.finish(1);
        assert!(received.problems.is_empty(), "{:?}", received.problems);
        assert_eq!(received.written, [root.join("1-a/out/data.bin")]);
        assert_eq!(std::fs::read(root.join("1-a/out/data.bin")).unwrap(), b"hello world");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn hostile_input_is_rejected_and_the_rest_goes_on() {
        let root = temp("hostile");
        let mut rx = receiver(&root, 8);
        rx.chunk(Some(1), b"artifacts/../../escape", 0, b"x", true);
        rx.chunk(Some(1), b"/abs", 0, b"x", true);
        rx.chunk(Some(1), b"artifacts/nul\0", 0, b"x", true);
        // Too large: its later chunks are skipped, and nothing of it stays.
        rx.chunk(Some(1), b"artifacts/big", 0, b"12345", false);
        rx.chunk(Some(1), b"artifacts/big", 5, b"67890", false);
        rx.chunk(Some(1), b"artifacts/big", 10, b"x", true);
        // Out of order.
        rx.chunk(Some(1), b"artifacts/gap", 0, b"12", false);
        rx.chunk(Some(1), b"artifacts/gap", 5, b"67", true);
        // Starts in the middle.
        rx.chunk(Some(1), b"artifacts/middle", 3, b"12", true);
        // No test running.
        rx.chunk(None, b"artifacts/orphan", 0, b"12", true);
        assert_eq!(rx.take_strays(), ["artifacts/orphan: refused: sent while no test was running"]);
        rx.chunk(Some(1), b"artifacts/fine", 0, b"ok", true);
        let received = rx.finish(1);
        assert_eq!(received.written, [root.join("1-a/fine")]);
        let problems = received.problems.join("\n");
        for expected in [
            "artifacts/../../escape: rejected: a `..` path component",
            "/abs: rejected: an absolute path",
            "artifacts/nul\\0: rejected: a NUL byte",
            "artifacts/big: rejected: over the limit of 8 bytes per file (VMTEST_FILE_LIMIT)",
            "artifacts/gap: rejected: a chunk at offset 5 where 2 was expected",
            "artifacts/middle: rejected: its first chunk starts at offset 3",
        ] {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
        assert_eq!(tree(&root), ["1-a/fine"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_truncated_stream_leaves_nothing_half_written() {
        let root = temp("truncated");
        {
            let mut rx = receiver(&root, 1 << 20);
            rx.chunk(Some(1), b"artifacts/a", 0, b"part", false);
            // The next file starts before `a` ended.
            rx.chunk(Some(1), b"artifacts/b", 0, b"whole", true);
            rx.chunk(Some(2), b"artifacts/c", 0, b"part", false);
            let received = rx.finish(1);
            assert_eq!(received.written, [root.join("1-a/b")]);
            assert!(received.problems[0].contains("artifacts/a: ended without its last chunk"));
            // The VM dies while `c` is on its way.
        }
        assert_eq!(tree(&root), ["1-a/b"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn unwanted_kinds_are_dropped_silently() {
        let root = temp("unwanted");
        let run_bytes = AtomicU64::new(0);
        let mut rx = Receiver::new(Box::new(|_, _, _| None), Limits::default(), &run_bytes);
        rx.chunk(Some(1), b"profiles/1.profraw", 0, b"data", false);
        rx.chunk(Some(1), b"profiles/1.profraw", 4, b"more", true);
        let received = rx.finish(1);
        assert!(received.written.is_empty() && received.problems.is_empty(), "{received:?}");
        assert!(tree(&root).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
