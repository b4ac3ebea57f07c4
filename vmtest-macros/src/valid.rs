//! Validation: the function's signature, and each argument's value turned into what the
//! registry stores (sizes in MiB, durations in milliseconds, canonical arch names, absolute
//! paths).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use proc_macro2::Span;
use quote::ToTokens;
use syn::{Expr, Ident, ItemFn, Lit, LitStr, ReturnType, Type};

use crate::attr::{unwrap_group, Arg, ShouldPanic, TestAttrs};
use crate::Errors;

/// The keys `#[vm_test(...)]` accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Kernel,
    Kernels,
    Arch,
    Memory,
    Cpus,
    Timeout,
    Cmdline,
    Modules,
    Env,
    Files,
    AllowKernelWarnings,
    Crate,
}

/// Each key's name, and an example for error messages.
const KEYS: &[(&str, Key, &str)] = &[
    ("kernel", Key::Kernel, "kernel = \"6.12\""),
    ("kernels", Key::Kernels, "kernels = [\"6.1\", \"6.12\"]"),
    ("arch", Key::Arch, "arch = \"aarch64\"` or `arch = [\"x86_64\", \"aarch64\"]"),
    ("memory", Key::Memory, "memory = \"512M\""),
    ("cpus", Key::Cpus, "cpus = 2"),
    ("timeout", Key::Timeout, "timeout = \"30s\""),
    ("cmdline", Key::Cmdline, "cmdline = \"quiet\""),
    ("modules", Key::Modules, "modules = [\"dummy\"]"),
    ("env", Key::Env, "env = [\"RUST_LOG\"]"),
    ("files", Key::Files, "files = [\"tests/data\"]"),
    ("allow_kernel_warnings", Key::AllowKernelWarnings, "allow_kernel_warnings"),
    ("crate", Key::Crate, "crate = my_crate::vmtest"),
];

/// The smallest `memory` value: less does not boot a kernel with an initramfs reliably.
const MIN_MEMORY_MIB: u64 = 64;
/// The largest `cpus` value.
const MAX_CPUS: u32 = 64;

/// The validated `#[vm_test(...)]` arguments.
#[derive(Default)]
pub(crate) struct VmConfig {
    pub kernels: Vec<LitStr>,
    pub arch: Vec<&'static str>,
    pub memory_mib: Option<u64>,
    pub cpus: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub cmdline: Option<LitStr>,
    pub modules: Vec<LitStr>,
    pub env: Vec<LitStr>,
    /// Absolute paths, with the span of the string they were resolved from.
    pub files: Vec<(String, Span)>,
    pub allow_kernel_warnings: bool,
    pub krate: Option<syn::Path>,
}

/// Checks every argument and collects what they say; every problem goes into `errors`.
pub(crate) fn config(args: Vec<Arg>, errors: &mut Errors) -> VmConfig {
    let mut config = VmConfig::default();
    let mut seen: Vec<Key> = Vec::new();
    let mut kernel_key: Option<Ident> = None;

    for arg in args {
        let name = arg.key.to_string();
        let Some(&(_, key, example)) = KEYS.iter().find(|(k, _, _)| *k == name) else {
            errors.push(syn::Error::new(arg.key.span(), unknown_key_message(&name)));
            continue;
        };
        if seen.contains(&key) {
            errors.push(syn::Error::new(arg.key.span(), format!("duplicate key `{name}`")));
            continue;
        }
        seen.push(key);

        let value = arg.value.as_ref().map(unwrap_group);
        if key == Key::AllowKernelWarnings {
            match value {
                None => config.allow_kernel_warnings = true,
                Some(Expr::Lit(syn::ExprLit { lit: Lit::Bool(b), .. })) => {
                    config.allow_kernel_warnings = b.value;
                }
                Some(other) => errors.push(syn::Error::new_spanned(
                    other,
                    "expected `true` or `false`, or the bare flag `allow_kernel_warnings`",
                )),
            }
            continue;
        }
        let Some(value) = value else {
            errors.push(syn::Error::new(
                arg.key.span(),
                format!("`{name}` needs a value, as in `{example}`"),
            ));
            continue;
        };

        match key {
            Key::Kernel | Key::Kernels => {
                if let Some(first) = &kernel_key {
                    errors.push(syn::Error::new(
                        arg.key.span(),
                        format!(
                            "`{name}` conflicts with `{first}`: use only \
                             `kernels = [\"6.1\", \"6.12\"]` to name several kernels"
                        ),
                    ));
                    continue;
                }
                kernel_key = Some(arg.key.clone());
                config.kernels = kernels(key, value, example, errors);
            }
            Key::Arch => config.arch = arch(value, example, errors),
            Key::Memory => {
                config.memory_mib = parsed_string(value, example, errors, parse_memory_mib);
            }
            Key::Cpus => config.cpus = cpus(value, example, errors),
            Key::Timeout => {
                config.timeout_ms = parsed_string(value, example, errors, parse_timeout_ms);
            }
            Key::Cmdline => config.cmdline = cmdline(value, example, errors),
            Key::Modules => config.modules = modules(value, example, errors),
            Key::Env => config.env = env(value, example, errors),
            Key::Files => config.files = files(value, example, errors),
            Key::Crate => match value {
                Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => {
                    config.krate = Some(path.path.clone());
                }
                other => errors.push(expected("a path", other, example)),
            },
            // Handled above, as the only key without a value.
            Key::AllowKernelWarnings => {}
        }
    }
    config
}

