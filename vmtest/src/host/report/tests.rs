//! Golden strings: what libtest printed for the same tests (a test binary built with
//! `rustc --test`, run with `RUST_BACKTRACE=0`), thread ids and times aside.

use super::*;

const NOTE: &str = BACKTRACE_NOTE;

fn info(name: &str) -> TestInfo {
    TestInfo { name: name.to_owned(), ..TestInfo::default() }
}

/// The five tests: `a` fails an assertion after printing, `b` returns `Err`, `c` should panic
/// but does not, `d` should panic and does, `e` is ignored with a reason.
struct Five {
    a: TestInfo,
    b: TestInfo,
    c: TestInfo,
    d: TestInfo,
    e: TestInfo,
}

fn five() -> Five {
    let should_panic = |name| TestInfo { should_panic: true, ..info(name) };
    Five {
        a: info("a"),
        b: info("b"),
        c: should_panic("c"),
        d: should_panic("d"),
        e: TestInfo { ignore: true, ignore_message: Some("why".into()), ..info("e") },
    }
}

fn a_output() -> String {
    // Each test runs in a process of its own in the guest, so each panic brings the note.
    format!(
        "out\n\nthread 'a' (1) panicked at t.rs:1:35:\nassertion `left == right` failed\n  \
         left: 1\n right: 2\n{NOTE}"
    )
}

fn d_output() -> String {
    format!("\nthread 'd' (2) panicked at t.rs:4:34:\nx\n{NOTE}")
}

fn failed() -> Outcome {
    Outcome::Failed { message: None }
}

fn did_not_panic() -> Outcome {
    Outcome::Failed { message: Some("test did not panic as expected at t.rs:3:28".into()) }
}

/// Reports the five in name order, one at a time (`--test-threads=1`).
fn serial(settings: Settings) -> String {
    let t = five();
    let ignored = Outcome::Ignored { reason: Some("why".into()) };
    let runs: [(&TestInfo, Outcome, String); 5] = [
        (&t.a, failed(), a_output()),
        (&t.b, failed(), "Error: \"boom\"\n".into()),
        (&t.c, did_not_panic(), String::new()),
        (&t.d, Outcome::Passed, d_output()),
        (&t.e, ignored, String::new()),
    ];
    let mut reporter = Reporter::new(settings);
    let mut out = reporter.event(Event::RunStarted { count: 5, filtered_out: 0 });
    for (test, outcome, output) in &runs {
        out += &reporter.event(Event::Started(test));
        out += &reporter.event(Event::Finished { test, outcome, output: output.as_bytes() });
    }
    out += &reporter.event(Event::RunFinished { elapsed: Duration::from_millis(240) });
    assert!(reporter.failed());
    out
}

fn settings(format: Format) -> Settings {
    Settings { format, ..Settings::default() }
}

const PRETTY_FAILURES: &str = "
failures:

---- a stdout ----
out

thread 'a' (1) panicked at t.rs:1:35:
assertion `left == right` failed
  left: 1
 right: 2
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace

---- b stdout ----
Error: \"boom\"

---- c stdout ----
note: test did not panic as expected at t.rs:3:28

failures:
    a
    b
    c

test result: FAILED. 1 passed; 3 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.24s

";

#[test]
fn pretty_serial() {
    let expected = format!(
        "
running 5 tests
test a ... FAILED
test b ... FAILED
test c - should panic ... FAILED
test d - should panic ... ok
test e ... ignored, why
{PRETTY_FAILURES}"
    );
    assert_eq!(serial(settings(Format::Pretty)), expected);
}

#[test]
fn pretty_parallel_names_a_test_with_its_result() {
    let settings = Settings { multithreaded: true, ..settings(Format::Pretty) };
    let t = five();
    let mut reporter = Reporter::new(settings);
    let mut out = reporter.event(Event::RunStarted { count: 1, filtered_out: 4 });
    out += &reporter.event(Event::Started(&t.d));
    out += &reporter.event(Event::Slow(&t.d));
    out += &reporter.event(Event::Finished {
        test: &t.d,
        outcome: &Outcome::Passed,
        output: d_output().as_bytes(),
    });
    out += &reporter.event(Event::RunFinished { elapsed: Duration::from_millis(1) });
    assert_eq!(
        out,
        "
running 1 test
test d has been running for over 60 seconds
test d - should panic ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 0.00s

"
    );
    assert!(!reporter.failed());
}

