//! Files a test leaves for the host: its LLVM profiles (coverage, PGO) and its artifacts, sent
//! over the control port after the test ends, and the kernel log when it failed.
//!
//! Each test gets `/run/vmtest/out/<id>/` with `profiles/` (where `LLVM_PROFILE_FILE` points)
//! and `artifacts/` (named by [`ARTIFACT_ENV`]). After the test every regular file below it is
//! sent as [`GuestMessage::FileChunk`]s named by its path relative to that directory, byte for
//! byte (the host judges the names), within the plan's [`FileLimits`], and the directory is
//! removed (it lives in guest memory).
//! The kernel log of a failed test is sent last, as [`KERNEL_LOG_NAME`]: it never lives in the
//! test's directory, so no artifact of the test is taken for it. The chunks carry no test id:
//! the host files them under the test it knows is running.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::ports::Control;
use crate::protocol::{
    FileLimits, GuestMessage, HeldBack, ARTIFACTS_DIR, FILE_CHUNK_LEN, KERNEL_LOG_NAME,
    PROFILES_DIR,
};

/// Where the per-test directories live.
const OUT_ROOT: &str = "/run/vmtest/out";

/// A test's output directory.
pub(crate) struct OutDir {
    id: u32,
    root: PathBuf,
    /// The kernel log, once saved for a failed test.
    kernel_log: Option<Vec<u8>>,
}

impl OutDir {
    /// Creates the (empty) output directory of test `id`.
    pub(crate) fn create(id: u32) -> Result<OutDir, String> {
        OutDir::create_in(Path::new(OUT_ROOT), id)
    }

    /// Creates the (empty) output directory of test `id` below `base`.
    pub(crate) fn create_in(base: &Path, id: u32) -> Result<OutDir, String> {
        let root = base.join(id.to_string());
        let _ = std::fs::remove_dir_all(&root);
        for sub in [ARTIFACTS_DIR, PROFILES_DIR] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        }
        Ok(OutDir { id, root, kernel_log: None })
    }

    /// Where the test's artifacts go.
    pub(crate) fn artifacts(&self) -> PathBuf {
        self.root.join(ARTIFACTS_DIR)
    }

    /// The `LLVM_PROFILE_FILE` pattern for the test: one file per process (`%p`).
    pub(crate) fn profile_pattern(&self) -> String {
        format!("{}/%p.profraw", self.root.join(PROFILES_DIR).display())
    }

    /// Keeps the whole kernel log, to send after the test's files (for a test that failed).
    pub(crate) fn save_kernel_log(&mut self) {
        let text =
            read_kernel_log().unwrap_or_else(|e| format!("failed to read the kernel log: {e}\n"));
        self.kernel_log = Some(text.into_bytes());
    }

    /// Sends the files below the directory to the host, in name order, within `limits`
    /// (`vm_bytes_left` is what the VM may still send, and shrinks), then removes the
    /// directory, and sends the kernel log if one was saved (the kernel bounds it; no limit
    /// applies). A file is measured before any of its bytes move: what a limit holds back is
    /// not sent at all, and told to the host in one [`GuestMessage::FilesHeldBack`] per limit.
    /// Nothing is sent past `deadline`, and no file is sent beyond the length it had when
    /// sending began, so the transfer ends even while a process that outlived the test keeps
    /// writing. A file that cannot be read is reported as a log line and skipped; an `Err` is a
    /// control port failure.
    pub(crate) fn send(
        self,
        control: &Control,
        limits: &FileLimits,
        vm_bytes_left: &mut u64,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut files = Vec::new();
        collect(&self.root, &mut files);
        files.sort();
        let mut held = HeldBackFiles::default();
        let (mut sent_files, mut sent_bytes) = (0u64, 0u64);
        for path in files {
            let Ok(relative) = path.strip_prefix(&self.root) else { continue };
            let name = relative.as_os_str().as_bytes();
            let len = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta.len(),
                Err(e) => {
                    self.log_unreadable(control, &path, &e)?;
                    continue;
                }
            };
            let limit = if sent_files >= limits.test_files {
                Some(HeldBack::TestFiles)
            } else if len > limits.file_bytes {
                Some(HeldBack::FileSize)
            } else if sent_bytes.saturating_add(len) > limits.test_bytes {
                Some(HeldBack::TestBytes)
            } else if len > *vm_bytes_left {
                Some(HeldBack::VmBytes)
            } else if Instant::now() >= deadline {
                Some(HeldBack::SendTime)
            } else {
                None
            };
            if let Some(why) = limit {
                held.add(why, name, len);
                continue;
            }
            sent_files += 1;
            let sent = File::open(&path)
                .map_err(SendError::Read)
                .and_then(|mut file| send_file(control, name, &mut file, len, deadline));
            let sent = match sent {
                Ok(sent) => sent,
                Err(SendError::Port(e)) => return Err(e),
                Err(SendError::Read(e)) => {
                    self.log_unreadable(control, &path, &e)?;
                    continue;
                }
            };
            sent_bytes += sent.bytes;
            *vm_bytes_left = vm_bytes_left.saturating_sub(sent.bytes);
            match sent.end {
                End::Whole => {}
                End::Cut { left } => held.add(HeldBack::SendTime, name, left),
                End::Grew { by } => held.add(HeldBack::StillGrowing, name, by),
            }
        }
        for (why, (name, files, bytes)) in held.0 {
            control.send(&GuestMessage::FilesHeldBack { why, name, files, bytes })?;
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(log) = &self.kernel_log {
            let len = log.len() as u64;
            let far = Instant::now() + std::time::Duration::from_secs(3600);
            send_file(control, KERNEL_LOG_NAME.as_bytes(), &mut &log[..], len, far).map_err(
                |e| match e {
                    SendError::Port(e) => e,
                    SendError::Read(e) => format!("failed to send the kernel log: {e}"),
                },
            )?;
        }
        Ok(())
    }

    fn log_unreadable(
        &self,
        control: &Control,
        path: &Path,
        e: &std::io::Error,
    ) -> Result<(), String> {
        control.send(&GuestMessage::Log(format!(
            "test {}: failed to read {}: {e}",
            self.id,
            // Escaped: the name is the test's, and the host prints this line.
            path.as_os_str().as_bytes().escape_ascii()
        )))
    }
}