fn kernels(key: Key, value: &Expr, example: &str, errors: &mut Errors) -> Vec<LitStr> {
    let kernels = if key == Key::Kernel {
        string(value, example, errors).into_iter().collect()
    } else {
        non_empty(string_array(value, example, errors), value, "kernels", errors)
    };
    for kernel in &kernels {
        if kernel.value().trim().is_empty() {
            errors.push(syn::Error::new(kernel.span(), "kernel name is empty"));
        }
    }
    no_duplicates(kernels, "kernel", errors)
}

fn arch(value: &Expr, example: &str, errors: &mut Errors) -> Vec<&'static str> {
    let names = match value {
        Expr::Array(_) => non_empty(string_array(value, example, errors), value, "arch", errors),
        _ => string(value, example, errors).into_iter().collect(),
    };
    let mut arch = Vec::new();
    for name in names {
        match canonical_arch(&name.value()) {
            None => errors.push(syn::Error::new(
                name.span(),
                format!(
                    "unknown architecture `{}`; expected one of: x86_64 (or amd64), \
                     aarch64 (or arm64), riscv64 (or riscv64gc)",
                    name.value()
                ),
            )),
            Some(canonical) if arch.contains(&canonical) => errors.push(syn::Error::new(
                name.span(),
                format!("duplicate architecture `{canonical}`"),
            )),
            Some(canonical) => arch.push(canonical),
        }
    }
    arch
}

/// A string value run through `parse`, whose error message is reported on the string.
fn parsed_string(
    value: &Expr,
    example: &str,
    errors: &mut Errors,
    parse: fn(&str) -> Result<u64, String>,
) -> Option<u64> {
    let lit = string(value, example, errors)?;
    parse(&lit.value()).map_err(|msg| errors.push(syn::Error::new(lit.span(), msg))).ok()
}

fn cpus(value: &Expr, example: &str, errors: &mut Errors) -> Option<u32> {
    let Expr::Lit(syn::ExprLit { lit: Lit::Int(int), .. }) = value else {
        errors.push(expected("an integer", value, example));
        return None;
    };
    match int.base10_parse::<u32>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Some(n),
        _ => {
            errors.push(syn::Error::new(
                int.span(),
                format!("`cpus` must be between 1 and {MAX_CPUS}, got {int}"),
            ));
            None
        }
    }
}

fn cmdline(value: &Expr, example: &str, errors: &mut Errors) -> Option<LitStr> {
    let lit = string(value, example, errors)?;
    if lit.value().chars().any(char::is_control) {
        errors.push(syn::Error::new(
            lit.span(),
            "the kernel command line cannot contain control characters such as newlines",
        ));
        return None;
    }
    Some(lit)
}

