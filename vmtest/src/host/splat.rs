//! Kernel splats: the reports a kernel prints when something went wrong inside it.
//!
//! The guest sends the kernel log records written while each test ran; this module finds the
//! splats in them. It only reads text: the markers are the ones the kernel prints (`WARNING:
//! CPU:`, `Oops`, `BUG:`, `Kernel panic`, RCU stall, lockup and hung-task reports).

use std::fmt;

/// Lines of a splat shown in a failure, counting its first line.
const EXCERPT_LINES: usize = 40;

/// What kind of report a splat is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SplatKind {
    /// `WARN()`/`WARN_ON()`: the kernel noticed a broken invariant and carried on.
    Warning,
    /// An oops or general protection fault: the kernel killed the faulting task.
    Oops,
    /// `BUG()`/`BUG_ON()` or a `BUG:` report (scheduling while atomic, bad page, UBSAN, ...).
    Bug,
    /// A KASAN report: an invalid memory access.
    Kasan,
    /// An RCU stall.
    RcuStall,
    /// A soft lockup (a CPU stuck in the kernel).
    SoftLockup,
    /// A hard lockup (a CPU stuck with interrupts off).
    HardLockup,
    /// A task blocked in the kernel for longer than the hung-task timeout.
    HungTask,
    /// A panic.
    Panic,
}

impl fmt::Display for SplatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplatKind::Warning => "a kernel WARNING",
            SplatKind::Oops => "a kernel Oops",
            SplatKind::Bug => "a kernel BUG",
            SplatKind::Kasan => "a KASAN report",
            SplatKind::RcuStall => "an RCU stall",
            SplatKind::SoftLockup => "a soft lockup",
            SplatKind::HardLockup => "a hard lockup",
            SplatKind::HungTask => "a hung task",
            SplatKind::Panic => "a kernel panic",
        })
    }
}

/// One splat: its kind and the lines that tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Splat {
    pub kind: SplatKind,
    pub excerpt: String,
}

/// Classifies one kernel log line (with or without its `[seconds]` prefix).
pub(crate) fn classify(line: &str) -> Option<SplatKind> {
    let text = strip_timestamp(line);
    let kind = if text.contains("Kernel panic - not syncing") {
        SplatKind::Panic
    } else if text.contains("BUG: KASAN:") {
        SplatKind::Kasan
    } else if text.contains("BUG: soft lockup") {
        SplatKind::SoftLockup
    } else if text.contains("Watchdog detected hard LOCKUP") {
        SplatKind::HardLockup
    } else if text.contains("detected stalls on CPUs")
        || text.contains("self-detected stall on CPU")
    {
        SplatKind::RcuStall
    } else if text.starts_with("INFO: task ") && text.contains(" blocked for more than ") {
        SplatKind::HungTask
    } else if text.starts_with("Oops")
        || text.contains("Internal error: Oops")
        || text.starts_with("general protection fault")
    {
        SplatKind::Oops
    } else if text.starts_with("BUG:")
        || text.starts_with("kernel BUG at ")
        || text.starts_with("UBSAN:")
    {
        SplatKind::Bug
    } else if text.starts_with("WARNING:") {
        SplatKind::Warning
    } else {
        return None;
    };
    Some(kind)
}

/// Every splat in `log`, in order. Each excerpt runs from the splat's first line to the end of
/// its trace (`---[ end trace`), the next splat, or [`EXCERPT_LINES`] lines.
pub(crate) fn find(log: &str) -> Vec<Splat> {
    let lines: Vec<&str> = log.lines().collect();
    let mut splats = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let Some(kind) = classify(lines[at]) else {
            at += 1;
            continue;
        };
        let mut end = at + 1;
        while end < lines.len() && end - at < EXCERPT_LINES && classify(lines[end]).is_none() {
            end += 1;
            if lines[end - 1].contains("---[ end trace") {
                break;
            }
        }
        splats.push(Splat { kind, excerpt: lines[at..end].join("\n") });
        at = end;
    }
    splats
}

/// Why a test whose kernel log is `log` fails, if it does: any splat fails it, except
/// WARNINGs when `allow_warnings` is set.
pub(crate) fn failure(log: &str, allow_warnings: bool) -> Option<String> {
    let splats: Vec<Splat> = find(log)
        .into_iter()
        .filter(|s| !(allow_warnings && s.kind == SplatKind::Warning))
        .collect();
    let first = splats.first()?;
    let mut text = format!("the kernel reported {} while this test ran", first.kind);
    if first.kind == SplatKind::Warning {
        text.push_str(" (`allow_kernel_warnings` lets a test pass despite WARNINGs)");
    }
    text.push_str(":\n");
    for splat in &splats {
        text.push_str(&splat.excerpt);
        text.push('\n');
    }
    Some(text)
}

