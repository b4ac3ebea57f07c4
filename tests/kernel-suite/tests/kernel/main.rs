//! A kernel regression suite: every test boots 6.1 and 6.12 (one VM per kernel, since all tests
//! share one VM configuration) and asserts on what the kernel did, not only on return codes.

mod aya_bpf;
mod bpf;
mod cgroup;
mod kmod;
mod modprobe;
mod net;
mod ns;
mod sys;
mod trace;

vmtest::main!();
