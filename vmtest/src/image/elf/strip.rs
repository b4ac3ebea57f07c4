//! An ELF file without its DWARF debug sections, as it goes into the guest.
//!
//! A debug test binary is mostly DWARF (`.debug_info`, `.debug_str`, ...): 27 of the 35 MB of
//! a small suite's binary. Nothing in the guest reads it unless a backtrace is printed, yet the
//! guest kernel copies every byte of the initramfs at boot, and a snapshot holds it in memory.
//! [`layout`] describes the file with those sections' bytes left out: the bytes every segment
//! covers are copied unchanged (so the program loads and runs exactly as before), the other
//! sections that are kept (`.symtab`, `.strtab`, ...) follow, and the section header table comes
//! last, with the left-out sections turned into `SHT_NOBITS` (sections that occupy no file
//! space). No section changes its index, so symbols and section links stay valid; tools read
//! the left-out sections as empty, as they do for `objcopy --only-keep-debug`'s counterpart.
//!
//! Anything unusual (section headers before the end of the segments, overlapping sections)
//! gives no layout, and the file is copied as it is.

use std::fs::File;
use std::path::Path;

use object::elf::{FileHeader32, FileHeader64, SHF_ALLOC, SHT_NOBITS, SHT_NULL};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::read::{ReadCache, ReadRef};
use object::{Endian, Endianness};

use super::{identify, ElfError};

/// One stretch of the stripped file, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `len` bytes of the original file from `offset`.
    Copy { offset: u64, len: u64 },
    /// `len` zero bytes (alignment).
    Zeros(u64),
    /// New bytes: the patched ELF header, the new section header table.
    Bytes(Vec<u8>),
}

/// The stripped file: its pieces and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) pieces: Vec<Piece>,
    pub(crate) len: u64,
}

/// Whether a section named `name` is debug information left out of the guest's copy.
fn is_debug(name: &[u8]) -> bool {
    name.starts_with(b".debug_") || name.starts_with(b".zdebug_")
}

/// The layout of `file` (opened from `path`) without its debug sections, or `None` when it has
/// none to leave out or is laid out unusually (then it is copied as it is). An error means the
/// file is not a readable ELF file. The caller copies the pieces from the same `file`.
pub(crate) fn layout(file: &File, path: &Path) -> Result<Option<Layout>, ElfError> {
    let file = file.try_clone().map_err(|source| ElfError::Io { path: path.to_owned(), source })?;
    let (cache, is_64) = identify(file, path)?;
    if is_64 {
        layout_of::<FileHeader64<Endianness>>(path, &cache, &Fields::ELF64)
    } else {
        layout_of::<FileHeader32<Endianness>>(path, &cache, &Fields::ELF32)
    }
}

/// Where the fields this module rewrites sit, per ELF class.
struct Fields {
    /// `e_shoff` in the ELF header.
    e_shoff: usize,
    /// `sh_type` and `sh_offset` in a section header.
    sh_type: usize,
    sh_offset: usize,
    /// Width of an address-sized field.
    word: usize,
}

impl Fields {
    const ELF64: Fields = Fields { e_shoff: 0x28, sh_type: 4, sh_offset: 0x18, word: 8 };
    const ELF32: Fields = Fields { e_shoff: 0x20, sh_type: 4, sh_offset: 0x10, word: 4 };

    fn put_word(&self, endian: Endianness, bytes: &mut [u8], at: usize, value: u64) -> bool {
        match self.word {
            8 => bytes[at..at + 8].copy_from_slice(&endian.write_u64_bytes(value)),
            _ => match u32::try_from(value) {
                Ok(value) => bytes[at..at + 4].copy_from_slice(&endian.write_u32_bytes(value)),
                Err(_) => return false,
            },
        }
        true
    }
}

