//! The edits, on the file's text: the account is added or deleted with `toml_edit`, which
//! keeps every comment and the layout, and the result must pass the file's own check.
//! Nothing here reads or writes a file, so the agent can run the same edits.

use std::fmt;

use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use super::{check_name, AccountError};
use crate::config::{self, Config};

/// An edited file: its new text, checked, and what changed.
#[derive(Debug, Clone)]
pub struct Edited {
    pub text: String,
    /// `text`, parsed and validated.
    pub config: Config,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added { name: String },
    Deleted { name: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { name } => write!(f, "added account {name}"),
            Change::Deleted { name } => write!(f, "deleted account {name}"),
        }
    }
}

/// Checks `text` (reported as `file`) as `letterbox check` does, then `name` as a new
/// account's. Run before the password is asked for, so a bad name is refused at once.
pub fn check_new(file: &str, text: &str, name: &str) -> Result<Config, AccountError> {
    let cfg = config::parse(file, text).map_err(AccountError::Invalid)?;
    check_name(name, &cfg).map_err(|rule| AccountError::Name {
        name: name.to_string(),
        rule,
    })?;
    Ok(cfg)
}

/// Adds `[[account]]` `name` with `password_hash` after the last account (the order of
/// the entries is the order of creation, which keeps the boxes' slots, see
/// `config::Containers`).
pub fn add(
    file: &str,
    text: &str,
    name: &str,
    password_hash: &str,
) -> Result<Edited, AccountError> {
    check_new(file, text, name)?;
    let mut doc = document(text);
    match doc.get_mut("account") {
        None => {
            let mut entries = ArrayOfTables::new();
            entries.push(new_table(name, password_hash, None));
            doc.insert("account", Item::ArrayOfTables(entries));
        }
        Some(Item::ArrayOfTables(entries)) => {
            // Tables are laid out by position: the last entry's keeps the new one beside it
            // rather than after the sections that follow it.
            let last = entries.iter().filter_map(Table::position).max();
            entries.push(new_table(name, password_hash, last));
        }
        Some(Item::Value(Value::Array(entries))) => {
            let mut entry = InlineTable::new();
            entry.insert("name", name.into());
            entry.insert("password_hash", password_hash.into());
            entries.push(entry);
        }
        Some(_) => unreachable!("the file's check accepts only an array for `account`"),
    }
    finish(
        file,
        doc,
        Change::Added {
            name: name.to_string(),
        },
    )
}

/// Deletes the account `name` (in any case, as DNS names are), with the comments just
/// above its entry.
pub fn delete(file: &str, text: &str, name: &str) -> Result<Edited, AccountError> {
    let cfg = config::parse(file, text).map_err(AccountError::Invalid)?;
    let Some(account) = cfg
        .accounts
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
    else {
        let known: Vec<_> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
        return Err(AccountError::Unknown {
            name: name.to_string(),
            file: file.to_string(),
            known: if known.is_empty() {
                "(there are none)".to_string()
            } else {
                known.join(", ")
            },
        });
    };
    let name = account.name.clone();
    let is_it = |entry: Option<&str>| entry.is_some_and(|n| n.eq_ignore_ascii_case(&name));
    let mut doc = document(text);
    let now_empty = match doc.get_mut("account") {
        Some(Item::ArrayOfTables(entries)) => {
            entries.retain(|t| !is_it(t.get("name").and_then(Item::as_str)));
            entries.is_empty()
        }
        Some(Item::Value(Value::Array(entries))) => {
            entries.retain(|v| {
                !is_it(
                    v.as_inline_table()
                        .and_then(|t| t.get("name"))
                        .and_then(Value::as_str),
                )
            });
            entries.is_empty()
        }
        _ => unreachable!("the file's check found the account in an array"),
    };
    if now_empty {
        doc.remove("account");
    }
    finish(file, doc, Change::Deleted { name })
}

/// The file as `toml_edit` sees it. The file's check, run first, has parsed it already
/// with the same TOML parser.
fn document(text: &str) -> DocumentMut {
    text.parse()
        .expect("a file that passed the check is valid TOML")
}

fn new_table(name: &str, password_hash: &str, position: Option<isize>) -> Table {
    let mut entry = Table::new();
    entry.insert("name", toml_edit::value(name));
    entry.insert("password_hash", toml_edit::value(password_hash));
    // A blank line before the header, as hand-written files have.
    entry.decor_mut().set_prefix("\n");
    entry.set_position(position);
    entry
}

fn finish(file: &str, doc: DocumentMut, change: Change) -> Result<Edited, AccountError> {
    let text = doc.to_string();
    let config = config::parse(file, &text).map_err(AccountError::EditInvalid)?;
    Ok(Edited {
        text,
        config,
        change,
    })
}
