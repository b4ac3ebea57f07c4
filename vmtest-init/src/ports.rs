//! The control port: finding it by name, and the single thread that writes to it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::console;
use crate::protocol::{encode_frame, GuestMessage};

/// Where the kernel lists virtio-serial ports.
pub(crate) const VIRTIO_PORTS_DIR: &str = "/sys/class/virtio-ports";

/// How many frames may wait for the writer before senders block.
const QUEUE_DEPTH: usize = 64;

/// What a search for a named port found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The port's entry (e.g. `vport0p1`); its device is `/dev/<entry>`.
    Found(String),
    /// Ports exist, but none has the name.
    NotNamed,
    /// There is no port at all (no `virtio-ports` class).
    NoPorts,
}

/// Looks for the port called `name` under `ports_dir` (normally [`VIRTIO_PORTS_DIR`]).
pub(crate) fn find_port(ports_dir: &Path, name: &str) -> Lookup {
    let Ok(entries) = std::fs::read_dir(ports_dir) else {
        return Lookup::NoPorts;
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read(entry.path().join("name"))
                .is_ok_and(|bytes| bytes.strip_suffix(b"\n").unwrap_or(&bytes) == name.as_bytes())
        })
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    found.sort();
    match found.into_iter().next() {
        Some(entry) => Lookup::Found(entry),
        None => Lookup::NotNamed,
    }
}

/// Finds the port called `name` and opens its device for writing, retrying until `patience`
/// runs out: ports appear a little after boot, once the host has announced them.
pub(crate) fn open_port(
    ports_dir: &Path,
    dev_dir: &Path,
    name: &str,
    patience: Duration,
) -> Result<File, String> {
    open_port_with(ports_dir, dev_dir, name, patience, File::options().write(true))
}

/// [`open_port`] for reading: the port the host writes to.
pub(crate) fn open_port_for_reading(
    ports_dir: &Path,
    dev_dir: &Path,
    name: &str,
    patience: Duration,
) -> Result<File, String> {
    open_port_with(ports_dir, dev_dir, name, patience, File::options().read(true))
}

/// [`open_port`] for reading and writing: a port that carries a conversation.
pub(crate) fn open_port_read_write(
    ports_dir: &Path,
    dev_dir: &Path,
    name: &str,
    patience: Duration,
) -> Result<File, String> {
    open_port_with(ports_dir, dev_dir, name, patience, File::options().read(true).write(true))
}

