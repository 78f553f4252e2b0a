//! `letterbox check`: validate a provisioning file.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to check; the embedded default when omitted.
    file: Option<PathBuf>,
}

pub fn run(args: Args) -> CliResult {
    let Some(cfg) = super::load_or_report(args.file.as_deref())? else {
        return Ok(ExitCode::FAILURE);
    };
    println!(
        "ok: {} ({} interface{})",
        cfg.system.fqdn(),
        cfg.interfaces.len(),
        if cfg.interfaces.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
