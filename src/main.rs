//! `letterbox`: the command line. Each subcommand dispatches to the module that owns it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use letterbox::{config, net, passwd};

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
    /// Configure or show the network of the current network namespace.
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
}

#[derive(Subcommand)]
enum NetCommand {
    /// Apply the file's interfaces, addresses, routes and system names; exits 1 if any failed.
    Apply {
        /// The provisioning file; the embedded default when omitted.
        file: Option<PathBuf>,
        /// Where /etc/hostname, /etc/hosts, /etc/resolv.conf and /etc/timezone are written.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// List links with their addresses and default routes, as the kernel reports them.
    Show,
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
        Command::Net { command } => run_net(command),
    }
}

fn run_net(command: NetCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        NetCommand::Apply { file, root } => {
            let cfg = match config::load(file.as_deref()) {
                Ok((cfg, _)) => cfg,
                Err(config::LoadError::Invalid(diagnostics)) => {
                    eprintln!("{diagnostics}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            let report = runtime.block_on(net::apply(&cfg, &root))?;
            println!("{report}");
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        NetCommand::Show => {
            for link in runtime.block_on(net::snapshot())? {
                println!("{link}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
