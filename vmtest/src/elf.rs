//! Reading ELF files: machine, interpreter, needed libraries.
