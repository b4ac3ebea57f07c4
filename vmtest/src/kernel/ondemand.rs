//! Modules on demand: what the host answers when the guest's `modprobe` asks for a name.
//!
//! A [`ModuleProvider`] resolves a request as kmod's `modprobe` does, in its order: a module of
//! that name; else modules with a matching alias; else a built-in module of that name or alias.
//! It then adds the dependencies (`depends=` of each `.modinfo`), leaving out what the guest has
//! loaded already.
//!
//! Everything is read lazily, once per provider (one per kernel and run): the module files on
//! the first request, the alias index on the first request that is not a module's name. The
//! alias index is depmod's `modules.alias` when the modules dir has one (a `make
//! modules_install` tree), else the one vmtest built for a store kernel and kept in its store
//! dir, else it is built now ([`AliasIndex::build`], seconds) and, for a store kernel, kept.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::alias::{self, AliasIndex};
use super::modules::{self, ModuleFile, ModuleIndex};
use super::Kernel;

/// The cached alias index in a store kernel's dir.
const ALIAS_CACHE: &str = "modules.alias";

/// What a request resolves to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Built into the kernel: nothing to load.
    BuiltIn,
    /// Modules to load, dependencies first, each with whether the request named it (rather than
    /// its being a dependency). Empty when all of them are loaded already.
    Modules(Vec<(ModuleFile, bool)>),
}

/// Resolves module requests for one kernel.
pub(crate) struct ModuleProvider {
    kernel: String,
    modules_dir: Option<PathBuf>,
    /// Where to keep a built alias index (store kernels only).
    cache: Option<PathBuf>,
    files: OnceLock<Result<ModuleIndex, String>>,
    builtin: OnceLock<Builtin>,
    aliases: OnceLock<Result<Arc<AliasIndex>, String>>,
}

/// What the kernel has built in, by name and by alias.
#[derive(Default)]
struct Builtin {
    names: std::collections::HashSet<String>,
    aliases: AliasIndex,
}

impl std::fmt::Debug for ModuleProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleProvider")
            .field("kernel", &self.kernel)
            .field("modules_dir", &self.modules_dir)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// A provider of this kernel's modules for the guest's `modprobe`.
    pub(crate) fn module_provider(&self) -> ModuleProvider {
        ModuleProvider {
            kernel: self.describe(),
            modules_dir: self.modules_dir.clone(),
            cache: self.store_dir.as_ref().map(|dir| dir.join(ALIAS_CACHE)),
            files: OnceLock::new(),
            builtin: OnceLock::new(),
            aliases: OnceLock::new(),
        }
    }
}

impl ModuleProvider {
    /// Resolves `request` (a module name or alias, as given to `modprobe`), leaving out the
    /// modules in `loaded`. The error is `modprobe`'s message, naming the kernel.
    pub(crate) fn resolve(&self, request: &str, loaded: &[String]) -> Result<Resolved, String> {
        let name = alias::normalize(request);
        let Some(dir) = &self.modules_dir else {
            return Err(format!(
                "Module {request} cannot be loaded: kernel {} has no modules dir (for a kernel \
                 given by path set VMTEST_KERNEL_MODULES to its lib/modules/<release> dir)",
                self.kernel
            ));
        };
        let files = self.files()?;
        let targets = if files.get(&name).is_some() {
            vec![name.clone()]
        } else {
            let found = self.aliases()?.lookup(&name);
            if found.is_empty() {
                let builtin = self.builtin();
                if builtin.names.contains(&name) || !builtin.aliases.lookup(&name).is_empty() {
                    return Ok(Resolved::BuiltIn);
                }
                let close = files.close_matches(&name);
                let close = if close.is_empty() {
                    String::new()
                } else {
                    format!(" (close matches: {})", close.join(", "))
                };
                return Err(format!(
                    "Module {request} not found in kernel {} ({}): no module of that name or \
                     alias{close}",
                    self.kernel,
                    dir.display()
                ));
            }
            // An alias of a module this kernel lacks the file of would be in modules.alias of
            // another tree: keep only modules that are here.
            found.into_iter().filter(|m| files.get(m).is_some()).collect()
        };
        let wanted: Vec<&str> = targets.iter().map(String::as_str).collect();
        let order =
            files.closure_without(&self.kernel, &wanted, loaded).map_err(|e| e.to_string())?;
        Ok(Resolved::Modules(
            order.into_iter().map(|m| (m.clone(), targets.contains(&m.name))).collect(),
        ))
    }

