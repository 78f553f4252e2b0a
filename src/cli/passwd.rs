//! `letterbox passwd`: hash a password for letterbox.toml.

use std::process::ExitCode;

use super::CliResult;

pub fn run() -> CliResult {
    println!("{}", crate::passwd::prompt_and_hash()?);
    Ok(ExitCode::SUCCESS)
}
