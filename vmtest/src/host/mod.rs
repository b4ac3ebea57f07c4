//! The harness on the host: libtest's command line ([`args`]), the test binary and its tests
//! ([`binary`]), the plan of a run ([`plan`]), the run itself ([`harness`]) and its VM groups
//! ([`group`]) within the host's means ([`slots`]) with their logs ([`logdir`]), the verdicts
//! ([`verdict`]) and notes ([`note`]) the groups send the main thread, which orders them
//! ([`progress`]) and prints them ([`report`]); the guest's files ([`files`]) and kernel splats
//! ([`splat`]).

pub(crate) mod args;
pub(crate) mod binary;
pub(crate) mod debug;
pub(crate) mod files;
pub(crate) mod group;
pub(crate) mod harness;
pub(crate) mod logdir;
pub(crate) mod note;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod slots;
pub(crate) mod splat;
pub(crate) mod verdict;
