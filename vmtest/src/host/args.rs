//! libtest's command line: the options `cargo test -- ...` hands a test binary, parsed by
//! libtest's rules (getopts): `--name value` or `--name=value`, `-q`, `-Z value` or `-Zvalue`,
//! free arguments are filters wherever they stand, `--` ends the options. Errors read as
//! libtest's, and the caller prints them as `error: ...` and exits 101, as libtest does.
//!
//! The unstable options libtest takes only with `-Z unstable-options` (`--format json`,
//! `--format junit`, `--exclude-should-panic`, `--force-run-in-process`) are accepted with or
//! without it. Options vmtest cannot honour (`--fail-fast`, `--shuffle`, `--report-time`, ...)
//! are refused by name rather than ignored.

use crate::host::report::Format;

/// `--ignored` / `--include-ignored`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RunIgnored {
    /// Neither: `#[ignore]` tests are reported ignored.
    #[default]
    No,
    /// `--include-ignored`: they run with the others.
    Yes,
    /// `--ignored`: only they run.
    Only,
}

/// `--color`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Color {
    /// Colour when stdout is a terminal and output is captured.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// What the command line asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `--list`: print the selected tests, run nothing.
    pub list: bool,
    /// Free arguments: a test is selected when its name contains (or with `--exact`, equals)
    /// any of them.
    pub filters: Vec<String>,
    /// `--exact`: filters and `--skip` match whole names.
    pub exact: bool,
    /// `--skip`: tests whose names match any of these are left out.
    pub skip: Vec<String>,
    /// `--ignored` / `--include-ignored`.
    pub run_ignored: RunIgnored,
    /// `--exclude-should-panic`.
    pub exclude_should_panic: bool,
    /// `false` with `--bench` (and no `--test`): every test is reported ignored, as libtest does
    /// when asked for benchmarks.
    pub run_tests: bool,
    /// `--nocapture` / `--no-capture` / `RUST_TEST_NOCAPTURE`: output streams live.
    pub nocapture: bool,
    /// `--show-output`: the captured output of passing tests is printed at the end.
    pub show_output: bool,
    /// `--format`, or terse for `-q`.
    pub format: Format,
    /// `--color`.
    pub color: Color,
    /// `--test-threads`.
    pub test_threads: Option<usize>,
}

/// The outcome of parsing: options to run with, or the usage text `--help` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Run (or list) with these options.
    Run(Options),
    /// `-h` / `--help`: print this and exit 0.
    Help(String),
}

/// How an option takes its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    One,
    Many,
}

/// libtest's options: (short, long, value).
const SPECS: &[(Option<char>, &str, Takes)] = &[
    (None, "include-ignored", Takes::Nothing),
    (None, "ignored", Takes::Nothing),
    (None, "force-run-in-process", Takes::Nothing),
    (None, "exclude-should-panic", Takes::Nothing),
    (None, "test", Takes::Nothing),
    (None, "bench", Takes::Nothing),
    (None, "list", Takes::Nothing),
    (None, "fail-fast", Takes::Nothing),
    (Some('h'), "help", Takes::Nothing),
    (None, "logfile", Takes::One),
    (None, "no-capture", Takes::Nothing),
    (None, "nocapture", Takes::Nothing),
    (None, "test-threads", Takes::One),
    (None, "skip", Takes::Many),
    (Some('q'), "quiet", Takes::Nothing),
    (None, "exact", Takes::Nothing),
    (None, "color", Takes::One),
    (None, "format", Takes::One),
    (None, "show-output", Takes::Nothing),
    (Some('Z'), "", Takes::One),
    (None, "report-time", Takes::Nothing),
    (None, "ensure-time", Takes::Nothing),
    (None, "shuffle", Takes::Nothing),
    (None, "shuffle-seed", Takes::One),
];