#[test]
fn terse_serial() {
    let expected = format!(
        "
running 5 tests
a --- FAILED
b --- FAILED
c --- FAILED
.i
{}",
        PRETTY_FAILURES.strip_prefix('\n').unwrap()
    );
    assert_eq!(serial(settings(Format::Terse)), expected);
}

#[test]
fn terse_progress_and_a_lone_ignored_test() {
    let t = five();
    let mut reporter = Reporter::new(settings(Format::Terse));
    let mut out = reporter.event(Event::RunStarted { count: 3, filtered_out: 0 });
    let ok = Outcome::Passed;
    out += &reporter.event(Event::Finished { test: &t.b, outcome: &ok, output: b"" });
    out += &reporter.event(Event::Finished { test: &t.a, outcome: &failed(), output: b"" });
    out += &reporter.event(Event::Finished { test: &t.b, outcome: &ok, output: b"" });
    assert_eq!(out, "\nrunning 3 tests\n. 1/3\na --- FAILED\n.");

    let mut reporter = Reporter::new(settings(Format::Terse));
    let mut out = reporter.event(Event::RunStarted { count: 1, filtered_out: 4 });
    let ignored = Outcome::Ignored { reason: Some("why".into()) };
    out += &reporter.event(Event::Finished { test: &t.e, outcome: &ignored, output: b"" });
    out += &reporter.event(Event::RunFinished { elapsed: Duration::ZERO });
    assert_eq!(
        out,
        "
running 1 test
i
test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 4 filtered out; finished in 0.00s

test: e, ignore_message: why

"
    );
}

#[test]
fn json_serial() {
    let out = serial(settings(Format::Json));
    let expected = r#"{ "type": "suite", "event": "started", "test_count": 5 }
{ "type": "test", "event": "started", "name": "a" }
{ "type": "test", "name": "a", "event": "failed", "stdout": "out\n\nthread 'a' (1) panicked at t.rs:1:35:\nassertion `left == right` failed\n  left: 1\n right: 2\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n" }
{ "type": "test", "event": "started", "name": "b" }
{ "type": "test", "name": "b", "event": "failed", "stdout": "Error: \"boom\"\n" }
{ "type": "test", "event": "started", "name": "c" }
{ "type": "test", "name": "c", "event": "failed", "message": "test did not panic as expected at t.rs:3:28" }
{ "type": "test", "event": "started", "name": "d" }
{ "type": "test", "name": "d", "event": "ok" }
{ "type": "test", "event": "started", "name": "e" }
{ "type": "test", "name": "e", "event": "ignored", "message": "why" }
{ "type": "suite", "event": "failed", "passed": 1, "failed": 3, "ignored": 1, "measured": 0, "filtered_out": 0, "exec_time": 0.24 }
"#;
    assert_eq!(out, expected);
}

#[test]
fn junit_serial() {
    let out = serial(settings(Format::Junit));
    let expected = concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?><testsuites><testsuite name="test" package="test" id="0" errors="0" failures="3" tests="5" skipped="1" >"#,
        r#"<testcase classname="unknown" name="a" time="0"><failure type="assert"/><system-out><![CDATA[out]]>&#xA;&#xA;<![CDATA[thread 'a' (1) panicked at t.rs:1:35:]]>&#xA;<![CDATA[assertion `left == right` failed]]>&#xA;<![CDATA[  left: 1]]>&#xA;<![CDATA[ right: 2]]>&#xA;<![CDATA[note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace]]>&#xA;<![CDATA[]]></system-out></testcase>"#,
        r#"<testcase classname="unknown" name="b" time="0"><failure type="assert"/><system-out><![CDATA[Error: "boom"]]>&#xA;<![CDATA[]]></system-out></testcase>"#,
        r#"<testcase classname="unknown" name="c" time="0"><failure message="test did not panic as expected at t.rs:3:28" type="assert"/></testcase>"#,
        r#"<testcase classname="unknown" name="d" time="0"/><system-out/><system-err/></testsuite></testsuites>"#,
        "\n"
    );
    assert_eq!(out, expected);
}

