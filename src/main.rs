use clap::Parser;
use envelopefs::cli::{self, Cli, ExitCode};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Rust ignores SIGPIPE, so printing into a closed pipe (`envelopefs audit show | head -1`)
    // would panic. Every command that prints gets the usual Unix behaviour instead: killed
    // quietly by SIGPIPE (status 141 in a shell). The mount daemon keeps ignoring it: a log
    // reader that goes away must not take the filesystem down.
    if !matches!(cli.command, cli::Command::Mount { .. }) {
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // fuser warns when the kernel mount is already gone at session end (an unmount from
    // outside, which is the normal way to stop): not worth a warning, so its session module
    // logs errors only unless -vv.
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn,fuser::session=error",
            1 => "info,fuser::session=error",
            _ => "debug",
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::from(ExitCode::Ok as u8),
        Err(e) => {
            eprintln!("envelopefs: {}", e.message);
            std::process::ExitCode::from(e.code as u8)
        }
    }
}
