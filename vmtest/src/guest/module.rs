//! Loading and unloading a kernel module file from a test, inside the VM: the way to test an
//! out-of-tree module (built against the kernel's build tree, brought in with `files = [...]`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kernel::modules::{modinfo_of, read_module};

/// Why [`load_module`] or [`unload_module`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// Called on the host, or in a test process outside a vmtest guest.
    #[error("failed to {action}: vmtest's module functions work only inside a vmtest guest")]
    NotInGuest {
        /// What was asked.
        action: String,
    },
    /// The module file could not be read or is not a kernel module.
    #[error("failed to read kernel module {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The module was built for another kernel than the one running.
    #[error(
        "failed to load {}: it was built for kernel {built_for}, this VM runs {running} \
         (build it against this kernel's tree: `cargo vmtest kernel path <kernel> --build`)",
        path.display()
    )]
    WrongKernel {
        /// The file.
        path: PathBuf,
        /// The release in its `vermagic`.
        built_for: String,
        /// The running kernel's release.
        running: String,
    },
    /// A module it depends on (its `.modinfo` `depends=`) could not be loaded.
    #[error("failed to load {dependency}, which {} depends on: {reason}", path.display())]
    Dependency {
        /// The file.
        path: PathBuf,
        /// The module it depends on.
        dependency: String,
        /// What `modprobe` said.
        reason: String,
    },
    /// The kernel refused the module.
    #[error("failed to load {} (init_module): {source}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The kernel refused to unload the module.
    #[error("failed to unload module `{name}` (delete_module): {source}")]
    Unload {
        /// The module's name.
        name: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

/// Loads the kernel module file at `path` (`.ko`, or compressed `.ko.xz`, `.ko.zst`, `.ko.gz`)
/// into the VM's kernel with the parameters `params` (`"step=2 debug=1"`, as `insmod` takes
/// them), after the modules it depends on, which come from the booted kernel through the
/// guest's `modprobe`.
///
/// A module built for another kernel is refused before the kernel sees it, naming both
/// releases. A fault while the module initializes (an Oops, WARN or BUG) fails the running
/// test with the kernel's report, as any other splat does.
///
/// ```no_run
/// // The crate as a fixture, with the module built into its kmod/build/.
/// #[vmtest::vm_test(files = ["."])]
/// fn my_module_loads() {
///     vmtest::load_module("kmod/build/my_mod.ko", "debug=1").unwrap();
///     assert!(std::path::Path::new("/sys/module/my_mod").exists());
///     vmtest::unload_module("my_mod").unwrap();
/// }
/// ```
pub fn load_module(path: impl AsRef<Path>, params: &str) -> Result<(), ModuleError> {
    let path = path.as_ref();
    if !vmtest_init::in_vmtest_guest() {
        return Err(ModuleError::NotInGuest { action: format!("load {}", path.display()) });
    }
    let read_error = |reason: String| ModuleError::Read { path: path.to_owned(), reason };
    let image = read_module(path).map_err(|e| read_error(e.to_string()))?;
    let modinfo = modinfo_of(&image).map_err(read_error)?;
    let running = rustix::system::uname().release().to_string_lossy().into_owned();
    if let Some(built_for) = modinfo.release() {
        if built_for != running {
            return Err(ModuleError::WrongKernel {
                path: path.to_owned(),
                built_for: built_for.to_owned(),
                running,
            });
        }
    }
    for dependency in &modinfo.depends {
        let output = std::process::Command::new("/sbin/modprobe")
            .arg(dependency)
            .output()
            .map_err(|e| dependency_error(path, dependency, e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(dependency_error(path, dependency, stderr.trim().to_owned()));
        }
    }
    let params = std::ffi::CString::new(params)
        .map_err(|_| read_error("the parameters contain a NUL byte".to_owned()))?;
    // SAFETY: init_module(2) with a buffer and its length, and a NUL-terminated string; the
    // kernel copies both.
    let ret = unsafe {
        libc::syscall(libc::SYS_init_module, image.as_ptr(), image.len(), params.as_ptr())
    };
    if ret != 0 {
        return Err(ModuleError::Load {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Unloads the module `name` (as `/sys/module` names it) from the VM's kernel, waiting up to
/// ten seconds while it is still in use (`EAGAIN`, `EBUSY`: a device just closed, a link just
/// deleted).
pub fn unload_module(name: &str) -> Result<(), ModuleError> {
    if !vmtest_init::in_vmtest_guest() {
        return Err(ModuleError::NotInGuest { action: format!("unload module `{name}`") });
    }
    let unload_error = |source| ModuleError::Unload { name: name.to_owned(), source };
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| unload_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: delete_module(2) with a NUL-terminated name and O_NONBLOCK.
        let ret =
            unsafe { libc::syscall(libc::SYS_delete_module, c_name.as_ptr(), libc::O_NONBLOCK) };
        if ret == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        let busy = matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY));
        if !busy || Instant::now() >= deadline {
            return Err(unload_error(error));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dependency_error(path: &Path, dependency: &str, reason: String) -> ModuleError {
    ModuleError::Dependency { path: path.to_owned(), dependency: dependency.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_host_nothing_is_loaded_or_unloaded() {
        if vmtest_init::in_vmtest_guest() {
            return; // Only meaningful on the host.
        }
        let error = load_module("/nonexistent/x.ko", "").unwrap_err();
        assert!(matches!(error, ModuleError::NotInGuest { .. }), "{error}");
        assert!(error.to_string().contains("only inside a vmtest guest"), "{error}");
        let error = unload_module("loop").unwrap_err();
        assert!(matches!(error, ModuleError::NotInGuest { .. }), "{error}");
    }
}
