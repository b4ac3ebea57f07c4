//! What runs inside the guest only: the test child's glue ([`child`]) and the test-side API
//! ([`skip`], [`artifact`], [`module`]: loading a module file). Nothing here starts a VM.

pub(crate) mod artifact;
pub(crate) mod child;
pub(crate) mod debugger;
pub(crate) mod module;
pub(crate) mod skip;
