//! Snapshots of a booted guest: what they are keyed by, where they are kept, how a running VM
//! is saved into one and how a new QEMU is started from one.
//!
//! - [`SnapshotKey`] is a SHA-256 over everything that shapes the guest: the kernel image's and
//!   the initramfs's bytes, the QEMU binary (path and `--version`), QEMU's arguments with the
//!   run's own paths left out (machine, CPU, accelerator, memory, CPUs, kernel command line,
//!   devices), vmtest's version and protocol version. Anything else changes the key: a cold
//!   boot, never a wrong guest.
//! - [`SnapshotCache`] is a directory (`VMTEST_SNAPSHOTS`, else `snapshots/` under the kernel
//!   store) of `<key>.vmsnap` files: a header (magic, key, stream length) then QEMU's migration
//!   stream. Files are written under a temporary name, flushed and renamed into place; their
//!   mtime is their last use, and the least recently used go when the directory outgrows its
//!   bound. A file whose header is wrong (truncated, foreign, of another key) is removed and
//!   reported once, so the caller boots cold.
//! - [`save`] stops a running VM and migrates it into a cache file over QMP (`getfd`, then
//!   `migrate fd:`, no shell: the sandbox forbids one); [`restore_command`] starts QEMU with
//!   the same arguments plus `-incoming fd:3`, and [`resume`] waits for the state to load
//!   and runs the guest.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::vm::accel::Accel;
use crate::vm::memo::{self, Memo};
use crate::vm::qemu::{Incoming, QemuCommand};
use crate::vm::qmp::{MigrationStatus, Qmp, QmpError};

/// Environment variable: the directory snapshots are kept in.
pub(crate) const SNAPSHOTS_ENV: &str = "VMTEST_SNAPSHOTS";
/// The cache's default bound, in bytes: a 256 MiB guest saves to about 60 MB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// First bytes of a snapshot file.
const MAGIC: [u8; 8] = *b"VMTSNAP\x01";
/// Magic, key, stream length.
const HEADER_LEN: u64 = 8 + 32 + 8;
/// File name suffix of a snapshot.
const SUFFIX: &str = "vmsnap";
/// The descriptor a restored QEMU reads its state from.
const INCOMING_FD: i32 = 3;
/// How often [`resume`] asks whether the state has loaded.
const LOAD_POLL: Duration = Duration::from_millis(5);

/// What a snapshot is keyed by: SHA-256 over everything that shapes the guest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SnapshotKey([u8; 32]);

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl SnapshotKey {
    /// The key of a VM started as `command` by `qemu_binary` (whose `--version` printed
    /// `qemu_version`): hashes the files `command` boots.
    /// The kernel's digest comes from `memo` when it has seen that file.
    pub fn new(
        command: &QemuCommand,
        qemu_binary: &Path,
        qemu_version: &str,
        memo: &Memo,
    ) -> Result<SnapshotKey, crate::Error> {
        // Under KVM the guest runs on the host's CPU (`-cpu host`): its model and features
        // are part of the saved state, and of what another machine could not restore.
        let host_cpu = if command.accel == Accel::Kvm {
            host_cpu(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
        } else {
            String::new()
        };
        SnapshotKey::with_host_cpu(command, qemu_binary, qemu_version, &host_cpu, memo)
    }

    fn with_host_cpu(
        command: &QemuCommand,
        qemu_binary: &Path,
        qemu_version: &str,
        host_cpu: &str,
        memo: &Memo,
    ) -> Result<SnapshotKey, crate::Error> {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(b"vmtest snapshot key 1");
        field(env!("CARGO_PKG_VERSION").as_bytes());
        field(&vmtest_init::protocol::PROTOCOL_VERSION.to_le_bytes());
        field(qemu_binary.as_os_str().as_encoded_bytes());
        field(qemu_version.as_bytes());
        for arg in shape_args(command) {
            field(arg.as_encoded_bytes());
        }
        field(host_cpu.as_bytes());
        // The kernel is the same file for every VM of a run and of the next runs: hashed
        // once, then remembered. The initramfs is written anew for each VM.
        field(&hash_kernel(&command.kernel, memo)?);
        field(&hash_file(&command.initrd)?);
        Ok(SnapshotKey(hasher.finalize().into()))
    }

    fn hex(&self) -> String {
        memo::hex(&self.0)
    }
}

/// The host CPU as `/proc/cpuinfo` describes its first processor: the lines that name the
/// model and its features (x86: vendor, family, model, stepping, microcode, flags; arm64:
/// implementer, architecture, variant, part, revision, features).
fn host_cpu(cpuinfo: &str) -> String {
    const KEYS: [&str; 12] = [
        "vendor_id",
        "cpu family",
        "model",
        "model name",
        "stepping",
        "microcode",
        "flags",
        "CPU implementer",
        "CPU architecture",
        "CPU variant",
        "CPU part",
        "Features",
    ];
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    let mut identity = String::new();
    for line in first.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        if KEYS.contains(&key.trim()) {
            identity.push_str(&format!("{}={}\n", key.trim(), value.trim()));
        }
    }
    identity
}