    /// A module's image, decompressed, as the guest's `init_module` takes it.
    pub(crate) fn image(&self, module: &ModuleFile) -> Result<Vec<u8>, String> {
        modules::read_module(&module.host_path).map_err(|e| e.to_string())
    }

    fn files(&self) -> Result<&ModuleIndex, String> {
        let dir = self.modules_dir.as_deref();
        let files = self.files.get_or_init(|| match dir {
            Some(dir) => ModuleIndex::scan(dir).map_err(|e| e.to_string()),
            None => Err(format!("kernel {} has no modules dir", self.kernel)),
        });
        files.as_ref().map_err(Clone::clone)
    }

    fn builtin(&self) -> &Builtin {
        self.builtin.get_or_init(|| {
            let Some(dir) = &self.modules_dir else { return Builtin::default() };
            let names = modules::read_builtin(dir).ok().flatten().unwrap_or_default();
            let aliases = std::fs::read(dir.join("modules.builtin.modinfo"))
                .map(|data| AliasIndex::parse_builtin_modinfo(&data))
                .unwrap_or_default();
            Builtin { names, aliases }
        })
    }

    fn aliases(&self) -> Result<Arc<AliasIndex>, String> {
        let index = self.aliases.get_or_init(|| self.load_aliases().map(Arc::new));
        index.clone()
    }

