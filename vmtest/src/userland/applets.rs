//! The applets a busybox binary provides and where each one is installed, read from the binary's
//! bytes without running it (it is usually for another arch than the host's).
//!
//! busybox keeps two tables in its read-only data, generated at its build by
//! `applets/applet_tables.c`:
//! - `applet_names`: every applet's name, sorted bytewise, each NUL-terminated, the array ending
//!   with one more NUL: `"[\0[[\0acpid\0...zcat\0\0"`. It is found by its start, `[\0[[\0`
//!   (the `test` applets sort first).
//! - `applet_install_loc`, in builds with the installer (`busybox --install`, as Debian's): one
//!   nibble per applet in the same order, two to a byte, low nibble first: 0 `/`, 1 `/bin`,
//!   2 `/sbin`, 3 `/usr/bin`, 4 `/usr/sbin`. It has no marker: it is taken to be the one run of
//!   `ceil(n / 2)` bytes whose nibbles are all locations and which puts the applets of
//!   [`ANCHORS`] where every busybox puts them. Zero or several such runs leave the locations
//!   unknown, and [`super::links`] falls back to both bin dirs.
//!
//! The store keeps what was read in a text file of its own, one applet a line
//! ([`to_text`], [`from_text`]), so a run never scans the binary.

use std::fmt;

/// Where busybox installs an applet (`BB_DIR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InstallDir {
    Root,
    Bin,
    Sbin,
    UsrBin,
    UsrSbin,
}

impl InstallDir {
    const ALL: [InstallDir; 5] = [
        InstallDir::Root,
        InstallDir::Bin,
        InstallDir::Sbin,
        InstallDir::UsrBin,
        InstallDir::UsrSbin,
    ];

    /// The guest directory.
    pub(crate) const fn path(self) -> &'static str {
        match self {
            InstallDir::Root => "/",
            InstallDir::Bin => "/bin",
            InstallDir::Sbin => "/sbin",
            InstallDir::UsrBin => "/usr/bin",
            InstallDir::UsrSbin => "/usr/sbin",
        }
    }

    /// The location a nibble of `applet_install_loc` encodes.
    fn from_nibble(nibble: u8) -> Option<InstallDir> {
        InstallDir::ALL.get(usize::from(nibble)).copied()
    }
}

/// One applet: its name and, when the binary says, where it is installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Applet {
    pub(crate) name: String,
    pub(crate) dir: Option<InstallDir>,
}

impl fmt::Display for Applet {
    /// `/usr/bin env`, or `? env` when the location is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.map_or("?", InstallDir::path);
        write!(f, "{dir} {}", self.name)
    }
}

/// Applets whose install location every busybox build with the installer agrees on (from
/// their `APPLET` lines in busybox's sources); they validate a candidate location table.
const ANCHORS: &[(&str, InstallDir)] = &[
    ("[", InstallDir::UsrBin),
    ("cat", InstallDir::Bin),
    ("chroot", InstallDir::UsrSbin),
    ("env", InstallDir::UsrBin),
    ("ifconfig", InstallDir::Sbin),
    ("ip", InstallDir::Sbin),
    ("ls", InstallDir::Bin),
    ("mount", InstallDir::Bin),
    ("sh", InstallDir::Bin),
];

/// How many anchors must be among the applets for a location table to be trusted.
const MIN_ANCHORS: usize = 3;

/// Fewer names than this after `[\0[[\0` is not busybox's table.
const MIN_APPLETS: usize = 8;

/// The applets of the busybox binary `bytes`, with their install locations when the binary
/// has a location table that can be told apart. Fails when no name table is found (not a
/// busybox, or one built without the `test` applet).
pub(crate) fn read(bytes: &[u8]) -> Result<Vec<Applet>, String> {
    let names = find_names(bytes).ok_or_else(|| {
        "no busybox applet table in it (looked for the sorted, NUL-separated names that \
         start with `[`, `[[`)"
            .to_owned()
    })?;
    let dirs = find_locations(bytes, &names);
    Ok(names
        .iter()
        .enumerate()
        .map(|(i, name)| Applet { name: (*name).to_owned(), dir: dirs.as_ref().map(|d| d[i]) })
        .collect())
}

/// Whether `name` can be an applet's name (and a file name in the guest).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+[]".contains(&b))
}

/// The first run of names that starts with `[\0[[\0`, is strictly sorted and ends with an empty
/// name (the array's own terminating NUL).
fn find_names(bytes: &[u8]) -> Option<Vec<&str>> {
    const START: &[u8] = b"[\0[[\0";
    let mut from = 0;
    while let Some(offset) = find(&bytes[from..], START) {
        let start = from + offset;
        if let Some(names) = names_at(&bytes[start..]) {
            return Some(names);
        }
        from = start + 1;
    }
    None
}

