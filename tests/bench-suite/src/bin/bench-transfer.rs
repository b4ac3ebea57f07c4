//! One vm_test that writes `BENCH_TRANSFER_BYTES` bytes to a file: as an artifact, which the
//! host receives, when `BENCH_TRANSFER_SEND` is `1`, else to `/tmp`, which stays in the guest.
//! The difference between the two runs is the transfer alone.

#[vmtest::vm_test(env = ["BENCH_TRANSFER_BYTES", "BENCH_TRANSFER_SEND"], memory = "512M")]
fn transfer() {
    let len: usize =
        std::env::var("BENCH_TRANSFER_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let bytes = vec![0xa5u8; len];
    if std::env::var("BENCH_TRANSFER_SEND").as_deref() == Ok("1") {
        vmtest::artifact("transfer.bin", bytes).unwrap();
    } else {
        std::fs::write("/tmp/transfer.bin", bytes).unwrap();
    }
}

vmtest::main!();