fn modules(value: &Expr, example: &str, errors: &mut Errors) -> Vec<LitStr> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let mut modules = Vec::new();
    for module in string_array(value, example, errors) {
        let name = module.value();
        if is_module_path(&name) {
            // A module file: made absolute now (relative to the crate, as `files`), checked
            // when the test runs (it is often built after the test binary).
            match module_path(&name, manifest_dir.as_deref()) {
                Ok(path) => modules.push(LitStr::new(&path, module.span())),
                Err(msg) => errors.push(syn::Error::new(module.span(), msg)),
            }
        } else if name.is_empty() || name.chars().any(char::is_whitespace) {
            errors.push(syn::Error::new(
                module.span(),
                "expected a kernel module name, like `dummy` or `veth`, or a module file, like \
                 `kmod/hello.ko`",
            ));
        } else {
            modules.push(module);
        }
    }
    no_duplicates(modules, "module", errors)
}

/// Whether a `modules` entry names a module file rather than a module of the kernel.
fn is_module_path(entry: &str) -> bool {
    entry.contains('/')
        || [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|ext| entry.ends_with(ext))
}

/// A module file's absolute path: relative paths start at the crate's directory.
fn module_path(path: &str, manifest_dir: Option<&Path>) -> Result<String, String> {
    let given = Path::new(path);
    let joined = match manifest_dir {
        _ if given.is_absolute() => given.to_path_buf(),
        Some(dir) => dir.join(given),
        None => {
            return Err(format!(
                "cannot resolve `{path}`: CARGO_MANIFEST_DIR is not set; use an absolute path"
            ))
        }
    };
    joined.into_os_string().into_string().map_err(|_| format!("the path `{path}` is not UTF-8"))
}

fn env(value: &Expr, example: &str, errors: &mut Errors) -> Vec<LitStr> {
    let vars = string_array(value, example, errors);
    for var in &vars {
        if !is_env_name(&var.value()) {
            errors.push(syn::Error::new(
                var.span(),
                "expected an environment variable name: letters, digits and `_`, \
                 not starting with a digit, like `RUST_LOG`",
            ));
        }
    }
    no_duplicates(vars, "environment variable", errors)
}

fn files(value: &Expr, example: &str, errors: &mut Errors) -> Vec<(String, Span)> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let mut files = Vec::new();
    let mut resolved = HashSet::new();
    for file in string_array(value, example, errors) {
        match resolve_file(&file.value(), manifest_dir.as_deref()) {
            Ok(path) if !resolved.insert(path.clone()) => {
                errors.push(syn::Error::new(file.span(), format!("duplicate file `{path}`")))
            }
            Ok(path) => files.push((path, file.span())),
            Err(msg) => errors.push(syn::Error::new(file.span(), msg)),
        }
    }
    files
}

fn unknown_key_message(key: &str) -> String {
    let valid: Vec<&str> = KEYS.iter().map(|(name, _, _)| *name).collect();
    let hint = match key {
        "ignore" | "should_panic" => {
            format!("; `{key}` is its own attribute: write `#[{key}]` on the function")
        }
        _ => String::new(),
    };
    format!("unknown key `{key}`; expected one of: {}{hint}", valid.join(", "))
}

fn expected(what: &str, found: &Expr, example: &str) -> syn::Error {
    syn::Error::new_spanned(found, format!("expected {what}, as in `{example}`"))
}

fn string(value: &Expr, example: &str, errors: &mut Errors) -> Option<LitStr> {
    match unwrap_group(value) {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => Some(s.clone()),
        other => {
            errors.push(expected("a string", other, example));
            None
        }
    }
}

fn string_array(value: &Expr, example: &str, errors: &mut Errors) -> Vec<LitStr> {
    match value {
        Expr::Array(array) => {
            array.elems.iter().filter_map(|elem| string(elem, example, errors)).collect()
        }
        other => {
            errors.push(expected("an array of strings", other, example));
            Vec::new()
        }
    }
}

