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
    let mut entry = new_table(name, password_hash);
    // Tables are laid out by position: the last entry's keeps the new one beside it
    // rather than after the sections that follow it.
    let last_entry = match doc.get("account") {
        Some(Item::ArrayOfTables(entries)) => entries.iter().filter_map(Table::position).max(),
        _ => None,
    };
    if last_entry.is_none() || last_entry >= positions(doc.as_table()).into_iter().max() {
        // The new table ends the file: the comments that ended it belong to the table
        // before it (often commented-out keys), so they stay above the new header.
        let trailing = doc.trailing().as_str().unwrap_or_default().to_string();
        if !trailing.trim().is_empty() {
            entry.decor_mut().set_prefix(format!("{trailing}\n"));
            doc.set_trailing("");
        }
    }
    entry.set_position(last_entry);
    match doc.get_mut("account") {
        None => {
            let mut entries = ArrayOfTables::new();
            entries.push(entry);
            doc.insert("account", Item::ArrayOfTables(entries));
        }
        Some(Item::ArrayOfTables(entries)) => entries.push(entry),
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
    let mut orphans = None;
    let now_empty = match doc.get_mut("account") {
        Some(Item::ArrayOfTables(entries)) => {
            let gone = entries
                .iter()
                .position(|t| is_it(t.get("name").and_then(Item::as_str)))
                .expect("the file's check found the account");
            let entry = entries.get(gone).expect("found above");
            orphans = entry.position().zip(not_its_own(entry.decor().prefix()));
            entries.remove(gone);
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
    if let Some((position, comments)) = orphans {
        keep_comments(&mut doc, position, &comments);
    }
    finish(file, doc, Change::Deleted { name })
}

/// The comments above a table's header that are not its own: those above the blank line
/// over its own comment block (the comment lines directly above the header). They are
/// about what came before, such as the commented-out keys of the section above.
fn not_its_own(prefix: Option<&toml_edit::RawString>) -> Option<String> {
    let prefix = prefix?.as_str()?;
    let lines: Vec<&str> = prefix.split_inclusive('\n').collect();
    let own = lines
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .count();
    let mut before = &lines[..lines.len() - own];
    // The blank line that set the table apart goes with it.
    if before.last().is_some_and(|l| l.trim().is_empty()) {
        before = &before[..before.len() - 1];
    }
    let before = before.concat();
    before.contains('#').then_some(before)
}

/// Puts `comments`, left over by the table at `position`, above the table laid out next,
/// or at the end of the file.
fn keep_comments(doc: &mut DocumentMut, position: isize, comments: &str) {
    let next = positions(doc.as_table())
        .into_iter()
        .filter(|&p| p > position)
        .min();
    match next.and_then(|next| table_at(doc.as_table_mut(), next)) {
        Some(next) => {
            let prefix = next.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
            let prefix = format!("{comments}{prefix}");
            next.decor_mut().set_prefix(prefix);
        }
        None => {
            let trailing = doc.trailing().as_str().unwrap_or_default();
            let trailing = format!("{comments}{trailing}");
            doc.set_trailing(trailing);
        }
    }
}

/// The tables directly in `item`: itself, or the entries of an array of tables.
fn tables_in(item: &Item) -> Vec<&Table> {
    match item {
        Item::Table(t) => vec![t],
        Item::ArrayOfTables(entries) => entries.iter().collect(),
        _ => Vec::new(),
    }
}

/// The layout positions of the tables in `table`, nested ones included.
fn positions(table: &Table) -> Vec<isize> {
    table
        .iter()
        .flat_map(|(_, item)| tables_in(item))
        .flat_map(|t| t.position().into_iter().chain(positions(t)))
        .collect()
}

/// The table laid out at `position`, nested ones included.
fn table_at(table: &mut Table, position: isize) -> Option<&mut Table> {
    for (_, item) in table.iter_mut() {
        let tables: Vec<&mut Table> = match item {
            Item::Table(t) => vec![t],
            Item::ArrayOfTables(entries) => entries.iter_mut().collect(),
            _ => continue,
        };
        for t in tables {
            if t.position() == Some(position) {
                return Some(t);
            }
            if let Some(found) = table_at(t, position) {
                return Some(found);
            }
        }
    }
    None
}

/// The file as `toml_edit` sees it. The file's check, run first, has parsed it already
/// with the same TOML parser.
fn document(text: &str) -> DocumentMut {
    text.parse()
        .expect("a file that passed the check is valid TOML")
}

fn new_table(name: &str, password_hash: &str) -> Table {
    let mut entry = Table::new();
    entry.insert("name", toml_edit::value(name));
    entry.insert("password_hash", toml_edit::value(password_hash));
    // A blank line before the header, as hand-written files have.
    entry.decor_mut().set_prefix("\n");
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
