//! Reading ELF files: machine, interpreter, needed libraries.
//!
//! Only the ELF header, the program headers and the few ranges they point at are read (through
//! [`object::ReadCache`]), never the whole file: test binaries with debug info can be hundreds of
//! megabytes. Nothing here depends on the host's architecture, so an aarch64 binary is read the
//! same way on an x86_64 host.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::elf::{
    FileHeader32, FileHeader64, DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH, DT_STRSZ, DT_STRTAB,
    ELFCLASS32, ELFCLASS64, ELFMAG, PT_LOAD,
};
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use object::read::{ReadCache, StringTable};
use object::Endianness;

pub(crate) mod loader;
pub(crate) mod strip;
#[cfg(test)]
pub(crate) mod test_support;

/// What vmtest needs to know about an ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ElfInfo {
    /// `e_machine`, e.g. 62 (`EM_X86_64`) or 183 (`EM_AARCH64`).
    pub(crate) machine: u16,
    /// `ELFCLASS64` rather than `ELFCLASS32`.
    pub(crate) is_64: bool,
    /// The program interpreter (`PT_INTERP`), for a dynamically linked executable.
    pub(crate) interp: Option<String>,
    /// The `DT_NEEDED` entries, in file order.
    pub(crate) needed: Vec<String>,
    /// The `DT_RUNPATH` directories or, when there is none, the `DT_RPATH` ones, with `$ORIGIN`
    /// replaced by the directory of the path the file was read from.
    pub(crate) runpath: Vec<String>,
    /// Whether `runpath` came from `DT_RPATH` (which, unlike `DT_RUNPATH`, also applies to the
    /// libraries this file loads).
    pub(crate) runpath_is_rpath: bool,
}

/// A failure to read an ELF file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ElfError {
    /// The file could not be opened or read.
    #[error("failed to read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the ELF magic (a kernel image, a script, ...).
    #[error("{} is not an ELF file", path.display())]
    NotElf { path: PathBuf },
    /// The file starts like an ELF file but its headers are invalid or truncated.
    #[error("failed to parse ELF file: {}: {cause}", path.display())]
    Malformed { path: PathBuf, cause: String },
}

impl ElfError {
    fn malformed(path: &Path, cause: impl Into<String>) -> ElfError {
        ElfError::Malformed { path: path.to_owned(), cause: cause.into() }
    }
}

/// Reads the machine, class, interpreter and dynamic dependencies of the ELF file at `path`.
pub(crate) fn read_elf(path: &Path) -> Result<ElfInfo, ElfError> {
    let (cache, is_64) = open(path)?;
    if is_64 {
        info::<FileHeader64<Endianness>>(path, &cache)
    } else {
        info::<FileHeader32<Endianness>>(path, &cache)
    }
}

/// Reads the contents of the section named `name`, or `None` when the file has no such section.
///
/// A `SHT_NOBITS` section (`.bss`) reads as empty. Compressed sections are returned as stored.
pub(crate) fn read_section(path: &Path, name: &str) -> Result<Option<Vec<u8>>, ElfError> {
    let (cache, is_64) = open(path)?;
    if is_64 {
        section::<FileHeader64<Endianness>>(path, &cache, name)
    } else {
        section::<FileHeader32<Endianness>>(path, &cache, name)
    }
}

/// Opens `path` and checks the ELF identification, returning whether the file is 64-bit.
fn open(path: &Path) -> Result<(ReadCache<File>, bool), ElfError> {
    let file = crate::image::initramfs::open_regular(path)
        .map_err(|source| ElfError::Io { path: path.to_owned(), source })?;
    identify(file, path)
}

