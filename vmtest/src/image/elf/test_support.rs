//! Test fixtures shared by the ELF and initramfs tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("vmtest-{label}-")).tempdir().unwrap()
}

/// Compiles a one-file Rust program with `rustc` for `target` (the host's when `None`).
///
/// Returns `None`, after printing why, when `rustc` or the target is not available, so that
/// tests depending on it skip rather than fail on a machine without the toolchain.
pub(crate) fn compile_rust(dir: &Path, source: &str, target: Option<&str>) -> Option<PathBuf> {
    let src = dir.join("main.rs");
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("prog-{}", target.unwrap_or("host")));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(&rustc);
    cmd.arg("--edition=2021").arg("-O").arg("-o").arg(&out).arg(&src);
    if let Some(target) = target {
        cmd.args(["--target", target]);
    }
    match cmd.output() {
        Ok(output) if output.status.success() => Some(out),
        Ok(output) => {
            crate::__testing::missing(&format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            None
        }
        Err(e) => {
            crate::__testing::missing(&format!("failed to run {}: {e}", rustc.to_string_lossy()));
            None
        }
    }
}

/// What [`fake_elf`] puts in a file.
#[derive(Default)]
pub(crate) struct FakeElf<'a> {
    pub(crate) machine: u16,
    pub(crate) interp: Option<&'a str>,
    pub(crate) needed: &'a [&'a str],
    pub(crate) runpath: Option<&'a str>,
    /// Store `runpath` as `DT_RPATH` instead of `DT_RUNPATH`.
    pub(crate) as_rpath: bool,
}

/// Builds a minimal little-endian ELF64 shared object: one `PT_LOAD` covering the file, an
/// optional `PT_INTERP`, and a `PT_DYNAMIC` with the given entries. No section headers, so only
/// the program-header path of the reader is exercised, as for a stripped binary.
pub(crate) fn fake_elf(spec: &FakeElf<'_>) -> Vec<u8> {
    const BASE: u64 = 0x10000;
    const PHNUM: u64 = 3;
    let interp_off = 64 + 56 * PHNUM;
    let interp = spec.interp.map(|s| format!("{s}\0")).unwrap_or_default();
    let strtab_off = interp_off + interp.len() as u64;
    let mut strtab = vec![0u8];
    let mut dynamic: Vec<(u64, u64)> = Vec::new();
    for name in spec.needed {
        dynamic.push((1 /* DT_NEEDED */, strtab.len() as u64));
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
    }
    if let Some(runpath) = spec.runpath {
        let tag = if spec.as_rpath {
            15 /* DT_RPATH */
        } else {
            29 /* DT_RUNPATH */
        };
        dynamic.push((tag, strtab.len() as u64));
        strtab.extend_from_slice(runpath.as_bytes());
        strtab.push(0);
    }
    dynamic.push((5 /* DT_STRTAB */, BASE + strtab_off));
    dynamic.push((10 /* DT_STRSZ */, strtab.len() as u64));
    dynamic.push((0 /* DT_NULL */, 0));
    let dyn_off = (strtab_off + strtab.len() as u64).next_multiple_of(8);
    let total = dyn_off + 16 * dynamic.len() as u64;

    let mut out = Vec::new();
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&3u16.to_le_bytes()); // e_type = ET_DYN
    out.extend_from_slice(&spec.machine.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, PHNUM as u16, 64, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut phdr = |p_type: u32, offset: u64, size: u64| {
        out.extend_from_slice(&p_type.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes()); // PF_R
        for v in [offset, BASE + offset, BASE + offset, size, size, 8] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1 /* PT_LOAD */, 0, total);
    let interp_type = if spec.interp.is_some() {
        3 /* PT_INTERP */
    } else {
        0 /* PT_NULL */
    };
    phdr(interp_type, interp_off, interp.len() as u64);
    phdr(2 /* PT_DYNAMIC */, dyn_off, 16 * dynamic.len() as u64);
    out.extend_from_slice(interp.as_bytes());
    out.extend_from_slice(&strtab);
    out.resize(dyn_off as usize, 0);
    for (tag, val) in dynamic {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&val.to_le_bytes());
    }
    assert_eq!(out.len() as u64, total);
    out
}