fn names_at(bytes: &[u8]) -> Option<Vec<&str>> {
    let mut names: Vec<&str> = Vec::new();
    for token in bytes.split(|&b| b == 0) {
        if token.is_empty() {
            return (names.len() >= MIN_APPLETS).then_some(names);
        }
        let name = std::str::from_utf8(token).ok().filter(|n| valid_name(n))?;
        if names.last().is_some_and(|last| last.as_bytes() >= token) {
            return None;
        }
        names.push(name);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The install location of each of `names`, from the one location table that fits them.
fn find_locations(bytes: &[u8], names: &[&str]) -> Option<Vec<InstallDir>> {
    let anchors: Vec<(usize, InstallDir)> = ANCHORS
        .iter()
        .filter_map(|&(name, dir)| Some((names.binary_search_by(|n| n.cmp(&name)).ok()?, dir)))
        .collect();
    if anchors.len() < MIN_ANCHORS {
        return None;
    }
    let len = names.len().div_ceil(2);
    let odd = names.len() % 2 == 1;
    let nibble = |table: &[u8], i: usize| (table[i / 2] >> (4 * (i % 2))) & 0x0f;
    let is_location_byte = |b: u8| b & 0x0f <= 4 && b >> 4 <= 4;
    let mut found = None;
    let mut run = 0usize;
    for (end, &byte) in bytes.iter().enumerate() {
        if !is_location_byte(byte) {
            run = 0;
            continue;
        }
        run += 1;
        if run < len {
            continue;
        }
        let table = &bytes[end + 1 - len..=end];
        if odd && table[len - 1] >> 4 != 0 {
            continue;
        }
        let fits =
            anchors.iter().all(|&(i, dir)| InstallDir::from_nibble(nibble(table, i)) == Some(dir));
        if fits {
            if found.is_some() {
                return None;
            }
            found = Some(table);
        }
    }
    let table = found?;
    (0..names.len()).map(|i| InstallDir::from_nibble(nibble(table, i))).collect()
}

/// The applets as the store keeps them: `<dir> <name>` a line, `?` for an unknown dir.
pub(crate) fn to_text(applets: &[Applet]) -> String {
    applets.iter().map(|a| format!("{a}\n")).collect()
}

/// Reads [`to_text`]'s format back; the error names the first bad line.
pub(crate) fn from_text(text: &str) -> Result<Vec<Applet>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            let bad = || format!("line {}: `{line}` is not `<dir> <applet>`", number + 1);
            let (dir, name) = line.split_once(' ').ok_or_else(bad)?;
            let dir = match dir {
                "?" => None,
                dir => Some(InstallDir::ALL.into_iter().find(|d| d.path() == dir).ok_or_else(bad)?),
            };
            if !valid_name(name) {
                return Err(bad());
            }
            Ok(Applet { name: name.to_owned(), dir })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake busybox: some bytes, the location table of `applets` (when they all have one),
    /// more bytes, the name table, more bytes.
    pub(crate) fn fake_busybox(applets: &[(&str, Option<InstallDir>)]) -> Vec<u8> {
        let mut bytes = b"\x7fELF not really, then rodata: usage text\0".to_vec();
        if applets.iter().all(|(_, dir)| dir.is_some()) {
            let codes: Vec<u8> = applets
                .iter()
                .map(|(_, dir)| {
                    InstallDir::ALL.iter().position(|d| Some(*d) == *dir).unwrap() as u8
                })
                .collect();
            bytes.extend(codes.chunks(2).map(|c| c[0] | c.get(1).map_or(0, |h| h << 4)));
        }
        bytes.extend_from_slice(b"\xff\xfeother data\0");
        for (name, _) in applets {
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0);
        }
        bytes.push(0);
        bytes.extend_from_slice(b"%s: applet not found\0\xff");
        bytes
    }

    use InstallDir::*;

    pub(crate) const SAMPLE: &[(&str, Option<InstallDir>)] = &[
        ("[", Some(UsrBin)),
        ("[[", Some(UsrBin)),
        ("ash", Some(Bin)),
        ("cat", Some(Bin)),
        ("chroot", Some(UsrSbin)),
        ("depmod", Some(Sbin)),
        ("env", Some(UsrBin)),
        ("insmod", Some(Sbin)),
        ("ip", Some(Sbin)),
        ("linuxrc", Some(Root)),
        ("ls", Some(Bin)),
        ("modprobe", Some(Sbin)),
        ("mount", Some(Bin)),
        ("sh", Some(Bin)),
        ("zcat", Some(Bin)),
    ];

    fn expected(list: &[(&str, Option<InstallDir>)]) -> Vec<Applet> {
        list.iter().map(|&(name, dir)| Applet { name: name.to_owned(), dir }).collect()
    }

    #[test]
    fn reads_names_and_locations() {
        assert_eq!(read(&fake_busybox(SAMPLE)).unwrap(), expected(SAMPLE));
        // An even count: no padding nibble.
        let even = &SAMPLE[..SAMPLE.len() - 1];
        assert_eq!(read(&fake_busybox(even)).unwrap(), expected(even));
    }

    #[test]
    fn without_a_location_table_the_names_still_come() {
        let mut sample = SAMPLE.to_vec();
        sample.push(("zz-unknown", None));
        let applets = read(&fake_busybox(&sample)).unwrap();
        let names: Vec<&str> = applets.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names.len(), sample.len());
        assert!(applets.iter().all(|a| a.dir.is_none()), "{applets:?}");
    }

    #[test]
    fn a_table_that_contradicts_the_anchors_is_not_used() {
        let mut sample = SAMPLE.to_vec();
        sample[10].1 = Some(UsrSbin); // ls
        let applets = read(&fake_busybox(&sample)).unwrap();
        assert!(applets.iter().all(|a| a.dir.is_none()), "{applets:?}");
    }

    #[test]
    fn two_tables_that_fit_are_ambiguous() {
        let mut bytes = fake_busybox(SAMPLE);
        let table_len = SAMPLE.len().div_ceil(2);
        let start = bytes.windows(2).position(|w| w == [0x33, 0x11]).unwrap();
        let copy: Vec<u8> = bytes[start..start + table_len].to_vec();
        bytes.extend_from_slice(b"\xff");
        bytes.extend_from_slice(&copy);
        bytes.extend_from_slice(b"\xff");
        let applets = read(&bytes).unwrap();
        assert!(applets.iter().all(|a| a.dir.is_none()), "{applets:?}");
    }

    #[test]
    fn rejects_what_is_not_a_name_table() {
        assert!(read(b"no applets here").unwrap_err().contains("no busybox applet table"));
        // Unsorted, then a good one later in the file.
        let mut bytes = b"[\0[[\0zz\0aa\0bb\0cc\0dd\0ee\0ff\0gg\0\0".to_vec();
        bytes.extend(fake_busybox(SAMPLE));
        assert_eq!(read(&bytes).unwrap(), expected(SAMPLE));
        // Too short, or a name with a slash.
        assert!(read(b"[\0[[\0ls\0\0").is_err());
        assert!(read(b"[\0[[\0a\0b\0c\0d/e\0f\0g\0h\0i\0\0").is_err());
    }

    #[test]
    fn text_round_trip() {
        let mut applets = expected(SAMPLE);
        applets[3].dir = None;
        let text = to_text(&applets);
        assert!(text.starts_with("/usr/bin [\n/usr/bin [[\n/bin ash\n? cat\n"), "{text}");
        assert!(text.contains("\n/ linuxrc\n"), "{text}");
        assert_eq!(from_text(&text).unwrap(), applets);
        assert!(from_text("/usr/bin env\n/opt x\n").unwrap_err().contains("line 2: `/opt x`"));
        assert!(from_text("/bin ../x\n").unwrap_err().contains("line 1"));
        assert!(from_text("/bin\n").unwrap_err().contains("line 1"));
    }

    /// The store's busybox for this machine's arch, when there is one, read without running it,
    /// against what it says when run (`busybox --list-full`).
    #[test]
    fn agrees_with_the_stored_busybox_run_natively() {
        let arch = crate::arch::Arch::host();
        let store = match crate::kernel::Store::open() {
            Ok(store) => store,
            Err(e) => return crate::__testing::missing(&format!("no kernel store: {e}")),
        };
        let Ok(Some(userland)) = store.userland(arch) else {
            return crate::__testing::missing(&format!(
                "no userland for {arch} in {} (cargo xtask userland fetch)",
                store.root().display()
            ));
        };
        let bytes = std::fs::read(&userland.busybox).unwrap();
        let applets = read(&bytes).unwrap();
        let out =
            std::process::Command::new(&userland.busybox).arg("--list-full").output().unwrap();
        assert!(out.status.success());
        let listed: Vec<String> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| format!("/{l}")).collect();
        let ours: Vec<String> = applets
            .iter()
            .map(|a| match a.dir {
                Some(InstallDir::Root) => format!("/{}", a.name),
                Some(dir) => format!("{}/{}", dir.path(), a.name),
                None => panic!("no location for {}", a.name),
            })
            .collect();
        assert_eq!(ours, listed);
    }
}
