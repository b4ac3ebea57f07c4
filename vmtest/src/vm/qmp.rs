//! A small QMP client: QEMU's JSON monitor on a Unix socket, as far as saving and restoring a
//! VM needs it.
//!
//! [`Qmp::handshake`] reads QEMU's greeting and enters command mode (`qmp_capabilities`);
//! [`Qmp::execute`] sends one command and waits for its answer within a deadline, keeping the
//! events that arrive meanwhile; [`Qmp::wait_event`] waits for an event (`STOP`, `RESUME`,
//! `MIGRATION`). Typed wrappers cover the commands vmtest uses. Nothing here blocks without a
//! deadline, and a line longer than [`MAX_LINE`] is an error rather than memory.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

mod json;

pub(crate) use json::Json;

/// Longest message accepted from QEMU, in bytes.
const MAX_LINE: usize = 1 << 20;

/// What went wrong talking to QEMU's monitor.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QmpError {
    /// The socket failed.
    #[error("failed to {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// QEMU closed the monitor (it exited).
    #[error("failed to {context}: QEMU closed its monitor (it exited)")]
    Closed {
        /// What was being done.
        context: String,
    },
    /// The deadline passed.
    #[error("failed to {context}: QEMU did not answer within {waited:?}")]
    Timeout {
        /// What was being done.
        context: String,
        /// How long was waited.
        waited: Duration,
    },
    /// QEMU sent something that is not QMP.
    #[error("failed to {context}: QEMU's monitor sent {what}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What was wrong with it.
        what: String,
    },
    /// QEMU refused the command.
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// An asynchronous event from QEMU.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Event {
    /// `STOP`, `RESUME`, `MIGRATION`, ...
    pub name: String,
    /// The event's `data` (`Null` when it has none).
    pub data: Json,
}

impl Event {
    /// The status of a `MIGRATION` event.
    pub fn migration_status(&self) -> Option<&str> {
        (self.name == "MIGRATION").then(|| self.data["status"].as_str()).flatten()
    }
}

/// Where an outgoing or incoming migration stands (`query-migrate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MigrationStatus {
    /// Not started (`none`, `setup`), or moving data (`active`, `device`, ...).
    Running(String),
    /// All state was written.
    Completed,
    /// It failed; QEMU's reason.
    Failed(String),
}

/// A connected, negotiated QMP monitor.
pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Bytes of a line not yet complete (a read timed out in its middle).
    partial: Vec<u8>,
    /// Events read while waiting for something else.
    events: VecDeque<Event>,
    next_id: u64,
    /// The QEMU version from the greeting (`major.minor.micro`).
    version: String,
}