/// QEMU's arguments for `command` without what differs between runs of the same guest: the
/// paths of the kernel and initramfs (their bytes are hashed instead), of the host's sockets,
/// and `-incoming`.
fn shape_args(command: &QemuCommand) -> Vec<OsString> {
    let mut shape = command.clone();
    shape.kernel = "<kernel>".into();
    shape.initrd = "<initrd>".into();
    for port in &mut shape.ports {
        port.socket = "<socket>".into();
    }
    if shape.snapshot.qmp.is_some() {
        shape.snapshot.qmp = Some("<qmp>".into());
    }
    shape.snapshot.incoming = None;
    shape.args()
}

/// SHA-256 of the kernel image at `path`: once per process, and from `memo` while the file
/// is the one it saw.
fn hash_kernel(path: &Path, memo: &Memo) -> Result<[u8; 32], crate::Error> {
    use std::os::unix::fs::MetadataExt;
    type Identity = (PathBuf, u64, u64, u64, i64, i64);
    static HASHES: std::sync::Mutex<Vec<(Identity, [u8; 32])>> = std::sync::Mutex::new(Vec::new());
    let meta = std::fs::metadata(path)
        .map_err(|e| crate::Error::io(format!("failed to hash {}", path.display()), e))?;
    let identity =
        (path.to_owned(), meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
    let known = HASHES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, digest)) = known.iter().find(|(id, _)| *id == identity) {
        return Ok(*digest);
    }
    drop(known);
    let hex = memo.get(
        "sha256",
        path,
        |hex| parse_digest(hex).is_some(),
        || hash_file(path).map(|digest| memo::hex(&digest)),
    )?;
    let digest = parse_digest(&hex).unwrap_or_default();
    HASHES.lock().unwrap_or_else(|e| e.into_inner()).push((identity, digest));
    Ok(digest)
}

