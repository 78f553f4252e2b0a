//! `letterbox ctl`: send an admin command to a running agent over its control socket and
//! print the reply; exits non-zero when the command failed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;
use crate::agent::{commands, control};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's control socket.
    #[arg(long, default_value = crate::paths::CONTROL_SOCKET)]
    socket: PathBuf,
    /// The command and its arguments, as typed on the console (`ctl help` lists them).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> CliResult {
    // `account add` takes its password here, from the terminal without echo or from
    // stdin (--password-stdin), and sends it beside the words, never among them.
    let password = if commands::needs_password(&args.command) {
        Some(if args.command.iter().any(|w| w == "--password-stdin") {
            crate::passwd::read_line(&mut std::io::stdin().lock())?
        } else {
            crate::passwd::ask_twice()?
        })
    } else {
        None
    };
    let response = control::request(&args.socket, &args.command, password)?;
    if response.ok {
        print!("{}", response.output);
        std::io::stdout().flush()?;
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{}", response.output);
        Ok(ExitCode::FAILURE)
    }
}
