//! `letterbox account`: add, list or delete accounts offline, in a provisioning file
//! (`--file`) or on a built SD image's boot partition (`--image`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use super::CliResult;
use crate::accounts::{self, AccountCommand, AccountError, Target};
use crate::passwd;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The provisioning file to edit
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "image")]
    file: Option<PathBuf>,
    /// The SD image whose boot partition's letterbox.toml to edit
    #[arg(long, global = true, value_name = "IMAGE")]
    image: Option<PathBuf>,
    #[command(subcommand)]
    command: AccountCommand,
}

#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error(
        "no provisioning file given; expected --file FILE or --image IMAGE (these commands \
         edit letterbox.toml offline)"
    )]
    NoTarget,
    #[error(
        "--purge deletes an account's Maildir on the running appliance; a file or an image \
         edited offline has none (its data partition is never touched), so expected \
         `account del NAME` without --purge"
    )]
    PurgeOffline,
    #[error(
        "stdin is not a terminal to ask the password on; expected --password-stdin to read \
         it from stdin"
    )]
    NoTerminal,
}

type Failure = Box<dyn std::error::Error>;

pub fn run(args: Args) -> CliResult {
    let target = match (args.file, args.image) {
        (Some(file), None) => Target::File(file),
        (None, Some(image)) => Target::Image(image),
        _ => return Err(UsageError::NoTarget.into()),
    };
    // Refused before anything is read: the answer does not depend on the file.
    if matches!(args.command, AccountCommand::Del { purge: true, .. }) {
        return Err(UsageError::PurgeOffline.into());
    }
    let file = target.name();
    let text = target.read()?;
    let result = match args.command {
        AccountCommand::Add {
            name,
            password_stdin,
        } => add(&target, &file, &text, &name, password_stdin),
        AccountCommand::List { json } => list(&file, &text, json),
        AccountCommand::Del { name, .. } => delete(&target, &file, &text, &name),
    };
    let Err(failure) = result else {
        return Ok(ExitCode::SUCCESS);
    };
    match failure.downcast::<AccountError>().map(|e| *e) {
        // Printed as `letterbox check` prints them, one positioned error after another.
        Ok(AccountError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            Ok(ExitCode::FAILURE)
        }
        Ok(other) => Err(other.into()),
        Err(failure) => Err(failure),
    }
}

/// The name is checked before the password is asked for.
fn add(
    target: &Target,
    file: &str,
    text: &str,
    name: &str,
    password_stdin: bool,
) -> Result<(), Failure> {
    let cfg = accounts::check_new(file, text, name)?;
    let password = read_password(password_stdin)?;
    accounts::check_password(&password, &cfg.account_policy).map_err(AccountError::from)?;
    let hash = passwd::hash(&password)?;
    let edited = accounts::add(file, text, name, &hash)?;
    target.write(&edited.text)?;
    println!(
        "{file}: {} (box@{name}.{})",
        edited.change, edited.config.system.domain
    );
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if from_stdin {
        Ok(passwd::read_line(&mut stdin.lock())?)
    } else if stdin.is_terminal() {
        Ok(passwd::ask_twice()?)
    } else {
        Err(UsageError::NoTerminal.into())
    }
}

fn list(file: &str, text: &str, json: bool) -> Result<(), Failure> {
    let cfg = crate::config::parse(file, text).map_err(AccountError::Invalid)?;
    let listings = accounts::list(&cfg);
    if json {
        println!("{}", serde_json::to_string_pretty(&listings)?);
    } else {
        print!("{}", accounts::render_table(&listings));
    }
    Ok(())
}

fn delete(target: &Target, file: &str, text: &str, name: &str) -> Result<(), Failure> {
    let edited = accounts::delete(file, text, name)?;
    target.write(&edited.text)?;
    println!(
        "{file}: {}; no Maildir is touched offline (the appliance's data partition keeps \
         any it has)",
        edited.change
    );
    Ok(())
}
