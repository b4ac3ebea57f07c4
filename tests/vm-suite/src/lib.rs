//! The workspace's own VM test suite lives in `tests/`.
