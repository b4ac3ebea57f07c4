//! What a test sees of the host inside the guest: its environment variables and working
//! directory. `docs/guest-environment.md` describes the rules for users.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use crate::Error;

/// Set in every test's environment; a forwarded variable of the same name wins.
pub(crate) const GUEST_DEFAULTS: &[(&str, &str)] = &[
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOME", "/root"),
    ("TMPDIR", "/tmp"),
    ("USER", "root"),
];

/// Forwarded from the host whenever set.
/// (`LLVM_PROFILE_FILE` tells the guest to collect the test's LLVM profiles; the guest replaces
/// its value with a path of its own.)
pub(crate) const ALWAYS_FORWARDED: &[&str] =
    &["RUST_BACKTRACE", "RUST_LOG", "RUST_MIN_STACK", "LLVM_PROFILE_FILE"];

/// Every variable whose name starts with this is forwarded (cargo sets them for test runs).
pub(crate) const CARGO_PREFIX: &str = "CARGO_";

/// A host variable that lists more names to forward, separated by commas or whitespace.
pub(crate) const LIST_VAR: &str = "VMTEST_ENV";

/// The environment of a test in the guest, without the harness's own variables: the guest
/// defaults, overridden by what is forwarded from `host` (the host's environment). `listed` are
/// the names of the test's `env = [...]`.
///
/// A variable whose name or value is not UTF-8 is not forwarded.
pub(crate) fn test_env(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    listed: &[&str],
) -> Vec<(String, String)> {
    let host: Vec<(String, String)> = host
        .into_iter()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    let from_list_var: Vec<&str> = host
        .iter()
        .find(|(name, _)| name == LIST_VAR)
        .map(|(_, list)| {
            list.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).collect()
        })
        .unwrap_or_default();
    let wanted = |name: &str| {
        name.starts_with(CARGO_PREFIX)
            || ALWAYS_FORWARDED.contains(&name)
            || listed.contains(&name)
            || from_list_var.contains(&name)
    };
    let mut env: BTreeMap<String, String> =
        GUEST_DEFAULTS.iter().map(|&(name, value)| (name.to_owned(), value.to_owned())).collect();
    for (name, value) in &host {
        if wanted(name) {
            env.insert(name.clone(), value.clone());
        }
    }
    env.into_iter().collect()
}

/// The test's working directory in the guest: the host's `CARGO_MANIFEST_DIR` at run time, as
/// under `cargo test`, else `/`. A directory the guest cannot provide (one under `/proc`, `/sys`
/// or `/dev`, where the guest mounts its own file systems) is an error naming it.
pub(crate) fn test_cwd(manifest_dir: Option<OsString>) -> Result<String, Error> {
    let cwd = manifest_dir
        .and_then(|dir| dir.into_string().ok())
        .filter(|dir| Path::new(dir).is_absolute())
        .unwrap_or_else(|| "/".to_owned());
    check_cwd(&cwd, "CARGO_MANIFEST_DIR")?;
    Ok(cwd)
}

/// Checks that the guest can provide the working directory `cwd` (absolute), which `source`
/// named.
pub(crate) fn check_cwd(cwd: &str, source: &str) -> Result<(), Error> {
    match vmtest_init::hidden_in_guest(Path::new(cwd)) {
        None => Ok(()),
        Some(why) => Err(Error::Fixture(format!(
            "failed to provide the working directory {cwd} ({source}) in the guest: {why}; \
             run the tests from a directory elsewhere"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter().map(|&(k, v)| (k.into(), v.into())).collect()
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn forwards_only_what_is_named() {
        let env = test_env(
            host(&[
                ("RUST_BACKTRACE", "1"),
                ("RUST_LOG", "debug"),
                ("CARGO_MANIFEST_DIR", "/src/crate"),
                ("CARGO_PKG_NAME", "crate"),
                ("CARGO", "/usr/bin/cargo"),
                ("MY_VAR", "x"),
                ("SECRET_TOKEN", "s"),
                ("SSH_AUTH_SOCK", "/run/ssh"),
                ("LD_PRELOAD", "/evil.so"),
                ("LANG", "C.UTF-8"),
            ]),
            &["MY_VAR", "NOT_SET"],
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "CARGO_MANIFEST_DIR",
                "CARGO_PKG_NAME",
                "HOME",
                "MY_VAR",
                "PATH",
                "RUST_BACKTRACE",
                "RUST_LOG",
                "TMPDIR",
                "USER"
            ]
        );
        assert_eq!(get(&env, "CARGO_MANIFEST_DIR"), Some("/src/crate"));
        assert_eq!(get(&env, "MY_VAR"), Some("x"));
    }

    #[test]
    fn guest_defaults_apply_unless_forwarded() {
        let env = test_env(host(&[("PATH", "/host/bin"), ("HOME", "/home/me")]), &[]);
        assert_eq!(get(&env, "HOME"), Some("/root"));
        assert_eq!(get(&env, "TMPDIR"), Some("/tmp"));
        assert_eq!(get(&env, "USER"), Some("root"));
        assert_eq!(get(&env, "PATH"), Some(GUEST_DEFAULTS[0].1));
        let env = test_env(host(&[("HOME", "/home/me")]), &["HOME"]);
        assert_eq!(get(&env, "HOME"), Some("/home/me"));
    }

    #[test]
    fn the_list_variable_names_more_variables() {
        let env = test_env(
            host(&[(LIST_VAR, " A,B \tC,,"), ("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")]),
            &[],
        );
        assert_eq!(get(&env, "A"), Some("1"));
        assert_eq!(get(&env, "B"), Some("2"));
        assert_eq!(get(&env, "C"), Some("3"));
        assert_eq!(get(&env, "D"), None);
        assert_eq!(get(&env, LIST_VAR), None, "the list itself stays on the host");
    }

    #[test]
    fn skips_what_is_not_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let env = test_env(
            vec![
                ("RUST_LOG".into(), OsString::from_vec(vec![0xff])),
                (OsString::from_vec(b"CARGO_\xff".to_vec()), "x".into()),
            ],
            &[],
        );
        assert_eq!(env.len(), GUEST_DEFAULTS.len(), "{env:?}");
    }

    #[test]
    fn cwd_is_the_manifest_dir_when_absolute() {
        assert_eq!(test_cwd(Some("/src/crate".into())).unwrap(), "/src/crate");
        assert_eq!(test_cwd(Some("relative".into())).unwrap(), "/");
        assert_eq!(test_cwd(None).unwrap(), "/");
    }

    #[test]
    fn cwd_may_be_under_tmp_run_and_dev_shm() {
        for dir in ["/tmp/checkout/crate", "/run/user/1000/crate", "/dev/shm/crate", "/tmp"] {
            assert_eq!(test_cwd(Some(dir.into())).unwrap(), dir);
        }
    }

    #[test]
    fn cwd_the_guest_mounts_over_is_an_error_naming_it() {
        for (dir, fstype) in [
            ("/proc/crate", "proc"),
            ("/sys/crate", "sysfs"),
            ("/dev/crate", "devtmpfs"),
            ("/dev/pts/crate", "devpts"),
        ] {
            let error = test_cwd(Some(dir.into())).unwrap_err().to_string();
            assert!(error.contains(dir), "{error}");
            assert!(error.contains("CARGO_MANIFEST_DIR"), "{error}");
            assert!(error.contains(&format!("mounts {fstype} on")), "{error}");
        }
    }
}
