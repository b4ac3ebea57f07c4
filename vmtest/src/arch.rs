//! CPU architectures vmtest can boot, and the facts about each that do not concern QEMU.

use std::fmt;
use std::str::FromStr;

/// A guest (and test binary) architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86_64 / amd64.
    X86_64,
    /// aarch64 / arm64.
    Aarch64,
    /// riscv64 (in the table; no kernel is provisioned for it yet).
    Riscv64,
}

impl Arch {
    /// Every architecture, in a stable order.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64];

    /// The architecture this program was compiled for.
    pub const fn host() -> Arch {
        #[cfg(target_arch = "x86_64")]
        return Arch::X86_64;
        #[cfg(target_arch = "aarch64")]
        return Arch::Aarch64;
        #[cfg(target_arch = "riscv64")]
        return Arch::Riscv64;
    }

    /// Rust's name (`target_arch`, `uname -m`).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// Debian's name for the architecture (`dpkg --print-architecture`).
    pub const fn debian_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The musl target triple used for cross builds and for the static `vmtest-init`.
    pub const fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
            Arch::Riscv64 => "riscv64gc-unknown-linux-musl",
        }
    }

    /// The ELF `e_machine` value of binaries for this architecture.
    pub const fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,   // EM_X86_64
            Arch::Aarch64 => 183, // EM_AARCH64
            Arch::Riscv64 => 243, // EM_RISCV
        }
    }

    /// The architecture of an ELF `e_machine` value, if vmtest knows it.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == machine)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An architecture name vmtest does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown architecture `{0}` (expected one of: x86_64/amd64, aarch64/arm64, riscv64)")]
pub struct UnknownArch(String);

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            "riscv64" | "riscv64gc" => Ok(Arch::Riscv64),
            other => Err(UnknownArch(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.debian_name().parse::<Arch>().unwrap(), arch);
            assert_eq!(Arch::from_elf_machine(arch.elf_machine()), Some(arch));
        }
        assert!("sparc".parse::<Arch>().is_err());
    }
}