fn open_port_with(
    ports_dir: &Path,
    dev_dir: &Path,
    name: &str,
    patience: Duration,
    options: &std::fs::OpenOptions,
) -> Result<File, String> {
    let deadline = Instant::now() + patience;
    loop {
        let lookup = find_port(ports_dir, name);
        let last_error = match &lookup {
            Lookup::Found(entry) => {
                let device: PathBuf = dev_dir.join(entry);
                match options.open(&device) {
                    Ok(file) => return Ok(file),
                    Err(e) => format!("failed to open {}: {e}", device.display()),
                }
            }
            Lookup::NotNamed => format!(
                "no virtio-serial port is named {name} (ports exist under {}; \
                 is the VM's virtserialport named {name}?)",
                ports_dir.display()
            ),
            Lookup::NoPorts => format!(
                "no virtio-serial port named {name}: {} does not exist (the kernel lacks \
                 virtio_console, or the transport driver for the VM's virtio-serial device: \
                 virtio_pci or virtio_mmio)",
                ports_dir.display()
            ),
        };
        if Instant::now() >= deadline {
            return Err(last_error);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

enum Request {
    Frame(Vec<u8>),
    /// Acknowledge once everything queued before has been written.
    Sync(mpsc::Sender<()>),
    /// Close the port (after everything queued before) and acknowledge.
    Close(mpsc::Sender<()>),
}

/// The sending side of the control port. Clones share one writer thread, which owns the port
/// and does every (blocking) write: one writer per port.
#[derive(Clone)]
pub(crate) struct Control {
    queue: SyncSender<Request>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Control {
    /// Starts the writer thread for `port`.
    pub(crate) fn start(port: File) -> Result<Self, String> {
        let (queue, requests) = mpsc::sync_channel(QUEUE_DEPTH);
        let failure = Arc::new(Mutex::new(None));
        let writer_failure = Arc::clone(&failure);
        std::thread::Builder::new()
            .name("vmtest-control".into())
            .spawn(move || write_frames(port, requests, &writer_failure))
            .map_err(|e| format!("failed to start the control port writer: {e}"))?;
        Ok(Self { queue, failure })
    }

    /// Queues one message, waiting while the queue is full.
    pub(crate) fn send(&self, message: &GuestMessage) -> Result<(), String> {
        let frame = encode(message)?;
        self.queue.send(Request::Frame(frame)).map_err(|_| self.stopped())
    }

    /// Sends one message and waits until the writer has written it to the port, so that it
    /// reaches the host even if what follows (a test that panics the kernel) stops the guest.
    pub(crate) fn send_written(&self, message: &GuestMessage) -> Result<(), String> {
        self.send(message)?;
        let (ack, acked) = mpsc::channel();
        self.queue.send(Request::Sync(ack)).map_err(|_| self.stopped())?;
        acked.recv().map_err(|_| self.stopped())
    }

    /// Queues one message, giving up after `patience` if the queue stays full (used on the
    /// fatal path, where the writer may be the thing that is stuck).
    pub(crate) fn send_within(
        &self,
        message: &GuestMessage,
        patience: Duration,
    ) -> Result<(), String> {
        self.request_within(Request::Frame(encode(message)?), Instant::now() + patience)
    }

    fn request_within(&self, mut request: Request, deadline: Instant) -> Result<(), String> {
        loop {
            match self.queue.try_send(request) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => return Err(self.stopped()),
                Err(TrySendError::Full(back)) => request = back,
            }
            if Instant::now() >= deadline {
                return Err("control port queue stayed full".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes everything queued so far, closes the port and waits (at most `patience`) until
    /// the writer is done. Later sends fail.
    pub(crate) fn close(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        let (ack, acked) = mpsc::channel();
        self.request_within(Request::Close(ack), deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        acked.recv_timeout(left).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                format!("control port writer did not finish within {patience:?}")
            }
            mpsc::RecvTimeoutError::Disconnected => self.stopped(),
        })
    }

    fn stopped(&self) -> String {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        failure.unwrap_or_else(|| "control port writer stopped".into())
    }
}

fn encode(message: &GuestMessage) -> Result<Vec<u8>, String> {
    encode_frame(message).map_err(|e| format!("failed to encode a control message: {e}"))
}

fn write_frames(mut port: File, requests: Receiver<Request>, failure: &Mutex<Option<String>>) {
    while let Ok(request) = requests.recv() {
        match request {
            Request::Frame(frame) => {
                if let Err(e) = write_all(&mut port, &frame) {
                    let message = format!("failed to write to the control port: {e}");
                    console::say(&message);
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
                    return;
                }
            }
            Request::Sync(ack) => {
                let _ = ack.send(());
            }
            Request::Close(ack) => {
                drop(port);
                // Refuse further frames before acknowledging, so none is silently lost.
                drop(requests);
                let _ = ack.send(());
                return;
            }
        }
    }
}

fn write_all(port: &mut File, frame: &[u8]) -> io::Result<()> {
    port.write_all(frame)?;
    port.flush()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::protocol::FrameReader;

    fn fake_sysfs(ports: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("class/virtio-ports");
        fs::create_dir_all(&class).unwrap();
        for (entry, name) in ports {
            fs::create_dir(class.join(entry)).unwrap();
            fs::write(class.join(entry).join("name"), name).unwrap();
        }
        dir
    }

    #[test]
    fn finds_a_port_by_name() {
        let sys = fake_sysfs(&[("vport0p1", "other\n"), ("vport0p2", "vmtest.control\n")]);
        let class = sys.path().join("class/virtio-ports");
        assert_eq!(find_port(&class, "vmtest.control"), Lookup::Found("vport0p2".into()));
        assert_eq!(find_port(&class, "vmtest.files"), Lookup::NotNamed);
        assert_eq!(find_port(&sys.path().join("nope"), "x"), Lookup::NoPorts);
    }

    #[test]
    fn name_must_match_exactly() {
        let sys = fake_sysfs(&[("vport0p1", "vmtest.control2\n"), ("vport0p2", "")]);
        let class = sys.path().join("class/virtio-ports");
        assert_eq!(find_port(&class, "vmtest.control"), Lookup::NotNamed);
    }

    #[test]
    fn opens_the_device_and_explains_a_missing_port() {
        let sys = fake_sysfs(&[("vport1p1", "vmtest.control")]);
        let class = sys.path().join("class/virtio-ports");
        let dev = sys.path().join("dev");
        fs::create_dir(&dev).unwrap();
        fs::write(dev.join("vport1p1"), b"").unwrap();
        open_port(&class, &dev, "vmtest.control", Duration::ZERO).unwrap();

        let err = open_port(&sys.path().join("none"), &dev, "vmtest.control", Duration::ZERO)
            .unwrap_err();
        assert!(err.contains("virtio_console"), "{err}");
        let err = open_port(&class, &dev, "vmtest.other", Duration::from_millis(30)).unwrap_err();
        assert!(err.contains("no virtio-serial port is named vmtest.other"), "{err}");
    }

    #[test]
    fn writer_sends_frames_in_order_then_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("port");
        let control = Control::start(File::create(&path).unwrap()).unwrap();
        control.send(&GuestMessage::Log("one".into())).unwrap();
        let other = control.clone();
        other.send_within(&GuestMessage::Done, Duration::from_secs(1)).unwrap();
        control.close(Duration::from_secs(5)).unwrap();
        assert!(control.send(&GuestMessage::Done).is_err());

        let bytes = fs::read(&path).unwrap();
        let mut reader = FrameReader::new(&bytes[..]);
        assert_eq!(reader.next_frame().unwrap(), Some(GuestMessage::Log("one".into())));
        assert_eq!(reader.next_frame().unwrap(), Some(GuestMessage::Done));
        assert_eq!(reader.next_frame::<GuestMessage>().unwrap(), None);
    }
}
