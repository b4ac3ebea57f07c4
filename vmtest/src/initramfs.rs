//! Building the initramfs (newc cpio) the guest boots from.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum InitramfsError {
    #[error("failed to write initramfs: {0}")]
    Io(#[from] std::io::Error),
}

enum Entry {
    Dir,
    Bytes(Vec<u8>),
    Host(PathBuf),
}

pub(crate) struct Initramfs {
    entries: Vec<(String, u32, Entry)>,
}

impl Initramfs {
    pub fn new() -> Self {
        Initramfs { entries: Vec::new() }
    }
    pub fn add_dir(&mut self, guest: &str, mode: u32) {
        self.entries.push((guest.into(), mode, Entry::Dir));
    }
    pub fn add_bytes(&mut self, guest: &str, bytes: Vec<u8>, mode: u32) {
        self.entries.push((guest.into(), mode, Entry::Bytes(bytes)));
    }
    pub fn add_host_file(&mut self, guest: &str, host: &Path, mode: u32) {
        self.entries.push((guest.into(), mode, Entry::Host(host.into())));
    }
    pub fn add_elf_with_libraries(&mut self, guest: &str, host: &Path) -> Result<(), InitramfsError> {
        self.add_host_file(guest, host, 0o755);
        Ok(())
    }
    pub fn total_size(&self) -> u64 {
        0
    }
    pub fn write_to(&self, mut w: impl Write) -> Result<u64, InitramfsError> {
        let mut inputs = Vec::new();
        for (name, mode, entry) in &self.entries {
            let name = name.trim_start_matches('/');
            let (builder, data): (_, Vec<u8>) = match entry {
                Entry::Dir => (cpio::newc::Builder::new(name).mode(0o040000 | mode), vec![]),
                Entry::Bytes(b) => (cpio::newc::Builder::new(name).mode(0o100000 | mode), b.clone()),
                Entry::Host(p) => (cpio::newc::Builder::new(name).mode(0o100000 | mode), std::fs::read(p)?),
            };
            inputs.push((builder, std::io::Cursor::new(data)));
        }
        let mut out = Vec::new();
        cpio::write_cpio(inputs.into_iter(), &mut out)?;
        w.write_all(&out)?;
        Ok(out.len() as u64)
    }
}
