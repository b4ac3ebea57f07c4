use std::path::Path;

use super::test_support::{fake_elf, temp_dir, FakeElf};
use super::*;

use object::elf::{EM_AARCH64, EM_X86_64};

#[test]
fn reads_the_running_test_binary() {
    let exe = std::env::current_exe().unwrap();
    let info = read_elf(&exe).unwrap();
    assert_eq!(crate::arch::Arch::from_elf_machine(info.machine), Some(crate::arch::Arch::host()));
    assert_eq!(info.is_64, cfg!(target_pointer_width = "64"));
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(info.interp.as_deref().is_some_and(|i| i.starts_with('/')), "{info:?}");
        assert!(info.needed.iter().any(|n| n == "libc.so.6"), "{info:?}");
    }
}

#[test]
fn reads_a_foreign_architecture() {
    let dir = temp_dir("elf-foreign");
    let path = dir.path().join("libfoo.so");
    let spec = FakeElf {
        machine: EM_AARCH64,
        interp: Some("/lib/ld-linux-aarch64.so.1"),
        needed: &["libbar.so.1", "libc.so.6"],
        runpath: Some("$ORIGIN/../lib:/opt/x:${ORIGIN}"),
        as_rpath: false,
    };
    std::fs::write(&path, fake_elf(&spec)).unwrap();
    let info = read_elf(&path).unwrap();
    let origin = dir.path().display();
    assert_eq!(
        info,
        ElfInfo {
            machine: EM_AARCH64,
            is_64: true,
            interp: Some("/lib/ld-linux-aarch64.so.1".into()),
            needed: vec!["libbar.so.1".into(), "libc.so.6".into()],
            runpath: vec![format!("{origin}/../lib"), "/opt/x".into(), format!("{origin}")],
            runpath_is_rpath: false,
        }
    );
}

#[test]
fn rpath_is_used_without_runpath() {
    let dir = temp_dir("elf-rpath");
    let path = dir.path().join("a");
    let spec = FakeElf {
        machine: EM_X86_64,
        runpath: Some("/opt/r"),
        as_rpath: true,
        ..FakeElf::default()
    };
    std::fs::write(&path, fake_elf(&spec)).unwrap();
    let info = read_elf(&path).unwrap();
    assert_eq!(info.runpath, ["/opt/r"]);
    assert!(info.runpath_is_rpath);
    assert_eq!(info.interp, None);
    assert!(info.needed.is_empty());
}

#[test]
fn non_elf_files_are_named_in_the_error() {
    let dir = temp_dir("elf-text");
    let text = dir.path().join("script.sh");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    for path in [&text, &empty] {
        let err = read_elf(path).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{} is not an ELF file", path.display()));
    }

    let kernel = Path::new("/work/kernels/6.12/boot/vmlinuz-6.12.117+deb12-amd64");
    if kernel.exists() {
        let err = read_elf(kernel).unwrap_err();
        assert_eq!(err.to_string(), format!("{} is not an ELF file", kernel.display()));
    }
}

#[test]
fn truncated_and_missing_files_are_errors() {
    let dir = temp_dir("elf-bad");
    let truncated = dir.path().join("truncated");
    let mut bytes = fake_elf(&FakeElf { machine: EM_X86_64, ..FakeElf::default() });
    bytes.truncate(40);
    std::fs::write(&truncated, bytes).unwrap();
    let err = read_elf(&truncated).unwrap_err();
    assert!(matches!(err, ElfError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().starts_with("failed to parse ELF file: "), "{err}");

    let missing = dir.path().join("missing");
    let err = read_elf(&missing).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("failed to read {}: ", missing.display())),
        "{err}"
    );
}

#[test]
fn reads_a_named_section() {
    let exe = std::env::current_exe().unwrap();
    let info = read_elf(&exe).unwrap();
    let interp = read_section(&exe, ".interp").unwrap();
    match info.interp {
        Some(i) => assert_eq!(interp, Some(format!("{i}\0").into_bytes())),
        None => assert_eq!(interp, None),
    }
    assert!(read_section(&exe, ".text").unwrap().is_some_and(|t| !t.is_empty()));
    assert_eq!(read_section(&exe, ".no-such-section").unwrap(), None);

    let dir = temp_dir("elf-nosections");
    let path = dir.path().join("stripped");
    std::fs::write(&path, fake_elf(&FakeElf { machine: EM_AARCH64, ..FakeElf::default() }))
        .unwrap();
    assert_eq!(read_section(&path, ".text").unwrap(), None);
}
