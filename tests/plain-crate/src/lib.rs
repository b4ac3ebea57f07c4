//! An ordinary crate with ordinary `#[test]`s: `cargo vmtest run` boots its test binary in a VM
//! under `vmtest-init`, as it would any crate's.

/// Adds two numbers.
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() {
        assert_eq!(add(2, 2), 4);
    }

    #[test]
    fn sees_a_linux_kernel() {
        let version = std::fs::read_to_string("/proc/version").unwrap();
        assert!(version.starts_with("Linux version "), "{version}");
    }

    #[test]
    #[ignore = "fails on purpose: the runner's tests run it with --include-ignored"]
    fn fails_on_purpose() {
        assert_eq!(add(2, 2), 5, "plain-crate failure marker");
    }
}