/// 64 hex digits as 32 bytes.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        digest[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// SHA-256 of a file's bytes.
fn hash_file(path: &Path) -> Result<[u8; 32], crate::Error> {
    let failed = |e| crate::Error::io(format!("failed to hash {}", path.display()), e);
    let mut file = File::open(path).map_err(failed)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// `qemu --version`, the first line (`QEMU emulator version 7.2.22 (Debian ...)`).
pub(crate) fn qemu_version(qemu_binary: &Path) -> Result<String, crate::Error> {
    let output = Command::new(qemu_binary).arg("--version").output().map_err(|e| {
        crate::Error::io(format!("failed to run `{} --version`", qemu_binary.display()), e)
    })?;
    if !output.status.success() {
        return Err(crate::Error::Config(format!(
            "failed to run `{} --version` ({})",
            qemu_binary.display(),
            output.status
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().to_owned())
}

/// The directory of snapshot files, bounded in size.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// What [`SnapshotCache::lookup`] found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A snapshot of this key, checked and marked as used.
    Hit(SnapshotFile),
    /// None.
    Miss,
    /// One that cannot be used (the reason names the file); it was removed. Warn once and
    /// boot cold.
    Unusable(String),
}

/// An open snapshot file whose header matched its key.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    file: File,
    path: PathBuf,
    stream_len: u64,
}

impl SnapshotFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file (header and QEMU's stream).
    pub fn len(&self) -> u64 {
        HEADER_LEN + self.stream_len
    }
}

impl SnapshotCache {
    /// [`SNAPSHOTS_ENV`], else `snapshots/` under the kernel store at `store_root`.
    pub fn open(store_root: &Path) -> SnapshotCache {
        let dir = std::env::var_os(SNAPSHOTS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| store_root.join("snapshots"));
        SnapshotCache::at(dir, DEFAULT_MAX_BYTES)
    }

    /// A cache in `dir` of at most `max_bytes`.
    pub fn at(dir: impl Into<PathBuf>, max_bytes: u64) -> SnapshotCache {
        SnapshotCache { dir: dir.into(), max_bytes }
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What warm starts learn about files (the kernel's digest, QEMU's version), remembered in
    /// `memo/` in the cache's directory.
    pub fn memo(&self) -> Memo {
        Memo::in_dir(self.dir.join("memo"))
    }

    fn path(&self, key: &SnapshotKey) -> PathBuf {
        self.dir.join(format!("{}.{SUFFIX}", key.hex()))
    }

    /// The snapshot of `key`, if there is a usable one; marks it used.
    pub fn lookup(&self, key: &SnapshotKey) -> Lookup {
        let path = self.path(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Unusable(format!("failed to open {}: {e}", path.display())),
        };
        match check_header(&mut file, key) {
            Ok(stream_len) => {
                // Its last use, for the eviction order; a failure only makes it look older.
                let _ = file.set_modified(SystemTime::now());
                Lookup::Hit(SnapshotFile { file, path, stream_len })
            }
            Err(problem) => {
                let _ = std::fs::remove_file(&path);
                Lookup::Unusable(format!(
                    "the snapshot {} {problem}; it was removed, and the VM boots cold",
                    path.display()
                ))
            }
        }
    }

    /// A new snapshot file for `key` under a temporary name, its header written (with the
    /// stream length still 0), positioned where QEMU's stream goes.
    fn begin(&self, key: &SnapshotKey) -> Result<Pending, crate::Error> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| crate::Error::io(format!("failed to create {}", self.dir.display()), e))?;
        let path = self.path(key);
        // Unique per save: two VMs of one configuration may save at once (the later rename
        // wins; both files are whole).
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.{}-{serial}.partial", key.hex(), std::process::id()));
        let create = |p: &Path| File::options().read(true).write(true).create_new(true).open(p);
        let (mut file, partial) = crate::partial::create_partial_with(&tmp, create)
            .map_err(|e| crate::Error::io(format!("failed to create {}", tmp.display()), e))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&key.0);
        header.extend_from_slice(&0u64.to_le_bytes());
        file.write_all(&header)
            .map_err(|e| crate::Error::io(format!("failed to write {}", tmp.display()), e))?;
        Ok(Pending { file, partial, tmp, path })
    }

    /// Removes the least recently used snapshots until the cache is within its bound, never
    /// `keep`; returns what it removed.
    pub fn evict(&self, keep: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == SUFFIX))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        let mut removed = Vec::new();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            // Another run may be restoring from it: its open descriptor keeps the data.
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed.push(path);
            }
        }
        removed
    }
}

/// Checks a snapshot file's header against `key` and its length; returns the stream length.
fn check_header(file: &mut File, key: &SnapshotKey) -> Result<u64, String> {
    let mut header = [0u8; HEADER_LEN as usize];
    let file_len = file.metadata().map_err(|e| format!("cannot be read: {e}"))?.len();
    if file.read_exact(&mut header).is_err() {
        return Err(format!("is truncated ({file_len} bytes, shorter than its header)"));
    }
    if header[..8] != MAGIC {
        return Err("is not a vmtest snapshot (or one of another format version)".to_owned());
    }
    if header[8..40] != key.0 {
        return Err("belongs to another VM configuration (its key differs)".to_owned());
    }
    let stream_len = u64::from_le_bytes(header[40..48].try_into().expect("8 bytes"));
    if stream_len == 0 || HEADER_LEN + stream_len != file_len {
        return Err(format!(
            "is truncated or damaged ({file_len} bytes, its header says {})",
            HEADER_LEN + stream_len
        ));
    }
    Ok(stream_len)
}

/// A snapshot file being written.
struct Pending {
    file: File,
    partial: crate::partial::PartialFile,
    tmp: PathBuf,
    path: PathBuf,
}

