//! Module aliases: what `modprobe` resolves a name like `net-pf-38` or `rtnl-link-vxlan` with.
//!
//! Each module lists its aliases in `.modinfo` (`alias=rtnl-link-vxlan`), as glob patterns
//! (`pci:v00008086d*sv*`). depmod collects them into `modules.alias` (`alias PATTERN MODULE`
//! lines); Debian's packages ship no such file (depmod runs at install time), so vmtest builds
//! the same text from the modules once per store kernel ([`AliasIndex::build`]) and keeps it in
//! the kernel's store dir. Built-in modules' aliases come from `modules.builtin.modinfo`.
//!
//! Names and patterns are compared as kmod does: `-` and `_` are the same outside `[...]`, and a
//! pattern matches as `fnmatch(3)` without flags would.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::modules::{read_modinfo_quick, ModuleIndex};
use super::KernelError;

/// The first line of an index vmtest wrote; an index without it is rebuilt.
pub(crate) const INDEX_HEADER: &str =
    "# vmtest alias index v1: the alias= lines of each module's .modinfo, as depmod's modules.alias";

/// `alias PATTERN MODULE` entries, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AliasIndex {
    /// (normalized pattern, module name).
    entries: Vec<(String, String)>,
}

impl AliasIndex {
    /// Reads `modules.alias` text (depmod's, or one vmtest wrote). Comments and lines that are
    /// not `alias PATTERN MODULE` are skipped.
    pub(crate) fn parse(text: &str) -> AliasIndex {
        let entries = text
            .lines()
            .filter_map(|line| line.strip_prefix("alias "))
            .filter_map(|rest| rest.trim_end().rsplit_once(' '))
            .filter(|(pattern, module)| !pattern.is_empty() && !module.is_empty())
            .map(|(pattern, module)| (normalize(pattern.trim()), normalize(module)))
            .collect();
        AliasIndex { entries }
    }

    /// The aliases of built-in modules, from `modules.builtin.modinfo` (`module.alias=value`
    /// records separated by NUL bytes).
    pub(crate) fn parse_builtin_modinfo(data: &[u8]) -> AliasIndex {
        let entries = data
            .split(|&b| b == 0)
            .filter_map(|record| std::str::from_utf8(record).ok())
            .filter_map(|record| {
                let (key, pattern) = record.split_once('=')?;
                let module = key.strip_suffix(".alias")?;
                (!module.is_empty() && !pattern.is_empty())
                    .then(|| (normalize(pattern), normalize(module)))
            })
            .collect();
        AliasIndex { entries }
    }

    /// Builds the index from the `.modinfo` of every module in `files`, reading several modules
    /// at once. A module whose `.modinfo` cannot be read is left out and reported.
    pub(crate) fn build(files: &ModuleIndex) -> (AliasIndex, Vec<KernelError>) {
        let modules: Vec<(&String, &std::path::PathBuf)> = files.iter().collect();
        let next = AtomicUsize::new(0);
        let found: Mutex<BTreeMap<usize, Vec<String>>> = Mutex::new(BTreeMap::new());
        let errors = Mutex::new(Vec::new());
        let workers = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 8);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, path)) = modules.get(at) else { return };
                    match read_modinfo_quick(path) {
                        Ok(info) => {
                            found.lock().unwrap_or_else(|e| e.into_inner()).insert(at, info.aliases)
                        }
                        Err(e) => {
                            errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                            None
                        }
                    };
                });
            }
        });
        let found = found.into_inner().unwrap_or_else(|e| e.into_inner());
        let entries = found
            .into_iter()
            .flat_map(|(at, aliases)| {
                let module = modules[at].0;
                aliases.into_iter().map(move |alias| (normalize(&alias), module.clone()))
            })
            .collect();
        (AliasIndex { entries }, errors.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// The index as `modules.alias` text, under [`INDEX_HEADER`].
    pub(crate) fn to_text(&self) -> String {
        let mut text = format!("{INDEX_HEADER}\n");
        for (pattern, module) in &self.entries {
            text.push_str(&format!("alias {pattern} {module}\n"));
        }
        text
    }

    /// The modules with an alias that matches `name` (normalized), each once, in index order.
    pub(crate) fn lookup(&self, name: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for (pattern, module) in &self.entries {
            if glob_match(pattern.as_bytes(), name.as_bytes()) && !found.contains(module) {
                found.push(module.clone());
            }
        }
        found
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Reads an index vmtest wrote at `path`; `None` when there is none (or another version's).
pub(crate) fn read_cached(path: &Path) -> Option<AliasIndex> {
    let text = std::fs::read_to_string(path).ok()?;
    (text.lines().next() == Some(INDEX_HEADER)).then(|| AliasIndex::parse(&text))
}

/// Writes `index` to `path` through a temp file of this process, renamed into place.
pub(crate) fn write_cached(path: &Path, index: &AliasIndex) -> Result<(), KernelError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::write(&tmp, index.to_text()).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        KernelError::io("write", path, e)
    })
}

/// A name or pattern as kmod compares them: `-` as `_`, except inside `[...]`.
pub(crate) fn normalize(name: &str) -> String {
    let mut in_class = false;
    name.chars()
        .map(|c| match c {
            '[' => {
                in_class = true;
                c
            }
            ']' => {
                in_class = false;
                c
            }
            '-' if !in_class => '_',
            c => c,
        })
        .collect()
}

