//! Runs the key, audit and scan commands: open the keystore, call the key service, print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::groups::{one_key, refuse_unknown, run_admin, run_alias, run_grant, run_rotation};
use super::{AuditArgs, KeyArgs, KeyCommand, PolicyCommand, Target, parse_pair};
use crate::cli::{CliError, ExitCode, fail, read_unlock};
use crate::keys::keystore::now_secs;
use crate::keys::lifecycle::CreateKeyRequest;
use crate::keys::local::LocalKms;
use crate::keys::policy::PrincipalSpec;
use crate::keys::{Caller, KeyMetadata, timefmt};
use crate::store::scan::{self, ScanReport};
use crate::store::volume as vol;

/// How long `key describe` and `key schedule-deletion` may spend counting dependent files.
const SCAN_BUDGET: Duration = Duration::from_secs(2);

/// An opened keystore and how to print.
pub(super) struct Session {
    pub(super) kms: LocalKms,
    pub(super) me: Caller,
    pub(super) json: bool,
    pub(super) backing: PathBuf,
}

impl Session {
    pub(super) fn open(t: &Target) -> Result<Self, CliError> {
        let cfg = vol::read_config(&t.backing)?;
        let unlock = read_unlock(&t.secret, false)?;
        let kms = crate::custody::open_kms(&vol::keystore_path(&t.backing, &cfg), &unlock)?;
        for line in kms.maintain(now_secs()) {
            eprintln!("note: {line}");
        }
        Ok(Session {
            kms,
            me: Caller::current(),
            json: t.json,
            backing: t.backing.clone(),
        })
    }

    /// Prints `value` as JSON, or runs `human`.
    pub(super) fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) {
        match self.json {
            true => println!(
                "{}",
                serde_json::to_string_pretty(value).expect("serializable")
            ),
            false => human(value),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.kms.sync_audit() {
            eprintln!("warning: cannot flush the audit log: {e}");
        }
    }
}

pub(super) fn when(t: Option<u64>) -> String {
    t.map_or_else(|| "-".into(), timefmt::format)
}

pub(super) fn print_key(m: &KeyMetadata) {
    println!("key id:       {}", m.key_id);
    println!(
        "aliases:      {}",
        if m.aliases.is_empty() {
            "-".into()
        } else {
            m.aliases.join(", ")
        }
    );
    println!("description:  {}", m.description);
    println!("state:        {}", m.state);
    println!("origin:       {}", m.origin.as_str());
    println!("created:      {}", timefmt::format(m.creation_date));
    println!(
        "versions:     {} (new wraps use version {})",
        m.versions, m.current_version
    );
    match m.rotation_period_days {
        Some(d) => println!(
            "rotation:     every {d} days, next {}",
            when(m.next_rotation_date)
        ),
        None => println!("rotation:     automatic rotation off"),
    }
    if let Some(d) = m.deletion_date {
        println!(
            "deletion:     material destroyed at {} (cancel with `envelopefs key cancel-deletion`)",
            timefmt::format(d)
        );
    }
    if let Some(t) = m.valid_to {
        println!(
            "valid to:     imported material expires at {}",
            timefmt::format(t)
        );
    }
    let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "tags:         {}",
        if tags.is_empty() {
            "-".into()
        } else {
            tags.join(", ")
        }
    );
}

pub(super) fn print_keys(list: &Vec<KeyMetadata>) {
    println!(
        "{:<36}  {:<15}  {:>3}  {:<8}  {:<24}  DESCRIPTION",
        "KEY ID", "STATE", "VER", "ORIGIN", "ALIASES"
    );
    for m in list {
        let aliases = if m.aliases.is_empty() {
            "-".into()
        } else {
            m.aliases.join(",")
        };
        println!(
            "{:<36}  {:<15}  {:>3}  {:<8}  {:<24}  {}",
            m.key_id,
            m.state.as_str(),
            m.current_version,
            m.origin.as_str(),
            aliases,
            m.description
        );
    }
}

/// What depends on `key_id`, counted within the scan budget, as JSON and as a sentence.
pub(super) fn dependents(backing: &Path, key_id: &str) -> (serde_json::Value, String) {
    match scan::scan(backing, Some(SCAN_BUDGET)) {
        Ok(r) if r.complete => {
            let (files, volume_key) = r.dependents(key_id);
            let mut s = format!("{files} file(s) have their data key wrapped under this key");
            if volume_key {
                s.push_str(
                    "; so does the volume key: without this key the volume cannot be mounted",
                );
            }
            (
                json!({"files": files, "volume_key": volume_key, "complete": true}),
                s,
            )
        }
        Ok(_) => (
            json!({"files": null, "complete": false}),
            format!(
                "not counted (large volume); run `envelopefs scan {}`",
                backing.display()
            ),
        ),
        Err(e) => (
            json!({"files": null, "error": e.to_string()}),
            format!("cannot scan: {e}"),
        ),
    }
}

