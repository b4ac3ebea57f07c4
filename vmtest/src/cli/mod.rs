//! `cargo vmtest` (the `cli` feature): the target runner ([`runner`]), the boot of a binary
//! that is not a vmtest harness under a static `vmtest-init` (`plain`), and the finding or
//! building of that init (`init_build`).

pub(crate) mod init_build;
pub(crate) mod plain;
pub mod runner;
pub(crate) mod target;
