//! The harness on the host: libtest's command line ([`args`]), the engine that groups tests
//! into VM boots ([`harness`]), the main thread's ordering of results ([`progress`]) and its
//! output ([`report`]), the guest's files ([`files`]) and kernel splats ([`splat`]).

pub(crate) mod args;
pub(crate) mod files;
pub(crate) mod harness;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod splat;
