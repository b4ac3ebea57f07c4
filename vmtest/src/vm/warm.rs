//! Warm starts: a VM configuration seen before starts from a snapshot of its booted guest
//! instead of booting a kernel.
//!
//! A warm VM boots the configuration's base image (the init, its libraries, the harness's
//! modules, the userland) with a plan that stops at the restore point. The first time, the
//! guest boots cold, says `Ready`, and is saved there ([`snapshot::save`]) before it continues;
//! later VMs of the same [`SnapshotKey`] are restored from that file. Either way the host then
//! sends [`HostMessage::Restored`] (its wall clock and a fresh seed for the guest's random
//! state) and the run's payload (its files and plan, [`HostMessage::Payload`]), and the guest
//! greets the host and runs its tests as after any boot. [`SnapshotMode`] is the user's knob
//! ([`SNAPSHOT_ENV`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmtest_init::protocol::{write_frame, HostMessage, PAYLOAD_CHUNK_LEN, PROTOCOL_VERSION};

use crate::vm::memo::Memo;
use crate::vm::qemu::QemuCommand;
use crate::vm::qmp::Qmp;
use crate::vm::snapshot::{self, Lookup, Saved, SnapshotCache, SnapshotFile, SnapshotKey};
use crate::Error;

/// Environment variable: whether VMs start from snapshots (see [`SnapshotMode`]).
pub(crate) const SNAPSHOT_ENV: &str = "VMTEST_SNAPSHOT";
/// Random bytes the host hands each started guest for its random state.
const SEED_LEN: usize = 64;

/// [`SNAPSHOT_ENV`]: `on` (the default), `off` or `refresh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotMode {
    /// Every VM boots its kernel; nothing is saved.
    Off,
    /// A configuration with a snapshot starts from it; one without boots and saves one.
    On,
    /// Every VM boots and saves its configuration's snapshot anew.
    Refresh,
}

impl SnapshotMode {
    /// The mode [`SNAPSHOT_ENV`] asks for.
    pub(crate) fn from_env() -> Result<SnapshotMode, Error> {
        match std::env::var(SNAPSHOT_ENV) {
            Err(_) => Ok(SnapshotMode::On),
            Ok(value) => SnapshotMode::parse(&value).ok_or_else(|| {
                Error::Env(format!("{SNAPSHOT_ENV}={value:?} is not one of on, off, refresh"))
            }),
        }
    }

    fn parse(value: &str) -> Option<SnapshotMode> {
        match value.trim() {
            "" | "on" | "1" => Some(SnapshotMode::On),
            "off" | "0" => Some(SnapshotMode::Off),
            "refresh" => Some(SnapshotMode::Refresh),
            _ => None,
        }
    }
}

/// How a VM starts warm.
#[derive(Clone, Debug)]
pub(crate) struct Warm {
    /// Where snapshots are kept.
    pub cache: SnapshotCache,
    /// Boot and save even when the cache has a snapshot ([`SnapshotMode::Refresh`]).
    pub refresh: bool,
    /// The run's payload: a newc archive of its files and plan, sent after the restore point.
    pub payload: PathBuf,
}

/// How a warm start went, for the caller to tell.
#[derive(Debug)]
pub(crate) enum WarmEnd {
    /// The VM started from this snapshot.
    Restored(PathBuf),
    /// The VM booted and was saved.
    Saved(Saved),
    /// The VM booted but could not be saved, and why; it ran on.
    NotSaved(String),
}

impl WarmEnd {
    /// A line for the top of the VM's console log.
    pub(crate) fn describe(&self) -> String {
        match self {
            WarmEnd::Restored(path) => format!(
                "vmtest: started from the snapshot {} (the kernel's boot messages are in the \
                 console log of the run that saved it)",
                path.display()
            ),
            WarmEnd::Saved(saved) => format!(
                "vmtest: booted, and saved at the restore point as the snapshot {} ({:.1} MB)",
                saved.path.display(),
                saved.bytes as f64 / 1e6
            ),
            WarmEnd::NotSaved(why) => format!("vmtest: booted; failed to save a snapshot: {why}"),
        }
    }
}

