use std::path::Path;
use std::process::Command;

use object::elf::{FileHeader64, SHT_NOBITS};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

use super::super::test_support::{fake_elf, temp_dir, FakeElf};
use super::*;

/// The layout of the file at `path`.
fn layout_at(path: &Path) -> Result<Option<Layout>, ElfError> {
    layout(&std::fs::File::open(path).unwrap(), path)
}

/// Writes `layout` of `source` to `out`, as the initramfs writer does.
fn write(layout: &Layout, source: &Path, out: &Path) {
    let original = std::fs::read(source).unwrap();
    let mut bytes = Vec::new();
    for piece in &layout.pieces {
        match piece {
            Piece::Copy { offset, len } => {
                bytes.extend_from_slice(&original[*offset as usize..(*offset + *len) as usize])
            }
            Piece::Zeros(len) => bytes.resize(bytes.len() + *len as usize, 0),
            Piece::Bytes(new) => bytes.extend_from_slice(new),
        }
    }
    assert_eq!(bytes.len() as u64, layout.len);
    std::fs::write(out, bytes).unwrap();
    std::fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// (name, type, data) of a section.
type Section = (String, u32, Vec<u8>);
/// (file offset, bytes) of a segment.
type Segment = (u64, Vec<u8>);

/// Every section and every segment of the ELF file at `path`.
fn contents(path: &Path) -> (Vec<Section>, Vec<Segment>) {
    let data = std::fs::read(path).unwrap();
    let header = FileHeader64::<Endianness>::parse(&*data).unwrap();
    let endian = header.endian().unwrap();
    let sections = header.sections(endian, &*data).unwrap();
    let named = sections
        .iter()
        .map(|s| {
            let name = String::from_utf8_lossy(sections.section_name(endian, s).unwrap());
            (name.into_owned(), s.sh_type(endian), s.data(endian, &*data).unwrap().to_vec())
        })
        .collect();
    let segments = header
        .program_headers(endian, &*data)
        .unwrap()
        .iter()
        .map(|p| (p.p_offset(endian), p.data(endian, &*data).unwrap().to_vec()))
        .collect();
    (named, segments)
}

#[test]
fn the_test_binary_without_debug_info_is_smaller_and_runs_the_same() {
    let exe = std::env::current_exe().unwrap();
    let Some(layout) = layout_at(&exe).unwrap() else {
        // A build without debug info (`debug = 0`) has nothing to leave out.
        let (sections, _) = contents(&exe);
        assert!(!sections.iter().any(|(name, _, _)| name.starts_with(".debug_")));
        return;
    };
    let dir = temp_dir("strip");
    let stripped = dir.path().join("stripped");
    write(&layout, &exe, &stripped);
    assert!(layout.len < std::fs::metadata(&exe).unwrap().len());

    let (before, mut segments_before) = contents(&exe);
    let (after, segments_after) = contents(&stripped);
    // The ELF header, in the segment from offset 0, has the one field that moves: `e_shoff`.
    let shoff = &std::fs::read(&stripped).unwrap()[0x28..0x30];
    for (offset, bytes) in &mut segments_before {
        if *offset == 0 && bytes.len() >= 0x30 {
            bytes[0x28..0x30].copy_from_slice(shoff);
        }
    }
    assert!(segments_before == segments_after, "every segment's bytes are unchanged");
    assert_eq!(before.len(), after.len(), "no section changes its index");
    for ((name, kind, data), (name_after, kind_after, data_after)) in before.iter().zip(&after) {
        assert_eq!(name, name_after);
        // `.debug_gdb_scripts` is loaded with the program, and stays.
        if name.starts_with(".debug_") && *kind_after != *kind {
            assert_eq!(*kind_after, SHT_NOBITS, "{name}");
            assert!(data_after.is_empty(), "{name}");
        } else {
            assert!((kind, data) == (kind_after, data_after), "{name} is kept as it was");
        }
    }
    assert!(after.iter().any(|(name, kind, _)| name == ".debug_info" && *kind == SHT_NOBITS));
    assert!(after.iter().any(|(name, _, data)| name == ".symtab" && !data.is_empty()));

    // The copy is the same program: it lists the same tests.
    let list = |program: &Path| {
        let output = Command::new(program).args(["--list", "--format", "terse"]).output().unwrap();
        assert!(output.status.success(), "{program:?}: {output:?}");
        output.stdout
    };
    assert!(list(&exe) == list(&stripped), "the copy lists other tests");
}

#[test]
fn a_file_without_debug_sections_is_copied_as_it_is() {
    let dir = temp_dir("strip-none");
    let path = dir.path().join("plain");
    let spec = FakeElf {
        machine: object::elf::EM_X86_64,
        interp: None,
        needed: &[],
        runpath: None,
        as_rpath: false,
    };
    std::fs::write(&path, fake_elf(&spec)).unwrap();
    assert_eq!(layout_at(&path).unwrap(), None);
}

#[test]
fn a_file_that_is_not_elf_is_an_error() {
    let dir = temp_dir("strip-text");
    let path = dir.path().join("script");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    assert!(matches!(layout_at(&path), Err(ElfError::NotElf { .. })));
}
