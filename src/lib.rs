//! envelopefs: a FUSE filesystem with transparent envelope encryption.
//!
//! Every file is sealed under its own random data key (DEK); the DEK is wrapped under a
//! customer master key (CMK) held by a key service and stored in the file's own header.
//!
//! Layers, with dependencies pointing one way only:
//! `format` (pure bytes ↔ types) → `keys` (key service trait + embedded KMS) →
//! `store` (the only code that touches the backing directory with libc) →
//! `fs` (the filesystem core, testable without FUSE) → `fuse` (thin fuser adapter) →
//! `daemon` (the mount runtime, `mount --background`) → `cli`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub use envelopefs_sys::atomic;
pub mod cli;
mod custody;
/// The on-disk format (crate `envelopefs-format`).
pub use envelopefs_format as format;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod ops;
/// The key service (crate `envelopefs-kms`).
pub use envelopefs_kms as keys;
pub mod store;