/// `fnmatch(pattern, text, 0)`: `*` any run, `?` any byte, `[...]` a class (ranges, `!` or `^`
/// to negate), `\` escapes the next byte.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: its pattern position and the text it has eaten.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class_match(&pattern[p..], text[t]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // An unclosed `[` is a literal.
                None => (text[t] == b'[').then_some(1),
            },
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(2),
            Some(&c) => (c == text[t]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                p += len;
                t += 1;
            }
            (None, Some((star_p, star_t))) => {
                p = star_p;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pattern` (which starts with `[`): whether it
/// matched, and the class's length. `None` when the class is not closed.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let start = *pattern.get(i)?;
        if start == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let end = pattern[i + 2];
            matched |= start <= c && c <= end;
            i += 3;
        } else {
            matched |= start == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        glob_match(pattern.as_bytes(), text.as_bytes())
    }

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(matches("net_pf_38", "net_pf_38"));
        assert!(!matches("net_pf_38", "net_pf_3"));
        assert!(!matches("net_pf_3", "net_pf_38"));
        assert!(matches(
            "pci:v00008086d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001234sv0sd0bc02sc00i00"
        ));
        assert!(!matches("pci:v00008086d*", "pci:v00001af4d00001000"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYbc"));
        assert!(!matches("a*b*c", "aXXbYYb"));
        assert!(matches("fs_?fs", "fs_xfs"));
        assert!(matches("char_major_10_[0-9]", "char_major_10_7"));
        assert!(!matches("char_major_10_[0-9]", "char_major_10_x"));
        assert!(matches("x[!a-c]y", "xdy"));
        assert!(!matches("x[^a-c]y", "xby"));
        assert!(matches("[]]", "]"));
        assert!(matches("[a-]", "-"));
        assert!(matches("a[b", "a[b"), "an unclosed class is a literal");
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("devname:net/tun", "devname:net/tun"));
    }

    #[test]
    fn names_normalize_outside_classes() {
        assert_eq!(normalize("rtnl-link-vxlan"), "rtnl_link_vxlan");
        assert_eq!(normalize("x[a-z]-y"), "x[a-z]_y");
    }

    #[test]
    fn parses_modules_alias_and_builtin_modinfo() {
        let index = AliasIndex::parse(
            "# Aliases extracted from modules themselves.\n\
             alias rtnl-link-vxlan vxlan\n\
             alias net-pf-38 af_alg\n\
             alias crypto-sha256 sha256-ssse3\n\
             alias sha256 sha256_ssse3\n\
             alias crypto-sha256 sha256_generic\n\
             garbage line\n\
             alias lonely\n",
        );
        assert_eq!(index.len(), 5);
        assert_eq!(index.lookup("rtnl_link_vxlan"), ["vxlan"]);
        assert_eq!(index.lookup("crypto_sha256"), ["sha256_ssse3", "sha256_generic"]);
        assert_eq!(index.lookup("sha256"), ["sha256_ssse3"]);
        assert!(index.lookup("net_pf_39").is_empty());
        let text = index.to_text();
        assert!(text.starts_with(INDEX_HEADER));
        assert_eq!(AliasIndex::parse(&text), index);

        let builtin = AliasIndex::parse_builtin_modinfo(
            b"fuse.alias=devname:fuse\0fuse.alias=fs-fuseblk\0fuse.license=GPL\0\
              zbud.alias=zpool-zbud\0broken\0.alias=x\0",
        );
        assert_eq!(builtin.len(), 3);
        assert_eq!(builtin.lookup("fs_fuseblk"), ["fuse"]);
    }

    #[test]
    fn builds_from_modules_and_caches_atomically() {
        let dir = super::super::tests::scratch_dir("alias-build");
        let fake = |file: &str, aliases: &[&str]| {
            super::super::modules::tests::fake_module_with(&dir, file, &[], aliases)
        };
        fake("kernel/net/vxlan.ko", &["rtnl-link-vxlan"]);
        fake("kernel/crypto/af_alg.ko", &["net-pf-38"]);
        fake("kernel/net/dummy.ko", &["rtnl-link-dummy"]);
        fake("kernel/net/plain.ko", &[]);
        std::fs::write(dir.join("kernel/net/broken.ko"), b"not an ELF").unwrap();
        let files = ModuleIndex::scan(&dir).unwrap();
        let (index, errors) = AliasIndex::build(&files);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("broken.ko"), "{}", errors[0]);
        assert_eq!(index.lookup("net_pf_38"), ["af_alg"]);
        assert_eq!(index.lookup("rtnl_link_vxlan"), ["vxlan"]);
        assert_eq!(index.len(), 3);

        let cache = dir.join("modules.alias");
        assert_eq!(read_cached(&cache), None);
        write_cached(&cache, &index).unwrap();
        assert_eq!(read_cached(&cache), Some(index));
        let names: Vec<String> = std::fs::read_dir(&*dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        // depmod's file (or another version's) is not taken for vmtest's own.
        std::fs::write(&cache, "alias x y\n").unwrap();
        assert_eq!(read_cached(&cache), None);
    }
}
