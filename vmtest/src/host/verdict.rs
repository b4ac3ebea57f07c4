//! How a test went, decided on the host: [`Verdict`], made from what the guest reported
//! ([`Report`]) or from what happened to its VM, and every failure text vmtest itself writes
//! (an odd exit, a timeout, a kernel splat, a dead VM, a test the guest never reported).

use std::path::Path;
use std::time::Duration;

use vmtest_init::protocol::Outcome;

use crate::host::report;

/// How a test went, as the reporter tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The test's own result, told exactly as libtest tells it: passed, failed (a panic, an
    /// `Err`, no panic where one was required) or ignored (skipped), with what it printed.
    Own {
        /// Passed, failed or ignored.
        outcome: report::Outcome,
        /// What the test printed, when captured.
        output: Vec<u8>,
    },
    /// A failure vmtest explains: a timeout, a dead VM, a kernel splat, an odd exit. Notes
    /// about the test's files go into `output` too, rather than to stderr.
    Explained {
        /// libtest's failure message, if the test gave one.
        message: Option<String>,
        /// What the test printed (when captured), then vmtest's text.
        output: Vec<u8>,
    },
}

impl Verdict {
    /// A failure vmtest explains with `text` alone.
    pub(crate) fn explained(text: &str) -> Verdict {
        let mut output = text.as_bytes().to_vec();
        if !output.ends_with(b"\n") {
            output.push(b'\n');
        }
        Verdict::Explained { message: None, output }
    }

    /// A test the guest ended without reporting.
    pub(crate) fn unreported() -> Verdict {
        Verdict::explained("the guest did not report this test")
    }

    /// A test that never ran because its VM could not: `problem` says why.
    pub(crate) fn not_run(problem: &str) -> Verdict {
        Verdict::explained(&format!("not run: {problem}"))
    }

    /// The test that was running when its VM failed; `report` says how, with the console.
    pub(crate) fn vm_failed(report: &str) -> Verdict {
        Verdict::explained(&format!("the VM failed while this test ran: {report}"))
    }

    /// The outcome the reporter tells.
    pub(crate) fn outcome(&self) -> report::Outcome {
        match self {
            Verdict::Own { outcome, .. } => outcome.clone(),
            Verdict::Explained { message, .. } => {
                report::Outcome::Failed { message: message.clone() }
            }
        }
    }

    /// What the test printed, then any text vmtest added.
    pub(crate) fn output(&self) -> &[u8] {
        match self {
            Verdict::Own { output, .. } | Verdict::Explained { output, .. } => output,
        }
    }
}

/// What the guest reported about one test.
pub(crate) struct Report<'a> {
    /// How the test process ended.
    pub outcome: &'a Outcome,
    /// The captured output (stdout and stderr in the order written), without the failure note.
    pub output: &'a [u8],
    /// The message of the failure note, if the test ended its output with one.
    pub message: Option<String>,
    /// Kernel log records written while the test ran.
    pub kernel_log: &'a [u8],
}

