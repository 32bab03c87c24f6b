//! A decoded FUSE request ([`Op`]), the input of the shared [`super::dispatch::Dispatcher`],
//! and its one-line trace for the `-vv` log.

use std::ffi::OsStr;

use crate::fs::SetAttr;

/// A decoded request. Names, link targets, xattr values and write data borrow from the buffer
/// the request arrived in.
#[derive(Debug)]
pub(crate) enum Op<'a> {
    Lookup {
        parent: u64,
        name: &'a OsStr,
    },
    /// FORGET and each element of BATCH_FORGET (no reply).
    Forget {
        ino: u64,
        nlookup: u64,
    },
    /// BATCH_FORGET: `items` is the array of 16-byte `fuse_forget_one` (nodeid, nlookup), as
    /// it arrived (no reply).
    BatchForget {
        items: &'a [u8],
    },
    Getattr {
        ino: u64,
    },
    Setattr {
        ino: u64,
        set: SetAttr,
    },
    Readlink {
        ino: u64,
    },
    Mknod {
        parent: u64,
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
    },
    Mkdir {
        parent: u64,
        name: &'a OsStr,
        mode: u32,
    },
    Unlink {
        parent: u64,
        name: &'a OsStr,
    },
    Rmdir {
        parent: u64,
        name: &'a OsStr,
    },
    Symlink {
        parent: u64,
        name: &'a OsStr,
        target: &'a OsStr,
    },
    /// RENAME (flags 0) and RENAME2.
    Rename {
        parent: u64,
        name: &'a OsStr,
        newparent: u64,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        ino: u64,
        newparent: u64,
        newname: &'a OsStr,
    },
    Open {
        ino: u64,
        flags: i32,
    },
    Read {
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        ino: u64,
        fh: u64,
        offset: u64,
        data: &'a [u8],
        /// FUSE_WRITE_KILL_SUIDGID (FUSE_HANDLE_KILLPRIV_V2): the writer lacks CAP_FSETID.
        kill_suidgid: bool,
    },
    Flush,
    Release {
        ino: u64,
        fh: u64,
    },
    Fsync {
        ino: u64,
        fh: u64,
        datasync: bool,
    },
    Opendir {
        ino: u64,
    },
    /// READDIR (`plus` false) and READDIRPLUS; `size` is the kernel's buffer size.
    Readdir {
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir {
        ino: u64,
    },
    Statfs {
        ino: u64,
    },
    Setxattr {
        ino: u64,
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    Getxattr {
        ino: u64,
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        ino: u64,
        size: u32,
    },
    Removexattr {
        ino: u64,
        name: &'a OsStr,
    },
    Access {
        ino: u64,
    },
    Create {
        parent: u64,
        name: &'a OsStr,
        mode: u32,
        flags: i32,
    },
    Fallocate {
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    /// INTERRUPT: the core has nothing to interrupt (no reply).
    Interrupt,
    /// An opcode this filesystem does not implement (answered ENOSYS).
    Unsupported {
        opcode: u32,
    },
}

/// The request trace (`-vv`): `ino 0x… OPCODE details`, with names as `{:?}` strings and no
/// contents (write data, xattr values and link targets are given by length only).
impl std::fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ino = |f: &mut std::fmt::Formatter<'_>, ino: u64| write!(f, "ino {ino:#018x} ");
        match self {
            Op::Lookup { parent, name } => {
                ino(f, *parent)?;
                write!(f, "LOOKUP name {name:?}")
            }
            Op::Forget { ino: i, nlookup } => {
                ino(f, *i)?;
                write!(f, "FORGET nlookup {nlookup}")
            }
            Op::BatchForget { items } => write!(f, "BATCH_FORGET count {}", items.len() / 16),
            Op::Getattr { ino: i } => {
                ino(f, *i)?;
                write!(f, "GETATTR")
            }
            Op::Setattr { ino: i, set } => {
                ino(f, *i)?;
                write!(f, "SETATTR {set:?}")
            }
            Op::Readlink { ino: i } => {
                ino(f, *i)?;
                write!(f, "READLINK")
            }
            Op::Mknod {
                parent,
                name,
                mode,
                rdev,
            } => {
                ino(f, *parent)?;
                write!(f, "MKNOD name {name:?}, mode {mode:#05o}, rdev {rdev}")
            }
            Op::Mkdir { parent, name, mode } => {
                ino(f, *parent)?;
                write!(f, "MKDIR name {name:?}, mode {mode:#05o}")
            }
            Op::Unlink { parent, name } => {
                ino(f, *parent)?;
                write!(f, "UNLINK name {name:?}")
            }
            Op::Rmdir { parent, name } => {
                ino(f, *parent)?;
                write!(f, "RMDIR name {name:?}")
            }
            Op::Symlink {
                parent,
                name,
                target,
            } => {
                ino(f, *parent)?;
                write!(f, "SYMLINK name {name:?}, target of {} bytes", target.len())
            }
            Op::Rename {
                parent,
                name,
                newparent,
                newname,
                flags,
            } => {
                ino(f, *parent)?;
                write!(
                    f,
                    "RENAME name {name:?} to {newparent:#018x} {newname:?}, flags {flags:#x}"
                )
            }
            Op::Link {
                ino: i,
                newparent,
                newname,
            } => {
                ino(f, *i)?;
                write!(f, "LINK to {newparent:#018x} {newname:?}")
            }
            Op::Open { ino: i, flags } => {
                ino(f, *i)?;
                write!(f, "OPEN flags {flags:#x}")
            }
            Op::Read {
                ino: i,
                fh,
                offset,
                size,
            } => {
                ino(f, *i)?;
                write!(f, "READ fh {fh}, offset {offset}, size {size}")
            }
            Op::Write {
                ino: i,
                fh,
                offset,
                data,
                kill_suidgid,
            } => {
                ino(f, *i)?;
                write!(
                    f,
                    "WRITE fh {fh}, offset {offset}, size {}, kill_suidgid {kill_suidgid}",
                    data.len()
                )
            }
            Op::Flush => write!(f, "FLUSH"),
            Op::Release { ino: i, fh } => {
                ino(f, *i)?;
                write!(f, "RELEASE fh {fh}")
            }
            Op::Fsync {
                ino: i,
                fh,
                datasync,
            } => {
                ino(f, *i)?;
                write!(f, "FSYNC fh {fh}, datasync {datasync}")
            }
            Op::Opendir { ino: i } => {
                ino(f, *i)?;
                write!(f, "OPENDIR")
            }
            Op::Readdir {
                ino: i,
                fh,
                offset,
                size,
                plus,
            } => {
                ino(f, *i)?;
                let op = if *plus { "READDIRPLUS" } else { "READDIR" };
                write!(f, "{op} fh {fh}, offset {offset}, size {size}")
            }
            Op::Releasedir { fh } => write!(f, "RELEASEDIR fh {fh}"),
            Op::Fsyncdir { ino: i } => {
                ino(f, *i)?;
                write!(f, "FSYNCDIR")
            }
            Op::Statfs { ino: i } => {
                ino(f, *i)?;
                write!(f, "STATFS")
            }
            Op::Setxattr {
                ino: i,
                name,
                value,
                flags,
            } => {
                ino(f, *i)?;
                write!(
                    f,
                    "SETXATTR name {name:?}, size {}, flags {flags:#x}",
                    value.len()
                )
            }
            Op::Getxattr { ino: i, name, size } => {
                ino(f, *i)?;
                write!(f, "GETXATTR name {name:?}, size {size}")
            }
            Op::Listxattr { ino: i, size } => {
                ino(f, *i)?;
                write!(f, "LISTXATTR size {size}")
            }
            Op::Removexattr { ino: i, name } => {
                ino(f, *i)?;
                write!(f, "REMOVEXATTR name {name:?}")
            }
            Op::Access { ino: i } => {
                ino(f, *i)?;
                write!(f, "ACCESS")
            }
            Op::Create {
                parent,
                name,
                mode,
                flags,
            } => {
                ino(f, *parent)?;
                write!(
                    f,
                    "CREATE name {name:?}, mode {mode:#05o}, flags {flags:#x}"
                )
            }
            Op::Fallocate {
                ino: i,
                fh,
                offset,
                length,
                mode,
            } => {
                ino(f, *i)?;
                write!(
                    f,
                    "FALLOCATE fh {fh}, offset {offset}, length {length}, mode {mode:#x}"
                )
            }
            Op::Interrupt => write!(f, "INTERRUPT"),
            Op::Unsupported { opcode } => write!(f, "opcode {opcode} (unsupported)"),
        }
    }
}