pub(super) fn meta_with_dependents(s: &Session, m: &KeyMetadata) -> Result<(), CliError> {
    let (deps, sentence) = dependents(&s.backing, &m.key_id);
    let mut v = serde_json::to_value(m).expect("serializable");
    v["dependents"] = deps;
    s.emit(&v, |_| {
        print_key(m);
        println!("files:        {sentence}");
    });
    Ok(())
}

pub(super) fn tags(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    pairs.iter().map(|p| parse_pair(p)).collect()
}

pub(super) fn principal(s: &str) -> Result<PrincipalSpec, CliError> {
    let s = match s.split_once(':') {
        Some(("uid", n)) => format!("user:{n}"),
        Some(("gid", n)) => format!("group:{n}"),
        _ => s.to_owned(),
    };
    Ok(PrincipalSpec::from_cli(&s)?)
}

pub(super) fn read_file(p: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(p).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read {}: {e}", p.display()),
        )
    })
}

/// Runs `envelopefs key …`.
pub fn run_key(args: KeyArgs) -> Result<(), CliError> {
    use KeyCommand as K;
    match args.command {
        K::Create {
            target,
            description,
            tags: t,
            origin,
            alias,
        } => {
            let s = Session::open(&target)?;
            let origin = origin
                .parse()
                .map_err(|e: String| fail(ExitCode::Usage, e))?;
            let req = CreateKeyRequest {
                description,
                origin,
                tags: tags(&t)?,
                alias,
            };
            // One keystore write: the key and its alias land together or not at all.
            let m = s.kms.create_key_with(&req, &s.me)?;
            s.emit(&m, print_key);
        }
        K::List { target } => {
            let s = Session::open(&target)?;
            s.emit(&s.kms.list_keys(), print_keys);
        }
        K::Describe { target, key } => {
            let s = Session::open(&target)?;
            let m = s.kms.describe(&key, &s.me)?;
            meta_with_dependents(&s, &m)?;
        }
        K::Alias(cmd) => run_alias(cmd)?,
        K::Enable { target, key } => one_key(&target, |s| s.kms.enable_key(&key, &s.me))?,
        K::Disable { target, key } => one_key(&target, |s| s.kms.disable_key(&key, &s.me))?,
        K::ScheduleDeletion {
            target,
            key,
            pending_days,
        } => {
            let s = Session::open(&target)?;
            let m = s
                .kms
                .schedule_key_deletion(&key, Some(pending_days), &s.me)?;
            if !s.json {
                eprintln!(
                    "warning: key {} will be destroyed at {}; data wrapped only under it will be lost",
                    m.key_id,
                    when(m.deletion_date)
                );
            }
            meta_with_dependents(&s, &m)?;
        }
        K::CancelDeletion { target, key } => {
            one_key(&target, |s| s.kms.cancel_key_deletion(&key, &s.me))?
        }
        K::UpdateDescription {
            target,
            key,
            description,
        } => one_key(&target, |s| {
            s.kms.update_key_description(&key, &description, &s.me)
        })?,
        K::Tag {
            target,
            key,
            tags: t,
        } => {
            let t = tags(&t)?;
            one_key(&target, |s| s.kms.tag_key(&key, &t, &s.me))?
        }
        K::Untag {
            target,
            key,
            tag_keys,
        } => one_key(&target, |s| s.kms.untag_key(&key, &tag_keys, &s.me))?,
        K::Rotate { target, key } => {
            let s = Session::open(&target)?;
            let v = s.kms.rotate(&key, &s.me)?;
            let m = s.kms.describe(&key, &s.me)?;
            s.emit(&json!({"key_id": m.key_id, "version": v}), |_| {
                println!(
                    "key {} rotated: new files use version {v}; older versions still decrypt",
                    m.key_id
                );
                println!(
                    "move existing files to it with `envelopefs rewrap {}`",
                    s.backing.display()
                );
            });
        }
        K::Rotation(cmd) => run_rotation(cmd)?,
        K::ImportParams {
            target,
            key,
            wrapping_spec,
            algorithm,
            out_dir,
        } => {
            let s = Session::open(&target)?;
            let spec = wrapping_spec
                .parse()
                .map_err(|e: String| fail(ExitCode::Usage, e))?;
            let alg = algorithm
                .parse()
                .map_err(|e: String| fail(ExitCode::Usage, e))?;
            let p = s.kms.get_parameters_for_import(&key, spec, alg, &s.me)?;
            let io = |e: std::io::Error| {
                fail(
                    ExitCode::Failure,
                    format!("cannot write to {}: {e}", out_dir.display()),
                )
            };
            std::fs::create_dir_all(&out_dir).map_err(io)?;
            let (pem, token) = (
                out_dir.join("wrapping-key.pem"),
                out_dir.join("import-token.bin"),
            );
            std::fs::write(&pem, &p.public_key_pem).map_err(io)?;
            std::fs::write(&token, &p.import_token).map_err(io)?;
            let md = if p.algorithm.as_str().ends_with("256") {
                "sha256"
            } else {
                "sha1"
            };
            let v = json!({"key_id": p.key_id, "public_key": pem, "import_token": token,
                "parameters_valid_to": p.parameters_valid_to, "wrapping_spec": p.wrapping_spec.as_str(),
                "wrapping_algorithm": p.algorithm.as_str()});
            s.emit(&v, |_| {
                println!("wrote {} and {} (valid until {})", pem.display(), token.display(), when(Some(p.parameters_valid_to)));
                println!("wrap 32 bytes of material with:");
                println!("  openssl pkeyutl -encrypt -pubin -inkey {} -pkeyopt rsa_padding_mode:oaep \\", pem.display());
                println!("      -pkeyopt rsa_oaep_md:{md} -pkeyopt rsa_mgf1_md:{md} -in material.bin -out material.enc");
                println!("then: envelopefs key import {} {} --material material.enc --token {}", s.backing.display(), p.key_id, token.display());
            });
        }
        K::Import {
            target,
            key,
            material,
            token,
            valid_to,
            new_material,
        } => {
            let s = Session::open(&target)?;
            let valid_to = valid_to
                .map(|t| crate::keys::import::parse_time(&t))
                .transpose()?;
            let (m, t) = (read_file(&material)?, read_file(&token)?);
            let out = s
                .kms
                .import_key_material(&key, &t, &m, valid_to, new_material, &s.me)?;
            s.emit(&out, |o| {
                println!(
                    "imported material into key {} as version {} ({}); the key is {}",
                    o.key_id, o.version, o.import_type, o.key_state
                );
                if o.import_type == "PENDING_ROTATION" {
                    println!(
                        "it becomes current at the next `envelopefs key rotate {} {}`",
                        s.backing.display(),
                        o.key_id
                    );
                }
                if let Some(t) = o.valid_to {
                    println!("it expires at {}", timefmt::format(t));
                }
            });
        }
        K::DeleteMaterial { target, key } => {
            let s = Session::open(&target)?;
            let state = s.kms.delete_imported_key_material(&key, &s.me)?;
            s.emit(&json!({"key": key, "key_state": state}), |_| {
                println!("deleted the imported material of {key}; it is {state} until the same material is imported again")
            });
        }
        K::Policy(PolicyCommand::Get { target, key }) => {
            let s = Session::open(&target)?;
            println!("{}", s.kms.get_key_policy(&key, &s.me)?.to_json_pretty());
        }
        K::Policy(PolicyCommand::Put {
            target,
            key,
            file,
            allow_unknown_principal,
        }) => {
            let s = Session::open(&target)?;
            let text = String::from_utf8(read_file(&file)?).map_err(|_| {
                fail(
                    ExitCode::Failure,
                    format!("{} is not UTF-8 text", file.display()),
                )
            })?;
            if !allow_unknown_principal && let Ok(p) = crate::keys::policy::parse_policy(&text) {
                refuse_unknown(&p.unknown_names(), "key policy")?;
            }
            s.kms.put_key_policy(&key, &text, &s.me)?;
            s.emit(&json!({"key": key, "policy": "replaced"}), |_| {
                println!("replaced the key policy of {key}")
            });
        }
        K::Grant(cmd) => run_grant(cmd)?,
        K::Admin(cmd) => run_admin(cmd)?,
    }
    Ok(())
}