fn non_empty(items: Vec<LitStr>, value: &Expr, key: &str, errors: &mut Errors) -> Vec<LitStr> {
    if let Expr::Array(array) = value {
        if array.elems.is_empty() {
            errors.push(syn::Error::new(
                array.bracket_token.span.join(),
                format!("`{key}` needs at least one entry"),
            ));
        }
    }
    items
}

fn no_duplicates(items: Vec<LitStr>, what: &str, errors: &mut Errors) -> Vec<LitStr> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|item| {
            let fresh = seen.insert(item.value());
            if !fresh {
                errors.push(syn::Error::new(
                    item.span(),
                    format!("duplicate {what} `{}`", item.value()),
                ));
            }
            fresh
        })
        .collect()
}

/// `x86_64`, `aarch64` or `riscv64` for any of the names an architecture goes by.
pub(crate) fn canonical_arch(name: &str) -> Option<&'static str> {
    match name {
        "x86_64" | "amd64" => Some("x86_64"),
        "aarch64" | "arm64" => Some("aarch64"),
        "riscv64" | "riscv64gc" => Some("riscv64"),
        _ => None,
    }
}

/// Splits `"512M"` into `(512, "M")`; `None` if there is no leading number.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let number = s[..digits].parse().ok()?;
    Some((number, &s[digits..]))
}

/// `"512M"` → 512. Units are binary: K (KiB), M (MiB), G (GiB).
pub(crate) fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid memory size `{s}`: expected a whole number followed by K, M or G \
             (or KiB, MiB, GiB), as in `memory = \"512M\"`"
        )
    };
    let (number, unit) = split_number(s).ok_or_else(invalid)?;
    let kib_per_unit: u64 = match unit {
        "K" | "KiB" => 1,
        "M" | "MiB" => 1024,
        "G" | "GiB" => 1024 * 1024,
        _ => return Err(invalid()),
    };
    let kib = number
        .checked_mul(kib_per_unit)
        .ok_or_else(|| format!("memory size `{s}` is too large"))?;
    if kib % 1024 != 0 {
        return Err(format!("memory size `{s}` is not a whole number of MiB"));
    }
    let mib = kib / 1024;
    if mib < MIN_MEMORY_MIB {
        return Err(format!("memory size `{s}` is too small: the minimum is {MIN_MEMORY_MIB}M"));
    }
    Ok(mib)
}

/// `"30s"` → 30000. Units: ms, s, m, h.
pub(crate) fn parse_timeout_ms(s: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid timeout `{s}`: expected a whole number followed by ms, s, m or h, \
             as in `timeout = \"30s\"`"
        )
    };
    let (number, unit) = split_number(s).ok_or_else(invalid)?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        _ => return Err(invalid()),
    };
    if number == 0 {
        return Err(format!("timeout `{s}` must be greater than zero"));
    }
    number.checked_mul(ms_per_unit).ok_or_else(|| format!("timeout `{s}` is too large"))
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Makes `path` absolute (relative paths start at `manifest_dir`) and checks that it exists.
fn resolve_file(path: &str, manifest_dir: Option<&Path>) -> Result<String, String> {
    if path.is_empty() {
        return Err("file path is empty".to_owned());
    }
    let given = Path::new(path);
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        match manifest_dir {
            Some(dir) => dir.join(given),
            None => {
                return Err(format!(
                    "cannot resolve `{path}`: CARGO_MANIFEST_DIR is not set; use an absolute path"
                ))
            }
        }
    };
    let not_found = || {
        if given.is_absolute() {
            format!("file not found: `{path}`")
        } else {
            format!(
                "file not found: `{path}` (relative paths start at the crate's directory, \
                 where Cargo.toml is)"
            )
        }
    };
    let absolute = resolve_dots(&joined).map_err(|_| not_found())?;
    let metadata = std::fs::symlink_metadata(&absolute).map_err(|_| not_found())?;
    let file_type = metadata.file_type();
    if !(file_type.is_file() || file_type.is_dir() || file_type.is_symlink()) {
        return Err(format!(
            "`{path}` is not a regular file, directory or symbolic link (a FIFO, socket or \
             device cannot be a fixture)"
        ));
    }
    absolute
        .into_os_string()
        .into_string()
        .map_err(|_| format!("the path `{path}` resolves to a path that is not UTF-8"))
}

