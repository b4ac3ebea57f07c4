//! The harness on the host: libtest's command line ([`args`]), the test binary and its tests
//! ([`binary`]), the plan of a run ([`plan`]), the engine that boots VM groups ([`harness`])
//! within the host's means ([`slots`]) and saves their logs ([`logdir`]), the verdicts
//! ([`verdict`]) and notes ([`note`]) it sends the main thread, which orders them
//! ([`progress`]) and prints them ([`report`]); the guest's files ([`files`]) and kernel splats
//! ([`splat`]).

pub(crate) mod args;
pub(crate) mod binary;
pub(crate) mod files;
pub(crate) mod harness;
pub(crate) mod logdir;
pub(crate) mod note;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod slots;
pub(crate) mod splat;
pub(crate) mod verdict;
