//! `mount.envelopefs`: the mount(8) helper, so `/etc/fstab` lines and
//! `mount -t fuse.envelopefs BACKING MNT -o keyfile=/path,allow_other` work (install it as
//! `/sbin/mount.envelopefs` and `/sbin/mount.fuse.envelopefs`; docs/OPERATIONS.md §fstab).
//! It translates mount(8)'s `SOURCE DIR [-o OPTS] [-n] [-s] [-f] [-v]` into
//! `envelopefs mount --background SOURCE DIR ...` and runs it through the library, so the
//! daemon detaches as with `--background` (which starts this same executable as
//! `mount.envelopefs __daemon`).

use std::ffi::OsString;

use clap::Parser;
use envelopefs::cli::{self, Cli, ExitCode};

/// The hidden subcommand `mount --background` starts its daemon with
/// (`daemon::background::DAEMON_SUBCOMMAND`; tests/backup_mount_helper.rs fails if they drift).
const DAEMON_SUBCOMMAND: &str = "__daemon";

/// Options mount(8), systemd or fstab use that mean nothing to envelopefs (or are its
/// defaults): accepted and ignored.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "nosuid",
    "nodev",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "silent",
    "loud",
    "async",
];

/// The `envelopefs mount` arguments for one `-o` option, or why it is refused.
fn translate(opt: &str) -> Result<Vec<String>, String> {
    let (k, v) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    let with = |flag: &str| match v {
        Some(v) if !v.is_empty() => Ok(vec![flag.to_owned(), v.to_owned()]),
        _ => Err(format!("option {k} needs a value ({k}=...)")),
    };
    Ok(match k {
        "keyfile" => with("--keyfile")?,
        "passfile" => with("--passfile")?,
        "pin_file" | "pinfile" => with("--pin-file")?,
        "log_file" | "logfile" => with("--log-file")?,
        "threads" => with("--threads")?,
        "transport" => with("--transport")?,
        "allow_other" => vec!["--allow-other".into()],
        "ro" => vec!["--read-only".into()],
        "suid" => vec!["--suid".into()],
        "dev" => vec!["--dev".into()],
        "no_xattr" | "noxattr" => vec!["--no-xattr".into()],
        "no_writeback_cache" => vec!["--no-writeback-cache".into()],
        _ if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" => vec![],
        _ => {
            return Err(format!(
                "unknown mount option {opt:?} (envelopefs takes keyfile=, passfile=, pin_file=, \
                 log_file=, threads=, transport=, allow_other, ro, suid, dev, no_xattr, \
                 no_writeback_cache)"
            ));
        }
    })
}

/// mount(8)'s argument vector → `envelopefs mount --background ...`.
fn mount_args(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = vec!["envelopefs".into(), "mount".into(), "--background".into()];
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let opts = it.next().ok_or("-o needs a value")?;
                let opts = opts.to_str().ok_or("mount options must be UTF-8")?;
                for o in opts.split(',').filter(|o| !o.is_empty()) {
                    out.extend(translate(o)?.into_iter().map(OsString::from));
                }
            }
            // -n (no mtab), -s (sloppy), -f (fake) from mount(8); -v verbose.
            Some("-n" | "-s") => {}
            Some("-f") => return Err("-f (fake mount) is not supported".into()),
            Some("-v") => out.push("-v".into()),
            Some(s) if s.starts_with('-') => return Err(format!("unknown argument {s}")),
            _ => positional.push(a.clone()),
        }
    }
    let [source, dir] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.envelopefs BACKING MOUNTPOINT [-o OPTIONS]".to_owned())?;
    out.push(source);
    out.push(dir);
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let argv = if args.first().and_then(|a| a.to_str()) == Some(DAEMON_SUBCOMMAND) {
        // The daemon `--background` starts: this executable again.
        vec!["envelopefs".into(), DAEMON_SUBCOMMAND.into()]
    } else {
        match mount_args(&args) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("mount.envelopefs: {e}");
                return std::process::ExitCode::from(ExitCode::Usage as u8);
            }
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mount.envelopefs: {e}");
            return std::process::ExitCode::from(ExitCode::Usage as u8);
        }
    };
    if !matches!(cli.command, cli::Command::Daemon) {
        cli::init_logging(cli.verbose, cli.quiet);
    }
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::from(ExitCode::Ok as u8),
        Err(e) => {
            eprintln!("mount.envelopefs: {}", e.message);
            std::process::ExitCode::from(e.code as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn fstab_options_become_mount_flags() {
        let a = mount_args(&args(&[
            "/b",
            "/m",
            "-o",
            "rw,noauto,_netdev,x-systemd.automount,keyfile=/k,allow_other,ro,log_file=/l,\
             transport=uring",
        ]))
        .unwrap();
        assert_eq!(
            a,
            args(&[
                "envelopefs",
                "mount",
                "--background",
                "--keyfile",
                "/k",
                "--allow-other",
                "--read-only",
                "--log-file",
                "/l",
                "--transport",
                "uring",
                "/b",
                "/m"
            ])
        );
        assert!(mount_args(&args(&["/b", "/m", "-o", "noexec"])).is_err());
        assert!(mount_args(&args(&["/b", "/m", "-o", "keyfile="])).is_err());
        assert!(mount_args(&args(&["/b"])).is_err());
    }
}
