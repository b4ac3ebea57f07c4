//! What a VM thread tells the main thread, the only thread that prints: a test started, its
//! live output, its [`Verdict`], and warnings for stderr.

use vmtest_init::protocol::Stream;

use crate::host::verdict::Verdict;

/// What a VM thread tells the main thread.
#[derive(Debug)]
pub(crate) enum Note {
    /// The guest started the test with this id.
    Started(u32),
    /// Live output of a test that is not captured.
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes, in order.
        bytes: Vec<u8>,
    },
    /// The test with this id ended.
    Finished(u32, Verdict),
    /// A line for stderr, without its newline: a warning, the guest's own log, where a test's
    /// artifacts are.
    Stderr(String),
}