impl Report<'_> {
    /// The verdict: the test's own outcome, then any kernel splat (a WARNING alone passes when
    /// `allow_warnings`; a splat fails even a skipped test). A test that passed, panicked,
    /// returned `Err` or did not panic as required reads as under libtest, its output only;
    /// anything else (an odd exit status, a signal, a timeout, a splat) is explained after the
    /// output, with the kernel console log's path.
    pub(crate) fn verdict(&self, allow_warnings: bool, console_log: &Path) -> Verdict {
        let why = match self.outcome {
            Outcome::Exited(0 | 1 | 101) | Outcome::Skipped(_) => None,
            Outcome::Exited(code) => Some(format!("the test process exited with status {code}")),
            Outcome::Signaled(signal) => {
                Some(format!("the test process was killed by signal {signal}"))
            }
            Outcome::TimedOut { after_ms } => Some(format!(
                "timed out after {} s",
                Duration::from_millis(*after_ms).as_secs_f64()
            )),
            Outcome::Error(message) => Some(message.clone()),
        };
        let splat =
            crate::host::splat::failure(&String::from_utf8_lossy(self.kernel_log), allow_warnings);
        let mut output = self.output.to_vec();
        let message = self.message.clone();
        if why.is_none() && splat.is_none() {
            let outcome = match self.outcome {
                Outcome::Exited(0) => report::Outcome::Passed,
                Outcome::Skipped(reason) => {
                    report::Outcome::Ignored { reason: Some(reason.clone()) }
                }
                _ => report::Outcome::Failed { message },
            };
            return Verdict::Own { outcome, output };
        }
        for line in why.into_iter().chain(splat) {
            if !output.is_empty() && !output.ends_with(b"\n") {
                output.push(b'\n');
            }
            output.extend_from_slice(line.as_bytes());
            output.push(b'\n');
        }
        output.extend_from_slice(format!("kernel console: {}\n", console_log.display()).as_bytes());
        Verdict::Explained { message, output }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome, output: &str, kernel_log: &str) -> Verdict {
        Report {
            outcome: &outcome,
            output: output.as_bytes(),
            message: None,
            kernel_log: kernel_log.as_bytes(),
        }
        .verdict(false, Path::new("/logs/vm0.console.log"))
    }

    #[test]
    fn ordinary_results_carry_only_the_tests_output() {
        let passed = report(Outcome::Exited(0), "out\nerr\n", "");
        assert_eq!(
            passed,
            Verdict::Own { outcome: report::Outcome::Passed, output: b"out\nerr\n".to_vec() }
        );
        let panicked = report(Outcome::Exited(101), "thread 'x' panicked\n", "");
        assert_eq!(
            panicked,
            Verdict::Own {
                outcome: report::Outcome::Failed { message: None },
                output: b"thread 'x' panicked\n".to_vec()
            }
        );
        let skipped = report(Outcome::Skipped("no BTF".into()), "", "");
        assert_eq!(skipped.outcome(), report::Outcome::Ignored { reason: Some("no BTF".into()) });
        // The failure note's message is libtest's `note:` line, also when vmtest explains.
        let with_message = |outcome: Outcome| {
            Report { outcome: &outcome, output: b"", message: Some("m".into()), kernel_log: b"" }
                .verdict(false, Path::new("/c"))
                .outcome()
        };
        let failed = report::Outcome::Failed { message: Some("m".into()) };
        assert_eq!(with_message(Outcome::Exited(101)), failed);
        assert_eq!(with_message(Outcome::Signaled(9)), failed);
    }

    #[test]
    fn vmtest_failures_are_explained_after_the_output() {
        let timed_out = report(Outcome::TimedOut { after_ms: 2000 }, "hang started\n", "");
        assert!(matches!(timed_out, Verdict::Explained { .. }));
        assert_eq!(timed_out.outcome(), report::Outcome::Failed { message: None });
        assert_eq!(
            String::from_utf8_lossy(timed_out.output()),
            "hang started\ntimed out after 2 s\nkernel console: /logs/vm0.console.log\n"
        );
        let exited = report(Outcome::Exited(3), "no newline", "");
        assert_eq!(
            String::from_utf8_lossy(exited.output()),
            "no newline\nthe test process exited with status 3\n\
             kernel console: /logs/vm0.console.log\n"
        );
        let splat = "[    1.000000] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x0/0x0\n";
        let warned = report(Outcome::Skipped("x".into()), "", splat);
        assert_eq!(warned.outcome(), report::Outcome::Failed { message: None });
        assert!(String::from_utf8_lossy(warned.output()).contains("kernel WARNING"));
    }

    #[test]
    fn vmtest_own_failures_end_with_a_newline() {
        let cases = [
            (Verdict::unreported(), "the guest did not report this test\n"),
            (Verdict::not_run("no QEMU"), "not run: no QEMU\n"),
            (Verdict::vm_failed("panic\n"), "the VM failed while this test ran: panic\n"),
        ];
        for (verdict, text) in cases {
            assert_eq!(verdict, Verdict::Explained { message: None, output: text.into() });
        }
    }
}
