//! The `letterbox` command line, one file per subcommand; `main.rs` only parses and
//! dispatches to them.

pub mod account;
pub mod build;
pub mod check;
pub mod ctl;
pub mod dns;
pub mod mail_image;
pub mod net;
pub mod passwd;
pub mod qemu;
pub mod run;
pub mod zone;

use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// What a subcommand returns: its exit code, or an error that `main` prints as a chain.
pub type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Loads a provisioning file, printing its diagnostics; `None` when it is invalid.
fn load_or_report(file: Option<&Path>) -> Result<Option<config::Config>, config::LoadError> {
    match config::load(file) {
        Ok((cfg, _)) => Ok(Some(cfg)),
        Err(config::LoadError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