/// libtest options that vmtest refuses, with why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("fail-fast", "tests in a VM run to the end of their group"),
    ("logfile", "it is deprecated in libtest"),
    ("report-time", "test times inside a VM under emulation mean little"),
    ("ensure-time", "test times inside a VM under emulation mean little"),
    ("shuffle", "tests run in the order their VM runs them"),
    ("shuffle-seed", "tests run in the order their VM runs them"),
];

/// The options given, by name, and the free arguments.
#[derive(Default)]
struct Matches {
    given: Vec<(&'static str, Option<String>)>,
    free: Vec<String>,
}

impl Matches {
    fn present(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| *n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.given.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_deref())
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.given.iter().filter(|(n, _)| *n == name).filter_map(|(_, v)| v.clone()).collect()
    }
}

/// The display name of an option in getopts' messages: the long name, else the short one.
fn display_name(spec: &(Option<char>, &'static str, Takes)) -> String {
    match spec {
        (_, long, _) if !long.is_empty() => (*long).to_owned(),
        (Some(short), _, _) => short.to_string(),
        _ => String::new(),
    }
}

fn getopts(args: &[String]) -> Result<Matches, String> {
    let mut matches = Matches::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            matches.free.extend(args.by_ref().cloned());
            break;
        }
        let (spec, inline) = if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (long, None),
            };
            let spec = SPECS
                .iter()
                .find(|(_, l, _)| !l.is_empty() && *l == name)
                .ok_or_else(|| format!("Unrecognized option: '{name}'"))?;
            (spec, inline)
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let letter = chars.next().unwrap_or_default();
            let rest: String = chars.collect();
            let spec = SPECS
                .iter()
                .find(|(s, _, _)| *s == Some(letter))
                .ok_or_else(|| format!("Unrecognized option: '{letter}'"))?;
            let inline = (!rest.is_empty()).then_some(rest);
            if spec.2 == Takes::Nothing && inline.is_some() {
                return Err(format!("Unrecognized option: '{short}'"));
            }
            (spec, inline)
        } else {
            matches.free.push(arg.clone());
            continue;
        };
        let name = display_name(spec);
        let value = match (spec.2, inline) {
            (Takes::Nothing, Some(_)) => {
                return Err(format!("Option '{name}' does not take an argument"))
            }
            (Takes::Nothing, None) => None,
            (_, Some(value)) => Some(value),
            (_, None) => Some(
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("Argument to option '{name}' missing"))?,
            ),
        };
        let key = if spec.1.is_empty() { "Z" } else { spec.1 };
        if spec.2 != Takes::Many && matches.present(key) {
            return Err(format!("Option '{name}' given more than once"));
        }
        matches.given.push((key, value));
    }
    Ok(matches)
}

