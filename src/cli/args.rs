//! The command line as clap parses it: `Cli`, every `Command` with its options and help
//! text, and the secret options shared by the commands that open the keystore.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::daemon::background::DAEMON_SUBCOMMAND;
use crate::format::volume::DEFAULT_BLOCK_SIZE;
use crate::fuse::Transport;

/// envelopefs: an encrypted directory where every file has its own data key, wrapped by a
/// master key held in an embedded key service (as AWS KMS does for S3 and EBS).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, after_help = "\
Quick start:
  envelopefs init ~/vault.enc            # create an encrypted volume (asks for a passphrase)
  envelopefs mount ~/vault.enc ~/vault   # use ~/vault; files land encrypted in ~/vault.enc/data
  envelopefs unmount ~/vault             # or Ctrl-C the mount

Passphrases come from the terminal, --passfile FILE, or $ENVELOPEFS_PASSPHRASE.
Exit codes: 0 ok, 1 error, 2 usage, 3 wrong passphrase, 4 not a usable volume,
5 mount failed, 6 volume already mounted, 7 fsck found damage, 8 fsck could not check.")]
pub struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How to unlock the keystore.
#[derive(Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// Read the passphrase from FILE: its first line, without the line feed and one carriage
    /// return before it (docs/FORMAT.md §6.1).
    #[arg(long, value_name = "FILE", conflicts_with = "keyfile")]
    pub passfile: Option<PathBuf>,
    /// Unlock with a 32-byte key file instead of a passphrase (no Argon2id).
    #[arg(long, value_name = "FILE")]
    pub keyfile: Option<PathBuf>,
    /// The volume's CMKs are in a PKCS#11 token: read its user PIN from FILE (first line).
    /// Without it, the PIN comes from $ENVELOPEFS_HSM_PIN, or the terminal with --pin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["passfile", "keyfile"])]
    pub pin_file: Option<PathBuf>,
    /// Ask for the PKCS#11 token's PIN on the terminal (instead of a passphrase).
    #[arg(long, conflicts_with_all = ["passfile", "keyfile"])]
    pub pin: bool,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new encrypted volume in BACKING (created if missing, must be empty).
    Init {
        /// The directory that will hold the ciphertext, config and keystore.
        backing: PathBuf,
        /// Plaintext block size in bytes (power of two, 512..1048576).
        #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
        block_size: u32,
        /// Keep the keystore at this path instead of BACKING/keystore.json (e.g. on a
        /// different disk than the ciphertext).
        #[arg(long, value_name = "PATH")]
        keystore: Option<PathBuf>,
        /// Also make this user (uid or name) a volume administrator; repeatable. The user
        /// running init always is one (change later with `envelopefs key admin`).
        #[arg(long, value_name = "UID")]
        admin_uid: Vec<String>,
        /// Store file names, symlink targets and xattr names in the clear, as volumes made
        /// before names were encrypted do (faster for huge directories; names then leak to
        /// anyone who can read BACKING). Default: encrypted.
        #[arg(long)]
        plaintext_names: bool,
        /// Keep the CMKs in a PKCS#11 token (an HSM; SoftHSM2:
        /// /usr/lib/softhsm/libsofthsm2.so) instead of the keystore: the keystore then holds
        /// only metadata and no passphrase; the token's PIN unlocks it (docs/KEYS.md §5).
        #[arg(long, value_name = "MODULE", requires = "token_label")]
        hsm_module: Option<PathBuf>,
        /// The label of the token in --hsm-module.
        #[arg(long, value_name = "LABEL", requires = "hsm_module")]
        token_label: Option<String>,
        /// Make the token's keys backup-capable: extractable, but only wrapped by a key
        /// with CKA_TRUSTED, which only the token's SO can make (`envelopefs hsm backup`;
        /// docs/KEYS.md §2c). Without it they never leave the token.
        #[arg(long, requires = "hsm_module")]
        hsm_backup: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Mount BACKING at MOUNTPOINT (foreground until Ctrl-C / SIGTERM / unmount).
    Mount {
        /// An initialised volume.
        backing: PathBuf,
        /// An existing empty directory.
        mountpoint: PathBuf,
        /// Detach once mounted; the daemon keeps running until unmounted.
        #[arg(long)]
        background: bool,
        /// Let other users use the mount (needs root or user_allow_other in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
        /// Mount read-only.
        #[arg(long)]
        read_only: bool,
        /// Request-handling threads of the classic transport.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// How requests travel between the kernel and the daemon. `uring`: FUSE over io_uring,
        /// one ring per CPU, each served by a thread pinned to it (kernel 6.14+, root, and
        /// `echo Y > /sys/module/fuse/parameters/enable_uring`); fastest on metadata-heavy
        /// work and small random reads. `classic`: one read(2) and write(2) on /dev/fuse per
        /// request. `auto` picks uring when the kernel offers it and the daemon is root, and
        /// says in the log (-v) why not otherwise.
        #[arg(long, value_enum, default_value_t = Transport::Auto, env = "ENVELOPEFS_TRANSPORT")]
        transport: Transport,
        /// Drop the kernel's page cache of a file at every open (for benchmarks and debugging;
        /// slower).
        #[arg(long, hide = true)]
        no_kernel_cache: bool,
        /// Make every write(2) reach the daemon before it returns, instead of letting the
        /// kernel buffer writes and hand them over in batches (at the latest on close or
        /// fsync). Slower (about half the IOPS on small random writes), but write errors such
        /// as ENOSPC come back from write(2) itself and a daemon crash loses no write that
        /// returned. See docs/SEMANTICS.md.
        #[arg(long)]
        no_writeback_cache: bool,
        /// Turn extended attributes off (get/set/list/remove fail with EOPNOTSUPP; no file
        /// capabilities, no user.* attributes; POSIX ACLs and SELinux labels are refused on
        /// every mount). For trees that need none: untar then needs fewer round trips to the
        /// daemon (docs/PERFORMANCE.md). Attributes already stored are kept, just not visible.
        #[arg(long)]
        no_xattr: bool,
        /// Honour setuid/setgid bits and file capabilities on the mount (root only). Off by
        /// default: modes, owners and security.capability stored in BACKING are not
        /// authenticated, so anyone who can write BACKING could plant a setuid program.
        #[arg(long)]
        suid: bool,
        /// Honour device nodes on the mount (root only). Off by default, for the same reason.
        #[arg(long)]
        dev: bool,
        /// Write the daemon's log here (appending) instead of stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Re-wrap every file's data key to the newest version of its CMK, or move files to another
    /// CMK (--to-key). Rewrites only headers, never data; crash-safe, idempotent and resumable;
    /// works while the volume is mounted.
    Rewrap {
        /// An initialised volume.
        backing: PathBuf,
        /// Move files to this CMK (key id or alias/NAME).
        #[arg(long, value_name = "KEY")]
        to_key: Option<String>,
        /// Only re-wrap files whose key version is below V (default: below the newest).
        #[arg(long, value_name = "V")]
        min_version: Option<u32>,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Give files a fresh data key and re-encrypt their contents: the real revocation after a
    /// key or a user is compromised (rewrap only moves the existing data key, which whoever
    /// unwrapped it once still holds). Crash-safe (a redo journal in BACKING/.reencrypt),
    /// resumable (run it again after an interruption: it skips what is done) and online: on a
    /// mounted volume the daemon does the work, with the rights of whoever runs this command.
    #[command(
        after_help = "Examples:\n  envelopefs reencrypt ~/vault.enc\n          envelopefs reencrypt ~/vault.enc --to-key alias/new --path projects/secret\n\n        Each file gets a new random data key, wrapped under --to-key (default: the key it \
        is under now), and every block is sealed again; times and inodes stay."
    )]
    Reencrypt {
        /// An initialised volume.
        backing: PathBuf,
        /// Wrap the new data keys under this CMK (key id or alias/NAME).
        #[arg(long, value_name = "KEY")]
        to_key: Option<String>,
        /// Only this file or the files under this directory (relative to the volume root).
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
        /// Where BACKING is mounted, if it is (found in /proc/self/mountinfo otherwise).
        #[arg(long, value_name = "DIR")]
        mountpoint: Option<PathBuf>,
        /// Start over instead of resuming an interrupted run.
        #[arg(long)]
        restart: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Unmount a mounted volume.
    Unmount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Show a volume's config and keys (no passphrase needed for the config).
    Info {
        /// An initialised volume.
        backing: PathBuf,
    },
    /// Manage the volume's customer master keys: lifecycle, aliases, rotation, import,
    /// policies and grants (docs/KEYS.md).
    Key(crate::cli::keys::KeyArgs),
    /// Customer-provided keys (SSE-C) on a live mount: each user gives the daemon their own
    /// key over its control socket; files wrapped under it need it (docs/KEYS.md §2d).
    Ssec(crate::cli::ssec::SsecArgs),
    /// Show or verify the key service's audit log.
    Audit(crate::cli::keys::AuditArgs),
    /// A volume whose CMKs live in a PKCS#11 token: crypto users (CloudHSM's user model,
    /// the token SO as crypto officer), login status, encrypted backup and restore of the
    /// token's keys (docs/KEYS.md §2b, §2c).
    #[command(subcommand_required = true)]
    Hsm(crate::cli::hsm::HsmArgs),
    /// Translate paths between the plaintext view and BACKING on a volume with encrypted
    /// names: which backing entry holds a file (to restore it from a backup, say), or, with
    /// --decrypt, which file a backing entry is. Works mounted or not; needs the passphrase
    /// or key file. On a volume with plaintext names a path is its own backing path.
    #[command(
        after_help = "Examples:\n  envelopefs path ~/vault.enc 'taxes/2026/return.pdf'\n  envelopefs path --decrypt ~/vault.enc ~/vault.enc/data/Yq3…/Zx…"
    )]
    Path {
        /// An initialised volume.
        backing: PathBuf,
        /// Paths relative to the volume root; with --decrypt, backing paths (relative to
        /// BACKING/data, or full paths under it).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Translate backing paths to plaintext paths.
        #[arg(long)]
        decrypt: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Count files per key and key version from their headers (no passphrase needed).
    Scan {
        /// An initialised volume.
        backing: PathBuf,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a volume at rest (not mounted): every header copy, block, xattr, encrypted
    /// name, the keystore and its audit chain. Read-only unless --repair. Exit 0 clean,
    /// 7 damage found, 8 could not check.
    Fsck {
        /// An initialised volume.
        backing: PathBuf,
        /// Fix what is safely fixable (a damaged header copy from the good one, temp files
        /// left by a crash, orphan long-name sidecars, an unfinished re-encryption) and
        /// nothing else.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Decrypt a volume's tree (or --path) into DEST without a mount, with owners, modes,
    /// times, hard links, symlinks and xattrs. Files that fail verification are reported
    /// and left out, never written in part.
    Export(crate::cli::export::ExportArgs),
    /// Back up the keystore (and the volume-key record) under a separate backup passphrase
    /// or key file, or restore it from such a backup (docs/FORMAT.md §11).
    Keystore(crate::cli::keystore_backup::KeystoreArgs),
    /// The daemon `mount --background` starts: reads its settings and the secret on stdin
    /// (src/daemon/background.rs). Not for people.
    #[command(name = DAEMON_SUBCOMMAND, hide = true)]
    Daemon,
}
