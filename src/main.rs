use clap::Parser;
use envelopefs::cli::{self, Cli, ExitCode};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