/// Parses `args` (without the program name) as libtest would; `env` reads the environment
/// (`RUST_TEST_NOCAPTURE`). `program` names the binary in the usage text.
pub(crate) fn parse(
    program: &str,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let matches = getopts(args)?;
    if matches.present("help") {
        return Ok(Parsed::Help(usage(program)));
    }
    if let Some(z) = matches.value("Z") {
        if z != "unstable-options" {
            return Err("Unrecognized option to `Z`".to_owned());
        }
    }
    if let Some((name, why)) = UNSUPPORTED.iter().find(|(name, _)| matches.present(name)) {
        return Err(format!("vmtest does not support `--{name}`: {why}"));
    }
    let run_ignored = match (matches.present("include-ignored"), matches.present("ignored")) {
        (true, true) => {
            return Err("the options --include-ignored and --ignored are mutually exclusive".into())
        }
        (true, false) => RunIgnored::Yes,
        (false, true) => RunIgnored::Only,
        (false, false) => RunIgnored::No,
    };
    let test_threads = match matches.value("test-threads") {
        None => None,
        Some(n) => match n.parse::<usize>() {
            Ok(0) => return Err("argument for --test-threads must not be 0".to_owned()),
            Ok(n) => Some(n),
            Err(e) => {
                return Err(format!(
                    "argument for --test-threads must be a number > 0 (error: {e})"
                ))
            }
        },
    };
    let color = match matches.value("color") {
        None | Some("auto") => Color::Auto,
        Some("always") => Color::Always,
        Some("never") => Color::Never,
        Some(v) => {
            return Err(format!("argument for --color must be auto, always, or never (was {v})"))
        }
    };
    let format = match matches.value("format") {
        None if matches.present("quiet") => Format::Terse,
        None | Some("pretty") => Format::Pretty,
        Some("terse") => Format::Terse,
        Some("json") => Format::Json,
        Some("junit") => Format::Junit,
        Some(v) => {
            return Err(format!(
                "argument for --format must be pretty, terse, json or junit (was {v})"
            ))
        }
    };
    let nocapture = matches.present("nocapture")
        || matches.present("no-capture")
        || env("RUST_TEST_NOCAPTURE").is_some_and(|v| v != "0");
    let bench = matches.present("bench");
    Ok(Parsed::Run(Options {
        list: matches.present("list"),
        filters: matches.free.clone(),
        exact: matches.present("exact"),
        skip: matches.values("skip"),
        run_ignored,
        exclude_should_panic: matches.present("exclude-should-panic"),
        run_tests: !bench || matches.present("test"),
        nocapture,
        show_output: matches.present("show-output"),
        format,
        color,
        test_threads,
    }))
}