/// What limits held back, per limit: the first file's name, how many files, how many bytes.
#[derive(Default)]
struct HeldBackFiles(BTreeMap<HeldBack, (Vec<u8>, u64, u64)>);

impl HeldBackFiles {
    fn add(&mut self, why: HeldBack, name: &[u8], bytes: u64) {
        let entry = self.0.entry(why).or_insert_with(|| (name.to_vec(), 0, 0));
        entry.1 += 1;
        entry.2 = entry.2.saturating_add(bytes);
    }
}

#[derive(Debug)]
enum SendError {
    Read(std::io::Error),
    Port(String),
}

/// How much of a file went to the host, and how its sending ended.
struct Sent {
    bytes: u64,
    end: End,
}

enum End {
    /// All of it (or all there was, if it shrank).
    Whole,
    /// `deadline` came first; `left` bytes were not sent.
    Cut { left: u64 },
    /// All of the `len` it had, but it has grown `by` bytes since.
    Grew { by: u64 },
}

/// Regular files below `dir`, recursively (symlinks are not followed).
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            collect(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// Sends the first `len` bytes of `file` (fewer if it is shorter by now) as `name`, stopping
/// at `deadline`. A cut file's last chunk is never sent: the host discards what it has of it
/// when told (by [`HeldBack::SendTime`]).
fn send_file(
    control: &Control,
    name: &[u8],
    file: &mut impl Source,
    len: u64,
    deadline: Instant,
) -> Result<Sent, SendError> {
    let mut offset = 0u64;
    let mut chunk = vec![0u8; FILE_CHUNK_LEN];
    loop {
        if offset > 0 && Instant::now() >= deadline {
            return Ok(Sent { bytes: offset, end: End::Cut { left: len - offset } });
        }
        let want = usize::try_from(len - offset).map_or(chunk.len(), |left| left.min(chunk.len()));
        let n = read_full(file, &mut chunk[..want]).map_err(SendError::Read)?;
        let last = n < want || offset + n as u64 == len;
        let message = GuestMessage::FileChunk {
            name: name.to_vec(),
            offset,
            data: chunk[..n].to_vec(),
            last,
        };
        control.send(&message).map_err(SendError::Port)?;
        offset += n as u64;
        if last {
            let now = file.len_now().unwrap_or(offset);
            let end = if now > len { End::Grew { by: now - len } } else { End::Whole };
            return Ok(Sent { bytes: offset, end });
        }
    }
}

/// What a file is sent from: a file, or bytes in memory (the kernel log).
trait Source: Read {
    /// Its length now, if it can change.
    fn len_now(&self) -> Option<u64>;
}

impl Source for File {
    fn len_now(&self) -> Option<u64> {
        self.metadata().ok().map(|m| m.len())
    }
}

impl Source for &[u8] {
    fn len_now(&self) -> Option<u64> {
        None
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The kernel's whole log buffer, as `dmesg` prints it (without timestamps' formatting).
fn read_kernel_log() -> Result<String, String> {
    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    const SYSLOG_ACTION_SIZE_BUFFER: libc::c_int = 10;
    // SAFETY: SIZE_BUFFER takes no buffer (null, 0) and returns the log buffer's size.
    let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0).max(1)];
    let len = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: READ_ALL writes at most `len` bytes into `buf`, which holds that many.
    let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr().cast(), len) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::FrameReader;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("vmtest-init-files-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Sends test 7's directory as `fill` left it, within `limits`; returns the frames.
    fn send_with(
        label: &str,
        limits: FileLimits,
        vm_bytes_left: &mut u64,
        deadline: Instant,
        fill: impl FnOnce(&Path),
    ) -> Vec<GuestMessage> {
        let scratch = Scratch::new(label);
        let out = OutDir::create_in(&scratch.0, 7).unwrap();
        fill(&out.artifacts());
        let port = scratch.0.join("port");
        let control = Control::start(File::create(&port).unwrap()).unwrap();
        out.send(&control, &limits, vm_bytes_left, deadline).unwrap();
        control.close(Duration::from_secs(5)).unwrap();
        assert!(!scratch.0.join("7").exists(), "the directory stays after sending");
        let bytes = std::fs::read(&port).unwrap();
        let mut reader = FrameReader::new(&bytes[..]);
        let mut messages = Vec::new();
        while let Some(message) = reader.next_frame().unwrap() {
            messages.push(message);
        }
        messages
    }

    /// The names of the files sent whole.
    fn sent(messages: &[GuestMessage]) -> Vec<String> {
        let mut names = Vec::new();
        for message in messages {
            if let GuestMessage::FileChunk { name, last: true, .. } = message {
                names.push(String::from_utf8(name.clone()).unwrap());
            }
        }
        names
    }

    fn held(messages: &[GuestMessage]) -> Vec<(HeldBack, String, u64, u64)> {
        let mut out = Vec::new();
        for message in messages {
            if let GuestMessage::FilesHeldBack { why, name, files, bytes } = message {
                out.push((*why, String::from_utf8(name.clone()).unwrap(), *files, *bytes));
            }
        }
        out
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn files_over_a_limit_are_held_back_before_their_bytes_move() {
        let limits = FileLimits {
            file_bytes: 100,
            test_files: 3,
            test_bytes: 150,
            vm_bytes: u64::MAX,
            send_ms: 0,
        };
        let mut vm_left = 1000;
        let messages = send_with("limits", limits, &mut vm_left, later(), |dir| {
            std::fs::write(dir.join("a"), [1; 60]).unwrap();
            // A sparse terabyte: refused by its length, never read.
            File::create(dir.join("b")).unwrap().set_len(1 << 40).unwrap();
            std::fs::write(dir.join("c"), [2; 60]).unwrap();
            std::fs::write(dir.join("d"), [3; 60]).unwrap();
            std::fs::write(dir.join("e"), [4; 10]).unwrap();
            for i in 0..5 {
                std::fs::write(dir.join(format!("f{i}")), [5; 1]).unwrap();
            }
        });
        assert_eq!(sent(&messages), ["artifacts/a", "artifacts/c", "artifacts/e"]);
        let chunks: usize = messages
            .iter()
            .map(|m| match m {
                GuestMessage::FileChunk { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(chunks, 130);
        assert_eq!(
            held(&messages),
            [
                (HeldBack::FileSize, "artifacts/b".into(), 1, 1 << 40),
                (HeldBack::TestFiles, "artifacts/f0".into(), 5, 5),
                (HeldBack::TestBytes, "artifacts/d".into(), 1, 60),
            ]
        );
        assert_eq!(vm_left, 870);
    }

    #[test]
    fn the_vm_budget_and_the_deadline_hold_files_back() {
        let limits = FileLimits::default();
        let mut vm_left = 15;
        let messages = send_with("budget", limits, &mut vm_left, later(), |dir| {
            std::fs::write(dir.join("a"), [1; 10]).unwrap();
            std::fs::write(dir.join("b"), [1; 10]).unwrap();
            std::fs::write(dir.join("c"), [1; 5]).unwrap();
        });
        assert_eq!(sent(&messages), ["artifacts/a", "artifacts/c"]);
        assert_eq!(held(&messages), [(HeldBack::VmBytes, "artifacts/b".into(), 1, 10)]);
        assert_eq!(vm_left, 0);

        let mut vm_left = u64::MAX;
        let messages = send_with("deadline", limits, &mut vm_left, Instant::now(), |dir| {
            std::fs::write(dir.join("a"), [1; 10]).unwrap();
        });
        assert_eq!(sent(&messages), Vec::<String>::new());
        assert_eq!(held(&messages), [(HeldBack::SendTime, "artifacts/a".into(), 1, 10)]);
    }

    #[test]
    fn a_growing_file_is_sent_as_long_as_it_was() {
        let scratch = Scratch::new("growing");
        let path = scratch.0.join("log");
        std::fs::write(&path, [1; 1000]).unwrap();
        let port = scratch.0.join("port");
        let control = Control::start(File::create(&port).unwrap()).unwrap();
        // As if a writer appended while the file was on its way.
        let mut file = File::open(&path).unwrap();
        let sent = send_file(&control, b"artifacts/log", &mut file, 600, later()).unwrap();
        control.close(Duration::from_secs(5)).unwrap();
        assert_eq!(sent.bytes, 600);
        assert!(matches!(sent.end, End::Grew { by: 400 }));
        let bytes = std::fs::read(&port).unwrap();
        let mut reader = FrameReader::new(&bytes[..]);
        match reader.next_frame::<GuestMessage>().unwrap() {
            Some(GuestMessage::FileChunk { data, last: true, offset: 0, .. }) => {
                assert_eq!(data.len(), 600)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_past_the_deadline_is_cut_without_its_last_chunk() {
        let scratch = Scratch::new("cut");
        let path = scratch.0.join("big");
        let len = 3 * FILE_CHUNK_LEN as u64;
        File::create(&path).unwrap().set_len(len).unwrap();
        let port = scratch.0.join("port");
        let control = Control::start(File::create(&port).unwrap()).unwrap();
        let mut file = File::open(&path).unwrap();
        let sent = send_file(&control, b"artifacts/big", &mut file, len, Instant::now()).unwrap();
        control.close(Duration::from_secs(5)).unwrap();
        assert_eq!(sent.bytes, FILE_CHUNK_LEN as u64);
        assert!(matches!(sent.end, End::Cut { left } if left == len - FILE_CHUNK_LEN as u64));
        let bytes = std::fs::read(&port).unwrap();
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(
            reader.next_frame::<GuestMessage>().unwrap(),
            Some(GuestMessage::FileChunk { last: false, .. })
        ));
        assert!(reader.next_frame::<GuestMessage>().unwrap().is_none());
    }
}