/// A warm VM about to start: its key, and the snapshot it starts from, if any.
pub(crate) struct Start {
    pub key: SnapshotKey,
    pub snapshot: Option<SnapshotFile>,
    /// The cache held a snapshot of this key that cannot be used (removed), and why.
    pub unusable: Option<String>,
}

/// Looks up the snapshot of the VM `command` (with its warm arguments) describes.
pub(crate) fn prepare(warm: &Warm, command: &QemuCommand, qemu: &Path) -> Result<Start, Error> {
    let memo = warm.cache.memo();
    let key = SnapshotKey::new(command, qemu, &qemu_version(qemu, &memo)?, &memo)?;
    let (snapshot, unusable) = match warm.cache.lookup(&key) {
        Lookup::Hit(_) if warm.refresh => (None, None),
        Lookup::Hit(file) => (Some(file), None),
        Lookup::Miss => (None, None),
        Lookup::Unusable(why) => (None, Some(why)),
    };
    Ok(Start { key, snapshot, unusable })
}

/// `qemu --version`: asked once per binary per process, and then only when `memo` has not
/// seen this binary.
fn qemu_version(qemu: &Path, memo: &Memo) -> Result<String, Error> {
    static VERSIONS: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut versions = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let versions = versions.get_or_insert_with(HashMap::new);
    if let Some(version) = versions.get(qemu) {
        return Ok(version.clone());
    }
    let version = memo.get(
        "qemu --version",
        qemu,
        |version| !version.is_empty(),
        || snapshot::qemu_version(qemu),
    )?;
    versions.insert(qemu.to_owned(), version.clone());
    Ok(version)
}

/// The host's side of a warm VM: its monitor and the port the host writes to.
pub(crate) struct WarmVm {
    pub qmp: Qmp,
    pub host: UnixStream,
}

impl WarmVm {
    /// The guest booted cold and is at its restore point: saves it into `warm`'s cache under
    /// `key` (a failure is reported, not fatal), lets it run on and hands it the run.
    pub(crate) fn save_and_go_on(
        &mut self,
        warm: &Warm,
        key: &SnapshotKey,
        deadline: Instant,
    ) -> Result<WarmEnd, String> {
        let end = match snapshot::save(&mut self.qmp, &warm.cache, key, deadline) {
            Ok(saved) => WarmEnd::Saved(saved),
            Err(e) => WarmEnd::NotSaved(e.to_string()),
        };
        // Stopped by the save (or before it failed): it goes on from where it was.
        if self.qmp.run_state(deadline).map_err(|e| e.to_string())? != "running" {
            self.qmp.cont(deadline).map_err(|e| format!("failed to resume the VM: {e}"))?;
        }
        self.hand_over(warm)?;
        Ok(end)
    }

    /// The guest was restored and is running: hands it the run.
    pub(crate) fn restored(&mut self, warm: &Warm) -> Result<(), String> {
        self.hand_over(warm)
    }

    /// Sends [`HostMessage::Restored`] and the payload.
    fn hand_over(&mut self, warm: &Warm) -> Result<(), String> {
        let failed =
            |e: &dyn std::fmt::Display| format!("failed to hand the run to the guest: {e}");
        write_frame(&mut self.host, &restored_now(seed()?)).map_err(|e| failed(&e))?;
        let mut payload = std::fs::File::open(&warm.payload)
            .map_err(|e| failed(&format!("{}: {e}", warm.payload.display())))?;
        send_payload(&mut payload, &mut self.host).map_err(|e| failed(&e))?;
        self.host.flush().map_err(|e| failed(&e))
    }
}

