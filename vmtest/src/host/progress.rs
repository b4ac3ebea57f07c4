//! The main thread's side of a run: it follows what the VM threads report ([`Note`]s) and tells
//! the [`Reporter`] about it in libtest's order, printing the text as it comes.
//!
//! The order: with one test thread, libtest reports each test in name order, naming it when it
//! starts and giving its result when it ends. Here a test is named when its VM starts it, and
//! a test that does not run (ignored, another architecture) is reported just before the next
//! test after it in name order starts, so a run in one VM reads exactly as libtest's. Tests of
//! several VM configurations run VM by VM. With several threads, tests that do not run are
//! reported first, the others as they end, and a test running for a minute is named, as
//! libtest does.

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use vmtest_init::protocol::Stream;

use crate::host::note::Note;
use crate::host::plan::{Action, Selected};
use crate::host::report::{Event, Outcome, Reporter, Settings, SLOW_TEST_WARNING};
use crate::host::verdict::Verdict;

/// Writes `text` to stdout at once. A closed stdout (`cargo test | head`) panics, as `print!`
/// does, which stops the run and its VMs.
pub(crate) fn print(text: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text).and_then(|()| stdout.flush()) {
        panic!("failed printing to stdout: {e}");
    }
}

/// A run being reported.
pub(crate) struct Live<'a> {
    reporter: Reporter,
    /// The selected tests, in name order; a test's id is its position.
    tests: &'a [Selected],
    /// One test thread: tests are named when they start.
    serial: bool,
    /// Per test: when it started.
    started: Vec<Option<Instant>>,
    /// Per test: reported as finished.
    finished: Vec<bool>,
    /// Per test: named as running long.
    warned: Vec<bool>,
    /// Tests before this position that do not run have been reported.
    cursor: usize,
    /// When the run started.
    start: Instant,
}

impl<'a> Live<'a> {
    /// Starts reporting a run of `tests` (in name order; ids are positions).
    pub(crate) fn start(
        settings: Settings,
        tests: &'a [Selected],
        filtered_out: usize,
    ) -> Live<'a> {
        let mut live = Live {
            reporter: Reporter::new(settings),
            tests,
            serial: !settings.multithreaded,
            started: vec![None; tests.len()],
            finished: vec![false; tests.len()],
            warned: vec![false; tests.len()],
            cursor: 0,
            start: Instant::now(),
        };
        live.tell(Event::RunStarted { count: tests.len(), filtered_out });
        if !live.serial {
            live.report_not_run_before(tests.len());
        }
        live
    }

    fn tell(&mut self, event: Event<'_>) {
        let text = self.reporter.event(event);
        if !text.is_empty() {
            print(text.as_bytes());
        }
    }

    /// Reports the tests that do not run among those before `end`.
    fn report_not_run_before(&mut self, end: usize) {
        let tests = self.tests;
        for (index, test) in tests.iter().enumerate().take(end).skip(self.cursor) {
            if let (Action::ReportIgnored { reason }, false) = (&test.action, self.finished[index])
            {
                self.finished[index] = true;
                self.tell(Event::Started(&test.info));
                let outcome = Outcome::Ignored { reason: reason.clone() };
                self.tell(Event::Finished { test: &test.info, outcome: &outcome, output: &[] });
            }
        }
        self.cursor = self.cursor.max(end);
    }

    fn started(&mut self, index: usize) {
        if index >= self.tests.len() || self.started[index].is_some() {
            return;
        }
        if self.serial {
            self.report_not_run_before(index);
        }
        self.started[index] = Some(Instant::now());
        self.tell(Event::Started(&self.tests[index].info));
    }

    fn finished(&mut self, index: usize, verdict: &Verdict) {
        if index >= self.tests.len() || self.finished[index] {
            return;
        }
        self.started(index);
        self.finished[index] = true;
        let test = &self.tests[index].info;
        let outcome = verdict.outcome();
        self.tell(Event::Finished { test, outcome: &outcome, output: verdict.output() });
    }

    fn all_finished(&self) -> bool {
        self.tests
            .iter()
            .zip(&self.finished)
            .all(|(test, &done)| done || test.action != Action::Run)
    }

    fn warn_slow(&mut self) {
        for index in 0..self.tests.len() {
            let running_long =
                self.started[index].is_some_and(|at| at.elapsed() >= SLOW_TEST_WARNING);
            if running_long && !self.finished[index] && !self.warned[index] {
                self.warned[index] = true;
                self.tell(Event::Slow(&self.tests[index].info));
            }
        }
    }

    /// Reports what the VM threads send until every test that runs has finished or the
    /// threads are gone.
    pub(crate) fn follow(&mut self, notes: &Receiver<Note>) {
        while !self.all_finished() {
            let note = if self.serial {
                notes.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                notes.recv_timeout(Duration::from_secs(1))
            };
            // A shell in a guest has the terminal: the run's output waits until it ends.
            let _terminal = note.is_ok().then(crate::vm::shell::terminal);
            match note {
                Ok(Note::Started(id)) => self.started(id as usize),
                Ok(Note::Output { stream, bytes }) => {
                    // Live output of a test run with --nocapture, as it comes.
                    match stream {
                        Stream::Stdout => print(&bytes),
                        Stream::Stderr => {
                            let mut stderr = std::io::stderr().lock();
                            let _ = stderr.write_all(&bytes).and_then(|()| stderr.flush());
                        }
                    }
                }
                Ok(Note::Finished(id, verdict)) => self.finished(id as usize, &verdict),
                Ok(Note::Stderr(line)) => eprintln!("{line}"),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !self.serial {
                self.warn_slow();
            }
        }
    }

    /// Ends the run: tests nobody reported fail, the rest that do not run are reported, then
    /// the summary. Returns whether a test failed.
    pub(crate) fn finish(mut self) -> bool {
        for index in 0..self.tests.len() {
            if self.tests[index].action == Action::Run && !self.finished[index] {
                self.finished(index, &Verdict::unreported());
            }
        }
        self.report_not_run_before(self.tests.len());
        let elapsed = self.start.elapsed();
        self.tell(Event::RunFinished { elapsed });
        self.reporter.failed()
    }
}

/// After the summary, until the VM threads are gone: prints the lines for stderr they still
/// send (a guest that logs after its last test); the rest comes too late to report.
pub(crate) fn print_late_lines(notes: Receiver<Note>) {
    for note in notes {
        if let Note::Stderr(line) = note {
            eprintln!("{line}");
        }
    }
}
