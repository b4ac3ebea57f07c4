//! Nothing here: the suite is the `kernel` test target (`tests/kernel/`), see README.md.
