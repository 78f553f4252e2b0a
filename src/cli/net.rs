//! `letterbox net`: configure or show the network of this network namespace.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;

#[derive(Debug, clap::Subcommand)]
pub enum NetCommand {
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

pub fn run(command: NetCommand) -> CliResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        NetCommand::Apply { file, root } => {
            let Some(cfg) = super::load_or_report(file.as_deref())? else {
                return Ok(ExitCode::FAILURE);
            };
            let report = runtime.block_on(crate::net::apply(&cfg, &root))?;
            println!("{report}");
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        NetCommand::Show => {
            for link in runtime.block_on(crate::net::snapshot())? {
                println!("{link}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