#[test]
fn junit_class_names_follow_the_crate_root() {
    assert_eq!(TestType::of_crate_root("tests/it.rs"), TestType::Integration);
    assert_eq!(TestType::of_crate_root("/x/crate/tests/vm.rs"), TestType::Integration);
    assert_eq!(TestType::of_crate_root("src/main.rs"), TestType::Unit);
    assert_eq!(TestType::of_crate_root("tests/vm/main.rs"), TestType::Unknown);
    assert_eq!(junit_names("a::b::c", TestType::Unit), ("a::b".into(), "c".into()));
    assert_eq!(junit_names("c", TestType::Unit), ("crate".into(), "c".into()));
    assert_eq!(junit_names("a::c", TestType::Integration), ("integration".into(), "a::c".into()));
}

#[test]
fn show_output_lists_successes_and_keeps_the_note_on_the_first_panic_only() {
    // `d` finishes first here, so it keeps the note and `a` loses it.
    let t = five();
    let settings = Settings { show_output: true, multithreaded: true, ..settings(Format::Pretty) };
    let mut reporter = Reporter::new(settings);
    let mut out = reporter.event(Event::RunStarted { count: 2, filtered_out: 3 });
    out += &reporter.event(Event::Finished {
        test: &t.d,
        outcome: &Outcome::Passed,
        output: d_output().as_bytes(),
    });
    out += &reporter.event(Event::Finished {
        test: &t.a,
        outcome: &failed(),
        output: a_output().as_bytes(),
    });
    out += &reporter.event(Event::RunFinished { elapsed: Duration::ZERO });
    let expected = format!(
        "
running 2 tests
test d - should panic ... ok
test a ... FAILED

successes:

---- d stdout ----

thread 'd' (2) panicked at t.rs:4:34:
x
{NOTE}

successes:
    d

failures:

---- a stdout ----
out

thread 'a' (1) panicked at t.rs:1:35:
assertion `left == right` failed
  left: 1
 right: 2


failures:
    a

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 0.00s

"
    );
    assert_eq!(out, expected);
}

#[test]
fn colour_paints_the_result_words() {
    let t = five();
    let settings = Settings { color: true, ..settings(Format::Pretty) };
    let mut reporter = Reporter::new(settings);
    let out = reporter.event(Event::Finished { test: &t.a, outcome: &failed(), output: b"" });
    assert_eq!(out, "\x1b[31mFAILED\x1b[0m\n");
}

#[test]
fn escapes_json_and_xml() {
    assert_eq!(Json("a\"b\\c\n\t\u{1}\u{7f}é").to_string(), r#"a\"b\\c\n\t\u0001\u007fé"#);
    assert_eq!(Xml("<a & \"b\"\n>").to_string(), "&lt;a &amp; &quot;b&quot;&#xA;&gt;");
    assert_eq!(cdata("x]]>y<?z"), "<![CDATA[x]]]]><![CDATA[>y<]]><![CDATA[?z]]>");
    assert_eq!(cdata("\n"), "<![CDATA[]]>&#xA;<![CDATA[]]>");
}

#[test]
fn lists_as_libtest() {
    let mut t = five();
    t.a.source =
        Source { path: "t.rs".into(), start_line: 1, start_col: 12, end_line: 1, end_col: 13 };
    t.e.source =
        Source { path: "t.rs".into(), start_line: 5, start_col: 30, end_line: 5, end_col: 31 };
    let tests = [t.a, t.e];
    assert_eq!(list(Format::Pretty, &tests), "a: test\ne: test\n\n2 tests, 0 benchmarks\n");
    assert_eq!(list(Format::Junit, &tests[..1]), "a: test\n\n1 test, 0 benchmarks\n");
    assert_eq!(list(Format::Pretty, &[]), "0 tests, 0 benchmarks\n");
    assert_eq!(list(Format::Terse, &tests), "a: test\ne: test\n");
    assert_eq!(
        list(Format::Json, &tests),
        r#"{ "type": "suite", "event": "discovery" }
{ "type": "test", "event": "discovered", "name": "a", "ignore": false, "ignore_message": "", "source_path": "t.rs", "start_line": 1, "start_col": 12, "end_line": 1, "end_col": 13 }
{ "type": "test", "event": "discovered", "name": "e", "ignore": true, "ignore_message": "why", "source_path": "t.rs", "start_line": 5, "start_col": 30, "end_line": 5, "end_col": 31 }
{ "type": "suite", "event": "completed", "tests": 2, "benchmarks": 0, "total": 2, "ignored": 1 }
"#
    );
}
