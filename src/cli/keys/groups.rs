//! `envelopefs key admin|alias|rotation|grant …`: the key subcommands with subcommands of
//! their own (the rest are in `run.rs`), over the session and printing helpers there.

use std::collections::BTreeMap;

use serde_json::json;

use super::{AdminCommand, AliasCommand, GrantCommand, RotationCommand, Target, parse_uid};
use crate::cli::{CliError, ExitCode, fail};
use crate::keys::policy::{Grant, GrantConstraints, PrincipalSpec};
use crate::keys::{KeyMetadata, timefmt};
use crate::store::volume as vol;

use super::run::*;

pub(super) fn run_admin(cmd: AdminCommand) -> Result<(), CliError> {
    let print = |admins: &Vec<u32>| {
        for uid in admins {
            match crate::keys::principal::user_name(*uid) {
                Some(n) => println!("uid {uid} ({n})"),
                None => println!("uid {uid}"),
            }
        }
    };
    match cmd {
        AdminCommand::List { target } => {
            let s = Session::open(&target)?;
            s.emit(&s.kms.list_admins(&s.me)?, print);
        }
        AdminCommand::Add { target, user } => {
            let uid = parse_uid(&user)?;
            let s = Session::open(&target)?;
            s.emit(&s.kms.add_admin(uid, &s.me)?, print);
        }
        AdminCommand::Remove { target, user } => {
            let uid = parse_uid(&user)?;
            let s = Session::open(&target)?;
            s.emit(&s.kms.remove_admin(uid, &s.me)?, print);
        }
    }
    Ok(())
}

/// Refuses a grant or policy that names users or groups the system does not know.
pub(super) fn refuse_unknown(unknown: &[String], what: &str) -> Result<(), CliError> {
    if unknown.is_empty() {
        return Ok(());
    }
    Err(fail(
        ExitCode::Failure,
        format!(
            "the {what} names {} that this system does not know (see `getent passwd` and \
             `getent group`); nothing was changed. Check the spelling, use a numeric uid or gid, \
             or pass --allow-unknown-principal (the name then matches whoever gets it later)",
            unknown.join(", ")
        ),
    ))
}

/// Opens, runs one metadata-returning operation, prints the key.
pub(super) fn one_key(
    t: &Target,
    f: impl FnOnce(&Session) -> Result<KeyMetadata, crate::keys::KeyError>,
) -> Result<(), CliError> {
    let s = Session::open(t)?;
    let m = f(&s)?;
    s.emit(&m, print_key);
    Ok(())
}

pub(super) fn run_alias(cmd: AliasCommand) -> Result<(), CliError> {
    match cmd {
        AliasCommand::Create { target, alias, key } => {
            let s = Session::open(&target)?;
            s.kms.create_alias(&alias, &key, &s.me)?;
            s.emit(&json!({"alias_name": alias, "target": key}), |_| {
                println!("{alias} → {key}")
            });
        }
        AliasCommand::Update {
            target,
            alias,
            key,
            force,
        } => {
            let s = Session::open(&target)?;
            if !force && is_default_key(&s, &alias)? {
                let state = s.kms.describe(&key, &s.me)?.state;
                if state != crate::keys::KeyState::Enabled {
                    return Err(fail(
                        ExitCode::Failure,
                        format!(
                            "{alias} is the volume's default key (default_key in {}): new files \
                             are encrypted under it, and {key} is {state}, so creating files would \
                             fail; enable {key} first, pick an Enabled key, or pass --force",
                            s.backing.join(vol::CONFIG_NAME).display()
                        ),
                    ));
                }
            }
            s.kms.update_alias(&alias, &key, &s.me)?;
            s.emit(&json!({"alias_name": alias, "target": key}), |_| {
                println!("{alias} → {key}")
            });
        }
        AliasCommand::Delete {
            target,
            alias,
            force,
        } => {
            let s = Session::open(&target)?;
            if !force && is_default_key(&s, &alias)? {
                return Err(fail(
                    ExitCode::Failure,
                    format!(
                        "{alias} is the volume's default key (default_key in {}): every new file \
                         is encrypted under it, so without it creating files fails (EIO); nothing \
                         was deleted. To use another key for new files, point the alias at it \
                         (`envelopefs key alias update {} {alias} KEY`); to delete it anyway, \
                         pass --force",
                        s.backing.join(vol::CONFIG_NAME).display(),
                        s.backing.display()
                    ),
                ));
            }
            s.kms.delete_alias(&alias, &s.me)?;
            s.emit(&json!({"alias_name": alias, "deleted": true}), |_| {
                println!("deleted {alias}")
            });
        }
        AliasCommand::List { target, key } => {
            let s = Session::open(&target)?;
            let list = s.kms.list_aliases(key.as_deref(), &s.me)?;
            s.emit(&list, |l| {
                l.iter()
                    .for_each(|a| println!("{:<40}  {}", a.alias_name, a.target_key_id))
            });
        }
    }
    Ok(())
}

