//! The backing directory: the only layer that talks to it with libc.
//!
//! `sys` holds small safe wrappers over the *at() system calls the filesystem core needs, each
//! `unsafe` block with a `// SAFETY:` note; `volume` lays out and opens a backing directory.

pub(crate) mod blocks;
pub mod file_header;
pub mod keystore_backup;
pub mod names;
pub mod reencrypt;
pub mod rewrap;
pub mod scan;
/// The system-call layer (crate `envelopefs-sys`).
pub use envelopefs_sys as sys;
pub mod volume;
pub(crate) mod walk;
