//! `letterbox`: the command line. Each subcommand dispatches to the module that owns it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use letterbox::{config, passwd};

#[derive(Parser)]
#[command(
    name = "letterbox",
    version,
    about = "Self-hosted mail appliance for the Raspberry Pi"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a provisioning file; prints every error with file, line and column.
    Check {
        /// The file to check; the embedded default when omitted.
        file: Option<PathBuf>,
    },
    /// Read a password from the terminal (or stdin) and print a hash for letterbox.toml.
    Passwd,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("letterbox: {}", letterbox::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Check { file } => match config::load(file.as_deref()) {
            Ok((cfg, _)) => {
                println!(
                    "ok: {} ({} interface{})",
                    cfg.system.fqdn(),
                    cfg.interfaces.len(),
                    if cfg.interfaces.len() == 1 { "" } else { "s" }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(config::LoadError::Invalid(diagnostics)) => {
                eprintln!("{diagnostics}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        },
        Command::Passwd => {
            println!("{}", passwd::prompt_and_hash()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
