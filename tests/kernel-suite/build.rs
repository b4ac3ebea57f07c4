//! Compiles the suite's BPF programs (`bpf/*.bpf.c`) with clang, as BPF authors build them:
//! `clang -O2 -g -target bpf`, against the kernel UAPI headers and libbpf's `bpf_helpers.h`.
//! The objects are the same for every guest architecture (BPF is little-endian on both).
//!
//! Without clang or libbpf's headers the objects are left empty and `KERNEL_SUITE_BPF_MISSING`
//! says why, so that the BPF tests skip naming it; with `VMTEST_REQUIRE_ALL=1` (CI) that is a
//! build error instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [&str; 3] = ["count", "xdp", "rejected"];

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=VMTEST_REQUIRE_ALL");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    match compile_all(&out) {
        Ok(()) => {}
        Err(why) => {
            if std::env::var("VMTEST_REQUIRE_ALL").as_deref() == Ok("1") {
                panic!("VMTEST_REQUIRE_ALL=1 but the BPF programs cannot be built: {why}");
            }
            println!("cargo:warning=BPF tests will skip: {why}");
            println!("cargo:rustc-env=KERNEL_SUITE_BPF_MISSING={why}");
            for name in PROGRAMS {
                std::fs::write(out.join(format!("{name}.bpf.o")), b"").unwrap();
            }
        }
    }
}

fn compile_all(out: &Path) -> Result<(), String> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let install = "install them with `apt-get install --no-install-recommends clang libbpf-dev`";
    if !Path::new("/usr/include/bpf/bpf_helpers.h").is_file() {
        return Err(format!(
            "libbpf's headers (/usr/include/bpf/bpf_helpers.h) are missing; {install}"
        ));
    }
    // <linux/*.h> include <asm/*.h>, which Debian keeps under the host's multiarch dir; the
    // BPF target does not look there by itself.
    let multiarch = std::fs::read_dir("/usr/include")
        .map_err(|e| format!("failed to read /usr/include: {e}"))?
        .flatten()
        .map(|entry| entry.path())
        .find(|dir| dir.join("asm/types.h").is_file())
        .ok_or_else(|| {
            format!("no <asm/types.h> under /usr/include/*/ (linux-libc-dev); {install}")
        })?;
    for name in PROGRAMS {
        let source = format!("bpf/{name}.bpf.c");
        let object = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-target", "bpf"])
            .arg("-I")
            .arg(&multiarch)
            .args(["-c", &source, "-o"])
            .arg(&object)
            .status()
            .map_err(|e| format!("failed to run `{clang}`: {e}; {install}"))?;
        if !status.success() {
            panic!("`{clang}` failed to compile {source} ({status})");
        }
    }
    Ok(())
}
