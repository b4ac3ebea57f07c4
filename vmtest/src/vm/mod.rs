//! One QEMU VM: the typed command line ([`qemu`]), the accelerator ([`accel`]), the QEMU
//! process and the run's temp dirs ([`process`]), a running VM's ports and deadlines
//! ([`session`]), the host's end of the modules port ([`modserver`]) and of the guest's
//! interactive shell ([`shell`]); snapshots of a booted guest ([`snapshot`]: key, cache, save,
//! restore) over QEMU's monitor ([`qmp`]), warm starts from them ([`warm`]) with what they
//! learn about files remembered across processes ([`memo`]), and a VM driven step by step
//! ([`live`]).

pub(crate) mod accel;
pub(crate) mod live;
pub(crate) mod memo;
pub(crate) mod modserver;
pub(crate) mod process;
pub(crate) mod qemu;
pub(crate) mod qmp;
pub(crate) mod session;
pub(crate) mod shell;
pub(crate) mod snapshot;
pub(crate) mod warm;
