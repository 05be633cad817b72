use std::process::ExitCode;

use clap::Parser;
use relay_user::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => relay_user::serve::run(args),
        Command::Check { config } => relay_user::check::run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line for the operator.
            eprintln!("relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}
