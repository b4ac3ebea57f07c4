//! Resolving what a test names to a kernel ([`resolve`]): a path, or a kernel name — `6.12`
//! (newest of a series), `6.1-cloud` (a flavour), a full version or a stored name (exact) —
//! and Debian's version ordering to tell which is newest.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use super::{Kernel, KernelError, Store, DEFAULT_KERNEL};
use crate::arch::Arch;

/// Resolves what a test names to a kernel for `arch`.
///
/// `spec` is the attribute's value: a path (it contains `/` or is an existing file) or a store
/// name (`6.12`: the newest stored 6.12; `6.1-cloud`: a flavour; a full version or a stored
/// name: exactly that one). `None` falls back to `VMTEST_KERNEL` (a name or path), then to
/// [`DEFAULT_KERNEL`]. For a kernel given by path, `VMTEST_KERNEL_MODULES` names its modules
/// dir; otherwise one is looked for next to the image. A path kernel's arch comes from its
/// header ([`Kernel::arch`]), whatever `arch` says: compare it with the binary's.
pub fn resolve(spec: Option<&str>, arch: Arch) -> Result<Kernel, KernelError> {
    let spec = choose_spec(spec, std::env::var("VMTEST_KERNEL").ok());
    if looks_like_path(&spec) {
        let modules =
            std::env::var_os("VMTEST_KERNEL_MODULES").filter(|v| !v.is_empty()).map(PathBuf::from);
        return Kernel::from_image(Path::new(&spec), modules);
    }
    Store::open()?.find(&spec, arch)
}

/// The attribute's value, else `VMTEST_KERNEL` (if not empty), else [`DEFAULT_KERNEL`].
pub(super) fn choose_spec(spec: Option<&str>, env: Option<String>) -> String {
    spec.map(str::to_owned)
        .or(env.filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_KERNEL.to_owned())
}

pub(super) fn looks_like_path(spec: &str) -> bool {
    spec.contains('/') || Path::new(spec).is_file()
}

/// A series with an optional flavour: `6.12`, `6.1-cloud`, `6.12-rt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Series {
    pub(crate) series: String,
    pub(crate) flavour: Option<String>,
}

impl Series {
    /// Parses `<digits>(.<digits>)*` optionally followed by `-<flavour>` (`[a-z][a-z0-9]*`).
    pub(crate) fn parse(spec: &str) -> Option<Series> {
        let (series, flavour) = match spec.split_once('-') {
            Some((s, f)) => (s, Some(f)),
            None => (spec, None),
        };
        let numeric = !series.is_empty()
            && series.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let flavour_ok = flavour.is_none_or(|f| {
            f.starts_with(|c: char| c.is_ascii_lowercase())
                && f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
        (numeric && flavour_ok)
            .then(|| Series { series: series.to_owned(), flavour: flavour.map(str::to_owned) })
    }

    /// Whether a kernel release (`6.12.117+deb12-amd64`, `6.1.0-56-cloud-amd64`) belongs to
    /// this series: it starts with the series followed by `.`, `-`, `+` or nothing.
    pub(crate) fn contains_version(&self, version: &str) -> bool {
        version
            .strip_prefix(self.series.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
    }
}

/// Picks the stored kernel `spec` names: an exact name or version first, else the newest of
/// the series with exactly the flavour asked for (none = the default flavour).
pub(crate) fn select<'a>(spec: &str, kernels: &'a [Kernel]) -> Option<&'a Kernel> {
    if let Some(k) = kernels.iter().find(|k| k.name == spec || k.version.as_deref() == Some(spec)) {
        return Some(k);
    }
    let series = Series::parse(spec)?;
    kernels
        .iter()
        .filter(|k| k.flavour == series.flavour)
        .filter(|k| series.contains_version(k.version.as_deref().unwrap_or(&k.name)))
        .max_by(|a, b| {
            compare_versions(
                a.version.as_deref().unwrap_or(&a.name),
                b.version.as_deref().unwrap_or(&b.name),
            )
        })
}

/// Compares two Debian versions (`[epoch:]upstream[-revision]`) as dpkg does. Kernel
/// releases (`6.1.0-56-amd64`) compare sensibly with it too.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ra) = split_epoch(a);
    let (eb, rb) = split_epoch(b);
    ea.cmp(&eb).then_with(|| {
        let (ua, va) = ra.rsplit_once('-').unwrap_or((ra, ""));
        let (ub, vb) = rb.rsplit_once('-').unwrap_or((rb, ""));
        verrevcmp(ua, ub).then_with(|| verrevcmp(va, vb))
    })
}