/// `path` (absolute) without `.`, `..` and repeated separators, each `..` resolved as the
/// kernel does: against the real directory the path has reached (so `/a/link/..` is the parent
/// of where `link` points, not `/a`). Symlinks not followed by a `..` stay as written. The
/// harness resolves a path with the same rule at run time (`vmtest/src/fixtures.rs`).
fn resolve_dots(path: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out = std::fs::canonicalize(&out)?;
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Checks that the function is one the harness can call as a test.
pub(crate) fn signature(item: &ItemFn, test_attrs: &TestAttrs, errors: &mut Errors) {
    let sig = &item.sig;
    let mut reject = |tokens: &dyn ToTokens, what: &str| {
        errors
            .push(syn::Error::new_spanned(tokens, format!("`#[vm_test]` functions cannot {what}")));
    };
    if let Some(token) = &sig.constness {
        reject(token, "be `const`");
    }
    if let Some(token) = &sig.asyncness {
        reject(token, "be `async`; block on the future inside the test instead");
    }
    if let Some(token) = &sig.unsafety {
        reject(token, "be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        reject(abi, "have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        reject(&sig.generics, "be generic");
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        reject(where_clause, "have a `where` clause");
    }
    if !sig.inputs.is_empty() {
        reject(&sig.inputs, "take arguments");
    } else if let Some(variadic) = &sig.variadic {
        reject(variadic, "take arguments");
    }
    let is_vm_test =
        |attr: &&syn::Attribute| attr.path().segments.last().is_some_and(|s| s.ident == "vm_test");
    if let Some(again) = item.attrs.iter().find(is_vm_test) {
        errors.push(syn::Error::new_spanned(again, "duplicate `#[vm_test]` attribute"));
    }
    if let Some(test) = item.attrs.iter().find(|a| a.path().is_ident("test")) {
        errors.push(syn::Error::new_spanned(
            test,
            "remove `#[test]`: `#[vm_test]` registers the test itself",
        ));
    }
    if let (Some(attr), false) = (&test_attrs.should_panic_attr, returns_unit(&sig.output)) {
        if !matches!(test_attrs.should_panic, ShouldPanic::No) {
            errors.push(syn::Error::new_spanned(
                attr,
                "functions using `#[should_panic]` must return `()`",
            ));
        }
    }
}

fn returns_unit(output: &ReturnType) -> bool {
    match output {
        ReturnType::Default => true,
        ReturnType::Type(_, ty) => matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("512MiB"), Ok(512));
        assert_eq!(parse_memory_mib("64M"), Ok(64));
        assert_eq!(parse_memory_mib("1G"), Ok(1024));
        assert_eq!(parse_memory_mib("2GiB"), Ok(2048));
        assert_eq!(parse_memory_mib("65536K"), Ok(64));
        assert_eq!(parse_memory_mib("131072KiB"), Ok(128));
    }

    #[test]
    fn bad_memory_sizes() {
        for bad in ["lots", "", "M", "512", "512 M", "512m", "512MB", "-1G", "1.5G", "G512"] {
            let err = parse_memory_mib(bad).unwrap_err();
            assert!(err.contains("invalid memory size"), "{bad}: {err}");
        }
        assert!(parse_memory_mib("63M").unwrap_err().contains("too small"));
        assert!(parse_memory_mib("0G").unwrap_err().contains("too small"));
        assert!(parse_memory_mib("65537K").unwrap_err().contains("whole number of MiB"));
        assert!(parse_memory_mib("18446744073709551615G").unwrap_err().contains("too large"));
        assert!(parse_memory_mib("99999999999999999999999M").unwrap_err().contains("invalid"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout_ms("500ms"), Ok(500));
        assert_eq!(parse_timeout_ms("30s"), Ok(30_000));
        assert_eq!(parse_timeout_ms("2m"), Ok(120_000));
        assert_eq!(parse_timeout_ms("1h"), Ok(3_600_000));
    }

    #[test]
    fn bad_timeouts() {
        for bad in ["soon", "", "30", "30 s", "30S", "1.5s", "30sec", "1m30s", "s"] {
            let err = parse_timeout_ms(bad).unwrap_err();
            assert!(err.contains("invalid timeout"), "{bad}: {err}");
        }
        assert!(parse_timeout_ms("0s").unwrap_err().contains("greater than zero"));
        assert!(parse_timeout_ms("0ms").unwrap_err().contains("greater than zero"));
        assert!(parse_timeout_ms("18446744073709551615h").unwrap_err().contains("too large"));
    }

    #[test]
    fn arch_names() {
        assert_eq!(canonical_arch("x86_64"), Some("x86_64"));
        assert_eq!(canonical_arch("amd64"), Some("x86_64"));
        assert_eq!(canonical_arch("aarch64"), Some("aarch64"));
        assert_eq!(canonical_arch("arm64"), Some("aarch64"));
        assert_eq!(canonical_arch("riscv64"), Some("riscv64"));
        assert_eq!(canonical_arch("riscv64gc"), Some("riscv64"));
        for bad in ["x86", "i686", "arm", "ARM64", "mips", ""] {
            assert_eq!(canonical_arch(bad), None, "{bad}");
        }
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("RUST_LOG"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name("A=B"));
    }

    #[test]
    fn module_files_are_told_from_module_names_and_made_absolute() {
        for name in ["dummy", "nf_tables", "veth"] {
            assert!(!is_module_path(name), "{name}");
        }
        for path in ["kmod/hello.ko", "hello.ko", "/lib/x.ko.xz", "m.ko.zst", "./build/m"] {
            assert!(is_module_path(path), "{path}");
        }
        let dir = Path::new("/src/crate");
        assert_eq!(module_path("kmod/hello.ko", Some(dir)).unwrap(), "/src/crate/kmod/hello.ko");
        assert_eq!(module_path("/abs/m.ko", None).unwrap(), "/abs/m.ko");
        assert!(module_path("m.ko", None).unwrap_err().contains("CARGO_MANIFEST_DIR"));
    }

    #[test]
    fn files_resolve_against_manifest_dir() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let expected = dir.join("src/lib.rs").into_os_string().into_string().unwrap();
        assert_eq!(resolve_file("src/lib.rs", Some(dir)), Ok(expected.clone()));
        assert_eq!(resolve_file("./src//lib.rs", Some(dir)), Ok(expected.clone()));
        assert_eq!(resolve_file(&expected, None), Ok(expected));
        assert!(resolve_file("no/such/file", Some(dir)).unwrap_err().contains("not found"));
        assert!(resolve_file("src/lib.rs", None).unwrap_err().contains("CARGO_MANIFEST_DIR"));
        assert!(resolve_file("", Some(dir)).is_err());
    }

    #[test]
    fn dots_in_files_resolve_through_symlinks_as_the_kernel_does() {
        let dir = std::env::temp_dir().join(format!("vmtest-macros-dots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/deep")).unwrap();
        std::fs::write(dir.join("real/data.txt"), "x").unwrap();
        std::fs::create_dir(dir.join("crate")).unwrap();
        std::os::unix::fs::symlink(dir.join("real/deep"), dir.join("crate/link")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        // `link/..` is `real`: the path is resolved, not kept with its `..`.
        let resolved = resolve_file("link/../data.txt", Some(&dir.join("crate")));
        assert_eq!(resolved, Ok(dir.join("real/data.txt").to_str().unwrap().to_owned()));
        // `crate/../real/data.txt` has no symlink before its `..`: the same as by text.
        let plain = resolve_file("../real/data.txt", Some(&dir.join("crate")));
        assert_eq!(plain, Ok(dir.join("real/data.txt").to_str().unwrap().to_owned()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_cannot_be_a_fixture() {
        let dir = std::env::temp_dir().join(format!("vmtest-macros-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mkfifo").arg(dir.join("pipe")).status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_dir_all(&dir);
            vmtest::__testing::missing("mkfifo is not available");
            return;
        }
        let err = resolve_file("pipe", Some(&dir)).unwrap_err();
        assert!(err.contains("`pipe` is not a regular file, directory or symbolic link"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
