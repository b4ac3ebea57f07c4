//! Rules the host and the guest side of vmtest share, beneath both: sizes as the `VMTEST_*`
//! variables spell them ([`parse_size`]) and the names of the files a test hands to the host
//! ([`parse_name`]), which `vmtest::artifact` checks in the guest and the host again on receipt.
//!
//! A name must be UTF-8 without control characters (so it neither merges with another nor
//! reaches a terminal raw), relative, made of plain components (no `..`, `.`, empty component
//! or NUL) under `artifacts/` or `profiles/`, or be [`KERNEL_LOG_NAME`]; the artifact
//! [`DMESG_NAME`] is reserved for the kernel log.

use std::path::{Component, Path, PathBuf};

use vmtest_init::protocol::{ARTIFACTS_DIR, KERNEL_LOG_NAME, PROFILES_DIR};

/// Longest name accepted, in bytes.
const MAX_NAME_LEN: usize = 1024;
/// The artifact name the kernel log of a failed test gets on the host; reserved for it.
pub(crate) const DMESG_NAME: &str = "dmesg.txt";

/// What a file from the guest is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Something the test handed over (`vmtest::artifact`, the guest's kernel log).
    Artifact,
    /// An LLVM profile (`.profraw`) written by the test process.
    Profile,
}

/// Checks a file name sent by the guest (raw bytes); returns its kind and its path below that
/// kind's directory.
pub(crate) fn parse_name_bytes(name: &[u8]) -> Result<(Kind, PathBuf), String> {
    let name = std::str::from_utf8(name).map_err(|_| "a name that is not UTF-8".to_owned())?;
    if name == KERNEL_LOG_NAME {
        return Ok((Kind::Artifact, PathBuf::from(DMESG_NAME)));
    }
    parse_name(name)
}

/// Checks a file name (as `vmtest::artifact` makes it, or the guest sent it); returns its kind
/// and its path below that kind's directory.
pub(crate) fn parse_name(name: &str) -> Result<(Kind, PathBuf), String> {
    if name.is_empty() {
        return Err("an empty name".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("a name longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains('\0') {
        return Err("a NUL byte in the name".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err("a control character in the name".to_owned());
    }
    if name.starts_with('/') {
        return Err("an absolute path".to_owned());
    }
    let mut parts = name.split('/');
    let kind = match parts.next() {
        Some(ARTIFACTS_DIR) => Kind::Artifact,
        Some(PROFILES_DIR) => Kind::Profile,
        _ => return Err(format!("not under `{ARTIFACTS_DIR}/` or `{PROFILES_DIR}/`")),
    };
    let mut relative = PathBuf::new();
    for part in parts {
        match part {
            "" => return Err("an empty path component".to_owned()),
            "." | ".." => return Err(format!("a `{part}` path component")),
            _ => relative.push(part),
        }
    }
    // Belt and braces: nothing but plain components may reach a join.
    if relative.as_os_str().is_empty()
        || !relative.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("no file name".to_owned());
    }
    if kind == Kind::Profile && relative.components().count() != 1 {
        return Err("a profile in a subdirectory".to_owned());
    }
    if kind == Kind::Artifact && relative == Path::new(DMESG_NAME) {
        return Err(format!(
            "`{DMESG_NAME}` is reserved for the kernel log vmtest saves for a failed test"
        ));
    }
    Ok((kind, relative))
}

/// A size: bytes, or a number with `K`, `M` or `G`.
pub(crate) fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, unit) = match value.char_indices().last()? {
        (at, 'K' | 'k') => (&value[..at], 1 << 10),
        (at, 'M' | 'm') => (&value[..at], 1 << 20),
        (at, 'G' | 'g') => (&value[..at], 1 << 30),
        _ => (value, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain_relative_paths_under_a_known_kind() {
        assert_eq!(
            parse_name("artifacts/x/y.bin").unwrap(),
            (Kind::Artifact, PathBuf::from("x/y.bin"))
        );
        assert_eq!(
            parse_name("profiles/12.profraw").unwrap(),
            (Kind::Profile, PathBuf::from("12.profraw"))
        );
        let cases = [
            ("", "empty name"),
            ("/etc/passwd", "absolute path"),
            ("artifacts/../../etc/passwd", "`..`"),
            ("artifacts/./x", "`.`"),
            ("artifacts//x", "empty path component"),
            ("artifacts/x/", "empty path component"),
            ("artifacts/a\0b", "NUL"),
            ("artifacts", "no file name"),
            ("elsewhere/x", "not under"),
            ("profiles/sub/x.profraw", "subdirectory"),
            ("artifacts/a\x1b[31mred", "control character"),
            ("artifacts/\u{9b}2J", "control character"),
            ("artifacts/line\nbreak", "control character"),
            ("artifacts/dmesg.txt", "reserved for the kernel log"),
        ];
        for (name, why) in cases {
            let err = parse_name(name).unwrap_err();
            assert!(err.contains(why), "{name:?}: {err}");
        }
        assert!(parse_name(&format!("artifacts/{}", "x".repeat(2000)))
            .unwrap_err()
            .contains("longer"));
        // Only the top-level `dmesg.txt` is the kernel log's.
        assert_eq!(
            parse_name("artifacts/logs/dmesg.txt").unwrap(),
            (Kind::Artifact, PathBuf::from("logs/dmesg.txt"))
        );
        // Bytes from the guest: UTF-8 only, and the kernel log under its own name.
        assert!(parse_name_bytes(b"artifacts/a\xff").unwrap_err().contains("not UTF-8"));
        assert_eq!(
            parse_name_bytes(KERNEL_LOG_NAME.as_bytes()).unwrap(),
            (Kind::Artifact, PathBuf::from(DMESG_NAME))
        );
        assert!(parse_name_bytes(b"vmtest/other").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }
}