/// The `--help` text.
fn usage(program: &str) -> String {
    format!(
        "Usage: {program} [OPTIONS] [FILTERS...]

A vmtest test binary: it runs its #[vm_test]s in Linux VMs and takes libtest's options.

Options:
        --include-ignored   Run ignored and not ignored tests
        --ignored           Run only ignored tests
        --exclude-should-panic
                            Leave out tests marked #[should_panic]
        --test              Run tests and not benchmarks
        --bench             Run benchmarks instead of tests (there are none: every
                            test is reported ignored)
        --list              List all tests and benchmarks
    -h, --help              Display this message
        --no-capture        Stream each test's stdout/stderr as it runs (also
                            --nocapture, RUST_TEST_NOCAPTURE)
        --test-threads n_threads
                            Number of tests reported at once; also caps the VMs run
                            at once
        --skip FILTER       Skip tests whose names contain FILTER (may be repeated)
    -q, --quiet             One character per test; alias of --format=terse
        --exact             Match filters exactly rather than by substring
        --color auto|always|never
                            Colour the results (auto: when stdout is a terminal)
        --format pretty|terse|json|junit
                            Output format; json and junit do not need
                            -Z unstable-options here
        --show-output       Show the captured output of passing tests
    -Z unstable-options     Accepted for libtest compatibility

A FILTER selects the tests whose names contain it; several select the tests that
match any. Tests sharing a VM configuration run one after another in one VM.
See the vmtest README for the attribute keys and VMTEST_* variables.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Parsed, String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        parse("t", &args, |_| None)
    }

    fn options(args: &[&str]) -> Options {
        match parse_args(args) {
            Ok(Parsed::Run(options)) => options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_libtests() {
        let o = options(&[]);
        assert_eq!(o.format, Format::Pretty);
        assert!(o.run_tests && !o.list && !o.nocapture && !o.show_output);
        assert_eq!(o.run_ignored, RunIgnored::No);
        assert_eq!(o.test_threads, None);
    }

    #[test]
    fn filters_stand_anywhere_and_after_double_dash() {
        let o = options(&["a", "--exact", "b", "--skip", "c", "--skip=d", "--", "--list"]);
        assert_eq!(o.filters, ["a", "b", "--list"]);
        assert_eq!(o.skip, ["c", "d"]);
        assert!(o.exact && !o.list);
    }

    #[test]
    fn formats_with_and_without_unstable_options() {
        assert_eq!(options(&["--format", "json"]).format, Format::Json);
        assert_eq!(options(&["-Z", "unstable-options", "--format=junit"]).format, Format::Junit);
        assert_eq!(options(&["-Zunstable-options", "--format", "terse"]).format, Format::Terse);
        assert_eq!(options(&["-q"]).format, Format::Terse);
        assert_eq!(options(&["-q", "--format", "json"]).format, Format::Json);
        assert_eq!(
            parse_args(&["--format", "xml"]).unwrap_err(),
            "argument for --format must be pretty, terse, json or junit (was xml)"
        );
        assert_eq!(parse_args(&["-Z", "bogus"]).unwrap_err(), "Unrecognized option to `Z`");
    }

    #[test]
    fn errors_read_as_getopts_and_libtest() {
        assert_eq!(parse_args(&["--bogus"]).unwrap_err(), "Unrecognized option: 'bogus'");
        assert_eq!(parse_args(&["-x"]).unwrap_err(), "Unrecognized option: 'x'");
        assert_eq!(
            parse_args(&["--test-threads"]).unwrap_err(),
            "Argument to option 'test-threads' missing"
        );
        assert_eq!(
            parse_args(&["--list=yes"]).unwrap_err(),
            "Option 'list' does not take an argument"
        );
        assert_eq!(
            parse_args(&["--format", "json", "--format", "terse"]).unwrap_err(),
            "Option 'format' given more than once"
        );
        assert_eq!(
            parse_args(&["--test-threads", "0"]).unwrap_err(),
            "argument for --test-threads must not be 0"
        );
        assert!(parse_args(&["--test-threads", "x"])
            .unwrap_err()
            .starts_with("argument for --test-threads must be a number > 0 (error: "));
        assert_eq!(
            parse_args(&["--ignored", "--include-ignored"]).unwrap_err(),
            "the options --include-ignored and --ignored are mutually exclusive"
        );
        assert!(parse_args(&["--color", "red"]).unwrap_err().contains("(was red)"));
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for flag in ["--fail-fast", "--shuffle", "--report-time", "--ensure-time"] {
            let err = parse_args(&[flag]).unwrap_err();
            assert!(err.starts_with(&format!("vmtest does not support `{flag}`")), "{err}");
        }
        assert!(parse_args(&["--shuffle-seed", "3"]).unwrap_err().contains("--shuffle-seed"));
    }

    #[test]
    fn capture_threads_ignored_and_bench() {
        let o = options(&["--nocapture", "--test-threads=1", "--include-ignored", "--show-output"]);
        assert!(o.nocapture && o.show_output);
        assert_eq!(o.test_threads, Some(1));
        assert_eq!(o.run_ignored, RunIgnored::Yes);
        assert!(options(&["--no-capture"]).nocapture);
        assert_eq!(options(&["--ignored"]).run_ignored, RunIgnored::Only);
        assert!(!options(&["--bench"]).run_tests);
        assert!(options(&["--bench", "--test"]).run_tests);
        assert_eq!(options(&["--color", "never"]).color, Color::Never);
        let env = |name: &str| (name == "RUST_TEST_NOCAPTURE").then(|| "1".to_owned());
        let Ok(Parsed::Run(o)) = parse("t", &[], env) else { panic!() };
        assert!(o.nocapture);
        let env0 = |name: &str| (name == "RUST_TEST_NOCAPTURE").then(|| "0".to_owned());
        let Ok(Parsed::Run(o)) = parse("t", &[], env0) else { panic!() };
        assert!(!o.nocapture);
    }

    #[test]
    fn help_is_usage() {
        let Ok(Parsed::Help(text)) = parse_args(&["--help"]) else { panic!() };
        assert!(text.starts_with("Usage: t [OPTIONS] [FILTERS...]"), "{text}");
        assert!(matches!(parse_args(&["-h", "--bogus-after"]), Err(_) | Ok(Parsed::Help(_))));
    }
}
