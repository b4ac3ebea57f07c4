//! Handing files from a test in the VM to the host.

use std::io;
use std::path::PathBuf;

use vmtest_init::protocol::{ARTIFACTS_DIR, ARTIFACT_ENV};

/// Hands `contents` to the host as the file `name` of this test's artifacts.
///
/// Inside a `#[vm_test]`, writes the file into the test's artifact directory in the guest
/// (`$VMTEST_ARTIFACT_DIR`); when the test has ended, however it ended, the guest sends every
/// file there to the host, which writes it to
/// `target/<profile>/vmtest/<test binary>/artifacts/<test name>/<name>` and prints where. A
/// failed test also gets the guest's kernel log there, as `dmesg.txt`.
///
/// `name` is a relative path of plain components (`"trace.json"`, `"maps/1.txt"`) without
/// control characters; a file of the same name is replaced. `dmesg.txt` (at the top) is
/// reserved for the kernel log. Returns the file's path in the guest.
///
/// ```no_run
/// #[vmtest::vm_test]
/// fn dumps_state() -> std::io::Result<()> {
///     vmtest::artifact("mounts.txt", std::fs::read("/proc/self/mountinfo")?)?;
///     Ok(())
/// }
/// ```
///
/// # Errors
///
/// Outside a `#[vm_test]` running in a VM, for a name that is absolute, empty, has a `.`,
/// `..` or empty component or a control character, or is `dmesg.txt`, and when the file cannot
/// be written.
pub fn artifact(name: &str, contents: impl AsRef<[u8]>) -> io::Result<PathBuf> {
    let Some(dir) = std::env::var_os(ARTIFACT_ENV) else {
        return Err(io::Error::other(format!(
            "failed to save artifact {name:?}: vmtest::artifact works only inside a #[vm_test] \
             running in a VM"
        )));
    };
    let (_, relative) =
        crate::rules::parse_name(&format!("{ARTIFACTS_DIR}/{name}")).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("failed to save artifact {name:?}: {why}"),
            )
        })?;
    let path = PathBuf::from(dir).join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, contents).map_err(|e| {
        io::Error::new(e.kind(), format!("failed to save artifact {}: {e}", path.display()))
    })?;
    Ok(path)
}
