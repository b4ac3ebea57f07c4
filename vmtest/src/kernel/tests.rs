//! Tests across the kernel modules, including ones on the real store's kernels when present
//! (`VMTEST_KERNELS`, else the default store; fetch with `cargo xtask kernel fetch 6.1 6.12`).

use std::fs;
use std::path::Path;

use super::resolve::{choose_spec, looks_like_path};
use super::*;

/// An empty dir for one test, unique to this process, removed when dropped.
pub(crate) struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

pub(crate) fn scratch_dir(name: &str) -> Scratch {
    Scratch(tempfile::Builder::new().prefix(&format!("vmtest-kernel-{name}-")).tempdir().unwrap())
}

/// The stored kernel `spec` for `arch`, one that `cargo xtask setup` fetches; `None` after
/// saying it is missing ([`crate::__testing::missing`]).
fn stored(spec: &str, arch: Arch) -> Option<Kernel> {
    find_stored(spec, arch).map_err(|e| crate::__testing::missing(&e)).ok()
}

/// The stored kernel `spec` for `arch`, or why it cannot be had.
fn find_stored(spec: &str, arch: Arch) -> Result<Kernel, String> {
    let store = Store::open().map_err(|e| format!("no kernel store: {e}"))?;
    store.find(spec, arch).map_err(|e| format!("kernel {spec} ({arch}) is not in the store: {e}"))
}

fn names(modules: &[ModuleFile]) -> Vec<&str> {
    modules.iter().map(|m| m.name.as_str()).collect()
}

/// Checks that every module comes after the modules its `.modinfo` depends on.
fn assert_load_order(modules: &[ModuleFile]) {
    for (i, m) in modules.iter().enumerate() {
        for dep in modules::read_modinfo(&m.host_path).unwrap().depends {
            let at = modules.iter().position(|d| d.name == dep);
            assert!(at.is_some_and(|at| at < i), "{} before its dependency {dep}", m.name);
        }
    }
}

#[test]
fn unknown_name_lists_stored_and_the_fetch_command() {
    let dir = scratch_dir("unknown-name");
    let store = Store::at(&*dir);
    let err = store.find("6.1", Arch::X86_64).unwrap_err().to_string();
    assert!(err.contains("failed to find kernel `6.1` for x86_64"), "{err}");
    assert!(err.contains("nothing is stored for x86_64"), "{err}");
    assert!(err.contains("`cargo vmtest kernel fetch 6.1 --arch x86_64`"), "{err}");
    assert!(err.contains("`cargo xtask kernel fetch 6.1 --arch x86_64`"), "{err}");

    let image = dir.join("bzImage");
    fs::write(&image, image::tests::fake_bzimage("6.12.5+deb12-amd64")).unwrap();
    store.add("6.12.5+deb12-amd64", &image, None, None).unwrap();
    let err = store.find("6.1-cloud", Arch::X86_64).unwrap_err().to_string();
    assert!(err.contains("stored for x86_64: 6.12.5+deb12-amd64"), "{err}");
    assert!(err.contains("kernel fetch 6.1-cloud --arch x86_64"), "{err}");
    let err = store.find("6.12", Arch::Aarch64).unwrap_err().to_string();
    assert!(
        err.contains("nothing is stored for aarch64") && err.contains("--arch aarch64"),
        "{err}"
    );
    let err = store.find("my-build", Arch::X86_64).unwrap_err().to_string();
    assert!(err.contains("cargo vmtest kernel add my-build --image"), "{err}");
    assert_eq!(store.find("6.12", Arch::X86_64).unwrap().name, "6.12.5+deb12-amd64");
}

