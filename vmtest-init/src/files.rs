//! Files a test leaves for the host: its LLVM profiles (coverage, PGO) and its artifacts, sent
//! over the control port after the test ends, and the kernel log when it failed.
//!
//! Each test gets `/run/vmtest/out/<id>/` with `profiles/` (where `LLVM_PROFILE_FILE` points)
//! and `artifacts/` (named by [`ARTIFACT_ENV`]). After the test every regular file below it is
//! sent as [`GuestMessage::FileChunk`]s named by its path relative to that directory, byte for
//! byte (the host judges the names), and the directory is removed (it lives in guest memory).
//! The kernel log of a failed test is sent last, as [`KERNEL_LOG_NAME`]: it never lives in the
//! test's directory, so no artifact of the test is taken for it. The chunks carry no test id:
//! the host files them under the test it knows is running.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::ports::Control;
use crate::protocol::{GuestMessage, ARTIFACTS_DIR, FILE_CHUNK_LEN, KERNEL_LOG_NAME, PROFILES_DIR};

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

    /// Sends every file below the directory to the host, then removes it. A file that cannot
    /// be read is reported as a log line and skipped; an `Err` is a control port failure.
    pub(crate) fn send(self, control: &Control) -> Result<(), String> {
        let mut files = Vec::new();
        collect(&self.root, &mut files);
        files.sort();
        for path in files {
            let Ok(relative) = path.strip_prefix(&self.root) else { continue };
            let name = relative.as_os_str().as_bytes();
            let sent = File::open(&path)
                .map_err(SendError::Read)
                .and_then(|mut file| send_file(control, name, &mut file));
            if let Err(e) = sent {
                match e {
                    SendError::Port(e) => return Err(e),
                    SendError::Read(e) => control.send(&GuestMessage::Log(format!(
                        "test {}: failed to read {}: {e}",
                        self.id,
                        // Escaped: the name is the test's, and the host prints this line.
                        path.as_os_str().as_bytes().escape_ascii()
                    )))?,
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(log) = &self.kernel_log {
            send_file(control, KERNEL_LOG_NAME.as_bytes(), &mut &log[..]).map_err(|e| match e {
                SendError::Port(e) => e,
                SendError::Read(e) => format!("failed to send the kernel log: {e}"),
            })?;
        }
        Ok(())
    }
}

enum SendError {
    Read(std::io::Error),
    Port(String),
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

fn send_file(control: &Control, name: &[u8], file: &mut impl Read) -> Result<(), SendError> {
    let mut offset = 0u64;
    let mut chunk = vec![0u8; FILE_CHUNK_LEN];
    loop {
        let n = read_full(file, &mut chunk).map_err(SendError::Read)?;
        let last = n < chunk.len();
        let message = GuestMessage::FileChunk {
            name: name.to_vec(),
            offset,
            data: chunk[..n].to_vec(),
            last,
        };
        control.send(&message).map_err(SendError::Port)?;
        offset += n as u64;
        if last {
            return Ok(());
        }
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
