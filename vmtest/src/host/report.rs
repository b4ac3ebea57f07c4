//! What a run prints, as libtest prints it: the engine hands typed [`Event`]s to a [`Reporter`],
//! which returns the text for `--format pretty|terse|json|junit`; [`list`] does the same for
//! `--list`. Nothing here does I/O or reads a clock: the engine decides, this only tells.
//!
//! libtest's own formatters (`library/test/src/formatters/`) are the reference, byte for byte.
//! Where libtest writes a string into JSON or XML without escaping it (an ignore message, a
//! failure message), this escapes it, so that the output stays well-formed.
//!
//! One deliberate adjustment: libtest runs every test in one process, so the standard panic
//! hook's hint ([`BACKTRACE_NOTE`]) appears once per run, in the output of the first test that
//! panics. vmtest runs each test in a process of its own, where the hint comes with every
//! panic; the reporter keeps it only in the first test (in the order tests finish) whose output
//! has it.

use std::fmt::Write as _;
use std::time::Duration;

/// The line the standard panic hook prints after the first panic of a process when
/// `RUST_BACKTRACE` is unset.
pub(crate) const BACKTRACE_NOTE: &str =
    "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";

/// libtest warns about a test that runs longer than this, when tests run in parallel.
pub(crate) const SLOW_TEST_WARNING: Duration = Duration::from_secs(60);

/// After how many one-character results terse output starts a new line.
const TERSE_COLUMNS: usize = 88;

/// `--format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// `test name ... ok`, one line per test.
    #[default]
    Pretty,
    /// One character per test.
    Terse,
    /// libtest's JSON events, one per line.
    Json,
    /// One JUnit XML document at the end.
    Junit,
}

/// What kind of crate the tests are in, which names JUnit's `classname` as libtest does: a
/// crate whose root file is in `src/` holds unit tests, one in `tests/` integration tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TestType {
    /// Crate root in a `src` directory.
    Unit,
    /// Crate root in a `tests` directory.
    Integration,
    /// Anywhere else.
    #[default]
    Unknown,
}

impl TestType {
    /// The type for a crate whose root file is `root` (as `file!()` gives it).
    pub(crate) fn of_crate_root(root: &str) -> TestType {
        let dir = std::path::Path::new(root).parent().unwrap_or(std::path::Path::new(""));
        if dir.ends_with("src") {
            TestType::Unit
        } else if dir.ends_with("tests") {
            TestType::Integration
        } else {
            TestType::Unknown
        }
    }
}

/// Where a test's function name is in its source, as libtest's JSON listing gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Source {
    /// The file, as `file!()` names it.
    pub path: String,
    /// 1-based line and column of the name's start.
    pub start_line: u32,
    /// See `start_line`.
    pub start_col: u32,
    /// 1-based line and column just past the name's end.
    pub end_line: u32,
    /// See `end_line`.
    pub end_col: u32,
}

/// A test as the reporter names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TestInfo {
    /// libtest's name (with `[kernel]` for a kernel matrix instance).
    pub name: String,
    /// Ignored by its attribute, after `--ignored` / `--include-ignored`.
    pub ignore: bool,
    /// The attribute's reason.
    pub ignore_message: Option<String>,
    /// `#[should_panic]`: pretty output names the mode (`test name - should panic ... ok`).
    pub should_panic: bool,
    /// Where the function is.
    pub source: Source,
}

impl TestInfo {
    fn mode(&self) -> Option<&'static str> {
        (!self.ignore && self.should_panic).then_some("should panic")
    }
}

/// How a test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Passed.
    Passed,
    /// Failed; `message` is what libtest adds as `note: <message>` (a `#[should_panic]` test
    /// that did not panic as required).
    Failed {
        /// libtest's failure message, if any.
        message: Option<String>,
    },
    /// Not run: ignored by its attribute, or skipped (`vmtest::skip`, another architecture).
    Ignored {
        /// Shown as `ignored, <reason>`.
        reason: Option<String>,
    },
}

