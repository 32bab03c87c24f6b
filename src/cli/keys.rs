//! `envelopefs key …`, `envelopefs audit …` and `envelopefs scan`: key management from the
//! command line (docs/KEYS.md has every command with an example). clap parses; the commands
//! open the volume's keystore and call [`LocalKms`](crate::keys::local::LocalKms); every command has `--json` output.

mod audit_cmd;
mod groups;
mod run;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::{CliError, SecretArgs};

pub use run::{run_audit, run_key, run_scan};

/// The volume and how to unlock its keystore: the first arguments of every key command.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The volume's backing directory (its envelopefs.json names the keystore).
    pub backing: PathBuf,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Print the result as JSON (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `envelopefs key`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  envelopefs key list ~/vault.enc
  envelopefs key create ~/vault.enc --description 'team A' --tag team=a --alias alias/team-a
  envelopefs key disable ~/vault.enc alias/team-a        # cuts access at once, also on a live mount
  envelopefs key rotate ~/vault.enc alias/default         # new files use the new version
  envelopefs key schedule-deletion ~/vault.enc alias/team-a --pending-days 7
Keys are named by id (a UUID) or alias (alias/NAME). See docs/KEYS.md.")]
pub struct KeyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeyCommand,
}

/// Key subcommands.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a customer master key (CMK).
    #[command(
        after_help = "Example: envelopefs key create ~/vault.enc --description logs --tag env=prod --alias alias/logs\n\
        With --origin external the key has no material until `key import`."
    )]
    Create {
        #[command(flatten)]
        target: Target,
        /// Free text (at most 8192 characters).
        #[arg(long, default_value = "")]
        description: String,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// aws_kms: envelopefs makes the material; external: you import it (BYOK).
        #[arg(long, default_value = "aws_kms", value_name = "ORIGIN")]
        origin: String,
        /// Also create this alias (alias/NAME) for the new key.
        #[arg(long, value_name = "ALIAS")]
        alias: Option<String>,
    },
    /// List every key with its state, aliases and versions.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show everything about one key (and how many files depend on it, when cheap to know).
    Describe {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Manage aliases (create, update, delete, list).
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Enable a Disabled key.
    Enable {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Disable a key: files under it cannot be opened or created until it is enabled again
    /// (also on a live mount, at once).
    Disable {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Schedule a key's deletion: unusable at once, material destroyed after the window.
    #[command(
        after_help = "Example: envelopefs key schedule-deletion ~/vault.enc alias/old --pending-days 7\n\
        Undo with `envelopefs key cancel-deletion` before the window ends."
    )]
    ScheduleDeletion {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// Days until the material is destroyed (7..=30).
        #[arg(long, default_value_t = crate::keys::lifecycle::DEFAULT_PENDING_DAYS)]
        pending_days: u32,
    },
    /// Cancel a scheduled deletion; the key comes back Disabled (enable it to use it).
    CancelDeletion {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Replace a key's description.
    UpdateDescription {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// The new description.
        description: String,
    },
    /// Add or replace tags.
    Tag {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Remove tags.
    Untag {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// Tag keys.
        #[arg(required = true, value_name = "TAG_KEY")]
        tag_keys: Vec<String>,
    },
    /// Rotate now: add a key-material version that new files use (at most 25 per key).
    #[command(
        after_help = "Old versions keep decrypting; move files to the new version with `envelopefs rewrap`."
    )]
    Rotate {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Automatic rotation (enable, disable, status) and the list of versions.
    #[command(subcommand)]
    Rotation(RotationCommand),
    /// Get an RSA wrapping key and import token (valid 24 h) for importing material.
    #[command(after_help = "\
Example (docs/KEYS.md §Import):
  envelopefs key import-params ~/vault.enc alias/byok --out-dir /tmp/imp
  openssl rand -out material.bin 32
  openssl pkeyutl -encrypt -pubin -inkey /tmp/imp/wrapping-key.pem -pkeyopt rsa_padding_mode:oaep \\
      -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in material.bin -out material.enc
  envelopefs key import ~/vault.enc alias/byok --material material.enc --token /tmp/imp/import-token.bin")]
    ImportParams {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME (created with --origin external).
        key: String,
        /// RSA_2048, RSA_3072 or RSA_4096.
        #[arg(long, default_value = "RSA_4096")]
        wrapping_spec: String,
        /// RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1.
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        algorithm: String,
        /// Where to write wrapping-key.pem and import-token.bin.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Import key material wrapped with `openssl pkeyutl` under the import-params key.
    Import {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// The wrapped material (openssl pkeyutl output).
        #[arg(long, value_name = "FILE")]
        material: PathBuf,
        /// The import token from `key import-params`.
        #[arg(long, value_name = "FILE")]
        token: PathBuf,
        /// When the material expires (RFC 3339 or Unix seconds; at most 365 days ahead).
        #[arg(long, value_name = "TIME")]
        valid_to: Option<String>,
        /// The material is new material for the next `key rotate` (not a re-import).
        #[arg(long)]
        new_material: bool,
    },
    /// Delete a key's imported material; the key is PendingImport until it is imported again.
    DeleteMaterial {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Show or replace a key's policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create, list, retire and revoke grants.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// List, add or remove volume administrators (the uids recorded in the keystore).
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `envelopefs key admin`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// List the administrators (root is one too, without being listed).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Make a user an administrator (administrators only).
    #[command(after_help = "Example: envelopefs key admin add ~/vault.enc alice")]
    Add {
        #[command(flatten)]
        target: Target,
        /// A uid or user name.
        user: String,
    },
    /// Stop a user being an administrator (administrators only; never the last one).
    Remove {
        #[command(flatten)]
        target: Target,
        /// A uid or user name.
        user: String,
    },
}

/// A uid given as a number or a user name known to the system.
pub(crate) fn parse_uid(s: &str) -> Result<u32, CliError> {
    if let Ok(uid) = s.parse::<u32>() {
        return Ok(uid);
    }
    crate::keys::principal::user_id(s).ok_or_else(|| {
        crate::cli::fail(
            crate::cli::ExitCode::Usage,
            format!("{s:?} is neither a uid nor a user this system knows (see `getent passwd`)"),
        )
    })
}

/// `envelopefs key alias`.
#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Create ALIAS (alias/NAME) pointing at KEY.
    Create {
        #[command(flatten)]
        target: Target,
        /// alias/NAME (letters, digits, / _ - :; alias/aws/ is reserved).
        alias: String,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Point an existing ALIAS at another KEY. The volume's default key alias (default_key
    /// in envelopefs.json) may only be pointed at an Enabled key, unless --force.
    Update {
        #[command(flatten)]
        target: Target,
        /// alias/NAME.
        alias: String,
        /// Key id or alias/NAME.
        key: String,
        /// Point the volume's default key alias at a key that cannot encrypt new files.
        #[arg(long)]
        force: bool,
    },
    /// Delete ALIAS (the key stays). The volume's default key alias (default_key in
    /// envelopefs.json) is refused unless --force: without it no file can be created.
    Delete {
        #[command(flatten)]
        target: Target,
        /// alias/NAME.
        alias: String,
        /// Delete the volume's default key alias anyway.
        #[arg(long)]
        force: bool,
    },
    /// List aliases (of one key with --key).
    List {
        #[command(flatten)]
        target: Target,
        /// Only aliases of this key.
        #[arg(long)]
        key: Option<String>,
    },
}

/// `envelopefs key rotation`.
#[derive(Subcommand, Debug)]
pub enum RotationCommand {
    /// Rotate automatically every N days.
    Enable {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// Days between rotations (90..=2560).
        #[arg(long, default_value_t = crate::keys::rotation::DEFAULT_PERIOD_DAYS)]
        period_days: u32,
    },
    /// Stop rotating automatically (versions stay).
    Disable {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Whether and when the key rotates.
    Status {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Every key-material version with its date and rotation type.
    List {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
}

/// `envelopefs key policy`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the key policy (JSON).
    Get {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Replace the key policy with the JSON document in FILE.
    #[command(
        after_help = "Example: envelopefs key policy get ~/v alias/default > p.json; edit p.json; \
        envelopefs key policy put ~/v alias/default --file p.json"
    )]
    Put {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// The policy document.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Accept user or group names this system does not know (they match no one until
        /// such a user or group is created).
        #[arg(long)]
        allow_unknown_principal: bool,
    },
}

/// `envelopefs key grant`.
#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Let one user or group use the key for some operations.
    #[command(
        after_help = "Example: envelopefs key grant create ~/v alias/default --grantee user:alice \\\n    \
        --operations Decrypt,GenerateDataKey --retiring-principal user:alice"
    )]
    Create {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// user:NAME, user:UID, uid:UID, group:NAME, group:GID, gid:GID.
        #[arg(long)]
        grantee: String,
        /// Comma-separated: Decrypt, Encrypt, GenerateDataKey, ReEncryptFrom, ReEncryptTo,
        /// DescribeKey, CreateGrant, RetireGrant.
        #[arg(long, value_delimiter = ',', required = true)]
        operations: Vec<String>,
        /// Who may retire the grant (same forms as --grantee).
        #[arg(long)]
        retiring_principal: Option<String>,
        /// Only requests whose encryption context contains K=V (repeatable).
        #[arg(long, value_name = "K=V")]
        constraint_subset: Vec<String>,
        /// Only requests whose encryption context is exactly these K=V (repeatable).
        #[arg(long, value_name = "K=V", conflicts_with = "constraint_subset")]
        constraint_equals: Vec<String>,
        /// A name for the grant.
        #[arg(long)]
        name: Option<String>,
        /// Accept a user or group name this system does not know (it matches no one until
        /// such a user or group is created).
        #[arg(long)]
        allow_unknown_principal: bool,
    },
    /// List the key's grants.
    List {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
    },
    /// Retire a grant (as its retiring principal or grantee).
    Retire {
        #[command(flatten)]
        target: Target,
        /// The grant id.
        #[arg(long)]
        grant_id: String,
    },
    /// Revoke a grant (key administrators).
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Key id or alias/NAME.
        key: String,
        /// The grant id.
        grant_id: String,
    },
}

/// `envelopefs audit`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  envelopefs audit show ~/vault.enc --since 2026-11-01T00:00:00Z --key alias/default
  envelopefs audit verify ~/vault.enc --passfile pw.txt")]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Audit subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print audit records (no passphrase needed).
    Show {
        /// The volume's backing directory.
        backing: PathBuf,
        /// Only records at or after this time (RFC 3339 or Unix seconds).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only records about this key (id, or alias/NAME as recorded).
        #[arg(long)]
        key: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check the log's keyed hash chain; prints OK and the count, or names the bad record.
    Verify {
        /// The volume's backing directory.
        backing: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `K=V`.
pub(crate) fn parse_pair(s: &str) -> Result<(String, String), CliError> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| {
            crate::cli::fail(
                crate::cli::ExitCode::Usage,
                format!("{s:?}: expected KEY=VALUE"),
            )
        })
}
