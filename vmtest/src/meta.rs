//! Test metadata: each test's attributes as a record in the ELF section [`SECTION`], and the
//! one decoder of those records.
//!
//! `#[vm_test]` emits one record per test: a `[u8; N]` static in [`SECTION`], built at compile
//! time by [`encode`] from string fields. The bytes need no relocations, so they read the same
//! from the file as from memory: a host lists the tests of a binary it cannot execute (one
//! built for another architecture) from the file's section, a running binary its own from the
//! records its registry points at ([`crate::registry::TestDef::decode`]), and both through
//! [`decode`] into [`TestMeta`].
//!
//! A record is [`MAGIC`], then the payload length (u32 little-endian), then the payload: fields,
//! each a u32 little-endian length and that many UTF-8 bytes. Fields come in key/value pairs;
//! list-valued keys repeat. The linker may pad between records with zero bytes; [`decode`]
//! skips them. [`decode`] treats its input as untrusted: it is bounded and never panics.

use std::fmt;

/// The ELF section that holds the records.
pub const SECTION: &str = "vmtest_tests";

/// First bytes of every record (the last byte is the format version).
pub const MAGIC: [u8; 4] = *b"VMT\x01";

/// Largest number of records [`decode`] accepts.
const MAX_RECORDS: usize = 100_000;
/// Largest payload of one record.
const MAX_RECORD_LEN: usize = 1 << 20;

/// Bytes [`encode`] produces for `fields`.
pub const fn encoded_len(fields: &[&str]) -> usize {
    let mut len = MAGIC.len() + 4;
    let mut i = 0;
    while i < fields.len() {
        len += 4 + fields[i].len();
        i += 1;
    }
    len
}

