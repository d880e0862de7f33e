use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pupil::cli::Cli::parse();
    match pupil::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line: the error and its causes.
            eprintln!("pupil: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