impl Pending {
    /// Records the stream's length, flushes, renames into place and flushes the directory.
    fn finish(self) -> Result<u64, crate::Error> {
        let failed = |e| crate::Error::io(format!("failed to write {}", self.tmp.display()), e);
        let len = self.file.metadata().map_err(failed)?.len();
        let stream_len = len.checked_sub(HEADER_LEN).filter(|&n| n > 0).ok_or_else(|| {
            crate::Error::Config(format!("QEMU wrote no state into {}", self.tmp.display()))
        })?;
        self.file.write_all_at(&stream_len.to_le_bytes(), HEADER_LEN - 8).map_err(failed)?;
        self.file.sync_all().map_err(failed)?;
        self.partial.persist(&self.path).map_err(|e| {
            crate::Error::io(format!("failed to rename a snapshot to {}", self.path.display()), e)
        })?;
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(len)
    }
}

/// A saved snapshot.
#[derive(Debug)]
pub(crate) struct Saved {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Snapshots the cache removed to stay within its bound.
    pub evicted: Vec<PathBuf>,
}

/// Stops the running VM behind `qmp` and saves its state into `cache` under `key`. The VM
/// stays stopped; its QEMU is the caller's to end.
pub(crate) fn save(
    qmp: &mut Qmp,
    cache: &SnapshotCache,
    key: &SnapshotKey,
    deadline: Instant,
) -> Result<Saved, crate::Error> {
    let qmp_error = |e: QmpError| crate::Error::Config(format!("failed to save the VM: {e}"));
    qmp.stop(deadline).map_err(qmp_error)?;
    let pending = cache.begin(key)?;
    qmp.prepare_migration(deadline).map_err(qmp_error)?;
    qmp.getfd("vmtest-snapshot", pending.file.as_fd(), deadline).map_err(qmp_error)?;
    qmp.migrate_to_fd("vmtest-snapshot", deadline).map_err(qmp_error)?;
    let end = qmp
        .wait_event(
            "the migration to end",
            |e| matches!(e.migration_status(), Some("completed" | "failed" | "cancelled")),
            deadline,
        )
        .map_err(qmp_error)?;
    if end.migration_status() != Some("completed") {
        let reason = match qmp.migration(deadline) {
            Ok(MigrationStatus::Failed(reason)) => reason,
            _ => "QEMU gave no reason".to_owned(),
        };
        return Err(crate::Error::Config(format!("failed to save the VM: {reason}")));
    }
    let path = pending.path.clone();
    let bytes = pending.finish()?;
    let evicted = cache.evict(&path);
    Ok(Saved { path, bytes, evicted })
}

/// `command` (the saved VM's, but for its sockets' paths) restoring `snapshot`: QEMU
/// inherits the file as descriptor 3, positioned at the stream, and loads it at start-up.
pub(crate) fn restore_command(
    qemu_binary: &Path,
    command: &QemuCommand,
    snapshot: &SnapshotFile,
) -> Result<Command, crate::Error> {
    let mut command = command.clone();
    command.snapshot.incoming = Some(Incoming::Fd(INCOMING_FD));
    let mut process = command.command(qemu_binary);
    pass_incoming(&mut process, snapshot)?;
    Ok(process)
}

