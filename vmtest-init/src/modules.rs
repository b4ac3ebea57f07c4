//! Loading kernel modules with `finit_module`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use crate::protocol::Module;

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the file itself
/// (needs `CONFIG_MODULE_DECOMPRESS`).
const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

/// How many kernel log lines a load failure carries.
const DMESG_LINES: usize = 5;

/// Result of loading the plan's modules.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// For each test id, why the modules it wants are unavailable.
    pub(crate) failures: BTreeMap<u32, Vec<String>>,
}

/// Loads `modules` in order. A failed module the harness itself needs (empty `wanted_by`) is a
/// fatal error; any other failure is recorded against the tests that want the module.
pub(crate) fn load_all(modules: &[Module]) -> Result<Loaded, String> {
    let mut loaded = Loaded::default();
    for module in modules {
        if let Err(message) = load(module) {
            if module.wanted_by.is_empty() {
                return Err(message);
            }
            for id in &module.wanted_by {
                loaded.failures.entry(*id).or_default().push(message.clone());
            }
        }
    }
    Ok(loaded)
}

/// Loads one module; "already loaded" counts as success.
fn load(module: &Module) -> Result<(), String> {
    let fail = |detail: String| format!("failed to load module {}: {detail}", module.name);
    let file = File::open(&module.path)
        .map_err(|e| fail(format!("failed to open {}: {e}", module.path)))?;
    let log = KernelLog::from_now();
    match rustix::system::finit_module(&file, c"", finit_flags(&module.path)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => {
            let mut detail = io::Error::from(e).to_string();
            let lines = log.relevant_lines(&module.name);
            if !lines.is_empty() {
                detail.push_str("; dmesg: ");
                detail.push_str(&lines.join(" | "));
            }
            Err(fail(detail))
        }
    }
}

/// `finit_module` flags for a module file, by its extension.
fn finit_flags(path: &str) -> libc::c_int {
    if path.ends_with(".ko.xz") || path.ends_with(".ko.zst") || path.ends_with(".ko.gz") {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    }
}

/// The kernel log from a point in time on.
pub(crate) struct KernelLog(io::Result<File>);

impl KernelLog {
    /// Starts reading after the newest record.
    pub(crate) fn from_now() -> Self {
        let open = || -> io::Result<File> {
            let mut kmsg = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/dev/kmsg")?;
            kmsg.seek(SeekFrom::End(0))?;
            Ok(kmsg)
        };
        Self(open())
    }

    /// The last new lines that mention `module`, or the last new lines if none does.
    pub(crate) fn relevant_lines(self, module: &str) -> Vec<String> {
        match self.0.and_then(read_records) {
            Ok(records) => pick_relevant(&records, module),
            Err(e) => vec![format!("(cannot read /dev/kmsg: {e})")],
        }
    }
}

fn pick_relevant(records: &[String], module: &str) -> Vec<String> {
    let normalized = |s: &str| s.replace('-', "_");
    let needle = normalized(module);
    let mentions: Vec<&String> =
        records.iter().filter(|line| normalized(line).contains(&needle)).collect();
    let chosen: Vec<&String> =
        if mentions.is_empty() { records.iter().collect() } else { mentions };
    let start = chosen.len().saturating_sub(DMESG_LINES);
    chosen[start..].iter().map(|line| truncate(line, 300)).collect()
}

fn truncate(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// Reads the records available from `kmsg` on, message text only.
fn read_records(mut kmsg: File) -> io::Result<Vec<String>> {
    let mut records = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(text) = kmsg_text(&buf[..n]) {
                    if records.len() == 256 {
                        records.remove(0);
                    }
                    records.push(text);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EPIPE: the record we were about to read was overwritten; go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// The message of one `/dev/kmsg` record: `prio,seq,time,flags;message\n[ KEY=value\n]...`.
fn kmsg_text(record: &[u8]) -> Option<String> {
    let record = String::from_utf8_lossy(record);
    let (_, rest) = record.split_once(';')?;
    Some(rest.lines().next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_modules_ask_the_kernel_to_decompress() {
        assert_eq!(finit_flags("/lib/modules/x/dummy.ko.xz"), MODULE_INIT_COMPRESSED_FILE);
        assert_eq!(finit_flags("/lib/modules/x/dummy.ko.zst"), MODULE_INIT_COMPRESSED_FILE);
        assert_eq!(finit_flags("/lib/modules/x/dummy.ko"), 0);
    }

    #[test]
    fn parses_kmsg_records() {
        assert_eq!(
            kmsg_text(b"6,1234,5678,-;dummy: Unknown symbol foo (err -2)\n SUBSYSTEM=x\n"),
            Some("dummy: Unknown symbol foo (err -2)".to_owned())
        );
        assert_eq!(kmsg_text(b"garbage"), None);
    }

    #[test]
    fn prefers_lines_about_the_module() {
        let records: Vec<String> =
            ["a", "nf_tables: bad", "b", "nf-tables: worse", "c"].map(String::from).to_vec();
        assert_eq!(pick_relevant(&records, "nf_tables"), ["nf_tables: bad", "nf-tables: worse"]);
        let records: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(pick_relevant(&records, "dummy"), ["5", "6", "7", "8", "9"]);
    }

    #[test]
    fn harness_module_failure_is_fatal_and_test_module_failure_is_recorded() {
        let missing = |name: &str, wanted_by: Vec<u32>| Module {
            name: name.into(),
            path: "/nonexistent/vmtest/x.ko".into(),
            wanted_by,
        };
        let loaded = load_all(&[missing("a", vec![1, 2]), missing("b", vec![2])]).unwrap();
        assert_eq!(loaded.failures[&1].len(), 1);
        assert_eq!(loaded.failures[&2].len(), 2);
        assert!(loaded.failures[&2][1].starts_with("failed to load module b: failed to open"));
        let err = load_all(&[missing("virtio_console", vec![])]).unwrap_err();
        assert!(err.starts_with("failed to load module virtio_console"), "{err}");
    }
}
