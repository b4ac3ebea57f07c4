//! The Rust target a cross run and the static `vmtest-init` build for: [`ensure_target`] makes
//! sure its standard library is installed. Beneath both the runner and the init build.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Why the Rust target for a triple could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Its standard library is not in the sysroot, and rustup is not there to add it.
    #[error(
        "failed to find the Rust target `{triple}` (its standard library is not in the \
         toolchain's sysroot) and rustup is not on PATH to add it: install rustup and run \
         `rustup target add {triple}`, or install your toolchain's rust-std for {triple}"
    )]
    NoRustup {
        /// The target triple.
        triple: String,
    },
    /// `rustup target add` could not be started.
    #[error("failed to run `rustup target add {triple}`: {source}")]
    RustupSpawn {
        /// The target triple.
        triple: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// `rustup target add` failed.
    #[error("`rustup target add {triple}` failed ({status})")]
    RustupFailed {
        /// The target triple.
        triple: String,
        /// How it ended.
        status: ExitStatus,
    },
}

/// Makes sure the Rust standard library for `triple` is installed: present in the sysroot, or
/// added with `rustup target add`. The error says how to install it when that is not possible.
pub fn ensure_target(triple: &str) -> Result<(), TargetError> {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let rustup = find_on_path("rustup");
    ensure_target_with(triple, sysroot.as_deref(), rustup.as_deref())
}

fn ensure_target_with(
    triple: &str,
    sysroot: Option<&Path>,
    rustup: Option<&Path>,
) -> Result<(), TargetError> {
    if sysroot.is_some_and(|root| root.join("lib/rustlib").join(triple).join("lib").is_dir()) {
        return Ok(());
    }
    let Some(rustup) = rustup else {
        return Err(TargetError::NoRustup { triple: triple.to_owned() });
    };
    eprintln!("vmtest: installing the Rust target {triple} (rustup target add {triple})");
    let status = Command::new(rustup)
        .args(["target", "add", triple])
        .status()
        .map_err(|source| TargetError::RustupSpawn { triple: triple.to_owned(), source })?;
    if status.success() {
        Ok(())
    } else {
        Err(TargetError::RustupFailed { triple: triple.to_owned(), status })
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_target_without_rustup_says_how_to_install_it() {
        let sysroot =
            std::env::temp_dir().join(format!("vmtest-no-sysroot-{}", std::process::id()));
        let err =
            ensure_target_with("aarch64-unknown-linux-musl", Some(&sysroot), None).unwrap_err();
        assert!(matches!(&err, TargetError::NoRustup { triple } if triple.starts_with("aarch64")));
        let err = err.to_string();
        assert!(err.contains("rustup target add aarch64-unknown-linux-musl"), "{err}");
        assert!(err.contains("failed to find the Rust target"), "{err}");
    }

    #[test]
    fn installed_target_needs_nothing() {
        let root = std::env::temp_dir().join(format!("vmtest-sysroot-{}", std::process::id()));
        std::fs::create_dir_all(root.join("lib/rustlib/x-unknown-linux-musl/lib")).unwrap();
        let result = ensure_target_with("x-unknown-linux-musl", Some(&root), None);
        let _ = std::fs::remove_dir_all(&root);
        result.unwrap();
    }
}
