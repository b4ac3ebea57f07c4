//! Building the initramfs (newc cpio) the guest boots from.