/// Whether `alias` is the volume's default key (`default_key` in its envelopefs.json).
pub(super) fn is_default_key(s: &Session, alias: &str) -> Result<bool, CliError> {
    Ok(vol::read_config(&s.backing)?.default_key == alias)
}

pub(super) fn run_rotation(cmd: RotationCommand) -> Result<(), CliError> {
    let print_status = |st: &crate::keys::rotation::RotationStatus| {
        match st.rotation_period_days {
            Some(d) => println!(
                "key {}: rotates every {d} days; next {}",
                st.key_id,
                when(st.next_rotation_date)
            ),
            None => println!("key {}: automatic rotation off", st.key_id),
        }
        println!(
            "on-demand rotations: {} done, {} left",
            st.on_demand_rotations, st.on_demand_rotations_left
        );
    };
    match cmd {
        RotationCommand::Enable {
            target,
            key,
            period_days,
        } => {
            let s = Session::open(&target)?;
            s.emit(
                &s.kms.enable_key_rotation(&key, Some(period_days), &s.me)?,
                print_status,
            );
        }
        RotationCommand::Disable { target, key } => {
            let s = Session::open(&target)?;
            s.emit(&s.kms.disable_key_rotation(&key, &s.me)?, print_status);
        }
        RotationCommand::Status { target, key } => {
            let s = Session::open(&target)?;
            s.emit(&s.kms.key_rotation_status(&key, &s.me)?, print_status);
        }
        RotationCommand::List { target, key } => {
            let s = Session::open(&target)?;
            s.emit(&s.kms.list_key_rotations(&key, &s.me)?, |l| {
                println!("{:>7}  {:<20}  {:<9}  STATE", "VERSION", "DATE", "TYPE");
                for r in l {
                    let ty = r.rotation_type.unwrap_or("ORIGINAL");
                    println!(
                        "{:>7}  {:<20}  {:<9}  {}",
                        r.version,
                        timefmt::format(r.rotation_date),
                        ty,
                        r.key_material_state
                    );
                }
            });
        }
    }
    Ok(())
}

pub(super) fn run_grant(cmd: GrantCommand) -> Result<(), CliError> {
    match cmd {
        GrantCommand::Create {
            target,
            key,
            grantee,
            operations,
            retiring_principal,
            constraint_subset,
            constraint_equals,
            name,
            allow_unknown_principal,
        } => {
            let s = Session::open(&target)?;
            let pairs = |v: &[String]| -> Result<Option<BTreeMap<String, String>>, CliError> {
                Ok(if v.is_empty() { None } else { Some(tags(v)?) })
            };
            let constraints = GrantConstraints {
                encryption_context_subset: pairs(&constraint_subset)?,
                encryption_context_equals: pairs(&constraint_equals)?,
            };
            let ops: Vec<&str> = operations.iter().map(String::as_str).collect();
            let retiring = retiring_principal.as_deref().map(principal).transpose()?;
            let grantee = principal(&grantee)?;
            if !allow_unknown_principal {
                let mut unknown = grantee.unknown_names();
                unknown.extend(retiring.iter().flat_map(PrincipalSpec::unknown_names));
                refuse_unknown(&unknown, "grant")?;
            }
            let grant = Grant::new(grantee, &ops, retiring, Some(constraints), name)?;
            let id = s.kms.create_grant(&key, grant, &s.me)?;
            s.emit(&json!({"grant_id": id, "key": key}), |_| {
                println!("created grant {id} on {key}")
            });
        }
        GrantCommand::List { target, key } => {
            let s = Session::open(&target)?;
            s.emit(&s.kms.list_grants(&key, &s.me)?, |l| {
                for g in l {
                    println!(
                        "{}  grantee {}  operations {}  created {}",
                        g.grant_id,
                        g.grantee,
                        g.operations.join(","),
                        timefmt::format(g.creation_date)
                    );
                    if let Some(n) = &g.name {
                        println!("    name {n}");
                    }
                    if let Some(r) = &g.retiring_principal {
                        println!("    retiring principal {r}");
                    }
                    if let Some(c) = &g.constraints {
                        println!(
                            "    constraints {}",
                            serde_json::to_string(c).unwrap_or_default()
                        );
                    }
                }
            });
        }
        GrantCommand::Retire { target, grant_id } => {
            let s = Session::open(&target)?;
            let key = s.kms.retire_grant(&grant_id, &s.me)?;
            s.emit(&json!({"grant_id": grant_id, "key_id": key}), |_| {
                println!("retired grant {grant_id} of key {key}")
            });
        }
        GrantCommand::Revoke {
            target,
            key,
            grant_id,
        } => {
            let s = Session::open(&target)?;
            s.kms.revoke_grant(&key, &grant_id, &s.me)?;
            s.emit(&json!({"grant_id": grant_id, "key": key}), |_| {
                println!("revoked grant {grant_id} of {key}")
            });
        }
    }
    Ok(())
}