fn split_epoch(v: &str) -> (u64, &str) {
    match v.split_once(':') {
        Some((e, rest)) if e.bytes().all(|b| b.is_ascii_digit()) => (e.parse().unwrap_or(0), rest),
        _ => (0, v),
    }
}

/// dpkg's `verrevcmp`: alternating non-digit and digit runs; `~` sorts before everything.
fn verrevcmp(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(b'~') => -1,
            Some(c) => i32::from(c) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;

    fn k(name: &str, version: &str, flavour: Option<&str>) -> Kernel {
        Kernel {
            name: name.into(),
            arch: Arch::X86_64,
            version: Some(version.into()),
            image: format!("/store/{name}/vmlinuz").into(),
            modules_dir: None,
            config: None,
            flavour: flavour.map(Into::into),
            package: None,
            store_dir: None,
        }
    }

    #[test]
    fn debian_version_order() {
        use Ordering::*;
        assert_eq!(compare_versions("6.12.117-1~deb12u1", "6.12.115-1~deb12u1"), Greater);
        assert_eq!(compare_versions("6.1.192-2", "6.1.176-1"), Greater);
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Less);
        assert_eq!(compare_versions("1:0.1", "2.0"), Greater);
        assert_eq!(compare_versions("6.1.0-56-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(compare_versions("6.12.9+deb12-amd64", "6.12.10+deb12-amd64"), Less);
        assert_eq!(compare_versions("1.0a", "1.0"), Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Equal);
    }

    #[test]
    fn series_parsing() {
        assert_eq!(Series::parse("6.12"), Some(Series { series: "6.12".into(), flavour: None }));
        assert_eq!(
            Series::parse("6.1-cloud"),
            Some(Series { series: "6.1".into(), flavour: Some("cloud".into()) })
        );
        assert_eq!(Series::parse("6.12.117+deb12-amd64"), None);
        assert_eq!(Series::parse("6.1.0-56-amd64"), None);
        assert_eq!(Series::parse("bpf-next"), None);
        assert_eq!(Series::parse(""), None);
        let s = Series::parse("6.1").unwrap();
        assert!(s.contains_version("6.1.0-56-amd64"));
        assert!(s.contains_version("6.1"));
        assert!(!s.contains_version("6.12.117+deb12-amd64"));
        assert!(Series::parse("6.12").unwrap().contains_version("6.12.117+deb12-amd64"));
    }

    #[test]
    fn selection() {
        let ks = [
            k("6.1.0-9-amd64", "6.1.0-9-amd64", None),
            k("6.1.0-56-amd64", "6.1.0-56-amd64", None),
            k("6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64", Some("cloud")),
            k("6.12.9+deb12-amd64", "6.12.9+deb12-amd64", None),
            k("6.12.117+deb12-amd64", "6.12.117+deb12-amd64", None),
            k("bpf-next", "6.15.0-rc3+", None),
        ];
        let name = |spec| select(spec, &ks).map(|k| k.name.as_str());
        assert_eq!(name("6.1"), Some("6.1.0-56-amd64"));
        assert_eq!(name("6.12"), Some("6.12.117+deb12-amd64"));
        assert_eq!(name("6.1-cloud"), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(name("6.12-cloud"), None);
        assert_eq!(name("6.1.0-9-amd64"), Some("6.1.0-9-amd64"));
        assert_eq!(name("bpf-next"), Some("bpf-next"));
        assert_eq!(name("6.15"), Some("bpf-next"));
        assert_eq!(name("6.6"), None);
    }
}