/// Runs `envelopefs scan BACKING`.
pub fn run_scan(backing: &Path, json: bool) -> Result<(), CliError> {
    let r: ScanReport = scan::scan(backing, None)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("serializable")
        );
        return Ok(());
    }
    let labels = vol::read_config(backing)
        .map(|cfg| crate::keys::keystore::labels_unverified(&vol::keystore_path(backing, &cfg)))
        .unwrap_or_default();
    println!(
        "{} files under {}/data: {} empty (no key yet), {} unreadable",
        r.files,
        backing.display(),
        r.empty,
        r.unreadable.len()
    );
    for (key, versions) in &r.by_key {
        let label = labels
            .get(key)
            .map_or("not in the keystore".into(), |l| l.clone());
        let total: u64 = versions.values().sum();
        println!("key {key} ({label}): {total} files");
        for (v, n) in versions {
            println!("    version {v}: {n}");
        }
    }
    println!(
        "volume key: key {} version {}",
        r.volume_key.0, r.volume_key.1
    );
    if r.stale_copies > 0 {
        println!(
            "{} files have a second header copy that still names older keys (a re-wrap was \
             interrupted); they are counted under both. Run `envelopefs rewrap {}` to finish it.",
            r.stale_copies,
            backing.display()
        );
    }
    for p in r.unreadable.iter().take(10) {
        println!("unreadable: {}", p.display());
    }
    Ok(())
}

/// Runs `envelopefs audit …`.
pub fn run_audit(args: AuditArgs) -> Result<(), CliError> {
    super::audit_cmd::run(args)
}