#[test]
fn path_spec_reads_the_header_and_finds_modules() {
    // An unpacked Debian package: <root>/boot/vmlinuz-<ver>, <root>/lib/modules/<ver>.
    let dir = scratch_dir("path-spec");
    let ver = "6.1.0-99-amd64";
    fs::create_dir_all(dir.join("boot")).unwrap();
    let image = dir.join(format!("boot/vmlinuz-{ver}"));
    fs::write(&image, image::tests::fake_bzimage(ver)).unwrap();
    fs::write(dir.join(format!("boot/config-{ver}")), "CONFIG_VIRTIO=m\n").unwrap();
    let mods = dir.join("lib/modules").join(ver);
    modules::tests::fake_module(&mods.join("kernel"), "drivers/net/dummy.ko", &[]);

    let k = resolve(Some(image.to_str().unwrap()), Arch::Aarch64).unwrap();
    assert_eq!(k.arch, Arch::X86_64, "a path kernel's arch comes from its header");
    assert_eq!(k.version.as_deref(), Some(ver));
    assert_eq!(k.modules_dir.as_deref(), Some(mods.as_path()));
    assert_eq!(k.config, Some(dir.join(format!("boot/config-{ver}"))));
    assert_eq!(names(&k.module_closure(&["dummy"]).unwrap()), ["dummy"]);

    let err = k.check_arch(Arch::Aarch64).unwrap_err().to_string();
    assert!(err.contains("is for x86_64, the test binary is for aarch64"), "{err}");
    assert!(err.contains(&image.display().to_string()), "{err}");
    k.check_arch(Arch::X86_64).unwrap();

    let err = resolve(Some("/nonexistent/bzImage"), Arch::X86_64).unwrap_err().to_string();
    assert!(err.contains("failed to read kernel image /nonexistent/bzImage"), "{err}");
}

#[test]
fn modules_without_a_modules_dir() {
    let dir = scratch_dir("no-modules");
    let image = dir.join("bzImage");
    fs::write(&image, image::tests::fake_bzimage("6.15.0")).unwrap();
    let k = Kernel::from_image(&image, None).unwrap();
    assert_eq!(k.modules_dir, None);
    assert!(k.harness_modules().unwrap().is_empty(), "nothing says the drivers are modules");
    let err = k.module_closure(&["dummy"]).unwrap_err().to_string();
    assert!(err.contains("module `dummy`") && err.contains("no modules dir"), "{err}");
}

#[test]
fn harness_modules_from_fixture() {
    let dir = scratch_dir("harness-fixture");
    let image = dir.join("bzImage");
    fs::write(&image, image::tests::fake_bzimage("6.1.0-1-amd64")).unwrap();
    fs::write(
        dir.join("config"),
        "CONFIG_VIRTIO=m\nCONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_CONSOLE=m\n",
    )
    .unwrap();
    let k = dir.join("modules/kernel");
    modules::tests::fake_module(&k, "virtio.ko", &[]);
    modules::tests::fake_module(&k, "virtio_ring.ko", &["virtio"]);
    modules::tests::fake_module(&k, "virtio_pci_modern_dev.ko", &[]);
    modules::tests::fake_module(
        &k,
        "virtio_pci.ko",
        &["virtio_pci_modern_dev", "virtio_ring", "virtio"],
    );
    modules::tests::fake_module(&k, "virtio_console.ko", &["virtio_ring", "virtio"]);
    let kernel = Kernel::from_image(&image, None).unwrap();
    assert_eq!(
        names(&kernel.harness_modules().unwrap()),
        ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci", "virtio_console"]
    );

    // The config says module, but the file is gone: a clear error, not a hang in the guest.
    fs::remove_file(k.join("virtio_console.ko")).unwrap();
    let err = kernel.harness_modules().unwrap_err().to_string();
    assert!(err.contains("virtio_console") && err.contains("CONFIG_VIRTIO_CONSOLE"), "{err}");
}

