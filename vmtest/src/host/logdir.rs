//! Where a run's console logs and artifacts go: `<target>/<profile>/vmtest/<binary name>/`,
//! claimed by one run at a time ([`LogDir`]).

use std::path::{Path, PathBuf};

use crate::Error;

/// The directory of one run's console logs. Runs of the same binary at the same time (two
/// terminals, `cargo test` running suites in parallel) each claim their own: the first free
/// of `<dir>/`, `<dir>/concurrent-1/`, `<dir>/concurrent-2/`, ..., held by an flock on a
/// `.lock` file inside it for as long as the run lasts. Claiming one removes the console logs a
/// killed run left half-saved in it.
pub(crate) struct LogDir {
    /// The directory claimed.
    pub path: PathBuf,
    _lock: std::fs::File,
}

impl LogDir {
    /// Claims the first free directory for the test binary `exe` (see [`base`]).
    pub(crate) fn claim_for(exe: &Path) -> Result<LogDir, Error> {
        LogDir::claim(base(exe))
    }

    fn claim(base: PathBuf) -> Result<LogDir, Error> {
        use rustix::fs::{flock, FlockOperation};
        for slot in 0u32.. {
            let path =
                if slot == 0 { base.clone() } else { base.join(format!("concurrent-{slot}")) };
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::io(format!("failed to create {}", path.display()), e))?;
            let lock_path = path.join(".lock");
            let lock = std::fs::File::create(&lock_path)
                .map_err(|e| Error::io(format!("failed to create {}", lock_path.display()), e))?;
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                // Console logs a run that was killed left half-saved: this run owns the dir
                // now (`concurrent-*` below slot 0 are other runs').
                crate::vm::process::remove_partial_console_logs(&path);
                return Ok(LogDir { path, _lock: lock });
            }
        }
        unreachable!("some slot is free")
    }

    /// `<log dir>/artifacts/<test name>/`: where the artifacts of the test `name` go.
    pub(crate) fn artifact_dir(&self, name: &str) -> PathBuf {
        let name: String =
            name.chars().map(|c| if c == '/' || c.is_control() { '_' } else { c }).collect();
        self.path.join("artifacts").join(name)
    }
}

/// `<target>/<profile>/vmtest/<binary name>/`, next to cargo's own output.
fn base(exe: &Path) -> PathBuf {
    let stem = exe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Test binaries live in `<target>/<profile>/deps`.
    let base =
        if dir.ends_with("deps") { dir.parent().map(PathBuf::from).unwrap_or(dir) } else { dir };
    base.join("vmtest").join(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_go_next_to_cargos_output() {
        let cases = [
            ("/t/debug/deps/vm-0123abcd", "/t/debug/vmtest/vm-0123abcd"),
            ("/t/debug/cargo-vmtest", "/t/debug/vmtest/cargo-vmtest"),
            (
                "/t/x86_64-unknown-linux-musl/release/deps/a.b",
                "/t/x86_64-unknown-linux-musl/release/vmtest/a",
            ),
        ];
        for (exe, dir) in cases {
            assert_eq!(base(Path::new(exe)), Path::new(dir), "{exe}");
        }
    }

    #[test]
    fn concurrent_runs_claim_directories_of_their_own() {
        let root = std::env::temp_dir().join(format!("vmtest-logdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let first = LogDir::claim(root.clone()).unwrap();
        let second = LogDir::claim(root.clone()).unwrap();
        assert_eq!(first.path, root);
        assert_eq!(second.path, root.join("concurrent-1"));
        drop(first);
        let again = LogDir::claim(root.clone()).unwrap();
        assert_eq!(again.path, root, "a finished run's directory is free again");
        assert_eq!(
            again.artifact_dir("net::ping/v6[6.1]\n"),
            root.join("artifacts").join("net::ping_v6[6.1]_")
        );
        drop((second, again));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