/// Checks the ELF identification of `file` (opened from `path`), returning whether it is 64-bit.
fn identify(mut file: File, path: &Path) -> Result<(ReadCache<File>, bool), ElfError> {
    let io = |source| ElfError::Io { path: path.to_owned(), source };
    let mut ident = [0u8; 5];
    let mut filled = 0;
    while filled < ident.len() {
        match file.read(&mut ident[filled..]).map_err(io)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled < ident.len() || ident[..4] != ELFMAG {
        return Err(ElfError::NotElf { path: path.to_owned() });
    }
    let is_64 = match ident[4] {
        ELFCLASS64 => true,
        ELFCLASS32 => false,
        other => return Err(ElfError::malformed(path, format!("unknown ELF class {other}"))),
    };
    Ok((ReadCache::new(file), is_64))
}

fn info<Elf: FileHeader<Endian = Endianness>>(
    path: &Path,
    data: &ReadCache<File>,
) -> Result<ElfInfo, ElfError> {
    let malformed = |cause: object::read::Error| ElfError::malformed(path, cause.to_string());
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let segments = header.program_headers(endian, data).map_err(malformed)?;

    let mut interp = None;
    let mut dynamic = None;
    for segment in segments {
        if let Some(bytes) = segment.interpreter(endian, data).map_err(malformed)? {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ElfError::malformed(path, "PT_INTERP is not UTF-8"))?;
            interp = Some(text.to_owned());
        } else if let Some(entries) = segment.dynamic(endian, data).map_err(malformed)? {
            dynamic = Some(entries);
        }
    }

    let mut info = ElfInfo {
        machine: header.e_machine(endian),
        is_64: header.is_class_64(),
        interp,
        needed: Vec::new(),
        runpath: Vec::new(),
        runpath_is_rpath: false,
    };
    let Some(entries) = dynamic else {
        return Ok(info);
    };

    // The dynamic string table is found the way the loader finds it: through DT_STRTAB, an
    // address, mapped to a file offset by the PT_LOAD segment that contains it. Section headers
    // are not needed (and may be stripped).
    let mut strtab = None;
    let mut strsz = None;
    for entry in entries {
        match entry.tag32(endian) {
            Some(DT_NULL) => break,
            Some(DT_STRTAB) => strtab = Some(entry.d_val(endian).into()),
            Some(DT_STRSZ) => strsz = Some(entry.d_val(endian).into()),
            _ => {}
        }
    }
    let has_strings =
        entries.iter().any(|e| matches!(e.tag32(endian), Some(DT_NEEDED | DT_RUNPATH | DT_RPATH)));
    if !has_strings {
        return Ok(info);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(ElfError::malformed(path, "dynamic section lacks DT_STRTAB or DT_STRSZ"));
    };
    let offset = segments
        .iter()
        .filter(|s| s.p_type(endian) == PT_LOAD)
        .find_map(|s| {
            let vaddr: u64 = s.p_vaddr(endian).into();
            let filesz: u64 = s.p_filesz(endian).into();
            let offset: u64 = s.p_offset(endian).into();
            let end = strtab.checked_add(strsz)?;
            (vaddr <= strtab && end <= vaddr.checked_add(filesz)?)
                .then(|| offset.checked_add(strtab - vaddr))
                .flatten()
        })
        .ok_or_else(|| ElfError::malformed(path, "DT_STRTAB is outside every PT_LOAD segment"))?;
    let strings = StringTable::new(data, offset, offset.saturating_add(strsz));
    let string = |entry: &Elf::Dyn| -> Result<String, ElfError> {
        let bytes = entry
            .val32(endian)
            .and_then(|val| strings.get(val).ok())
            .ok_or_else(|| ElfError::malformed(path, "invalid dynamic string offset"))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ElfError::malformed(path, "dynamic string is not UTF-8"))
    };

    let mut runpath = Vec::new();
    let mut rpath = Vec::new();
    for entry in entries {
        match entry.tag32(endian) {
            Some(DT_NULL) => break,
            Some(DT_NEEDED) => info.needed.push(string(entry)?),
            Some(DT_RUNPATH) => runpath.push(string(entry)?),
            Some(DT_RPATH) => rpath.push(string(entry)?),
            _ => {}
        }
    }
    info.runpath_is_rpath = runpath.is_empty() && !rpath.is_empty();
    let list = if runpath.is_empty() { rpath } else { runpath };
    let origin = path.parent().unwrap_or(Path::new("."));
    info.runpath = list
        .iter()
        .flat_map(|l| l.split(':'))
        .filter(|dir| !dir.is_empty())
        .map(|dir| expand_origin(dir, origin))
        .collect();
    Ok(info)
}

/// Replaces `$ORIGIN` and `${ORIGIN}` in a run path entry by `origin`.
fn expand_origin(dir: &str, origin: &Path) -> String {
    let origin = origin.to_string_lossy();
    dir.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)
}

fn section<Elf: FileHeader<Endian = Endianness>>(
    path: &Path,
    data: &ReadCache<File>,
    name: &str,
) -> Result<Option<Vec<u8>>, ElfError> {
    let malformed = |cause: object::read::Error| ElfError::malformed(path, cause.to_string());
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let sections = header.sections(endian, data).map_err(malformed)?;
    let Some((_, section)) = sections.section_by_name(endian, name.as_bytes()) else {
        return Ok(None);
    };
    let bytes = section.data(endian, data).map_err(|e| ElfError::Malformed {
        path: path.to_owned(),
        cause: format!("section {name}: {e}"),
    })?;
    Ok(Some(bytes.to_vec()))
}

#[cfg(test)]
mod tests;
