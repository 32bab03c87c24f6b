use clap::Parser;
use envelopefs::cli::{self, Cli, ExitCode};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Rust ignores SIGPIPE, so printing into a closed pipe (`envelopefs audit show | head -1`)
    // would panic. Every command that prints gets the usual Unix behaviour instead: killed
    // quietly by SIGPIPE (status 141 in a shell). The mount daemon keeps ignoring it: a log
    // reader that goes away must not take the filesystem down.
    if !matches!(
        cli.command,
        cli::Command::Mount { .. } | cli::Command::Daemon
    ) {
        envelopefs::store::sys::default_sigpipe();
    }
    // A background daemon learns its verbosity from the settings on its stdin.
    if !matches!(cli.command, cli::Command::Daemon) {
        cli::init_logging(cli.verbose, cli.quiet);
    }
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::from(ExitCode::Ok as u8),
        Err(e) => {
            eprintln!("envelopefs: {}", e.message);
            std::process::ExitCode::from(e.code as u8)
        }
    }
}