/// Something that happened in a run, in the order it happened.
#[derive(Clone, Debug)]
pub(crate) enum Event<'a> {
    /// The run starts: `count` tests selected, `filtered_out` not.
    RunStarted {
        /// Tests that will be reported.
        count: usize,
        /// Tests the filters left out.
        filtered_out: usize,
    },
    /// A test starts (or, ignored, is about to be reported).
    Started(&'a TestInfo),
    /// A test has been running for [`SLOW_TEST_WARNING`].
    Slow(&'a TestInfo),
    /// A test ended; `output` is what it printed (empty when not captured).
    Finished {
        /// The test.
        test: &'a TestInfo,
        /// How it ended.
        outcome: &'a Outcome,
        /// Its captured stdout and stderr, in the order written.
        output: &'a [u8],
    },
    /// Every test has been reported; the run took `elapsed`.
    RunFinished {
        /// Time since the run started.
        elapsed: Duration,
    },
}

/// How the run is reported.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Settings {
    /// `--format`.
    pub format: Format,
    /// Colour the results (ANSI).
    pub color: bool,
    /// More than one test thread: pretty output names a test when its result is known rather
    /// than when it starts.
    pub multithreaded: bool,
    /// `--show-output`.
    pub show_output: bool,
    /// For JUnit's `classname`.
    pub test_type: TestType,
}

#[derive(Clone, Copy)]
enum Paint {
    Green,
    Red,
    Yellow,
}

/// Turns [`Event`]s into libtest's text; see the module docs.
pub(crate) struct Reporter {
    settings: Settings,
    total: usize,
    filtered_out: usize,
    passed: usize,
    failed: usize,
    ignored: usize,
    /// Failed tests in the order they finished, with the output shown for them.
    failures: Vec<(String, Vec<u8>)>,
    /// Passed tests likewise, for `--show-output`.
    successes: Vec<(String, Vec<u8>)>,
    /// Ignored tests with their reasons.
    ignores: Vec<(String, Option<String>)>,
    /// Terse: results written, and results on the current line.
    terse_count: usize,
    terse_column: usize,
    /// JUnit: every result, written at the end.
    junit: Vec<(String, Outcome, Vec<u8>)>,
    /// Whether a test's output already had [`BACKTRACE_NOTE`].
    backtrace_note_seen: bool,
}

impl Reporter {
    pub(crate) fn new(settings: Settings) -> Reporter {
        Reporter {
            settings,
            total: 0,
            filtered_out: 0,
            passed: 0,
            failed: 0,
            ignored: 0,
            failures: Vec::new(),
            successes: Vec::new(),
            ignores: Vec::new(),
            terse_count: 0,
            terse_column: 0,
            junit: Vec::new(),
            backtrace_note_seen: false,
        }
    }

    /// Whether any test failed so far.
    pub(crate) fn failed(&self) -> bool {
        self.failed > 0
    }

    /// The text to print for `event`.
    pub(crate) fn event(&mut self, event: Event<'_>) -> String {
        let mut out = String::new();
        match event {
            Event::RunStarted { count, filtered_out } => {
                self.total = count;
                self.filtered_out = filtered_out;
                match self.settings.format {
                    Format::Pretty | Format::Terse => {
                        let noun = if count == 1 { "test" } else { "tests" };
                        let _ = write!(out, "\nrunning {count} {noun}\n");
                    }
                    Format::Json => {
                        let _ = writeln!(
                            out,
                            r#"{{ "type": "suite", "event": "started", "test_count": {count} }}"#
                        );
                    }
                    Format::Junit => out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
                }
            }
            Event::Started(test) => match self.settings.format {
                Format::Pretty if !self.settings.multithreaded => self.test_name(&mut out, test),
                Format::Json => {
                    let _ = writeln!(
                        out,
                        r#"{{ "type": "test", "event": "started", "name": "{}" }}"#,
                        Json(&test.name)
                    );
                }
                _ => {}
            },
            Event::Slow(test) => match self.settings.format {
                Format::Pretty | Format::Terse => {
                    let _ = writeln!(
                        out,
                        "test {} has been running for over {} seconds",
                        test.name,
                        SLOW_TEST_WARNING.as_secs()
                    );
                }
                Format::Json => {
                    let _ = writeln!(
                        out,
                        r#"{{ "type": "test", "event": "timeout", "name": "{}" }}"#,
                        Json(&test.name)
                    );
                }
                Format::Junit => {}
            },
            Event::Finished { test, outcome, output } => {
                let output = self.without_repeated_backtrace_note(output);
                self.finished(&mut out, test, outcome, output);
            }
            Event::RunFinished { elapsed } => self.run_finished(&mut out, elapsed),
        }
        out
    }

