use clap::Parser;
use envelopefs::cli::{self, Cli, ExitCode};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp_millis().init();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::from(ExitCode::Ok as u8),
        Err(e) => {
            eprintln!("envelopefs: {}", e.message);
            std::process::ExitCode::from(e.code as u8)
        }
    }
}
