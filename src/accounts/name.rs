//! The rules a new account's name must follow, each with its own message.

use crate::config::{reserved_account_names, Config};

/// Longest DNS label (RFC 1035).
const MAX_LABEL: usize = 63;

/// The rule a name broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty; expected one DNS label of 1 to {MAX_LABEL} characters, e.g. \"alice\"")]
    Empty,
    #[error("it is {0} characters long; expected at most {MAX_LABEL} (one DNS label)")]
    TooLong(usize),
    #[error("{0:?} is not allowed; expected only letters a-z, digits and '-' (one DNS label)")]
    Character(char),
    #[error("it starts or ends with '-'; expected a letter or digit there")]
    Hyphen,
    #[error("it has capitals; expected lowercase, e.g. {0:?}")]
    Uppercase(String),
    #[error("the name is reserved; expected a name other than {0}")]
    Reserved(String),
    #[error("there is an account of that name already; expected a new name")]
    Exists,
}

/// Checks a new account's name against `cfg`: a lowercase DNS label, not reserved (see
/// [`reserved_account_names`], the list the file's own check uses) and not taken.
pub fn check_name(name: &str, cfg: &Config) -> Result<(), NameError> {
    let len = name.chars().count();
    if len == 0 {
        return Err(NameError::Empty);
    }
    if len > MAX_LABEL {
        return Err(NameError::TooLong(len));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(NameError::Character(bad));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::Hyphen);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NameError::Uppercase(name.to_ascii_lowercase()));
    }
    let reserved = reserved_account_names(&cfg.system, &cfg.dns);
    if reserved.iter().any(|r| r == name) {
        return Err(NameError::Reserved(reserved.join(", ")));
    }
    // The file's own check lowercases names: "Alice" in a hand-edited file is alice.
    if cfg.accounts.iter().any(|a| a.name == name) {
        return Err(NameError::Exists);
    }
    Ok(())
}
