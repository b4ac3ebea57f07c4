//! Inside the guest: one registered test, run in a child process of PID 1.
//!
//! PID 1 starts a fresh process for each test and hands it the test's name: a fork of its fork
//! server (see `vmtest-init`'s `forks.rs`), or, when the test collects LLVM profiles, `/init`
//! executed again with [`TEST_ENV`](vmtest_init::protocol::TEST_ENV) naming the test. Set on
//! the host, that variable runs nothing: [`refuse_outside_guest`].
//! The exit status is the verdict: 0 passed, 101 panicked, 1 returned `Err` or did not panic as
//! `#[should_panic]` required.
//!
//! A failure that libtest describes with a message of its own (`test did not panic as
//! expected at ...`) ends the test's stderr with a [`FailureNote`]: the host takes the message
//! out of the output (captured, where stdout and stderr are one pipe, or streamed stderr) and
//! reports it as libtest does (`note: <message>`, JSON's `message`).

use std::any::Any;
use std::io::Write;

use crate::meta::TestMeta;
use crate::registry::TESTS;

/// `VMTEST_TEST` names a test, but this process is not in a vmtest guest: a test never runs
/// outside a VM, so this says why and exits with libtest's failure status.
pub(crate) fn refuse_outside_guest(name: &str) -> ! {
    eprintln!(
        "error: {}={name} is set, but this process is not in a vmtest VM (no {}): vmtest runs \
         tests only inside VMs, never on the host; unset {} (it is vmtest's own, set by the \
         guest's PID 1) and run the binary as usual",
        vmtest_init::protocol::TEST_ENV,
        vmtest_init::protocol::PLAN_PATH,
        vmtest_init::protocol::TEST_ENV,
    );
    std::process::exit(101);
}

/// Runs the test named `name` (its libtest name, without a kernel suffix) and exits.
pub(crate) fn run_test(name: &str) -> ! {
    let Some(def) = TESTS.iter().find(|def| def.test_name() == name) else {
        eprintln!("vmtest: this binary has no test named `{name}`");
        std::process::exit(2);
    };
    let meta = match def.decode() {
        Ok(meta) => meta,
        Err(e) => {
            eprintln!("vmtest: failed to read the record of the test `{name}`: {e}");
            std::process::exit(2);
        }
    };
    let run = def.run;
    crate::guest::debugger::wait_if_asked();
    // libtest runs each test on a thread named after it, so panic messages read the same.
    let joined =
        std::thread::Builder::new().name(name.to_owned()).spawn(run).map(|handle| handle.join());
    let code = match joined {
        Err(e) => {
            eprintln!("vmtest: failed to spawn the test thread: {e}");
            1
        }
        Ok(Ok(result)) => returned(result, &meta),
        Ok(Err(payload)) => panicked(payload.as_ref(), &meta),
    };
    std::process::exit(code);
}

fn returned(result: Result<(), String>, meta: &TestMeta) -> i32 {
    match result {
        Err(message) => {
            eprintln!("{message}");
            1
        }
        Ok(()) if !meta.should_panic => 0,
        Ok(()) => fail_with(&format!(
            "test did not panic as expected at {}:{}:{}",
            meta.file, meta.line, meta.column
        )),
    }
}

fn panicked(payload: &(dyn Any + Send), meta: &TestMeta) -> i32 {
    if !meta.should_panic {
        return 101;
    }
    let Some(expected) = &meta.expected_panic else { return 0 };
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned());
    match message {
        Some(message) if message.contains(expected.as_str()) => 0,
        Some(message) => fail_with(&format!(
            "panic did not contain expected string\n      panic message: {message:?}\n \
             expected substring: {expected:?}"
        )),
        None => fail_with(&format!(
            "expected panic with string value,\n found non-string value: `{:?}`\n     \
             expected substring: {expected:?}",
            payload.type_id()
        )),
    }
}

/// Ends stderr with `message` as a [`FailureNote`]; returns the exit status of a failure.
fn fail_with(message: &str) -> i32 {
    // What the test printed without a newline waits in stdout's buffer: out before the note, so
    // that the note ends captured output (stdout and stderr are one pipe then).
    let _ = std::io::stdout().flush();
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(&FailureNote::encode(message));
    let _ = stderr.flush();
    1
}

