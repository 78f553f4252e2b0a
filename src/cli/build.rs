//! `letterbox build`: the SD-card image (`make image` calls it).

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;
use crate::image;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The provisioning file; the embedded default when omitted.
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = image::Board::Rpi3)]
    board: image::Board,
    /// The image to write; out/letterbox-BOARD.img when omitted.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The cross-built static aarch64 agent to install.
    #[arg(
        long,
        default_value = "target-aarch64/aarch64-unknown-linux-gnu/release/letterbox"
    )]
    agent: PathBuf,
    /// The arm64 letterbox-mail OCI layout to carry (`make mail-image MAIL_ARCH=arm64`).
    #[arg(long, default_value = "out/letterbox-mail-arm64")]
    mail_image: PathBuf,
    /// The arm64 letterbox-webmail OCI layout to carry when the file enables the webmail
    /// (`make webmail-image MAIL_ARCH=arm64`).
    #[arg(long, default_value = "out/letterbox-webmail-arm64")]
    webmail_image: PathBuf,
    /// Download cache and unpacked packages.
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
}

pub fn run(args: Args) -> CliResult {
    let opts = image::BuildOptions {
        config: args.file,
        board: args.board,
        output: args
            .output
            .unwrap_or_else(|| format!("out/letterbox-{}.img", args.board).into()),
        agent: args.agent,
        mail_image: args.mail_image,
        webmail_image: args.webmail_image,
        cache_dir: args.cache,
        source_date_epoch: image::BuildOptions::epoch_from_env(),
        progress: true,
    };
    match image::build(&opts) {
        Ok(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(image::ImageError::Config(diagnostics)) => {
            eprintln!("{diagnostics}");
            eprintln!("letterbox: not building an image from a broken provisioning file");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
