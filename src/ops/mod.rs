//! Whole-volume operations above the filesystem core and the daemon, for the CLI to drive:
//! what they do and how they report it, without parsing or printing.

pub(crate) mod export;
pub(crate) mod fsck;
pub(crate) mod reencrypt;