/// A failure message at the end of a test's stderr: `ESC ] vmtest-failure ; <length> ; <message>
/// BEL`, an operating system command that terminals do not show. The host removes it from the
/// output, whether captured whole or streamed in pieces.
#[derive(Debug, Default)]
pub(crate) struct FailureNote {
    /// Bytes held back: a possible start of the note, or the note itself once it began.
    held: Vec<u8>,
    /// Whether `held` starts with the whole [`FailureNote::START`].
    begun: bool,
}

impl FailureNote {
    const START: &'static [u8] = b"\x1b]vmtest-failure;";
    const END: u8 = 0x07;

    /// The bytes that carry `message`.
    pub(crate) fn encode(message: &str) -> Vec<u8> {
        let mut out = Self::START.to_vec();
        out.extend_from_slice(format!("{};{message}", message.len()).as_bytes());
        out.push(Self::END);
        out
    }

    /// Takes the next piece of the stream; returns what can be passed on now.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(bytes);
        if self.begun {
            return Vec::new();
        }
        if let Some(at) = find(&self.held, Self::START) {
            self.begun = true;
            return self.held.drain(..at).collect();
        }
        // Hold back a tail that may be the start of a note cut in two.
        let keep = (1..Self::START.len())
            .rev()
            .find(|&n| self.held.ends_with(&Self::START[..n]))
            .unwrap_or(0);
        let pass = self.held.len() - keep;
        self.held.drain(..pass).collect()
    }

    /// The stream has ended: the rest of it to pass on, and the message, if a whole note came.
    pub(crate) fn finish(self) -> (Vec<u8>, Option<String>) {
        if !self.begun {
            return (self.held, None);
        }
        let body = &self.held[Self::START.len()..];
        let parsed = (|| {
            let semicolon = body.iter().position(|&b| b == b';')?;
            let len: usize = std::str::from_utf8(&body[..semicolon]).ok()?.parse().ok()?;
            let start = semicolon + 1;
            let message = body.get(start..start.checked_add(len)?)?;
            (body.get(start + len) == Some(&Self::END))
                .then(|| (String::from_utf8_lossy(message).into_owned(), start + len + 1))
        })();
        match parsed {
            Some((message, end)) => (body[end..].to_vec(), Some(message)),
            // Not a note after all (or cut short): it is output.
            None => (self.held, None),
        }
    }

    /// Splits a whole captured stream into its output and its message.
    pub(crate) fn split(stream: &[u8]) -> (Vec<u8>, Option<String>) {
        let mut note = FailureNote::default();
        let mut output = note.feed(stream);
        let (rest, message) = note.finish();
        output.extend_from_slice(&rest);
        (output, message)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_stream_gives_its_output_and_message() {
        let mut stream = b"Error: x\n".to_vec();
        stream.extend(FailureNote::encode("did not panic; at a.rs:1:4\nsecond line"));
        let (output, message) = FailureNote::split(&stream);
        assert_eq!(output, b"Error: x\n");
        assert_eq!(message.as_deref(), Some("did not panic; at a.rs:1:4\nsecond line"));
        assert_eq!(FailureNote::split(b"plain\x1b]vm"), (b"plain\x1b]vm".to_vec(), None));
        let cut = &FailureNote::encode("message")[..10];
        assert_eq!(FailureNote::split(cut), (cut.to_vec(), None));
    }

    #[test]
    fn a_stream_in_pieces_passes_output_on_and_holds_the_note_back() {
        let mut stream = b"live output ".to_vec();
        stream.extend(FailureNote::encode("m"));
        // Every way of cutting the stream in two gives the same result.
        for cut in 0..=stream.len() {
            let mut note = FailureNote::default();
            let mut passed = note.feed(&stream[..cut]);
            passed.extend(note.feed(&stream[cut..]));
            let (rest, message) = note.finish();
            passed.extend(rest);
            assert_eq!(passed, b"live output ", "cut at {cut}");
            assert_eq!(message.as_deref(), Some("m"), "cut at {cut}");
        }
    }
}
