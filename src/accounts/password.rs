//! What a new account's password must be. It is checked, then hashed with
//! `passwd::hash`; neither it nor its length ever reaches a log or the file.

use crate::config::AccountPolicy;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("empty password; expected at least one character")]
    Empty,
    #[error(
        "the password is too short: [accounts] min_password_length asks for at least {min} \
         characters"
    )]
    TooShort { min: u32 },
}

pub fn check_password(password: &str, policy: &AccountPolicy) -> Result<(), PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    match policy.min_password_length {
        Some(min) if password.chars().count() < min as usize => {
            Err(PasswordError::TooShort { min })
        }
        _ => Ok(()),
    }
}
