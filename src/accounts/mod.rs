//! Accounts in `letterbox.toml`: `account add`, `account list` and `account del`, one set of
//! commands whether the file is edited offline (`--file`, `--image`) or, later, by the
//! running agent.
//!
//! The file stays the one source of truth: an account is an `[[account]]` entry, edited
//! with `toml_edit` so the user's comments and layout survive, and every result is checked
//! as `letterbox check` checks a file before anything is written. The edits work on text
//! ([`add`], [`delete`]); where the text lives, a file or an SD image's boot partition, is
//! [`Target`]'s business.

mod disk_space;
mod edit;
mod image;
mod listing;
mod name;
mod password;
mod read_only_mount;
mod target;

use crate::config::Diagnostics;

pub use disk_space::{filesystem_of, free_bytes, full_in_chain};
pub use edit::{add, check_new, delete, Change, Edited};
pub use image::{BootPartition, ImageError};
pub use listing::{list, render_table, BoxState, Listing};
pub use name::{check_name, NameError};
pub use password::{check_password, PasswordError};
pub use target::{Target, TargetError};

/// The account commands, one vocabulary for `letterbox account` and the agent's admin
/// commands (`AdminCommand` can hold it as a variant).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AccountCommand {
    /// Add an account: mail to box@NAME.<domain> is delivered to its own box
    Add {
        /// The account's name: one lowercase DNS label, e.g. alice
        name: String,
        /// Read the password as one line from stdin instead of asking on the terminal
        #[arg(long)]
        password_stdin: bool,
    },
    /// Each account's address, box state, mailbox size, messages and last delivery
    List {
        /// One JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Delete an account; its Maildir is kept as a dated archive unless --purge is given
    Del {
        /// The account to delete
        name: String,
        /// Delete the Maildir too instead of archiving it
        #[arg(long)]
        purge: bool,
    },
}

/// Why an account command changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The file as it stands does not pass `letterbox check`.
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("invalid account name {name:?}: {rule}")]
    Name { name: String, rule: NameError },
    #[error("no account {name:?} in {file}; expected one of: {known}")]
    Unknown {
        name: String,
        file: String,
        known: String,
    },
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The edit would give a file `letterbox check` refuses: it is not written.
    #[error("the edited file would not pass `letterbox check`, so nothing was written:\n{0}")]
    EditInvalid(Diagnostics),
}

#[cfg(test)]
mod tests;
