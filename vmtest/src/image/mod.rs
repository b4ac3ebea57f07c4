//! What a guest boots with: the one builder of a guest's image and plan ([`guest_image`]), the
//! newc initramfs writer ([`initramfs`]), a binary's dynamic loader closure ([`elf`]), the
//! `files = [...]` fixtures ([`fixtures`]) and what a test sees of its environment
//! ([`guest_env`]).

pub(crate) mod elf;
pub(crate) mod fixtures;
pub(crate) mod guest_env;
pub(crate) mod guest_image;
pub(crate) mod initramfs;