    /// `output`, less [`BACKTRACE_NOTE`] when an earlier test's output had it.
    fn without_repeated_backtrace_note(&mut self, output: &[u8]) -> Vec<u8> {
        let note = BACKTRACE_NOTE.as_bytes();
        let Some(at) = output.windows(note.len()).position(|w| w == note) else {
            return output.to_vec();
        };
        if !self.backtrace_note_seen {
            self.backtrace_note_seen = true;
            return output.to_vec();
        }
        let mut kept = output[..at].to_vec();
        kept.extend_from_slice(&output[at + note.len()..]);
        kept
    }

    fn paint(&self, out: &mut String, word: &str, paint: Paint) {
        if self.settings.color {
            let code = match paint {
                Paint::Green => 32,
                Paint::Red => 31,
                Paint::Yellow => 33,
            };
            let _ = write!(out, "\x1b[{code}m{word}\x1b[0m");
        } else {
            out.push_str(word);
        }
    }

    fn test_name(&self, out: &mut String, test: &TestInfo) {
        match test.mode() {
            Some(mode) => {
                let _ = write!(out, "test {} - {mode} ... ", test.name);
            }
            None => {
                let _ = write!(out, "test {} ... ", test.name);
            }
        }
    }

    fn finished(&mut self, out: &mut String, test: &TestInfo, outcome: &Outcome, output: Vec<u8>) {
        match self.settings.format {
            Format::Pretty => {
                if self.settings.multithreaded {
                    self.test_name(out, test);
                }
                match outcome {
                    Outcome::Passed => self.paint(out, "ok", Paint::Green),
                    Outcome::Failed { .. } => self.paint(out, "FAILED", Paint::Red),
                    Outcome::Ignored { reason: Some(reason) } => {
                        self.paint(out, &format!("ignored, {reason}"), Paint::Yellow)
                    }
                    Outcome::Ignored { reason: None } => self.paint(out, "ignored", Paint::Yellow),
                }
                out.push('\n');
            }
            Format::Terse => match outcome {
                Outcome::Passed => self.terse_char(out, ".", Paint::Green),
                Outcome::Ignored { .. } => self.terse_char(out, "i", Paint::Yellow),
                Outcome::Failed { .. } => {
                    // A failure gets a line of its own, with the progress before it.
                    if self.terse_column != 0 {
                        self.terse_progress(out);
                    }
                    self.terse_count += 1;
                    let _ = write!(out, "{} --- ", test.name);
                    self.paint(out, "FAILED", Paint::Red);
                    out.push('\n');
                }
            },
            Format::Json => {
                let shown = self.settings.show_output || *outcome != Outcome::Passed;
                let stdout = if shown && !output.is_empty() {
                    format!(r#", "stdout": "{}""#, Json(&String::from_utf8_lossy(&output)))
                } else {
                    String::new()
                };
                let (event, message) = match outcome {
                    Outcome::Passed => ("ok", None),
                    Outcome::Failed { message } => ("failed", message.as_deref()),
                    Outcome::Ignored { reason } => ("ignored", reason.as_deref()),
                };
                let extra =
                    message.map(|m| format!(r#", "message": "{}""#, Json(m))).unwrap_or_default();
                let _ = writeln!(
                    out,
                    r#"{{ "type": "test", "name": "{}", "event": "{event}"{stdout}{extra} }}"#,
                    Json(&test.name)
                );
            }
            Format::Junit => self.junit.push((test.name.clone(), outcome.clone(), output.clone())),
        }
        match outcome {
            Outcome::Passed => {
                self.passed += 1;
                self.successes.push((test.name.clone(), output));
            }
            Outcome::Failed { message } => {
                self.failed += 1;
                let mut shown = output;
                if let Some(message) = message {
                    shown.extend_from_slice(format!("note: {message}").as_bytes());
                }
                self.failures.push((test.name.clone(), shown));
            }
            Outcome::Ignored { reason } => {
                self.ignored += 1;
                self.ignores.push((test.name.clone(), reason.clone()));
            }
        }
    }

    fn terse_char(&mut self, out: &mut String, c: &str, paint: Paint) {
        self.paint(out, c, paint);
        self.terse_count += 1;
        self.terse_column += 1;
        if self.terse_column % TERSE_COLUMNS == TERSE_COLUMNS - 1 {
            self.terse_progress(out);
        }
    }

    fn terse_progress(&mut self, out: &mut String) {
        let _ = writeln!(out, " {}/{}", self.terse_count, self.total);
        self.terse_column = 0;
    }

    fn run_finished(&mut self, out: &mut String, elapsed: Duration) {
        match self.settings.format {
            Format::Pretty | Format::Terse => {
                if self.settings.show_output {
                    sections(out, "successes", &self.successes);
                }
                if self.failed > 0 {
                    sections(out, "failures", &self.failures);
                }
                out.push_str("\ntest result: ");
                if self.failed == 0 {
                    self.paint(out, "ok", Paint::Green);
                } else {
                    self.paint(out, "FAILED", Paint::Red);
                }
                let _ = write!(
                    out,
                    ". {} passed; {} failed; {} ignored; 0 measured; {} filtered out; \
                     finished in {:.2}s\n\n",
                    self.passed,
                    self.failed,
                    self.ignored,
                    self.filtered_out,
                    elapsed.as_secs_f64()
                );
                // Terse names the reason of a lone ignored test.
                if self.settings.format == Format::Terse && self.total == 1 {
                    if let [(name, Some(reason))] = self.ignores.as_slice() {
                        let _ = write!(out, "test: {name}, ignore_message: {reason}\n\n");
                    }
                }
            }
            Format::Json => {
                let event = if self.failed == 0 { "ok" } else { "failed" };
                let _ = writeln!(
                    out,
                    r#"{{ "type": "suite", "event": "{event}", "passed": {}, "failed": {}, "ignored": {}, "measured": 0, "filtered_out": {}, "exec_time": {} }}"#,
                    self.passed,
                    self.failed,
                    self.ignored,
                    self.filtered_out,
                    elapsed.as_secs_f64()
                );
            }
            Format::Junit => self.junit_document(out),
        }
    }

    fn junit_document(&mut self, out: &mut String) {
        let _ = write!(
            out,
            r#"<testsuites><testsuite name="test" package="test" id="0" errors="0" failures="{}" tests="{}" skipped="{}" >"#,
            self.failed, self.total, self.ignored
        );
        for (name, outcome, output) in std::mem::take(&mut self.junit) {
            let (class, test) = junit_names(&name, self.settings.test_type);
            let (class, test) = (Xml(&class), Xml(&test));
            let system_out = |out: &mut String| {
                if !output.is_empty() {
                    out.push_str("<system-out>");
                    out.push_str(&cdata(&String::from_utf8_lossy(&output)));
                    out.push_str("</system-out>");
                }
            };
            match outcome {
                Outcome::Ignored { .. } => {}
                Outcome::Failed { message } => {
                    let _ = write!(out, r#"<testcase classname="{class}" name="{test}" time="0">"#);
                    match message {
                        Some(m) => {
                            let _ =
                                write!(out, r#"<failure message="{}" type="assert"/>"#, Xml(&m));
                        }
                        None => out.push_str(r#"<failure type="assert"/>"#),
                    }
                    system_out(out);
                    out.push_str("</testcase>");
                }
                Outcome::Passed => {
                    let _ = write!(out, r#"<testcase classname="{class}" name="{test}" time="0""#);
                    if output.is_empty() || !self.settings.show_output {
                        out.push_str("/>");
                    } else {
                        out.push('>');
                        system_out(out);
                        out.push_str("</testcase>");
                    }
                }
            }
        }
        out.push_str("<system-out/><system-err/></testsuite></testsuites>\n");
    }
}

/// libtest's `failures:` / `successes:` section: the outputs in the order the tests finished,
/// then the names sorted.
fn sections(out: &mut String, title: &str, tests: &[(String, Vec<u8>)]) {
    let _ = write!(out, "\n{title}:\n");
    let mut outputs = String::new();
    for (name, output) in tests {
        if !output.is_empty() {
            let _ =
                writeln!(outputs, "---- {name} stdout ----\n{}", String::from_utf8_lossy(output));
        }
    }
    if !outputs.is_empty() {
        out.push('\n');
        out.push_str(&outputs);
    }
    let _ = write!(out, "\n{title}:\n");
    let mut names: Vec<&str> = tests.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    for name in names {
        let _ = writeln!(out, "    {name}");
    }
}

/// JUnit's `classname` and `name` for a test, as libtest splits them.
fn junit_names(name: &str, test_type: TestType) -> (String, String) {
    match test_type {
        TestType::Unit => match name.rsplit_once("::") {
            Some((path, test)) => (path.to_owned(), test.to_owned()),
            None => ("crate".to_owned(), name.to_owned()),
        },
        TestType::Integration => ("integration".to_owned(), name.to_owned()),
        TestType::Unknown => ("unknown".to_owned(), name.to_owned()),
    }
}

/// Output as libtest puts it into JUnit: CDATA sections on one line, newlines as `&#xA;`
/// between them, the sequences CDATA cannot hold split apart.
fn cdata(text: &str) -> String {
    let escaped = text
        .replace("]]>", "]]]]><![CDATA[>")
        .replace("<?", "<]]><![CDATA[?")
        .replace('\n', "]]>&#xA;<![CDATA[")
        .replace("<![CDATA[]]>", "");
    format!("<![CDATA[{escaped}]]>")
}

/// A string escaped for a JSON string literal, as libtest escapes names and output.
struct Json<'a>(&'a str);

impl std::fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\u{8}' => f.write_str("\\b")?,
                '\t' => f.write_str("\\t")?,
                '\n' => f.write_str("\\n")?,
                '\u{c}' => f.write_str("\\f")?,
                '\r' => f.write_str("\\r")?,
                c if c < ' ' || c == '\u{7f}' => write!(f, "\\u{:04x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A string escaped for an XML attribute value.
struct Xml<'a>(&'a str);

impl std::fmt::Display for Xml<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\n' => f.write_str("&#xA;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `--list` output for `tests` (already filtered).
pub(crate) fn list(format: Format, tests: &[TestInfo]) -> String {
    let mut out = String::new();
    match format {
        Format::Pretty | Format::Junit | Format::Terse => {
            for test in tests {
                let _ = writeln!(out, "{}: test", test.name);
            }
            if format != Format::Terse {
                if !tests.is_empty() {
                    out.push('\n');
                }
                let noun = if tests.len() == 1 { "test" } else { "tests" };
                let _ = writeln!(out, "{} {noun}, 0 benchmarks", tests.len());
            }
        }
        Format::Json => {
            out.push_str("{ \"type\": \"suite\", \"event\": \"discovery\" }\n");
            for test in tests {
                let s = &test.source;
                let _ = writeln!(
                    out,
                    r#"{{ "type": "test", "event": "discovered", "name": "{}", "ignore": {}, "ignore_message": "{}", "source_path": "{}", "start_line": {}, "start_col": {}, "end_line": {}, "end_col": {} }}"#,
                    Json(&test.name),
                    test.ignore,
                    Json(test.ignore_message.as_deref().unwrap_or("")),
                    Json(&s.path),
                    s.start_line,
                    s.start_col,
                    s.end_line,
                    s.end_col
                );
            }
            let ignored = tests.iter().filter(|t| t.ignore).count();
            let _ = writeln!(
                out,
                r#"{{ "type": "suite", "event": "completed", "tests": {n}, "benchmarks": 0, "total": {n}, "ignored": {ignored} }}"#,
                n = tests.len()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
