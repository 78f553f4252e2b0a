//! `letterbox mail-image`: the letterbox-mail OCI image (`make mail-image` calls it).

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;
use crate::image::{self, mail, packages::Arch};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image's architecture; this machine's when omitted.
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// The OCI layout directory to write; out/letterbox-mail-ARCH when omitted. The lock
    /// file (manifest digest, package versions) goes beside it as OUTPUT.lock.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Download cache and unpacked packages.
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
}

pub fn run(args: Args) -> CliResult {
    let arch = match args.arch.or_else(Arch::host) {
        Some(arch) => arch,
        None => {
            eprintln!(
                "letterbox: no Debian packages for this machine's architecture ({}): pass --arch amd64 or --arch arm64",
                std::env::consts::ARCH
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let opts = mail::MailImageOptions {
        arch,
        output: args
            .output
            .unwrap_or_else(|| format!("out/letterbox-mail-{arch}").into()),
        cache_dir: args.cache,
        source_date_epoch: image::BuildOptions::epoch_from_env(),
    };
    let summary = mail::build(&opts)?;
    eprintln!("{summary}");
    println!("{}", summary.manifest.digest);
    Ok(ExitCode::SUCCESS)
}
