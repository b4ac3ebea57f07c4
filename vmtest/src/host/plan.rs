//! The plan of a run: a binary's tests become instances (one per kernel of a matrix), the
//! command line selects among them as libtest would, and the instances that run are grouped by
//! VM configuration into VM groups. Pure: no environment, no I/O; what the plan needs from
//! outside (the options, the architecture, the kernels' images) is passed in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::arch::Arch;
use crate::host::args::{Options, RunIgnored};
use crate::host::report::{Source, TestInfo};
use crate::image::fixtures;
use crate::meta::TestMeta;

/// Timeout of a test without a `timeout` attribute, before scaling.
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One test on one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Instance {
    /// The test.
    pub def: Arc<TestMeta>,
    /// libtest name of the function (what the guest child looks up).
    pub base_name: String,
    /// Name shown and filtered on: `base_name`, or `base_name[kernel]` for a kernel matrix.
    pub name: String,
    /// The kernel named for it, if any.
    pub kernel: Option<String>,
    /// Reported as ignored with this reason instead of running (another architecture).
    pub skip: Option<String>,
}

/// The instances of `defs` for a binary of `arch`, in name order.
pub(crate) fn instances(defs: &[TestMeta], arch: Arch) -> Vec<Instance> {
    let mut out = Vec::new();
    for def in defs {
        let def = Arc::new(def.clone());
        let base_name = def.test_name();
        let skip = (!def.vm.arch.is_empty() && !def.vm.arch.iter().any(|a| a == arch.name()))
            .then(|| format!("runs only on {}", def.vm.arch.join(", ")));
        let kernels: Vec<Option<String>> = match def.vm.kernels.as_slice() {
            [] => vec![None],
            list => list.iter().cloned().map(Some).collect(),
        };
        let matrix = kernels.len() > 1;
        for kernel in kernels {
            let name = match &kernel {
                Some(kernel) if matrix => format!("{base_name}[{kernel}]"),
                _ => base_name.clone(),
            };
            out.push(Instance {
                def: Arc::clone(&def),
                base_name: base_name.clone(),
                name,
                kernel,
                skip: skip.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What becomes of a selected test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// It runs in a VM.
    Run,
    /// It is reported ignored without running (`#[ignore]`, another architecture, `--bench`),
    /// with this reason, if any.
    ReportIgnored {
        /// Shown as `ignored, <reason>`.
        reason: Option<String>,
    },
}

/// A test instance the command line selected.
#[derive(Clone, Debug)]
pub(crate) struct Selected {
    /// The instance.
    pub instance: Instance,
    /// How the reporter names it.
    pub info: TestInfo,
    /// Whether it runs.
    pub action: Action,
}

/// The instances `options` select, in name order, as libtest's filtering selects tests; and
/// how many it left out.
pub(crate) fn select(instances: Vec<Instance>, options: &Options) -> (Vec<Selected>, usize) {
    let total = instances.len();
    let matches = |name: &str, filter: &str| {
        if options.exact {
            name == filter
        } else {
            name.contains(filter)
        }
    };
    let mut selected = Vec::new();
    for instance in instances {
        let name = instance.name.as_str();
        if !options.filters.is_empty() && !options.filters.iter().any(|f| matches(name, f)) {
            continue;
        }
        if options.skip.iter().any(|f| matches(name, f)) {
            continue;
        }
        let def = &instance.def;
        if options.exclude_should_panic && def.should_panic {
            continue;
        }
        let ignore_message = def.ignore.clone().flatten();
        let ignore = match options.run_ignored {
            RunIgnored::No => def.ignore.is_some(),
            RunIgnored::Yes => false,
            RunIgnored::Only if def.ignore.is_some() => false,
            RunIgnored::Only => continue,
        };
        let action = match &instance.skip {
            Some(reason) => Action::ReportIgnored { reason: Some(reason.clone()) },
            None if ignore || !options.run_tests => {
                Action::ReportIgnored { reason: ignore_message.clone() }
            }
            None => Action::Run,
        };
        let name_len = u32::try_from(def.name.chars().count()).unwrap_or(0);
        let info = TestInfo {
            name: instance.name.clone(),
            ignore,
            ignore_message,
            should_panic: def.should_panic,
            source: Source {
                path: def.file.clone(),
                start_line: def.line,
                start_col: def.column,
                end_line: def.line,
                end_col: def.column + name_len,
            },
        };
        selected.push(Selected { instance, info, action });
    }
    let filtered_out = total - selected.len();
    (selected, filtered_out)
}

/// The selected instances that run: `(id, instance)`, where the id is the position among all
/// the selected tests, which the main thread reports by.
pub(crate) fn runnable(selected: &[Selected]) -> impl Iterator<Item = (u32, &Instance)> {
    selected
        .iter()
        .enumerate()
        .filter(|(_, s)| s.action == Action::Run)
        .map(|(id, s)| (u32::try_from(id).expect("fewer than 2^32 tests"), &s.instance))
}

/// What groups tests into one VM boot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupKey {
    /// The kernel image.
    pub kernel: PathBuf,
    /// `memory`, MiB.
    pub memory_mib: Option<u64>,
    /// `cpus`.
    pub cpus: Option<u32>,
    /// `cmdline`.
    pub cmdline: Option<String>,
    /// `modules`, sorted.
    pub modules: Vec<String>,
}

/// A test of a VM group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The test's position among the selected tests.
    pub id: u32,
    /// Name shown (with the kernel of a matrix).
    pub name: String,
    /// libtest name of the function.
    pub base_name: String,
    /// The function's path (`crate::module::name`), as a debugger names it.
    pub function: String,
    /// The test's timeout before scaling.
    pub timeout: Duration,
    /// `env = [...]` of the test.
    pub env: Vec<String>,
    /// `files = [...]` of the test.
    pub files: Vec<String>,
    /// `allow_kernel_warnings`: a kernel WARNING alone does not fail the test.
    pub allow_kernel_warnings: bool,
}

/// Where the run finds the test crate, for fixtures that follow it (see
/// [`fixtures::follow_crate`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CrateDirs<'a> {
    /// The crate's directory when the binary was built, if recorded.
    pub built_in: Option<&'a str>,
    /// The tests' working directory in the guest: the crate's directory for this run.
    pub run_in: &'a str,
}

impl CrateDirs<'_> {
    /// The `files = [...]` of `instance`, as this run finds them.
    pub(crate) fn files(&self, instance: &Instance) -> Vec<String> {
        fixtures::follow_crate(&instance.def.vm.files, self.built_in, self.run_in)
    }

    /// The `modules = [...]` of `instance`, module files as this run finds them (names of the
    /// kernel's modules have no `/` and stay as they are).
    pub(crate) fn modules(&self, instance: &Instance) -> Vec<String> {
        fixtures::follow_crate(&instance.def.vm.modules, self.built_in, self.run_in)
    }
}

