//! The on-disk format, pure: bytes in, types out. No I/O, no fuser, no libc, no logging.
//! docs/FORMAT.md is the contract this module implements; `vectors` checks its test vectors.

pub mod block;
pub mod context;
pub mod customer;
pub mod error;
pub mod header;
pub mod layout;
pub mod names;
pub mod volume;

pub use error::FormatError;