/// One record holding `fields`; `N` must be [`encoded_len`]`(fields)` (a mismatch fails to
/// compile, as the evaluation of a static's initializer panics).
pub const fn encode<const N: usize>(fields: &[&str]) -> [u8; N] {
    assert!(N == encoded_len(fields), "record length mismatch");
    let mut out = [0u8; N];
    let mut at = 0;
    while at < MAGIC.len() {
        out[at] = MAGIC[at];
        at += 1;
    }
    at = put_u32(&mut out, at, N - MAGIC.len() - 4);
    let mut i = 0;
    while i < fields.len() {
        let bytes = fields[i].as_bytes();
        at = put_u32(&mut out, at, bytes.len());
        let mut j = 0;
        while j < bytes.len() {
            out[at] = bytes[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

const fn put_u32<const N: usize>(out: &mut [u8; N], at: usize, value: usize) -> usize {
    assert!(value <= u32::MAX as usize, "field too long");
    let bytes = (value as u32).to_le_bytes();
    let mut i = 0;
    while i < 4 {
        out[at + i] = bytes[i];
        i += 1;
    }
    at + 4
}

/// One test's attributes, as its record holds them: what it is called, how it ends well and
/// the VM it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestMeta {
    /// `module_path!()` where the function is defined.
    pub module_path: String,
    /// The function's name.
    pub name: String,
    /// Source file, for messages.
    pub file: String,
    /// Line of the function's name in `file`.
    pub line: u32,
    /// Column (1-based) of the function's name in `file`.
    pub column: u32,
    /// `#[should_panic]`, with or without an expected message.
    pub should_panic: bool,
    /// `#[should_panic(expected = "...")]`: what the panic message must contain (only with
    /// `should_panic`).
    pub expected_panic: Option<String>,
    /// `#[ignore]`: `Some(reason)` (the reason may be absent).
    pub ignore: Option<Option<String>>,
    /// The VM the test needs.
    pub vm: VmMeta,
}

/// The `#[vm_test(...)]` arguments, as the macro checked and normalised them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmMeta {
    /// `kernel = "..."` or `kernels = [...]`: names or paths; empty for the default kernel.
    pub kernels: Vec<String>,
    /// `arch = "..."` or `arch = [...]`: canonical names (`x86_64`, `aarch64`, `riscv64`);
    /// empty for every architecture.
    pub arch: Vec<String>,
    /// `memory = "512M"`, in MiB.
    pub memory_mib: Option<u64>,
    /// `cpus = 2`.
    pub cpus: Option<u32>,
    /// `timeout = "30s"`, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `cmdline = "..."`: extra kernel arguments.
    pub cmdline: Option<String>,
    /// `modules = [...]`: kernel modules to load before the test.
    pub modules: Vec<String>,
    /// `env = [...]`: host environment variables to forward.
    pub env: Vec<String>,
    /// `files = [...]`: host files to put into the guest at the same absolute path (already
    /// resolved against the crate's manifest dir).
    pub files: Vec<String>,
    /// `allow_kernel_warnings`: a kernel WARN does not fail the test.
    pub allow_kernel_warnings: bool,
}

impl TestMeta {
    /// The name libtest would give the test: the module path without the crate, then the name.
    pub fn test_name(&self) -> String {
        match self.module_path.split_once("::") {
            Some((_crate, rest)) => format!("{rest}::{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Why a section or a record did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset in the section where the problem is.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// What a [`SECTION`] holds: the tests, and the crate root record `vmtest::main!()` adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Section {
    /// Every test, in file order.
    pub tests: Vec<TestMeta>,
    /// The crate's root file as `file!()` names it (where `vmtest::main!()` is), if recorded.
    pub crate_root: Option<String>,
    /// The crate's directory when it was built (`CARGO_MANIFEST_DIR` at compile time), if
    /// recorded: `files = [...]` paths under it follow the crate when a run finds it elsewhere.
    pub manifest_dir: Option<String>,
}

/// The key of the record `vmtest::main!()` adds: its value is the crate root file.
pub const CRATE_ROOT_KEY: &str = "crate_root";
/// The optional second key of that record: the crate's directory at compile time.
pub const MANIFEST_DIR_KEY: &str = "manifest_dir";

/// One decoded record.
enum Record {
    Test(Box<TestMeta>),
    CrateRoot { root: String, manifest_dir: Option<String> },
}

/// Decodes every record of a [`SECTION`]'s contents, in file order.
pub(crate) fn decode(section: &[u8]) -> Result<Section, DecodeError> {
    let mut decoded = Section::default();
    let mut records = 0;
    let mut at = 0;
    loop {
        while section.get(at) == Some(&0) {
            at += 1;
        }
        if at >= section.len() {
            return Ok(decoded);
        }
        let fail = |offset: usize, reason: String| DecodeError { offset, reason };
        if section.get(at..at + MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(fail(at, "not a vmtest record (bad magic or version)".to_owned()));
        }
        if records >= MAX_RECORDS {
            return Err(fail(at, format!("more than {MAX_RECORDS} records")));
        }
        records += 1;
        let len = read_u32(section, at + MAGIC.len())
            .ok_or_else(|| fail(at, "truncated record header".to_owned()))?;
        if len > MAX_RECORD_LEN {
            return Err(fail(at, format!("record of {len} bytes is too large")));
        }
        let start = at + MAGIC.len() + 4;
        let payload = start
            .checked_add(len)
            .and_then(|end| section.get(start..end))
            .ok_or_else(|| fail(at, format!("record of {len} bytes runs past the section")))?;
        match record(payload).map_err(|(offset, reason)| fail(start + offset, reason))? {
            Record::Test(test) => decoded.tests.push(*test),
            Record::CrateRoot { root, manifest_dir } => {
                decoded.crate_root = Some(root);
                decoded.manifest_dir = manifest_dir;
            }
        }
        at = start + len;
    }
}

/// Decodes one test's record (as [`crate::registry::TestDef::meta`] holds it): exactly one
/// test, and nothing else.
pub(crate) fn decode_test(record: &[u8]) -> Result<TestMeta, DecodeError> {
    let Section { mut tests, crate_root, .. } = decode(record)?;
    match (tests.pop(), tests.is_empty(), crate_root) {
        (Some(test), true, None) => Ok(test),
        _ => Err(DecodeError { offset: 0, reason: "not the record of one test".to_owned() }),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

/// Decodes one record's payload; errors carry an offset into the payload.
fn record(payload: &[u8]) -> Result<Record, (usize, String)> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let len = read_u32(payload, at).ok_or((at, "truncated field length".to_owned()))?;
        let bytes = (at + 4)
            .checked_add(len)
            .and_then(|end| payload.get(at + 4..end))
            .ok_or((at, format!("field of {len} bytes runs past its record")))?;
        let text = std::str::from_utf8(bytes).map_err(|_| (at, "field is not UTF-8".to_owned()))?;
        fields.push((at, text));
        at += 4 + len;
    }
    if fields.len() % 2 != 0 {
        return Err((0, "odd number of fields (keys without values)".to_owned()));
    }
    match fields.as_slice() {
        [(_, CRATE_ROOT_KEY), (_, root)] => {
            return Ok(Record::CrateRoot { root: (*root).to_owned(), manifest_dir: None });
        }
        [(_, CRATE_ROOT_KEY), (_, root), (_, MANIFEST_DIR_KEY), (_, dir)] => {
            let manifest_dir = Some((*dir).to_owned()).filter(|dir| !dir.is_empty());
            return Ok(Record::CrateRoot { root: (*root).to_owned(), manifest_dir });
        }
        _ => {}
    }
    let mut test = TestMeta::default();
    for pair in fields.chunks_exact(2) {
        let ((offset, key), (_, value)) = (pair[0], pair[1]);
        let number = |what: &str| -> Result<u64, (usize, String)> {
            value.parse().map_err(|_| (offset, format!("{what} `{value}` is not a number")))
        };
        let vm = &mut test.vm;
        match key {
            "module_path" => test.module_path = value.to_owned(),
            "name" => test.name = value.to_owned(),
            "file" => test.file = value.to_owned(),
            "line" => {
                test.line = u32::try_from(number("line")?)
                    .map_err(|_| (offset, "line too large".to_owned()))?
            }
            "column" => {
                test.column = u32::try_from(number("column")?)
                    .map_err(|_| (offset, "column too large".to_owned()))?
            }
            "should_panic" => test.should_panic = true,
            "should_panic_expected" => test.expected_panic = Some(value.to_owned()),
            "ignore" => test.ignore = Some(None),
            "ignore_reason" => test.ignore = Some(Some(value.to_owned())),
            "kernel" => vm.kernels.push(value.to_owned()),
            "arch" => vm.arch.push(value.to_owned()),
            "memory_mib" => vm.memory_mib = Some(number("memory_mib")?),
            "cpus" => {
                vm.cpus = Some(
                    u32::try_from(number("cpus")?)
                        .map_err(|_| (offset, "cpus too large".to_owned()))?,
                )
            }
            "timeout_ms" => vm.timeout_ms = Some(number("timeout_ms")?),
            "cmdline" => vm.cmdline = Some(value.to_owned()),
            "module" => vm.modules.push(value.to_owned()),
            "env" => vm.env.push(value.to_owned()),
            "files" => vm.files.push(value.to_owned()),
            "allow_kernel_warnings" => vm.allow_kernel_warnings = value == "true",
            // Keys from a newer vmtest are skipped: they cannot change what the host must do
            // without a new MAGIC version.
            _ => {}
        }
    }
    if test.name.is_empty() || test.module_path.is_empty() {
        return Err((0, "record without a module_path or name".to_owned()));
    }
    Ok(Record::Test(Box::new(test)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &[
        "module_path",
        "suite::net",
        "name",
        "pings",
        "file",
        "tests/net.rs",
        "line",
        "12",
        "column",
        "4",
        "should_panic",
        "",
        "should_panic_expected",
        "boom",
        "ignore_reason",
        "slow",
        "kernel",
        "6.1",
        "kernel",
        "6.12",
        "arch",
        "aarch64",
        "memory_mib",
        "512",
        "cpus",
        "2",
        "timeout_ms",
        "30000",
        "cmdline",
        "a=1 b",
        "module",
        "dummy",
        "env",
        "RUST_LOG",
        "files",
        "/etc/hosts",
        "allow_kernel_warnings",
        "true",
        "from_the_future",
        "x",
    ];
    static RECORD: [u8; encoded_len(FIELDS)] = encode(FIELDS);
    const SMALL: &[&str] = &["module_path", "c", "name", "t"];
    static SMALL_RECORD: [u8; encoded_len(SMALL)] = encode(SMALL);

    #[test]
    fn round_trips_every_field() {
        let tests = decode(&RECORD).unwrap().tests;
        assert_eq!(
            tests,
            vec![TestMeta {
                module_path: "suite::net".into(),
                name: "pings".into(),
                file: "tests/net.rs".into(),
                line: 12,
                column: 4,
                should_panic: true,
                expected_panic: Some("boom".into()),
                ignore: Some(Some("slow".into())),
                vm: VmMeta {
                    kernels: vec!["6.1".into(), "6.12".into()],
                    arch: vec!["aarch64".into()],
                    memory_mib: Some(512),
                    cpus: Some(2),
                    timeout_ms: Some(30_000),
                    cmdline: Some("a=1 b".into()),
                    modules: vec!["dummy".into()],
                    env: vec!["RUST_LOG".into()],
                    files: vec!["/etc/hosts".into()],
                    allow_kernel_warnings: true,
                },
            }]
        );
        assert_eq!(tests[0].test_name(), "net::pings");
    }

    #[test]
    fn skips_padding_between_records() {
        let mut section = vec![0u8; 3];
        section.extend_from_slice(&RECORD);
        section.extend_from_slice(&[0; 13]);
        section.extend_from_slice(&SMALL_RECORD);
        section.extend_from_slice(&[0; 5]);
        let tests = decode(&section).unwrap().tests;
        assert_eq!(tests.len(), 2);
        assert_eq!(tests[1].test_name(), "t");
        assert_eq!(decode(&[]).unwrap(), Section::default());
    }

    #[test]
    fn finds_the_crate_root_between_tests() {
        const ROOT: &[&str] = &[CRATE_ROOT_KEY, "tests/vm.rs"];
        static ROOT_RECORD: [u8; encoded_len(ROOT)] = encode(ROOT);
        let mut section = SMALL_RECORD.to_vec();
        section.extend_from_slice(&ROOT_RECORD);
        section.extend_from_slice(&SMALL_RECORD);
        let decoded = decode(&section).unwrap();
        assert_eq!(decoded.tests.len(), 2);
        assert_eq!(decoded.crate_root.as_deref(), Some("tests/vm.rs"));
        assert_eq!(decoded.manifest_dir, None);
    }

    #[test]
    fn the_crate_root_record_may_carry_the_manifest_dir() {
        const ROOT: &[&str] = &[CRATE_ROOT_KEY, "tests/vm.rs", MANIFEST_DIR_KEY, "/src/c"];
        static ROOT_RECORD: [u8; encoded_len(ROOT)] = encode(ROOT);
        let decoded = decode(&ROOT_RECORD).unwrap();
        assert_eq!(decoded.crate_root.as_deref(), Some("tests/vm.rs"));
        assert_eq!(decoded.manifest_dir.as_deref(), Some("/src/c"));
        // Built without cargo: the macro records an empty directory.
        const BARE: &[&str] = &[CRATE_ROOT_KEY, "vm.rs", MANIFEST_DIR_KEY, ""];
        static BARE_RECORD: [u8; encoded_len(BARE)] = encode(BARE);
        assert_eq!(decode(&BARE_RECORD).unwrap().manifest_dir, None);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(decode(b"garbage").is_err());
        assert!(decode(b"VMT\x02\0\0\0\0").is_err(), "another format version");
        // Every truncation and every single-byte corruption either decodes or errors.
        for end in 0..RECORD.len() {
            let _ = decode(&RECORD[..end]);
            assert!(end == 0 || decode(&RECORD[..end]).is_err(), "truncated at {end}");
        }
        for at in 0..RECORD.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bytes = RECORD.to_vec();
                bytes[at] = byte;
                let _ = decode(&bytes);
            }
        }
        // A huge declared length is refused, not allocated.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().reason.contains("too large"));
        let mut inner = MAGIC.to_vec();
        inner.extend_from_slice(&8u32.to_le_bytes());
        inner.extend_from_slice(&u32::MAX.to_le_bytes());
        inner.extend_from_slice(b"abcd");
        assert!(decode(&inner).unwrap_err().reason.contains("runs past"));
    }

    #[test]
    fn one_test_record_decodes_alone() {
        assert_eq!(decode_test(&SMALL_RECORD).unwrap().test_name(), "t");
        const ROOT: &[&str] = &[CRATE_ROOT_KEY, "tests/vm.rs"];
        static ROOT_RECORD: [u8; encoded_len(ROOT)] = encode(ROOT);
        let mut two = SMALL_RECORD.to_vec();
        two.extend_from_slice(&SMALL_RECORD);
        for bytes in [&ROOT_RECORD[..], &two, &[]] {
            assert!(decode_test(bytes).unwrap_err().reason.contains("one test"));
        }
        assert!(decode_test(b"garbage").is_err());
        // `should_panic` alone expects no message.
        const BARE: &[&str] = &["module_path", "c", "name", "t", "should_panic", ""];
        static BARE_RECORD: [u8; encoded_len(BARE)] = encode(BARE);
        let bare = decode_test(&BARE_RECORD).unwrap();
        assert_eq!((bare.should_panic, bare.expected_panic), (true, None));
    }

    #[test]
    fn requires_a_name() {
        const NO_NAME: &[&str] = &["module_path", "c"];
        static R: [u8; encoded_len(NO_NAME)] = encode(NO_NAME);
        assert!(decode(&R).unwrap_err().reason.contains("without"));
        const ODD: &[&str] = &["module_path"];
        static O: [u8; encoded_len(ODD)] = encode(ODD);
        assert!(decode(&O).unwrap_err().reason.contains("odd"));
    }
}
