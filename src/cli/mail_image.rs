//! `letterbox mail-image`: the letterbox-mail OCI image, or with `--image webmail` the
//! letterbox-webmail one (`make mail-image` and `make webmail-image` call it).

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;
use crate::image::{self, mail, packages::Arch, webmail};

/// Which of the container images to build.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Image {
    /// letterbox-mail: Postfix and Dovecot.
    Mail,
    /// letterbox-webmail: Roundcube, PHP-FPM and nginx.
    Webmail,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to build.
    #[arg(long, value_enum, default_value = "mail")]
    image: Image,
    /// The image's architecture; this machine's when omitted.
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// The OCI layout directory to write; out/letterbox-IMAGE-ARCH when omitted. The lock
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
    let recipe = match args.image {
        Image::Mail => &mail::MAIL,
        Image::Webmail => &webmail::WEBMAIL,
    };
    let opts = mail::ImageOptions {
        recipe,
        arch,
        output: args
            .output
            .unwrap_or_else(|| format!("out/letterbox-{}-{arch}", recipe.name).into()),
        cache_dir: args.cache,
        source_date_epoch: image::BuildOptions::epoch_from_env(),
    };
    let summary = mail::build(&opts)?;
    eprintln!("{summary}");
    println!("{}", summary.manifest.digest);
    Ok(ExitCode::SUCCESS)
}
