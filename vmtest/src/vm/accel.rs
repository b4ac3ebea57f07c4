//! Choosing the accelerator: KVM only where it really works, TCG otherwise.
//!
//! `/dev/kvm` can exist, open, and still be unable to run a stock kernel (paravirtual KVM on
//! some cloud machines): QEMU then reports a KVM internal error and hangs. So the probe also
//! requires the CPU's virtualisation flags, and `VMTEST_ACCEL` overrides the choice.

use std::fs::OpenOptions;
use std::path::PathBuf;

use crate::arch::Arch;
use crate::Error;

/// Environment variable that forces the accelerator: `kvm`, `tcg` or `auto` (default).
pub(crate) const ACCEL_ENV: &str = "VMTEST_ACCEL";

/// Environment variable that overrides the factor applied to timeouts.
pub(crate) const TIMEOUT_SCALE_ENV: &str = "VMTEST_TIMEOUT_SCALE";

/// Environment variable: `trust` skips the CPU-flag check of the KVM probe (for hosts whose
/// working KVM does not show `vmx`/`svm`); a KVM that then fails at boot still falls back.
pub(crate) const KVM_PROBE_ENV: &str = "VMTEST_KVM_PROBE";

/// A QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The image of `kernel` to boot under this accelerator: under TCG its PVH image where it
    /// offers one (a bzImage's in-guest decompression is a large part of a TCG boot), else
    /// [`Kernel::image`](crate::kernel::Kernel::image).
    pub(crate) fn boot_image(self, kernel: &crate::kernel::Kernel) -> PathBuf {
        match self {
            Accel::Tcg => kernel.pvh_image(),
            Accel::Kvm => None,
        }
        .unwrap_or_else(|| kernel.image.clone())
    }
}

/// The accelerator for a run, and why.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AccelChoice {
    pub accel: Accel,
    /// Why KVM is not used, when it is not.
    pub kvm_unusable: Option<String>,
    /// Factor applied to test and boot timeouts (slower emulation needs more time).
    pub timeout_scale: f64,
    /// KVM was chosen automatically: if it fails at boot, the run goes on under TCG.
    pub may_fall_back: bool,
}

impl AccelChoice {
    /// The choice after KVM failed to boot a guest: TCG, with TCG's timeout scale.
    pub(crate) fn fallen_back(&self, why: &str) -> Result<AccelChoice, Error> {
        Ok(AccelChoice {
            accel: Accel::Tcg,
            kvm_unusable: Some(why.to_owned()),
            timeout_scale: timeout_scale(Accel::Tcg)?,
            may_fall_back: false,
        })
    }
}

/// Whether a boot under KVM that failed before the guest started failed because of KVM:
/// QEMU's own error output names it (`KVM internal error`, a failed `kvm_*` call).
pub(crate) fn kvm_failed(qemu_stderr: &str) -> bool {
    qemu_stderr.to_ascii_lowercase().contains("kvm")
}

/// Chooses the accelerator for guests of `guest` architecture.
pub(crate) fn choose(guest: Arch) -> Result<AccelChoice, Error> {
    let forced = std::env::var(ACCEL_ENV).unwrap_or_default();
    let trust = match std::env::var(KVM_PROBE_ENV).unwrap_or_default().as_str() {
        "" | "check" => false,
        "trust" => true,
        other => {
            return Err(Error::Env(format!(
                "{KVM_PROBE_ENV}={other:?} is not one of `check` (default), `trust`"
            )))
        }
    };
    let probe = kvm_usable(guest, trust);
    let (accel, kvm_unusable) = match forced.as_str() {
        "" | "auto" => match probe {
            Ok(()) => (Accel::Kvm, None),
            Err(why) => (Accel::Tcg, Some(why)),
        },
        "tcg" => (Accel::Tcg, Some(format!("{ACCEL_ENV}=tcg"))),
        "kvm" => match probe {
            Ok(()) => (Accel::Kvm, None),
            Err(why) => {
                return Err(Error::Env(format!(
                    "{ACCEL_ENV}=kvm, but KVM cannot be used here: {why} \
                     (unset {ACCEL_ENV} or set it to `tcg` to use software emulation)"
                )))
            }
        },
        other => {
            return Err(Error::Env(format!(
                "{ACCEL_ENV}={other:?} is not one of `kvm`, `tcg`, `auto`"
            )))
        }
    };
    let timeout_scale = timeout_scale(accel)?;
    let may_fall_back = accel == Accel::Kvm && forced != "kvm";
    Ok(AccelChoice { accel, kvm_unusable, timeout_scale, may_fall_back })
}

fn timeout_scale(accel: Accel) -> Result<f64, Error> {
    match std::env::var(TIMEOUT_SCALE_ENV) {
        Ok(value) => match value.parse::<f64>() {
            Ok(scale) if scale.is_finite() && scale > 0.0 => Ok(scale),
            _ => Err(Error::Env(format!("{TIMEOUT_SCALE_ENV}={value:?} is not a positive number"))),
        },
        Err(_) => Ok(match accel {
            Accel::Kvm => 1.0,
            Accel::Tcg => 3.0,
        }),
    }
}

/// `Ok` when KVM can run a guest of `guest` architecture on this host; `trust`: without
/// checking the CPU's virtualisation flags.
fn kvm_usable(guest: Arch, trust: bool) -> Result<(), String> {
    if guest != Arch::host() {
        return Err(format!("the guest is {guest}, the host is {}", Arch::host()));
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Err(format!("failed to open /dev/kvm: {e}"));
    }
    if guest == Arch::X86_64 && !trust {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
            .map_err(|e| format!("failed to read /proc/cpuinfo: {e}"))?;
        if !has_virtualisation_flag(&cpuinfo) {
            return Err("/dev/kvm exists but the CPU has neither `vmx` nor `svm` \
                        (paravirtual KVM cannot run stock kernels)"
                .to_owned());
        }
    }
    Ok(())
}

fn has_virtualisation_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_boots_the_pvh_image_and_kvm_the_image() {
        let dir = crate::image::elf::test_support::temp_dir("accel-pvh");
        let kernel = crate::kernel::kernel_with_pvh_entry(&dir.path().join("pvh"));
        let pvh = kernel.pvh_image().unwrap();
        assert_ne!(pvh, kernel.image);
        assert_eq!(Accel::Tcg.boot_image(&kernel), pvh);
        assert_eq!(Accel::Kvm.boot_image(&kernel), kernel.image);
    }

    #[test]
    fn finds_virtualisation_flags() {
        assert!(has_virtualisation_flag("flags\t\t: fpu vme svm lm\n"));
        assert!(has_virtualisation_flag("processor: 0\nflags : fpu vmx\n"));
        assert!(!has_virtualisation_flag("flags\t\t: fpu vme hypervisor\nmodel name: vmx\n"));
    }

    #[test]
    fn foreign_guests_never_use_kvm() {
        let foreign = if Arch::host() == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        assert!(kvm_usable(foreign, true).unwrap_err().contains("the guest is"));
    }

    #[test]
    fn recognises_kvm_failures_in_qemu_output() {
        assert!(kvm_failed("KVM internal error. Suberror: 1\nemulation failure\n"));
        assert!(kvm_failed(
            "qemu-system-x86_64: ../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion"
        ));
        assert!(!kvm_failed("qemu-system-x86_64: -initrd x: could not load initial ram disk"));
    }
}