/// Makes `process` inherit `snapshot` as descriptor [`INCOMING_FD`], positioned at the stream
/// (its own open file: restores from one snapshot do not share an offset).
fn pass_incoming(process: &mut Command, snapshot: &SnapshotFile) -> Result<(), crate::Error> {
    let failed = |e| crate::Error::io(format!("failed to reopen {}", snapshot.path.display()), e);
    let mut file =
        File::open(format!("/proc/self/fd/{}", snapshot.file.as_raw_fd())).map_err(failed)?;
    file.seek(SeekFrom::Start(HEADER_LEN)).map_err(failed)?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which are
    // async-signal-safe; `file` (moved in) keeps `fd` open until the child has forked.
    unsafe {
        process.pre_exec(move || {
            let _keep = &file;
            if fd == INCOMING_FD {
                // Already in place: clear its close-on-exec flag.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, INCOMING_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Waits for a restored QEMU to load its state, then runs the guest.
pub(crate) fn resume(qmp: &mut Qmp, deadline: Instant) -> Result<(), crate::Error> {
    let qmp_error = |e: QmpError| crate::Error::Config(format!("failed to restore the VM: {e}"));
    loop {
        match qmp.run_state(deadline).map_err(qmp_error)?.as_str() {
            "inmigrate" | "prelaunch" => {}
            "paused" | "postmigrate" => break,
            "running" => return Ok(()),
            other => {
                return Err(crate::Error::Config(format!(
                    "failed to restore the VM: QEMU is {other} after loading its state"
                )))
            }
        }
        if Instant::now() >= deadline {
            return Err(crate::Error::Config(
                "failed to restore the VM: QEMU did not load its state in time".to_owned(),
            ));
        }
        std::thread::sleep(LOAD_POLL);
    }
    qmp.cont(deadline).map_err(qmp_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::vm::accel::Accel;
    use crate::vm::qemu::{HugePages, Sandbox, SnapshotArgs, SocketPort};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("vmlinuz"), b"kernel").unwrap();
            std::fs::write(dir.path().join("initrd"), b"initramfs").unwrap();
            Files { dir }
        }

        fn command(&self, run: &str) -> QemuCommand {
            let dir = self.dir.path();
            QemuCommand {
                arch: Arch::X86_64,
                accel: Accel::Tcg,
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd"),
                memory_mib: 256,
                cpus: 1,
                cmdline: vec![],
                ports: vec![SocketPort {
                    name: "vmtest.control".into(),
                    socket: format!("/tmp/{run}/control.sock").into(),
                }],
                sandbox: Sandbox::Off,
                huge_pages: HugePages::Disabled,
                snapshot: SnapshotArgs {
                    qmp: Some(format!("/tmp/{run}/qmp.sock").into()),
                    incoming: None,
                    vmgenid: false,
                },
                debug: Default::default(),
            }
        }
    }

    fn key(command: &QemuCommand) -> SnapshotKey {
        SnapshotKey::new(
            command,
            Path::new("/usr/bin/qemu-system-x86_64"),
            "QEMU 7.2.22",
            &Memo::none(),
        )
        .unwrap()
    }

    #[test]
    fn the_key_ignores_the_runs_paths_and_covers_everything_that_shapes_the_guest() {
        let files = Files::new();
        let base = key(&files.command("a"));
        // Another run: other sockets, and a restore's -incoming.
        let mut other_run = files.command("b");
        other_run.snapshot.incoming = Some(Incoming::Fd(3));
        assert_eq!(key(&other_run), base);
        // The same bytes under other paths.
        let copy = tempfile::tempdir().unwrap();
        let mut moved = files.command("a");
        for (from, to) in [(&mut moved.kernel, "k2"), (&mut moved.initrd, "i2")] {
            let new = copy.path().join(to);
            std::fs::copy(&*from, &new).unwrap();
            *from = new;
        }
        assert_eq!(key(&moved), base);

        type Change = Box<dyn Fn(&mut QemuCommand)>;
        let changed: Vec<(&str, Change)> = vec![
            ("memory", Box::new(|c| c.memory_mib = 512)),
            ("cpus", Box::new(|c| c.cpus = 2)),
            ("cmdline", Box::new(|c| c.cmdline = vec!["quiet".into()])),
            ("accel", Box::new(|c| c.accel = Accel::Kvm)),
            ("arch", Box::new(|c| c.arch = Arch::Aarch64)),
            ("vmgenid", Box::new(|c| c.snapshot.vmgenid = true)),
            ("port name", Box::new(|c| c.ports[0].name = "other".into())),
        ];
        for (what, change) in changed {
            let mut c = files.command("a");
            change(&mut c);
            assert_ne!(key(&c), base, "{what}");
        }
        let c = files.command("a");
        assert_ne!(
            SnapshotKey::new(&c, Path::new("/opt/qemu"), "QEMU 7.2.22", &Memo::none()).unwrap(),
            base
        );
        assert_ne!(
            SnapshotKey::new(
                &c,
                Path::new("/usr/bin/qemu-system-x86_64"),
                "QEMU 8.0",
                &Memo::none()
            )
            .unwrap(),
            base
        );
        std::fs::write(&c.kernel, b"kernel, rebuilt").unwrap();
        assert_ne!(key(&c), base, "kernel bytes");
        std::fs::write(&c.kernel, b"kernel").unwrap();
        std::fs::write(&c.initrd, b"initramfs 2").unwrap();
        assert_ne!(key(&c), base, "initramfs bytes");
        std::fs::remove_file(&c.initrd).unwrap();
        let err =
            SnapshotKey::new(&c, Path::new("/q"), "v", &Memo::none()).unwrap_err().to_string();
        assert!(err.starts_with("failed to hash ") && err.contains("initrd"), "{err}");
    }

    #[test]
    fn the_kernels_digest_is_remembered_and_the_key_is_the_same_through_the_memo() {
        let files = Files::new();
        let c = files.command("a");
        let cache = SnapshotCache::at(files.dir.path().join("snaps"), 1 << 30);
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        let through = SnapshotKey::new(&c, qemu, "QEMU 7.2.22", &cache.memo()).unwrap();
        assert_eq!(through, key(&c));
        let entries: Vec<_> =
            std::fs::read_dir(cache.dir().join("memo")).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1);
        let remembered = std::fs::read_to_string(entries[0].path()).unwrap();
        assert_eq!(remembered, memo::hex(&hash_file(&c.kernel).unwrap()));
        assert_eq!(parse_digest(&remembered), Some(hash_file(&c.kernel).unwrap()));
        assert_eq!(parse_digest(&remembered[1..]), None);
        assert_eq!(parse_digest(&format!("+{}", &remembered[1..])), None);
    }

    #[test]
    fn under_kvm_the_key_covers_the_host_cpu_and_under_tcg_it_does_not() {
        let files = Files::new();
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        let cpu = |flags: &str| {
            host_cpu(&format!(
                "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n\
                 flags\t\t: {flags}\nbogomips\t: 4000.{}\n\nprocessor\t: 1\nflags\t: other\n",
                flags.len()
            ))
        };
        assert_eq!(cpu("fpu vmx"), "vendor_id=GenuineIntel\nmodel name=Xeon\nflags=fpu vmx\n");
        let arm =
            host_cpu("processor\t: 0\nBogoMIPS\t: 50\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n");
        assert_eq!(arm, "Features=fp asimd\nCPU part=0xd0c\n");
        let mut kvm = files.command("a");
        kvm.accel = Accel::Kvm;
        let key = |c: &QemuCommand, cpu: &str| {
            SnapshotKey::with_host_cpu(c, qemu, "QEMU 7.2.22", cpu, &Memo::none()).unwrap()
        };
        assert_ne!(key(&kvm, &cpu("fpu vmx")), key(&kvm, &cpu("fpu vmx avx512f")));
        assert_eq!(key(&kvm, &cpu("fpu vmx")), key(&kvm, &cpu("fpu vmx")));
        // Under TCG the host CPU is not asked: the key is the one `new` makes.
        let tcg = files.command("a");
        assert_eq!(
            key(&tcg, ""),
            SnapshotKey::new(&tcg, qemu, "QEMU 7.2.22", &Memo::none()).unwrap()
        );
    }

    /// Writes a snapshot file as `save` would, with `stream` as QEMU's part.
    fn write_snapshot(cache: &SnapshotCache, key: &SnapshotKey, stream: &[u8]) -> PathBuf {
        let mut pending = cache.begin(key).unwrap();
        pending.file.write_all(stream).unwrap();
        let path = pending.path.clone();
        assert_eq!(pending.finish().unwrap(), HEADER_LEN + stream.len() as u64);
        path
    }

    #[test]
    fn a_saved_snapshot_is_found_and_a_damaged_or_foreign_one_is_removed_with_its_reason() {
        let files = Files::new();
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::at(dir.path().join("snaps"), 1 << 30);
        let key = key(&files.command("a"));
        assert!(matches!(cache.lookup(&key), Lookup::Miss));
        let path = write_snapshot(&cache, &key, b"QEVM state");
        // Only the file itself is left: no temporary name.
        let names: Vec<_> =
            std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(names, std::slice::from_ref(&path));
        let Lookup::Hit(hit) = cache.lookup(&key) else { panic!("no hit") };
        assert_eq!(hit.len(), HEADER_LEN + 10);
        assert_eq!(hit.path(), path);

        let bytes = std::fs::read(&path).unwrap();
        for (what, damaged, reason) in [
            ("truncated", bytes[..bytes.len() - 1].to_vec(), "is truncated or damaged"),
            ("header only", bytes[..20].to_vec(), "shorter than its header"),
            (
                "foreign",
                b"something else entirely, long enough for a header".to_vec(),
                "is not a vmtest snapshot",
            ),
            (
                "another key",
                [&bytes[..8], &[0u8; 32][..], &bytes[40..]].concat(),
                "belongs to another VM configuration",
            ),
        ] {
            std::fs::write(&path, &damaged).unwrap();
            let Lookup::Unusable(message) = cache.lookup(&key) else { panic!("{what}: used") };
            assert!(message.contains(reason), "{what}: {message}");
            assert!(message.contains(&*path.to_string_lossy()), "{message}");
            assert!(!path.exists(), "{what}: not removed");
            // Once: the next lookup is a plain miss.
            assert!(matches!(cache.lookup(&key), Lookup::Miss), "{what}");
        }
    }

    #[test]
    fn eviction_removes_the_least_recently_used_down_to_the_bound() {
        let files = Files::new();
        let dir = tempfile::tempdir().unwrap();
        // Room for two 100-byte streams (148 bytes each with the header), not three.
        let cache = SnapshotCache::at(dir.path(), 300);
        let keys: Vec<SnapshotKey> = (1..=4)
            .map(|cpus| {
                let mut c = files.command("a");
                c.cpus = cpus;
                key(&c)
            })
            .collect();
        let mut paths = Vec::new();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        for (index, key) in keys[..3].iter().enumerate() {
            let path = write_snapshot(&cache, key, &[7u8; 100]);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t0 + Duration::from_secs(index as u64))
                .unwrap();
            paths.push(path);
        }
        // The oldest is used again: now the second is the least recently used.
        assert!(matches!(cache.lookup(&keys[0]), Lookup::Hit(_)));
        assert_eq!(cache.evict(&paths[2]), [paths[1].clone()]);
        assert!(paths[0].exists() && paths[2].exists());
        // Never the one just saved, even when it alone is over the bound.
        let small = SnapshotCache::at(dir.path(), 10);
        let mut removed = small.evict(&paths[2]);
        removed.sort();
        assert_eq!(removed, [paths[0].clone()]);
        assert!(paths[2].exists());
        // Files that are not snapshots are left alone.
        std::fs::write(dir.path().join("notes.txt"), vec![0u8; 1000]).unwrap();
        assert!(small.evict(&paths[2]).is_empty());
    }

    #[test]
    fn the_cache_dir_comes_from_the_environment_or_the_kernel_store() {
        // Read only: the variable is not set by this crate's tests.
        if std::env::var_os(SNAPSHOTS_ENV).is_none() {
            let cache = SnapshotCache::open(Path::new("/store"));
            assert_eq!(cache.dir(), Path::new("/store/snapshots"));
            assert_eq!(cache.max_bytes, DEFAULT_MAX_BYTES);
        }
    }

    #[test]
    fn a_restore_is_the_saved_command_plus_its_incoming_state() {
        let files = Files::new();
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::at(dir.path(), 1 << 30);
        let command = files.command("a");
        let key = key(&command);
        write_snapshot(&cache, &key, b"stream");
        let Lookup::Hit(snapshot) = cache.lookup(&key) else { panic!("no hit") };
        let restore =
            restore_command(Path::new("/usr/bin/qemu-system-x86_64"), &command, &snapshot).unwrap();
        let mut expected = command.args();
        expected.extend(["-incoming".into(), "fd:3".into()]);
        assert_eq!(restore.get_args().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn the_restored_qemu_reads_the_stream_on_descriptor_3() {
        // `sh` stands in for QEMU: it prints what it finds on descriptor 3.
        let files = Files::new();
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::at(dir.path(), 1 << 30);
        let key = key(&files.command("a"));
        write_snapshot(&cache, &key, b"the stream");
        let Lookup::Hit(snapshot) = cache.lookup(&key) else { panic!("no hit") };
        for _ in 0..2 {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", "cat <&3"]);
            pass_incoming(&mut sh, &snapshot).unwrap();
            let output = sh.output().unwrap();
            assert_eq!(output.stdout, b"the stream", "{}", String::from_utf8_lossy(&output.stderr));
        }
    }
}