impl Qmp {
    /// Reads QEMU's greeting on `stream` and enters command mode.
    pub fn handshake(stream: UnixStream, deadline: Instant) -> Result<Qmp, QmpError> {
        let writer = stream
            .try_clone()
            .map_err(|source| QmpError::Io { context: "clone the QMP socket".into(), source })?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            events: VecDeque::new(),
            next_id: 0,
            version: String::new(),
        };
        let context = "read QEMU's QMP greeting";
        let greeting = qmp.read_message(context, deadline)?;
        let Some(version) = greeting.get("QMP").map(|qmp| &qmp["version"]["qemu"]) else {
            return Err(QmpError::Protocol {
                context: context.into(),
                what: format!("no greeting but {greeting}"),
            });
        };
        qmp.version = format!("{}.{}.{}", version["major"], version["minor"], version["micro"]);
        qmp.execute("qmp_capabilities", None, deadline)?;
        Ok(qmp)
    }

    /// The QEMU version from the greeting (`7.2.22`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Json>,
        deadline: Instant,
    ) -> Result<Json, QmpError> {
        self.execute_with_fd(command, arguments, None, deadline)
    }

    /// [`Qmp::execute`], passing `fd` along with the command (`SCM_RIGHTS`), as `getfd`
    /// wants it.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Json>,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> Result<Json, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = Json::object([("execute", command.into()), ("id", id.into())]);
        if let Some(arguments) = arguments {
            message.set("arguments", arguments);
        }
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        let context = format!("send `{command}` to QEMU");
        let io_error = |source: io::Error| match source.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                QmpError::Closed { context: context.clone() }
            }
            _ => QmpError::Io { context: context.clone(), source },
        };
        match fd {
            Some(fd) => send_with_fd(&self.writer, &line, fd).map_err(io_error)?,
            None => self.writer.write_all(&line).map_err(io_error)?,
        }
        let context = format!("run `{command}`");
        loop {
            let message = self.read_message(&context, deadline)?;
            if message.get("event").is_some() {
                self.events.push_back(event(message));
                continue;
            }
            if message["id"].as_u64() != Some(id) {
                // An answer to an earlier command that timed out: not this one's.
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            let error = &message["error"];
            return Err(QmpError::Refused {
                command: command.to_owned(),
                class: error["class"].as_str().unwrap_or("?").to_owned(),
                desc: error["desc"].as_str().unwrap_or("?").to_owned(),
            });
        }
    }

    /// Waits for the first event (including those already read) that `wanted` accepts;
    /// events before it are dropped.
    pub fn wait_event(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&Event) -> bool,
        deadline: Instant,
    ) -> Result<Event, QmpError> {
        while let Some(event) = self.events.pop_front() {
            if wanted(&event) {
                return Ok(event);
            }
        }
        let context = format!("wait for {what}");
        loop {
            let message = self.read_message(&context, deadline)?;
            if message.get("event").is_some() {
                let event = event(message);
                if wanted(&event) {
                    return Ok(event);
                }
            }
        }
    }

    /// `stop`: pauses the guest's CPUs.
    pub fn stop(&mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute("stop", None, deadline).map(drop)
    }

    /// `cont`: runs a paused (or restored) guest.
    pub fn cont(&mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute("cont", None, deadline).map(drop)
    }

    /// `query-status`: the run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub fn run_state(&mut self, deadline: Instant) -> Result<String, QmpError> {
        let status = self.execute("query-status", None, deadline)?;
        status["status"].as_str().map(str::to_owned).ok_or_else(|| QmpError::Protocol {
            context: "run `query-status`".into(),
            what: format!("a status without a state: {status}"),
        })
    }

    /// `getfd`: hands QEMU `fd` under `name`.
    pub fn getfd(
        &mut self,
        name: &str,
        fd: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QmpError> {
        self.execute_with_fd(
            "getfd",
            Some(Json::object([("fdname", name.into())])),
            Some(fd),
            deadline,
        )
        .map(drop)
    }

    /// Turns on `MIGRATION` events and lifts the migration bandwidth limit (128 MiB/s by
    /// default, which a local file does not need).
    pub fn prepare_migration(&mut self, deadline: Instant) -> Result<(), QmpError> {
        self.execute(
            "migrate-set-capabilities",
            Some(Json::object([(
                "capabilities",
                Json::Array(vec![Json::object([
                    ("capability", "events".into()),
                    ("state", true.into()),
                ])]),
            )])),
            deadline,
        )?;
        self.execute(
            "migrate-set-parameters",
            Some(Json::object([("max-bandwidth", (1u64 << 40).into())])),
            deadline,
        )
        .map(drop)
    }

    /// `migrate` to the descriptor handed over as `fd_name` ([`Qmp::getfd`]).
    pub fn migrate_to_fd(&mut self, fd_name: &str, deadline: Instant) -> Result<(), QmpError> {
        self.execute(
            "migrate",
            Some(Json::object([("uri", format!("fd:{fd_name}").into())])),
            deadline,
        )
        .map(drop)
    }

    /// `query-migrate`.
    pub fn migration(&mut self, deadline: Instant) -> Result<MigrationStatus, QmpError> {
        let info = self.execute("query-migrate", None, deadline)?;
        Ok(migration_status(&info))
    }

    /// `quit`: QEMU exits (it may close the socket before it answers).
    pub fn quit(&mut self, deadline: Instant) -> Result<(), QmpError> {
        match self.execute("quit", None, deadline) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the next JSON object, waiting until `deadline`.
    fn read_message(&mut self, context: &str, deadline: Instant) -> Result<Json, QmpError> {
        let started = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    context: context.into(),
                    waited: started.elapsed(),
                });
            }
            let io_error = |source| QmpError::Io { context: context.into(), source };
            self.reader.get_ref().set_read_timeout(Some(left)).map_err(io_error)?;
            let limit = (MAX_LINE + 1 - self.partial.len()) as u64;
            match (&mut self.reader).take(limit).read_until(b'\n', &mut self.partial) {
                Ok(0) => return Err(QmpError::Closed { context: context.into() }),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = std::mem::take(&mut self.partial);
                    let text = String::from_utf8_lossy(&line);
                    if text.trim().is_empty() {
                        continue;
                    }
                    return match Json::parse(text.trim()) {
                        Ok(value @ Json::Object(_)) => Ok(value),
                        _ => Err(QmpError::Protocol {
                            context: context.into(),
                            what: format!("a line that is not a JSON object: {:?}", text.trim()),
                        }),
                    };
                }
                Ok(_) if self.partial.len() > MAX_LINE => {
                    return Err(QmpError::Protocol {
                        context: context.into(),
                        what: format!("a message longer than {MAX_LINE} bytes"),
                    })
                }
                // The end of the stream inside a line.
                Ok(_) => return Err(QmpError::Closed { context: context.into() }),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

/// An event message as an [`Event`].
fn event(message: Json) -> Event {
    Event {
        name: message["event"].as_str().unwrap_or_default().to_owned(),
        data: message.get("data").cloned().unwrap_or(Json::Null),
    }
}

