//! One vm_test that hands `BENCH_TRANSFER_BYTES` bytes to the host as an artifact: the
//! transfer rate is the time difference against a run with an empty file.

#[vmtest::vm_test(env = ["BENCH_TRANSFER_BYTES"], memory = "512M")]
fn transfer() {
    let len: usize =
        std::env::var("BENCH_TRANSFER_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    vmtest::artifact("transfer.bin", vec![0xa5u8; len]).unwrap();
}

vmtest::main!();