#[test]
fn real_6_1_amd64() {
    let Some(k) = stored("6.1", Arch::X86_64) else {
        return;
    };
    let info = image_info(&k.image).unwrap();
    assert_eq!(info.arch, Arch::X86_64);
    assert_eq!(info.version.as_deref(), k.version.as_deref());
    assert!(k.name.starts_with("6.1.0-"), "{}", k.name);

    let harness = k.harness_modules().unwrap();
    assert_load_order(&harness);
    let mut set = names(&harness);
    set.sort();
    assert_eq!(
        set,
        [
            "virtio",
            "virtio_console",
            "virtio_pci",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev",
            "virtio_ring"
        ]
    );
    assert_eq!(harness.last().unwrap().name, "virtio_console");
    assert!(harness.iter().all(|m| m.host_path.is_file()));

    // Debian 6.1: virtio depends on virtio_ring, virtio_console on both.
    let console = k.module_closure(&["virtio_console"]).unwrap();
    assert_eq!(names(&console), ["virtio_ring", "virtio", "virtio_console"]);
    assert_eq!(names(&k.module_closure(&["dummy"]).unwrap()), ["dummy"]);
    assert_eq!(names(&k.module_closure(&["veth"]).unwrap()), ["veth"]);

    let err = k.module_closure(&["dumy"]).unwrap_err().to_string();
    assert!(err.contains(&k.name) && err.contains("dummy"), "{err}");

    let err = k.check_arch(Arch::Aarch64).unwrap_err().to_string();
    assert!(err.contains("for x86_64, the test binary is for aarch64"), "{err}");
}

#[test]
fn real_6_12_amd64() {
    let Some(k) = stored("6.12", Arch::X86_64) else {
        return;
    };
    let info = image_info(&k.image).unwrap();
    assert_eq!((info.arch, info.version.as_deref()), (Arch::X86_64, k.version.as_deref()));
    assert!(k.harness_modules().unwrap().is_empty(), "6.12 has virtio built in");
    let dummy = k.module_closure(&["dummy"]).unwrap();
    assert_eq!(names(&dummy), ["dummy"]);
    assert!(dummy[0].host_path.to_string_lossy().ends_with(".ko.xz"));
    // Reading `.modinfo` through xz: veth's dependencies come first when it has any.
    let veth = k.module_closure(&["veth"]).unwrap();
    assert_eq!(veth.last().unwrap().name, "veth");
    // A module with a known modular dependency chain.
    let vxlan = k.module_closure(&["vxlan"]).unwrap();
    assert_load_order(&vxlan);
    assert_eq!(vxlan.last().unwrap().name, "vxlan");
    assert!(vxlan.len() > 1, "{:?}", names(&vxlan));
}

#[test]
fn real_6_12_arm64() {
    let Some(k) = stored("6.12", Arch::Aarch64) else {
        return;
    };
    let info = image_info(&k.image).unwrap();
    assert_eq!((info.arch, info.version.as_deref()), (Arch::Aarch64, k.version.as_deref()));
    assert!(k.harness_modules().unwrap().is_empty());
    let err = k.check_arch(Arch::X86_64).unwrap_err().to_string();
    assert!(err.contains("for aarch64, the test binary is for x86_64"), "{err}");
}

#[test]
fn default_and_environment() {
    assert_eq!(choose_spec(Some("6.1"), Some("6.12".into())), "6.1");
    assert_eq!(choose_spec(None, Some("/boot/vmlinuz".into())), "/boot/vmlinuz");
    assert_eq!(choose_spec(None, Some(String::new())), DEFAULT_KERNEL);
    assert_eq!(choose_spec(None, None), "6.12");
    assert!(looks_like_path("./bzImage") && looks_like_path("/boot/vmlinuz"));
    assert!(!looks_like_path("6.12") && !looks_like_path("6.1-cloud"));
}

