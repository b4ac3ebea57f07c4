//! The guest's name and the minimal `/etc` that libc lookups need: the root user and group,
//! `localhost`, and an `nsswitch.conf` that sends them to those files.
//!
//! glibc 2.34 and later have the `files` NSS module built into `libc.so.6`, so nothing is
//! loaded at lookup time. A file the initramfs already has (a test fixture) is left alone.

use std::io::{self, Write};
use std::path::Path;

/// The guest's hostname.
pub(crate) const HOSTNAME: &str = "vmtest";

/// Files written into `/etc`, as (path, contents).
pub(crate) const ETC_FILES: &[(&str, &str)] = &[
    ("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
    ("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    (
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tvmtest\n",
    ),
    ("/etc/hostname", "vmtest\n"),
    (
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n\
         protocols: files\nservices: files\n",
    ),
];

/// Sets the hostname and writes [`ETC_FILES`] under `root` (`/` in the guest). Problems are
/// returned as messages, never fatal.
pub(crate) fn set_up(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = rustix::system::sethostname(HOSTNAME.as_bytes()) {
        problems.push(format!(
            "failed to set the hostname to {HOSTNAME}: {}",
            io::Error::from(e)
        ));
    }
    if let Err(e) = std::fs::create_dir_all(root.join("root")) {
        problems.push(format!("failed to create /root: {e}"));
    }
    for (path, contents) in ETC_FILES {
        let target = root.join(path.trim_start_matches('/'));
        if let Err(e) = write_new(&target, contents) {
            problems.push(format!("failed to write {path}: {e}"));
        }
    }
    problems
}

/// Writes `contents` to a new file at `path`; an existing file is kept.
fn write_new(path: &Path, contents: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut file) => file.write_all(contents.as_bytes()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc(path: &str) -> &'static str {
        ETC_FILES
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, c)| *c)
            .unwrap()
    }

    #[test]
    fn root_and_localhost_are_there() {
        assert!(etc("/etc/passwd").starts_with("root:x:0:0:root:/root:"));
        assert!(etc("/etc/group").starts_with("root:x:0:"));
        assert!(etc("/etc/hosts").contains("127.0.0.1\tlocalhost\n"));
        assert!(etc("/etc/hosts").contains("::1\tlocalhost "));
        assert!(etc("/etc/hosts").contains(HOSTNAME));
        assert!(etc("/etc/nsswitch.conf").contains("hosts: files\n"));
        for (path, contents) in ETC_FILES {
            assert!(contents.ends_with('\n'), "{path}");
            assert!(path.starts_with("/etc/"), "{path}");
        }
    }

    #[test]
    fn keeps_existing_files() {
        let dir = std::env::temp_dir().join(format!("vmtest-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hosts"), "mine\n").unwrap();
        write_new(&dir.join("etc/hosts"), "theirs\n").unwrap();
        write_new(&dir.join("etc/group"), "root:x:0:\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/hosts")).unwrap(),
            "mine\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/group")).unwrap(),
            "root:x:0:\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