/// Sends the archive read from `payload` as [`HostMessage::Payload`] pieces on `host`.
pub(crate) fn send_payload(payload: &mut impl Read, host: &mut impl Write) -> Result<u64, String> {
    let mut buf = vec![0u8; PAYLOAD_CHUNK_LEN];
    let mut sent = 0u64;
    let mut piece = fill(payload, &mut buf)?;
    loop {
        let data = buf[..piece].to_vec();
        let next = if piece == buf.len() { fill(payload, &mut buf)? } else { 0 };
        let last = next == 0;
        sent += data.len() as u64;
        write_frame(host, &HostMessage::Payload { version: PROTOCOL_VERSION, data, last })
            .map_err(|e| e.to_string())?;
        if last {
            return Ok(sent);
        }
        piece = next;
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("failed to read the payload: {e}")),
        }
    }
    Ok(filled)
}

/// [`HostMessage::Restored`] with the host's time now and `seed`.
fn restored_now(seed: Vec<u8>) -> HostMessage {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    HostMessage::Restored {
        version: PROTOCOL_VERSION,
        unix_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        unix_nanos: now.subsec_nanos(),
        seed,
    }
}

/// Random bytes from the host's kernel.
fn seed() -> Result<Vec<u8>, String> {
    let mut seed = vec![0u8; SEED_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .map_err(|e| format!("failed to draw random bytes for the guest from /dev/urandom: {e}"))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use vmtest_init::protocol::{decode_host_message, FrameReader};

    use super::*;

    #[test]
    fn the_mode_is_on_unless_the_variable_says_otherwise() {
        assert_eq!(SnapshotMode::parse("on"), Some(SnapshotMode::On));
        assert_eq!(SnapshotMode::parse(""), Some(SnapshotMode::On));
        assert_eq!(SnapshotMode::parse("off"), Some(SnapshotMode::Off));
        assert_eq!(SnapshotMode::parse("0"), Some(SnapshotMode::Off));
        assert_eq!(SnapshotMode::parse(" refresh "), Some(SnapshotMode::Refresh));
        assert_eq!(SnapshotMode::parse("sometimes"), None);
    }

    fn pieces(payload: &[u8]) -> Vec<(usize, bool)> {
        let mut wire = Vec::new();
        let sent = send_payload(&mut &payload[..], &mut wire).unwrap();
        assert_eq!(sent, payload.len() as u64);
        let mut reader = FrameReader::new(&wire[..]);
        let mut pieces = Vec::new();
        let mut joined = Vec::new();
        while let Some(frame) = reader.next_payload().unwrap() {
            let HostMessage::Payload { data, last, .. } = decode_host_message(frame).unwrap()
            else {
                panic!("not a payload piece")
            };
            pieces.push((data.len(), last));
            joined.extend_from_slice(&data);
        }
        assert_eq!(joined, payload);
        pieces
    }

    #[test]
    fn a_payload_goes_in_pieces_and_its_last_says_so() {
        assert_eq!(pieces(b""), [(0, true)]);
        assert_eq!(pieces(b"abc"), [(3, true)]);
        let exact = vec![5u8; PAYLOAD_CHUNK_LEN];
        // The end is found by reading ahead: no empty last piece.
        assert_eq!(pieces(&exact), [(PAYLOAD_CHUNK_LEN, true)]);
        let more = vec![6u8; PAYLOAD_CHUNK_LEN * 2 + 10];
        assert_eq!(
            pieces(&more),
            [(PAYLOAD_CHUNK_LEN, false), (PAYLOAD_CHUNK_LEN, false), (10, true)]
        );
    }

    #[test]
    fn each_hand_over_carries_the_time_and_a_new_seed() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let (one, two) = (restored_now(seed().unwrap()), restored_now(seed().unwrap()));
        let (
            HostMessage::Restored { unix_secs, seed: first, .. },
            HostMessage::Restored { seed: second, .. },
        ) = (one, two)
        else {
            panic!("not Restored")
        };
        assert!(unix_secs >= before.as_secs() as i64);
        assert_eq!(first.len(), SEED_LEN);
        assert_ne!(first, second);
    }
}