#[test]
fn real_6_1_cloud_amd64() {
    // Not a kernel `cargo xtask setup` fetches: skipped, in CI too, when it is not stored.
    let k = match find_stored("6.1-cloud", Arch::X86_64) {
        Ok(k) => k,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    assert_eq!(k.flavour.as_deref(), Some("cloud"));
    let harness = k.harness_modules().unwrap();
    assert_load_order(&harness);
    assert_eq!(harness.last().unwrap().name, "virtio_console");
}

#[test]
fn sizes() {
    assert_eq!(human_size(512), "512 B");
    assert_eq!(human_size(98_300_000), "98.3 MB");
}

/// On the stored kernels: the quick `.modinfo` reader finds the same fields as the full one,
/// on a sample of each kernel's modules (`.ko.xz` on 6.12, `.ko` on 6.1).
#[test]
fn quick_modinfo_agrees_with_the_full_read_on_real_modules() {
    for (spec, arch) in [("6.12", Arch::X86_64), ("6.1", Arch::X86_64), ("6.12", Arch::Aarch64)] {
        let Some(k) = stored(spec, arch) else { continue };
        let files = modules::ModuleIndex::scan(k.modules_dir.as_ref().unwrap()).unwrap();
        let sample: Vec<_> = files.iter().step_by(60).collect();
        assert!(sample.len() > 50, "{spec} {arch}: only {} modules sampled", sample.len());
        for (name, path) in sample {
            let quick = modules::read_modinfo_quick(path).unwrap();
            assert_eq!(quick, modules::read_modinfo(path).unwrap(), "{spec} {arch} {name}");
            assert_eq!(quick.name.as_deref(), Some(name.as_str()));
        }
    }
}

#[test]
#[ignore = "downloads Debian's current 6.12 kernel package (about 107 MB)"]
fn fetch_repairs_a_damaged_entry() {
    let arch = Arch::X86_64;
    let Some(real) = stored("6.12", arch) else { return };
    if apt::require_tools(std::env::var_os("PATH").as_deref()).is_err() {
        crate::__testing::missing("apt's tools are not installed");
        return;
    }
    // A copy of the stored entry (and apt's lists) in a store of its own, with a module cut
    // short and the image changed in place.
    let dir = scratch_dir("fetch-repair");
    let store = Store::at(&*dir);
    let src = real.store_dir.clone().unwrap();
    let entry = store.arch_dir(arch).join(&real.name);
    store::copy_tree(&src, &entry).unwrap();
    let real_store = Store::open().unwrap();
    store::copy_tree(&real_store.root().join("apt"), &dir.join("apt")).unwrap();
    let module = entry.join("modules/kernel/drivers/net/dummy.ko.xz");
    fs::write(&module, b"").unwrap();

    let mut lines = Vec::new();
    let fetched = store.fetch("6.12", arch, &mut |l| lines.push(l.to_owned())).unwrap();
    if fetched.kernel().name != real.name {
        eprintln!(
            "skipped: Debian's 6.12 is now {}, not the stored {}",
            fetched.kernel().name,
            real.name
        );
        return;
    }
    assert!(matches!(fetched, Fetched::Added(_)), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("is damaged (`modules/kernel/drivers/net/dummy.ko.xz` is 0 bytes")
                && l.contains("fetching it again")),
        "{lines:#?}"
    );
    entry::check(&entry, manifest::Depth::Full).unwrap();
    assert!(fs::metadata(&module).unwrap().len() > 0);
    let leftovers: Vec<_> = fs::read_dir(store.arch_dir(arch))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Intact now: a second fetch downloads nothing.
    let again = store.fetch("6.12", arch, &mut |_| {}).unwrap();
    assert!(matches!(again, Fetched::AlreadyPresent(_)));
}

#[test]
fn module_files_come_after_their_dependencies_and_must_match_the_kernel() {
    let (dir, mut kernel) = super::fixture_kernel("module-files");
    let own = crate::kernel::modules::tests::fake_module(
        &dir.join("build/6.1.0"),
        "hello.ko",
        &["vxlan"],
    );
    kernel.version = Some("6.1.0".to_owned());
    let by_release = dir.join("build/{release}/hello.ko");
    for wanted in [own.to_str().unwrap(), by_release.to_str().unwrap()] {
        let modules = kernel.modules_wanted(&["af_alg", wanted]).unwrap();
        assert_eq!(names(&modules), ["af_alg", "udp_tunnel", "ip6_udp_tunnel", "vxlan", "hello"]);
        assert_eq!(modules.last().unwrap().host_path, own);
    }

    kernel.version = Some("6.12.0".to_owned());
    let error = kernel.modules_wanted(&[own.to_str().unwrap()]).unwrap_err().to_string();
    assert!(error.contains("built for kernel 6.1.0") && error.contains("(6.12.0)"), "{error}");
    assert!(error.contains(&own.display().to_string()), "{error}");

    let missing = dir.join("build/nothing.ko");
    let error = kernel.modules_wanted(&[missing.to_str().unwrap()]).unwrap_err().to_string();
    assert!(error.contains("no such file") && error.contains("nothing.ko"), "{error}");
}