fn strip_timestamp(line: &str) -> &str {
    let trimmed = line.trim_start();
    match trimmed.strip_prefix('[').and_then(|rest| rest.split_once("] ")) {
        Some((stamp, text)) if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') => text,
        _ => trimmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARN: &str = "\
[   12.000001] ------------[ cut here ]------------
[   12.000002] WARNING: CPU: 0 PID: 77 at kernel/foo.c:12 bar+0x1/0x2
[   12.000003] Modules linked in: dummy
[   12.000004] Call Trace:
[   12.000005]  <TASK>
[   12.000006] ---[ end trace 0000000000000000 ]---
[   12.100000] dummy0: renamed
";

    #[test]
    fn classifies_each_kind_the_kernel_prints() {
        let cases = [
            ("[    1.5] WARNING: CPU: 1 PID: 9 at mm/x.c:1 f+0x0/0x1", SplatKind::Warning),
            ("Oops: general protection fault, probably for non-canonical address", SplatKind::Oops),
            ("Internal error: Oops: 0000000096000004 [#1] SMP", SplatKind::Oops),
            ("BUG: unable to handle page fault for address: 0000000000000000", SplatKind::Bug),
            ("kernel BUG at mm/slub.c:100!", SplatKind::Bug),
            ("BUG: KASAN: use-after-free in foo+0x1/0x2", SplatKind::Kasan),
            ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", SplatKind::RcuStall),
            ("rcu: INFO: rcu_sched self-detected stall on CPU", SplatKind::RcuStall),
            ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [x:1]", SplatKind::SoftLockup),
            ("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", SplatKind::HardLockup),
            ("INFO: task sh:52 blocked for more than 2 seconds.", SplatKind::HungTask),
            ("Kernel panic - not syncing: sysrq triggered crash", SplatKind::Panic),
            ("UBSAN: shift-out-of-bounds in lib/x.c:3:4", SplatKind::Bug),
        ];
        for (line, kind) in cases {
            assert_eq!(classify(line), Some(kind), "{line}");
        }
    }

    #[test]
    fn ordinary_lines_are_not_splats() {
        for line in [
            "[    0.1] dummy0: renamed from eth0",
            "[    0.2] random: crng init done",
            "[    0.3] test: this is a WARNING: CPU: quoted in the middle",
            "[    0.4] audit: type=1400 BUG: not at the start",
            "",
        ] {
            assert_eq!(classify(line), None, "{line}");
        }
    }

    #[test]
    fn excerpt_runs_to_the_end_of_the_trace() {
        let splats = find(WARN);
        assert_eq!(splats.len(), 1);
        assert_eq!(splats[0].kind, SplatKind::Warning);
        assert!(splats[0].excerpt.starts_with("[   12.000002] WARNING: CPU: 0"));
        assert!(splats[0].excerpt.ends_with("---[ end trace 0000000000000000 ]---"));
        assert!(!splats[0].excerpt.contains("renamed"));
    }

    #[test]
    fn excerpt_is_bounded_and_stops_at_the_next_splat() {
        let mut log = String::from("BUG: scheduling while atomic\n");
        log.extend((0..100).map(|i| format!(" frame {i}\n")));
        log.push_str("INFO: task a:1 blocked for more than 5 seconds.\n");
        let splats = find(&log);
        assert_eq!(splats.len(), 2);
        assert_eq!(splats[0].excerpt.lines().count(), EXCERPT_LINES);
        assert_eq!(splats[1].kind, SplatKind::HungTask);
    }

    #[test]
    fn warnings_fail_unless_allowed_and_worse_always_fails() {
        let failure_text = failure(WARN, false).unwrap();
        assert!(
            failure_text.starts_with("the kernel reported a kernel WARNING while this test ran")
        );
        assert!(failure_text.contains("allow_kernel_warnings"));
        assert!(failure_text.contains("at kernel/foo.c:12"));
        assert_eq!(failure(WARN, true), None);
        let oops = format!("{WARN}[   13.0] Oops: 0002 [#1] PREEMPT SMP\n");
        let text = failure(&oops, true).unwrap();
        assert!(text.starts_with("the kernel reported a kernel Oops"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert_eq!(failure("[ 1.0] all quiet\n", false), None);
    }
}