fn layout_of<Elf: FileHeader<Endian = Endianness>>(
    path: &Path,
    data: &ReadCache<File>,
    fields: &Fields,
) -> Result<Option<Layout>, ElfError> {
    let malformed = |cause: object::read::Error| ElfError::malformed(path, cause.to_string());
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let sections = header.sections(endian, data).map_err(malformed)?;
    let segments = header.program_headers(endian, data).map_err(malformed)?;

    let section_name = |section: &Elf::SectionHeader| sections.section_name(endian, section);
    let has_debug = sections.iter().any(|s| {
        s.sh_type(endian) != SHT_NOBITS
            && section_name(s).is_ok_and(is_debug)
            && size(s, endian) > 0
    });
    if !has_debug {
        return Ok(None);
    }

    // Everything up to the end of the last segment, the header and program headers included,
    // is copied as it is.
    let ehsize = u64::from(header.e_ehsize(endian));
    let phoff: u64 = header.e_phoff(endian).into();
    let phend = phoff + u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
    let mut kept_end = ehsize.max(phend);
    for segment in segments {
        let offset: u64 = segment.p_offset(endian).into();
        let filesz: u64 = segment.p_filesz(endian).into();
        kept_end = kept_end.max(offset + filesz);
    }
    for section in sections.iter() {
        if section.sh_type(endian) != SHT_NOBITS
            && flags(section, endian) & u64::from(SHF_ALLOC) != 0
        {
            kept_end = kept_end.max(offset(section, endian) + size(section, endian));
        }
    }
    let shoff: u64 = header.e_shoff(endian).into();
    if shoff < kept_end {
        return Ok(None);
    }

    // The sections past the copied part, in file order: kept ones move down, debug ones go.
    let mut tail: Vec<(usize, &Elf::SectionHeader)> = sections
        .iter()
        .enumerate()
        .filter(|&(_, s)| {
            !matches!(s.sh_type(endian), SHT_NOBITS | SHT_NULL) && offset(s, endian) >= kept_end
        })
        .collect();
    tail.sort_by_key(|&(_, s)| offset(s, endian));
    if tail
        .windows(2)
        .any(|w| offset(w[0].1, endian) + size(w[0].1, endian) > offset(w[1].1, endian))
    {
        return Ok(None);
    }

    let entsize = usize::from(header.e_shentsize(endian));
    let count = sections.len();
    let mut table = data
        .read_bytes_at(shoff, (entsize * count) as u64)
        .map_err(|()| ElfError::malformed(path, "the section header table is truncated"))?
        .to_vec();
    // After the ELF header (rewritten last, with the table's new place) and the copied part.
    let mut tail_pieces = Vec::new();
    let mut at = kept_end;
    for (index, section) in tail {
        let entry = index * entsize;
        let name = section_name(section).map_err(malformed)?;
        if is_debug(name) {
            let nobits = endian.write_u32_bytes(SHT_NOBITS);
            table[entry + fields.sh_type..entry + fields.sh_type + 4].copy_from_slice(&nobits);
            if !fields.put_word(endian, &mut table, entry + fields.sh_offset, at) {
                return Ok(None);
            }
            continue;
        }
        let align = align(section, endian).max(1);
        let padded = at.next_multiple_of(align);
        if padded > at {
            tail_pieces.push(Piece::Zeros(padded - at));
        }
        if !fields.put_word(endian, &mut table, entry + fields.sh_offset, padded) {
            return Ok(None);
        }
        let len = size(section, endian);
        tail_pieces.push(Piece::Copy { offset: offset(section, endian), len });
        at = padded + len;
    }
    let new_shoff = at.next_multiple_of(fields.word as u64);
    if new_shoff > at {
        tail_pieces.push(Piece::Zeros(new_shoff - at));
    }
    let len = new_shoff + table.len() as u64;
    tail_pieces.push(Piece::Bytes(table));

    // The ELF header, with the table's new place.
    let mut elf_header = data
        .read_bytes_at(0, ehsize)
        .map_err(|()| ElfError::malformed(path, "the ELF header is truncated"))?
        .to_vec();
    if elf_header.len() < fields.e_shoff + fields.word
        || !fields.put_word(endian, &mut elf_header, fields.e_shoff, new_shoff)
    {
        return Ok(None);
    }
    let mut pieces =
        vec![Piece::Bytes(elf_header), Piece::Copy { offset: ehsize, len: kept_end - ehsize }];
    pieces.extend(tail_pieces);
    Ok(Some(Layout { pieces, len }))
}

fn offset<S: SectionHeader>(section: &S, endian: S::Endian) -> u64 {
    section.sh_offset(endian).into()
}

fn size<S: SectionHeader>(section: &S, endian: S::Endian) -> u64 {
    section.sh_size(endian).into()
}

fn flags<S: SectionHeader>(section: &S, endian: S::Endian) -> u64 {
    section.sh_flags(endian).into()
}

fn align<S: SectionHeader>(section: &S, endian: S::Endian) -> u64 {
    section.sh_addralign(endian).into()
}

#[cfg(test)]
mod tests;
