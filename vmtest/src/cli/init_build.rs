//! The static `vmtest-init` that ordinary test binaries boot under: found where the user put
//! one, or built from vmtest-init's own source once per architecture and cached.
//!
//! Lookup order: `VMTEST_INIT`; else the cache
//! (`$XDG_CACHE_HOME/vmtest/init/<version>/<triple>/vmtest-init`, else under `~/.cache`), built
//! there on first use with `cargo build --release --target <musl triple>`, linked by rust-lld so
//! no C toolchain is needed. A published vmtest-init is built once per version; a source checkout
//! (no `Cargo.toml.orig`, which `cargo package` writes; as in the vmtest workspace) is handed to cargo on every run, which
//! rebuilds only when the source changed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::arch::Arch;
use crate::Error;

/// Names the static `vmtest-init` to boot plain binaries under.
pub const INIT_ENV: &str = "VMTEST_INIT";

/// The static `vmtest-init` for `arch`.
pub(crate) fn find_or_build(arch: Arch) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(INIT_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Env(format!(
                "{INIT_ENV}={} is not a file (unset it to let vmtest build one)",
                path.display()
            )));
        }
        return Ok(path);
    }
    let cache = cache_dir().ok_or_else(|| {
        Error::InitBuild(format!(
            "failed to find a cache dir for the static vmtest-init (neither XDG_CACHE_HOME nor \
             HOME is set): set {INIT_ENV}=<path> to one built with {}",
            build_hint(arch)
        ))
    })?;
    build(&Source::ours(), arch, &cache)
}

/// `$XDG_CACHE_HOME/vmtest/init`, else `~/.cache/vmtest/init`.
fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_CACHE_HOME")
        .map(|cache| cache.join("vmtest/init"))
        .or_else(|| var("HOME").map(|home| home.join(".cache/vmtest/init")))
}

/// A command that builds a static vmtest-init for `arch` by hand, as printed in errors.
pub(crate) fn build_hint(arch: Arch) -> String {
    let triple = arch.musl_target();
    format!(
        "`rustup target add {triple} && {}=rust-lld cargo install vmtest-init --target {triple} \
         --root <dir>` (the binary is then <dir>/bin/vmtest-init)",
        linker_var(triple)
    )
}

/// `CARGO_TARGET_<TRIPLE>_LINKER`.
fn linker_var(triple: &str) -> String {
    format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase().replace('-', "_"))
}

/// An environment variable of an enclosing cargo build that would change how vmtest-init builds.
fn is_outer_build_setting(name: &str) -> bool {
    ["CARGO_TARGET_", "CARGO_BUILD_", "CARGO_PROFILE_"].iter().any(|p| name.starts_with(p))
        || ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_MANIFEST_DIR"].contains(&name)
}

/// Where vmtest-init's source is and whether it is a published package.
#[derive(Clone, Debug)]
struct Source {
    manifest: PathBuf,
    version: &'static str,
    /// A published package (from a registry) never changes under its version; a checkout may.
    published: bool,
}

impl Source {
    /// The vmtest-init this crate was built with.
    fn ours() -> Source {
        let dir = Path::new(vmtest_init::SOURCE_DIR);
        Source {
            manifest: dir.join("Cargo.toml"),
            version: vmtest_init::VERSION,
            published: dir.join("Cargo.toml.orig").is_file(),
        }
    }
}

