//! `letterbox`: the command line. Each subcommand dispatches to the module that owns it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use letterbox::{config, init, net, passwd};

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
    /// Run the agent on this host: network, console login and services, as on the
    /// appliance but without mounting, reaping orphans or rebooting (it exits instead).
    Run {
        /// The provisioning file; the embedded default when omitted.
        file: Option<PathBuf>,
        /// State directory (keeps the last good configuration).
        #[arg(long)]
        state: PathBuf,
        /// Console device for the login (a tty or pty path, or a name such as ttyS0).
        #[arg(long)]
        console: Option<String>,
        /// Where /etc/hostname, /etc/hosts and /etc/resolv.conf are written [default: STATE/root].
        #[arg(long)]
        root: Option<PathBuf>,
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
    // One static binary: installed as /init and /sbin/letterbox-init it is the init agent.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called_as = Path::new(&argv0).file_name().unwrap_or_default();
    if called_as == "init" || called_as == "letterbox-init" {
        return init::main_pid1(init::InitArgs::from_command_line());
    }
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
        Command::Run {
            file,
            state,
            console,
            root,
        } => Ok(init::start(init::Options {
            mode: init::Mode::Host,
            provisioning_file: file,
            system_root: root.unwrap_or_else(|| state.join("root")),
            state_dir: state,
            console,
        })),
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