/// Tests that share one VM configuration, and so VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlannedGroup {
    /// The group's position in [`GroupKey`] order, which names its console logs.
    pub index: usize,
    /// Its VM configuration.
    pub key: GroupKey,
    /// The kernel as its first test names it (to find the resolved kernel by).
    pub kernel: Option<String>,
    /// Its tests, in id order.
    pub members: Vec<Member>,
}

/// The runnable tests of `selected` in VM groups, in the order their VMs boot: the order of
/// each group's first test, so that one test thread runs the tests in name order as far as
/// their VMs allow. `images` gives the image of every kernel name the runnable tests use;
/// `dirs` where their fixtures are.
///
/// # Panics
/// When a runnable test names a kernel `images` lacks.
pub(crate) fn groups(
    selected: &[Selected],
    images: &BTreeMap<Option<String>, PathBuf>,
    dirs: CrateDirs<'_>,
) -> Vec<PlannedGroup> {
    let mut groups: BTreeMap<GroupKey, (Option<String>, Vec<Member>)> = BTreeMap::new();
    for (id, instance) in runnable(selected) {
        let vm = &instance.def.vm;
        let mut modules = dirs.modules(instance);
        modules.sort_unstable();
        let key = GroupKey {
            kernel: images[&instance.kernel].clone(),
            memory_mib: vm.memory_mib,
            cpus: vm.cpus,
            cmdline: vm.cmdline.clone(),
            modules,
        };
        let member = Member {
            id,
            name: instance.name.clone(),
            base_name: instance.base_name.clone(),
            function: format!("{}::{}", instance.def.module_path, instance.def.name),
            timeout: vm.timeout_ms.map_or(DEFAULT_TEST_TIMEOUT, Duration::from_millis),
            env: vm.env.clone(),
            files: dirs.files(instance),
            allow_kernel_warnings: vm.allow_kernel_warnings,
        };
        groups.entry(key).or_insert_with(|| (instance.kernel.clone(), Vec::new())).1.push(member);
    }
    let mut ordered: Vec<PlannedGroup> = groups
        .into_iter()
        .enumerate()
        .map(|(index, (key, (kernel, members)))| PlannedGroup { index, key, kernel, members })
        .collect();
    ordered.sort_by_key(|group| group.members.first().map_or(u32::MAX, |m| m.id));
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::args::{self, Parsed};

    fn meta(name: &str, ignore: Option<Option<&str>>, should_panic: bool) -> TestMeta {
        TestMeta {
            module_path: "suite".into(),
            name: name.into(),
            file: "tests/suite.rs".into(),
            line: 3,
            column: 4,
            should_panic,
            ignore: ignore.map(|reason| reason.map(str::to_owned)),
            ..TestMeta::default()
        }
    }

    fn suite() -> Vec<TestMeta> {
        let mut other_arch = meta("elsewhere", None, false);
        other_arch.vm.arch = vec!["riscv64".into()];
        let mut matrix = meta("on_both", None, false);
        matrix.vm.kernels = vec!["6.1".into(), "6.12".into()];
        vec![
            meta("runs", None, false),
            meta("panics", None, true),
            meta("later", Some(Some("slow")), false),
            meta("later_too", Some(None), false),
            other_arch,
            matrix,
        ]
    }

    fn options(args: &[&str]) -> Options {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let Ok(Parsed::Run(options)) = args::parse("t", &args, |_| None) else { panic!() };
        options
    }

    /// A selected test as `(name, ignore, action)`.
    type Picked = (String, bool, Action);

    /// What `args` select from [`suite`], and how many they leave out.
    fn selection(args: &[&str]) -> (Vec<Picked>, usize) {
        let (selected, out) = select(instances(&suite(), Arch::X86_64), &options(args));
        (selected.into_iter().map(|s| (s.info.name, s.info.ignore, s.action)).collect(), out)
    }

    fn names(args: &[&str]) -> Vec<String> {
        selection(args).0.into_iter().map(|(name, _, _)| name).collect()
    }

    fn ignored(reason: Option<&str>) -> Action {
        Action::ReportIgnored { reason: reason.map(str::to_owned) }
    }

    #[test]
    fn selects_as_libtest_filters() {
        let (all, out) = selection(&[]);
        assert_eq!(out, 0);
        let expected: Vec<Picked> = vec![
            ("elsewhere".into(), false, ignored(Some("runs only on riscv64"))),
            ("later".into(), true, ignored(Some("slow"))),
            ("later_too".into(), true, ignored(None)),
            ("on_both[6.12]".into(), false, Action::Run),
            ("on_both[6.1]".into(), false, Action::Run),
            ("panics".into(), false, Action::Run),
            ("runs".into(), false, Action::Run),
        ];
        assert_eq!(all, expected);
        assert_eq!(names(&["later", "runs"]), ["later", "later_too", "runs"]);
        assert_eq!(names(&["--exact", "later"]), ["later"]);
        assert_eq!(names(&["on_both", "--skip", "6.12"]), ["on_both[6.1]"]);
        assert_eq!(
            names(&["--exclude-should-panic", "--skip", "o"]),
            ["elsewhere", "later", "runs"]
        );
        assert_eq!(selection(&["runs"]).1, 6);
    }

    #[test]
    fn ignored_tests_run_on_request_but_other_arches_never() {
        let (only, out) = selection(&["--ignored"]);
        assert_eq!(out, 5);
        assert_eq!(
            only,
            [
                ("later".to_owned(), false, Action::Run),
                ("later_too".to_owned(), false, Action::Run)
            ]
        );
        let (all, _) = selection(&["--include-ignored", "l"]);
        assert!(all.iter().all(
            |(name, ignore, action)| !ignore && (*action == Action::Run || name == "elsewhere")
        ));
        // --bench reports every test ignored, with the attribute's reason where it has one.
        let (bench, _) = selection(&["--bench", "later"]);
        assert_eq!(bench[0].2, ignored(Some("slow")));
        assert_eq!(selection(&["--bench", "runs"]).0[0].2, ignored(None));
    }

    #[test]
    fn a_test_is_named_where_its_name_is() {
        let (selected, _) = select(instances(&suite(), Arch::X86_64), &options(&[]));
        let panics = selected.iter().find(|s| s.info.name == "panics").unwrap();
        assert!(panics.info.should_panic);
        assert_eq!(
            panics.info.source,
            Source {
                path: "tests/suite.rs".into(),
                start_line: 3,
                start_col: 4,
                end_line: 3,
                end_col: 10
            }
        );
    }

    #[test]
    fn a_single_kernel_keeps_the_plain_name_and_arch_lists_are_honoured() {
        let mut one = meta("one", None, false);
        one.vm.kernels = vec!["6.12".into()];
        let mut here = meta("here", None, false);
        here.vm.arch = vec!["aarch64".into(), "x86_64".into()];
        let found = instances(&[one, here], Arch::X86_64);
        let shown: Vec<(&str, Option<&str>, Option<&str>)> = found
            .iter()
            .map(|i| (i.name.as_str(), i.kernel.as_deref(), i.skip.as_deref()))
            .collect();
        assert_eq!(shown, [("here", None, None), ("one", Some("6.12"), None)]);
        let arm = instances(&[meta("x", None, false)], Arch::Aarch64);
        assert_eq!(arm[0].skip, None, "no arch list: every arch");
    }

    /// A test with VM settings, by name, as `vm_test` arguments would give them.
    fn vm_test(name: &str, set: impl FnOnce(&mut crate::meta::VmMeta)) -> TestMeta {
        let mut def = meta(name, None, false);
        set(&mut def.vm);
        def
    }

    /// The groups `defs` form when every test runs, as `(index, kernel image, member names)`,
    /// in boot order; kernel "6.12" and "latest" are the same image.
    fn grouped(defs: &[TestMeta]) -> Vec<(usize, PathBuf, Vec<String>)> {
        let (selected, _) = select(instances(defs, Arch::X86_64), &options(&[]));
        let images: BTreeMap<Option<String>, PathBuf> = [
            (None, "/k/6.12"),
            (Some("6.12".to_owned()), "/k/6.12"),
            (Some("latest".to_owned()), "/k/6.12"),
            (Some("6.1".to_owned()), "/k/6.1"),
        ]
        .into_iter()
        .map(|(name, image)| (name, PathBuf::from(image)))
        .collect();
        groups(&selected, &images, CrateDirs { built_in: None, run_in: "/" })
            .into_iter()
            .map(|g| (g.index, g.key.kernel, g.members.into_iter().map(|m| m.name).collect()))
            .collect()
    }

    #[test]
    fn tests_share_a_vm_exactly_when_their_vm_configuration_is_the_same() {
        let modules = |list: &[&str]| list.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>();
        type Case = (Vec<TestMeta>, Vec<(usize, &'static str, Vec<&'static str>)>);
        let cases: Vec<Case> = vec![
            // Nothing set: one VM for all.
            (
                vec![meta("a", None, false), meta("b", None, false)],
                vec![(0, "/k/6.12", vec!["a", "b"])],
            ),
            // The default kernel and the same image by two names: one VM.
            (
                vec![
                    vm_test("a", |vm| vm.kernels = vec!["6.12".into()]),
                    vm_test("b", |vm| vm.kernels = vec!["latest".into()]),
                    meta("c", None, false),
                ],
                vec![(0, "/k/6.12", vec!["a", "b", "c"])],
            ),
            // Memory, cpus, cmdline and kernel each make a VM of their own; the env, files,
            // timeout and allow_kernel_warnings do not.
            (
                vec![
                    vm_test("a", |vm| vm.memory_mib = Some(512)),
                    vm_test("b", |vm| vm.cpus = Some(2)),
                    vm_test("c", |vm| vm.cmdline = Some("quiet".into())),
                    vm_test("d", |vm| vm.kernels = vec!["6.1".into()]),
                    vm_test("e", |vm| {
                        vm.env = vec!["HOME".into()];
                        vm.files = vec!["data".into()];
                        vm.timeout_ms = Some(5);
                        vm.allow_kernel_warnings = true;
                    }),
                    meta("f", None, false),
                ],
                vec![
                    (4, "/k/6.12", vec!["a"]),
                    (3, "/k/6.12", vec!["b"]),
                    (2, "/k/6.12", vec!["c"]),
                    (0, "/k/6.1", vec!["d"]),
                    (1, "/k/6.12", vec!["e", "f"]),
                ],
            ),
            // Module lists are sets.
            (
                vec![
                    vm_test("a", |vm| vm.modules = modules(&["veth", "dummy"])),
                    vm_test("b", |vm| vm.modules = modules(&["dummy", "veth"])),
                    vm_test("c", |vm| vm.modules = modules(&["dummy"])),
                ],
                vec![(1, "/k/6.12", vec!["a", "b"]), (0, "/k/6.12", vec!["c"])],
            ),
            // A matrix runs once per kernel; groups boot in the order of their first test.
            (
                vec![
                    vm_test("m", |vm| vm.kernels = vec!["6.12".into(), "6.1".into()]),
                    meta("a", None, false),
                    meta("z", None, false),
                ],
                vec![(1, "/k/6.12", vec!["a", "m[6.12]", "z"]), (0, "/k/6.1", vec!["m[6.1]"])],
            ),
        ];
        for (defs, expected) in cases {
            let expected: Vec<(usize, PathBuf, Vec<String>)> = expected
                .into_iter()
                .map(|(index, image, names)| {
                    (index, image.into(), names.into_iter().map(str::to_owned).collect())
                })
                .collect();
            assert_eq!(grouped(&defs), expected, "{defs:#?}");
        }
    }

    #[test]
    fn members_carry_their_ids_among_all_selected_tests_and_their_settings() {
        let defs = [
            meta("a_ignored", Some(None), false),
            vm_test("b", |vm| {
                vm.timeout_ms = Some(1500);
                vm.env = vec!["A".into()];
                vm.files = vec!["f".into(), "/build/c/data".into(), "/build/other".into()];
                vm.allow_kernel_warnings = true;
            }),
            meta("c", None, false),
        ];
        let (selected, _) = select(instances(&defs, Arch::X86_64), &options(&[]));
        let images = BTreeMap::from([(None, PathBuf::from("/k"))]);
        let dirs = CrateDirs { built_in: Some("/build/c"), run_in: "/src/c" };
        let planned = groups(&selected, &images, dirs);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].kernel, None);
        assert_eq!(
            planned[0].members,
            [
                Member {
                    id: 1,
                    name: "b".into(),
                    base_name: "b".into(),
                    function: "suite::b".into(),
                    timeout: Duration::from_millis(1500),
                    env: vec!["A".into()],
                    // Fixtures under the crate follow it to where this run finds it.
                    files: vec!["f".into(), "/src/c/data".into(), "/build/other".into()],
                    allow_kernel_warnings: true,
                },
                Member {
                    id: 2,
                    name: "c".into(),
                    base_name: "c".into(),
                    function: "suite::c".into(),
                    timeout: DEFAULT_TEST_TIMEOUT,
                    env: vec![],
                    files: vec![],
                    allow_kernel_warnings: false,
                },
            ]
        );
        // Nothing runs: no groups, and no kernel needed.
        let (none, _) = select(instances(&defs, Arch::X86_64), &options(&["--bench"]));
        assert_eq!(groups(&none, &BTreeMap::new(), dirs), []);
    }
}
