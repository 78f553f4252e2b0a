//! `[accounts]`: the rules `letterbox account add` applies to a new account.

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountPolicy {
    /// Fewest characters a new account's password may have; `None`: any non-empty one.
    pub min_password_length: Option<u32>,
}

/// A longer minimum only makes passwords that people write down.
const MAX_MIN_PASSWORD_LENGTH: i64 = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccountPolicy {
    /// Any TOML value, so that `"12"` gets the message that says what is expected.
    min_password_length: Option<Spanned<toml::Value>>,
}

pub(super) fn validate_account_policy(
    raw: Option<RawAccountPolicy>,
    c: &mut Collector,
) -> AccountPolicy {
    let min_password_length = raw
        .and_then(|raw| raw.min_password_length)
        .and_then(|value| match value.get_ref() {
            toml::Value::Integer(n) if (1..=MAX_MIN_PASSWORD_LENGTH).contains(n) => {
                Some(u32::try_from(*n).expect("in range"))
            }
            other => {
                c.error(
                    value.span(),
                    format!(
                        "invalid min_password_length {other}; expected a whole number of \
                         characters from 1 to {MAX_MIN_PASSWORD_LENGTH}, e.g. \
                         `min_password_length = 12`"
                    ),
                );
                None
            }
        });
    AccountPolicy {
        min_password_length,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::tests::{assert_one, good};

    #[test]
    fn min_password_length_is_read_and_optional() {
        let cfg = parse("t.toml", &good()).unwrap();
        assert_eq!(cfg.account_policy.min_password_length, None);
        let text = format!("{}[accounts]\nmin_password_length = 12\n", good());
        let cfg = parse("t.toml", &text).unwrap();
        assert_eq!(cfg.account_policy.min_password_length, Some(12));
    }

    #[test]
    fn bad_min_password_length_is_reported_where_it_is() {
        let line = good().lines().count() + 2;
        for bad in ["0", "-3", "129", "\"12\"", "12.5"] {
            let text = format!("{}[accounts]\nmin_password_length = {bad}\n", good());
            assert_one(&text, line, 23, "invalid min_password_length");
        }
        let text = format!("{}[accounts]\nmin_length = 12\n", good());
        assert_one(&text, line, 1, "min_length");
    }
}