    fn load_aliases(&self) -> Result<AliasIndex, String> {
        let dir = self.modules_dir.as_deref().ok_or("no modules dir")?;
        let depmod = dir.join("modules.alias");
        if let Ok(text) = std::fs::read_to_string(&depmod) {
            return Ok(AliasIndex::parse(&text));
        }
        if let Some(index) = self.cache.as_deref().and_then(alias::read_cached) {
            return Ok(index);
        }
        let started = Instant::now();
        let files = self.files()?;
        let (index, errors) = AliasIndex::build(files);
        for error in errors.iter().take(3) {
            crate::notice::warn(&format!("module aliases of kernel {}: {error}", self.kernel));
        }
        let kept = match &self.cache {
            Some(cache) => match alias::write_cached(cache, &index) {
                Ok(()) => format!("kept in {}", cache.display()),
                Err(e) => format!("not kept: {e}"),
            },
            None => "not kept: the kernel is not in the store".to_owned(),
        };
        crate::notice::note(&format!(
            "indexed the {} aliases of kernel {}'s {} modules in {:.1} s ({kept})",
            index.len(),
            self.kernel,
            files.iter().count(),
            started.elapsed().as_secs_f64()
        ));
        Ok(index)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::modules::tests::{fake_module, fake_module_with};
    use crate::kernel::tests::scratch_dir;

    fn kernel(modules_dir: Option<PathBuf>, store_dir: Option<PathBuf>) -> Kernel {
        Kernel {
            name: "fixture".into(),
            arch: crate::arch::Arch::X86_64,
            version: None,
            image: "/nonexistent/vmlinuz".into(),
            modules_dir,
            config: None,
            flavour: None,
            package: None,
            store_dir,
        }
    }

    fn names(resolved: Resolved) -> Vec<(String, bool)> {
        match resolved {
            Resolved::Modules(list) => list.into_iter().map(|(m, w)| (m.name, w)).collect(),
            Resolved::BuiltIn => panic!("built in"),
        }
    }

    /// A kernel whose modules dir holds fake modules (vxlan, af_alg, ...), in a scratch dir
    /// that is removed when the first value is dropped.
    pub(crate) fn fixture_kernel(name: &str) -> (crate::kernel::tests::Scratch, Kernel) {
        let dir = scratch_dir(name);
        fixture(&dir);
        let kernel = kernel(Some(dir.join("modules")), None);
        (dir, kernel)
    }

    fn fixture(dir: &std::path::Path) {
        let k = dir.join("modules/kernel");
        fake_module(&k, "net/udp_tunnel.ko", &[]);
        fake_module(&k, "net/ip6_udp_tunnel.ko", &[]);
        fake_module_with(
            &k,
            "net/vxlan.ko",
            &["udp_tunnel", "ip6_udp_tunnel"],
            &["rtnl-link-vxlan"],
        );
        fake_module_with(&k, "crypto/af_alg.ko", &[], &["net-pf-38"]);
        fake_module(&k, "crypto/algif_hash.ko", &["af_alg"]);
        fake_module_with(&k, "crypto/sha256-ssse3.ko", &[], &["crypto-sha256", "sha256"]);
        fake_module_with(&k, "crypto/sha256-avx.ko", &[], &["crypto-sha256"]);
        std::fs::write(dir.join("modules/modules.builtin"), "kernel/fs/fuse/fuse.ko\n").unwrap();
        std::fs::write(
            dir.join("modules/modules.builtin.modinfo"),
            b"fuse.alias=fs-fuseblk\0fuse.license=GPL\0",
        )
        .unwrap();
    }

    #[test]
    fn resolves_names_aliases_and_builtins_with_dependencies() {
        let dir = scratch_dir("ondemand");
        fixture(&dir);
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let provider = kernel(Some(dir.join("modules")), Some(store.clone())).module_provider();

        // By name (dashes as underscores): no alias index needed yet.
        assert_eq!(
            names(provider.resolve("algif-hash", &[]).unwrap()),
            [("af_alg".into(), false), ("algif_hash".into(), true)]
        );
        assert!(!store.join(ALIAS_CACHE).exists(), "a name needs no alias index");
        // By alias, with the dependencies first; the index is then kept in the store dir.
        assert_eq!(
            names(provider.resolve("rtnl-link-vxlan", &[]).unwrap()),
            [
                ("udp_tunnel".into(), false),
                ("ip6_udp_tunnel".into(), false),
                ("vxlan".into(), true)
            ]
        );
        assert!(alias::read_cached(&store.join(ALIAS_CACHE)).is_some());
        // Loaded modules are left out.
        assert_eq!(
            names(provider.resolve("rtnl-link-vxlan", &["udp_tunnel".into()]).unwrap()),
            [("ip6_udp_tunnel".into(), false), ("vxlan".into(), true)]
        );
        assert_eq!(names(provider.resolve("net-pf-38", &["af_alg".into()]).unwrap()), Vec::new());
        // An alias several modules have: all of them.
        assert_eq!(
            names(provider.resolve("crypto-sha256", &[]).unwrap()),
            [("sha256_avx".into(), true), ("sha256_ssse3".into(), true)]
        );
        // Built in, by name and by alias.
        assert_eq!(provider.resolve("fuse", &[]).unwrap(), Resolved::BuiltIn);
        assert_eq!(provider.resolve("fs-fuseblk", &[]).unwrap(), Resolved::BuiltIn);
        // Unknown: the message names the kernel and close matches.
        let err = provider.resolve("vxlam", &[]).unwrap_err();
        assert!(err.contains("Module vxlam not found in kernel fixture"), "{err}");
        assert!(err.contains("close matches: vxlan"), "{err}");

        // A new provider (the next run) reads the kept index instead of building one.
        let mut kept = std::fs::read_to_string(store.join(ALIAS_CACHE)).unwrap();
        kept.push_str("alias only-in-the-kept-index dummy_parent\n");
        std::fs::write(store.join(ALIAS_CACHE), kept).unwrap();
        fake_module(&dir.join("modules/kernel"), "net/dummy_parent.ko", &[]);
        let again = kernel(Some(dir.join("modules")), Some(store)).module_provider();
        assert_eq!(
            names(again.resolve("only-in-the-kept-index", &[]).unwrap()),
            [("dummy_parent".into(), true)]
        );
    }

    #[test]
    fn prefers_depmods_modules_alias() {
        let dir = scratch_dir("ondemand-depmod");
        fixture(&dir);
        std::fs::write(dir.join("modules/modules.alias"), "alias my-alias udp_tunnel\n").unwrap();
        let provider = kernel(Some(dir.join("modules")), None).module_provider();
        assert_eq!(
            names(provider.resolve("my-alias", &[]).unwrap()),
            [("udp_tunnel".into(), true)]
        );
        assert!(provider.resolve("net-pf-38", &[]).is_err(), "only depmod's aliases count");
    }

    #[test]
    fn a_kernel_without_modules_says_so() {
        let provider = kernel(None, None).module_provider();
        let err = provider.resolve("dummy", &[]).unwrap_err();
        assert!(err.contains("kernel fixture has no modules dir"), "{err}");
        assert!(err.contains("VMTEST_KERNEL_MODULES"), "{err}");
    }
}
