//! `letterbox zone`: print the DNS zone a provisioning file implies.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;
use crate::dns;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The provisioning file; the embedded default when omitted.
    file: Option<PathBuf>,
    /// State directory: DKIM keys, and the SOA serial the server would serve for this
    /// content (read only: the serial is recorded by the server, never by this
    /// command). Without it: no DKIM records, and today's date-based serial.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Print with this SOA serial instead (nothing is recorded).
    #[arg(long)]
    serial: Option<u32>,
}

pub fn run(args: Args) -> CliResult {
    let Some(cfg) = super::load_or_report(args.file.as_deref())? else {
        return Ok(ExitCode::FAILURE);
    };
    let zone = match args.state {
        Some(state) => dns::Zone::preview(&cfg, &state, args.serial)?,
        None => dns::build(
            &cfg,
            &dns::Sources::default(),
            args.serial.unwrap_or_else(dns::today_serial),
        )?,
    };
    print!("{}", zone.render());
    Ok(ExitCode::SUCCESS)
}
