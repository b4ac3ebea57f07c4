//! Kernels: the store, name resolution, image headers and modules.