/// A `query-migrate` answer as a [`MigrationStatus`].
fn migration_status(info: &Json) -> MigrationStatus {
    match info["status"].as_str().unwrap_or("none") {
        "completed" => MigrationStatus::Completed,
        "failed" | "cancelled" => MigrationStatus::Failed(
            info["error-desc"].as_str().unwrap_or("QEMU gave no reason").to_owned(),
        ),
        other => MigrationStatus::Running(other.to_owned()),
    }
}

/// Writes `bytes` with `fd` attached as `SCM_RIGHTS` on the first byte.
fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for a descriptor in the control message"));
    }
    let sent = sendmsg(socket, &[IoSlice::new(bytes)], &mut control, SendFlags::empty())?;
    // The descriptor went with the first bytes; the rest of the line follows as usual.
    let mut socket = socket;
    socket.write_all(&bytes[sent..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A fake QEMU on the other end: answers each command from `script` in order, with the
    /// lines given (`{id}` replaced by the command's id).
    fn fake_qemu(script: Vec<(&'static str, Vec<&'static str>)>) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs
                .write_all(
                    b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \
                      \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n",
                )
                .unwrap();
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            for (command, answers) in script {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let request = Json::parse(line.trim()).unwrap();
                assert_eq!(request["execute"].as_str(), Some(command), "{line}");
                for answer in answers {
                    let answer = answer.replace("{id}", &request["id"].to_string());
                    theirs.write_all(answer.as_bytes()).unwrap();
                    theirs.write_all(b"\r\n").unwrap();
                }
            }
        });
        ours
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn negotiates_runs_commands_and_keeps_events_for_later() {
        let stream = fake_qemu(vec![
            ("qmp_capabilities", vec![r#"{"return": {}, "id": {id}}"#]),
            (
                "stop",
                vec![
                    r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#,
                    r#"{"return": {}, "id": {id}}"#,
                ],
            ),
            (
                "query-migrate",
                vec![r#"{"return": {"status": "failed", "error-desc": "disk full"}, "id": {id}}"#],
            ),
            (
                "migrate",
                vec![
                    r#"{"error": {"class": "GenericError", "desc": "no fd"}, "id": {id}}"#,
                    r#"{"event": "MIGRATION", "data": {"status": "setup"}}"#,
                    r#"{"event": "MIGRATION", "data": {"status": "completed"}}"#,
                ],
            ),
        ]);
        let mut qmp = Qmp::handshake(stream, soon()).unwrap();
        assert_eq!(qmp.version(), "7.2.22");
        qmp.stop(soon()).unwrap();
        assert_eq!(qmp.migration(soon()).unwrap(), MigrationStatus::Failed("disk full".into()));
        let refused = qmp.migrate_to_fd("snap", soon()).unwrap_err();
        assert_eq!(refused.to_string(), "QEMU refused `migrate`: GenericError: no fd");
        // The STOP that came with `stop`'s answer was kept.
        let stop = qmp.wait_event("STOP", |e| e.name == "STOP", soon()).unwrap();
        assert_eq!(stop.data, Json::Null);
        let done = qmp
            .wait_event("the migration", |e| e.migration_status() == Some("completed"), soon())
            .unwrap();
        assert_eq!(done.migration_status(), Some("completed"));
        // The fake is gone: a closed monitor is named as such.
        let closed = qmp.cont(soon()).unwrap_err();
        assert!(matches!(closed, QmpError::Closed { .. }), "{closed}");
    }

    #[test]
    fn waits_no_longer_than_its_deadline() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let err = Qmp::handshake(ours, Instant::now() + Duration::from_millis(100)).err().unwrap();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        // Not a wait for a greeting that never comes (the margin is for a busy machine).
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(err.to_string().starts_with("failed to read QEMU's QMP greeting"), "{err}");
    }

    #[test]
    fn garbage_and_endless_lines_are_errors() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"hello\n").unwrap();
        let err = Qmp::handshake(ours, soon()).err().unwrap();
        assert!(err.to_string().contains("not a JSON object: \"hello\""), "{err}");
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut theirs = theirs;
            let chunk = vec![b'x'; 64 << 10];
            while theirs.write_all(&chunk).is_ok() {}
        });
        let err = Qmp::handshake(ours, soon()).err().unwrap();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn hands_a_descriptor_over_with_the_command() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send_with_fd(&ours, b"{\"execute\": \"getfd\"}\n", file.as_fd()).unwrap();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 64];
        let got = rustix::net::recvmsg(
            &theirs,
            &mut [io::IoSliceMut::new(&mut buf)],
            &mut control,
            rustix::net::RecvFlags::empty(),
        )
        .unwrap();
        assert_eq!(&buf[..got.bytes], b"{\"execute\": \"getfd\"}\n");
        let received: Vec<_> = control
            .drain()
            .filter_map(|m| match m {
                rustix::net::RecvAncillaryMessage::ScmRights(fds) => Some(fds.count()),
                _ => None,
            })
            .collect();
        assert_eq!(received, [1]);
        drop(ours);
        let mut rest = Vec::new();
        (&theirs).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}