/// Builds (or finds already built) the static vmtest-init for `arch` from `source` under
/// `cache`; returns the binary's path.
fn build(source: &Source, arch: Arch, cache: &Path) -> Result<PathBuf, Error> {
    let triple = arch.musl_target();
    let dir = cache.join(source.version).join(triple);
    let binary = dir.join("vmtest-init");
    if source.published && binary.is_file() {
        return Ok(binary);
    }
    if !source.manifest.is_file() {
        return Err(Error::InitBuild(format!(
            "failed to build a static vmtest-init for {arch}: its source ({}) is gone; \
             reinstall cargo-vmtest, or set {INIT_ENV}=<path> to one built with {}",
            source.manifest.display(),
            build_hint(arch)
        )));
    }
    crate::cli::target::ensure_target(triple)?;
    let target_dir = cache.join("build");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    std::fs::create_dir_all(cache)
        .map_err(|e| Error::io(format!("failed to create {}", cache.display()), e))?;
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--quiet", "--release", "--bin", "vmtest-init", "--target", triple])
        .arg("--manifest-path")
        .arg(&source.manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Run from the cache, not the user's project: its `.cargo/config.toml` (link flags for
        // its own targets, say) does not describe this build.
        .current_dir(cache);
    // A runner started by `cargo test` inherits the outer build's settings; none of them
    // describe this build either.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_outer_build_setting(&name) {
            command.env_remove(&*name);
        }
    }
    command.env(linker_var(triple), "rust-lld");
    let shown = format!(
        "{}=rust-lld cargo build --release --bin vmtest-init --target {triple} \
         --manifest-path {} --target-dir {}",
        linker_var(triple),
        source.manifest.display(),
        target_dir.display()
    );
    let built = target_dir.join(triple).join("release").join("vmtest-init");
    if source.published || !built.is_file() {
        eprintln!(
            "vmtest: building the static vmtest-init {} for {arch} (once; cached in {})",
            source.version,
            if source.published { dir.display() } else { target_dir.display() }
        );
    }
    let output = command.output().map_err(|e| {
        Error::io(format!("failed to run `{}` ({shown})", cargo.to_string_lossy()), e)
    })?;
    if !output.status.success() {
        return Err(Error::InitBuild(format!(
            "failed to build a static vmtest-init for {arch} ({}): `{shown}`:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )));
    }
    if !source.published {
        return Ok(built);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("failed to create {}", dir.display()), e))?;
    // Copy under a temporary name and rename, so a concurrent run never boots half a file.
    let partial = dir.join(format!(".vmtest-init.{}", std::process::id()));
    std::fs::copy(&built, &partial).map_err(|e| {
        Error::io(format!("failed to copy {} to {}", built.display(), partial.display()), e)
    })?;
    std::fs::rename(&partial, &binary).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        Error::io(format!("failed to rename {} to {}", partial.display(), binary.display()), e)
    })?;
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_sets_the_linker_for_the_target() {
        let hint = build_hint(Arch::Aarch64);
        assert!(hint.contains("rustup target add aarch64-unknown-linux-musl"), "{hint}");
        assert!(hint.contains("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld"), "{hint}");
        assert!(hint.contains("--target aarch64-unknown-linux-musl"), "{hint}");
    }

    #[test]
    fn outer_build_settings_are_left_out() {
        for name in
            ["CARGO_TARGET_DIR", "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS", "RUSTFLAGS"]
        {
            assert!(is_outer_build_setting(name), "{name}");
        }
        for name in ["CARGO_HOME", "RUSTUP_HOME", "PATH", "CARGO"] {
            assert!(!is_outer_build_setting(name), "{name}");
        }
    }

    #[test]
    fn a_published_source_without_its_manifest_names_the_way_out() {
        let cache = tempfile::tempdir().unwrap();
        let source = Source {
            manifest: cache.path().join("gone/Cargo.toml"),
            version: "9.9.9",
            published: true,
        };
        let err = build(&source, Arch::Aarch64, cache.path()).unwrap_err().to_string();
        assert!(err.contains("gone/Cargo.toml"), "{err}");
        assert!(err.contains(INIT_ENV), "{err}");
    }

    #[test]
    fn a_published_init_in_the_cache_is_used_without_building() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("9.9.9").join(Arch::X86_64.musl_target());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmtest-init"), b"").unwrap();
        let source = Source {
            manifest: cache.path().join("gone/Cargo.toml"),
            version: "9.9.9",
            published: true,
        };
        assert_eq!(build(&source, Arch::X86_64, cache.path()).unwrap(), dir.join("vmtest-init"));
    }
}
