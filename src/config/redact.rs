//! Diagnostics go to the console, the kernel log and the agent's log ring, so none may
//! show what may be a pasted password: the value of any key whose name looks like a
//! password, hash, key or token is hidden, misspelt names included, both in the quoted
//! source line and in the message.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What a hidden value is shown as.
const HIDDEN: &str = "(not shown)";

/// Parts of a key's name (in lower case) that make its value secret. Loose on purpose:
/// `admin_pasword_hash`, `passwd`, `pwd` or `api_token` must all match.
const SECRET_PARTS: [&str; 9] = [
    "pass", "pw", "word", "secret", "hash", "key", "token", "cred", "auth",
];

/// The secret values of one source text.
pub struct Secrets {
    /// Each secret value as written and as read, for scrubbing messages.
    texts: Vec<String>,
    /// Where parsed secret values lie, to hide the lines of multi-line ones.
    spans: Vec<Range<usize>>,
}

impl Secrets {
    /// Finds the secrets line by line, which works on text TOML cannot parse, and in the
    /// parsed document, which finds values that span lines.
    pub fn find(text: &str) -> Secrets {
        let mut secrets = Secrets {
            texts: Vec::new(),
            spans: Vec::new(),
        };
        for line in text.lines() {
            if let Some(cut) = secret_assignment(line) {
                let value = line[cut..].trim();
                secrets.texts.push(value.to_string());
                secrets
                    .texts
                    .push(value.trim_matches(['"', '\'']).to_string());
            }
        }
        let (root, _) = DeTable::parse_recoverable(text);
        secrets.collect(root.get_ref(), text);
        secrets.texts.retain(|t| !t.is_empty());
        // Longest first, so that no shorter secret inside a longer one leaves part of it.
        secrets.texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
        secrets
    }

    fn collect(&mut self, table: &DeTable<'_>, text: &str) {
        for (key, value) in table {
            if is_secret_key(key.get_ref()) {
                self.spans.push(value.span());
                if let Some(written) = text.get(value.span()) {
                    self.texts.push(written.to_string());
                }
                strings(value, &mut self.texts);
            } else {
                match value.get_ref() {
                    DeValue::Table(t) => self.collect(t, text),
                    DeValue::Array(items) => {
                        for item in items {
                            if let DeValue::Table(t) = item.get_ref() {
                                self.collect(t, text);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The source line that starts at byte `start`, with any secret value hidden.
    pub fn line(&self, line: &str, start: usize) -> String {
        if let Some(cut) = secret_assignment(line) {
            return format!("{} {HIDDEN}", &line[..cut]);
        }
        let end = start + line.len();
        if self.spans.iter().any(|s| s.start < end && start < s.end) {
            return HIDDEN.to_string();
        }
        line.to_string()
    }

    /// `message` without any secret value in it.
    pub fn message(&self, message: &str) -> String {
        let mut out = message.to_string();
        for secret in &self.texts {
            out = replace_whole(&out, secret);
        }
        out
    }
}

/// Whether a key's name looks like it holds a password, hash, key or token.
fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARTS.iter().any(|part| name.contains(part))
}

/// The byte after the `=` of the first assignment to a secret key in `line`, at top
/// level or in an inline table. Works on text that is not valid TOML.
fn secret_assignment(line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find('=') {
        let eq = from + i;
        let before = line[..eq].trim_end();
        let key_start = before
            .char_indices()
            .rev()
            .find(|&(_, ch)| !(ch.is_alphanumeric() || "_-.\"'".contains(ch)))
            .map_or(0, |(j, ch)| j + ch.len_utf8());
        let key = before[key_start..].rsplit('.').next().unwrap_or("");
        if is_secret_key(key.trim_matches(['"', '\''])) {
            return Some(eq + 1);
        }
        from = eq + 1;
    }
    None
}

/// Every string in `value`, however nested, as read (escapes resolved).
fn strings(value: &Spanned<DeValue<'_>>, out: &mut Vec<String>) {
    match value.get_ref() {
        DeValue::String(s) => out.push(s.to_string()),
        DeValue::Array(items) => items.iter().for_each(|v| strings(v, out)),
        DeValue::Table(t) => t.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// `text` with each occurrence of `secret` that is not part of a longer word hidden, so
/// that a short secret such as "e" does not eat the letters of the message.
fn replace_whole(text: &str, secret: &str) -> String {
    let is_word = |ch: Option<char>| ch.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(secret) {
        let before = rest[..i].chars().last().or_else(|| out.chars().last());
        let after = rest[i + secret.len()..].chars().next();
        let joined = (is_word(before) && is_word(secret.chars().next()))
            || (is_word(after) && is_word(secret.chars().last()));
        out.push_str(&rest[..i]);
        out.push_str(if joined { secret } else { HIDDEN });
        rest = &rest[i + secret.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_look_secret_misspelt_or_not() {
        for key in [
            "admin_password_hash",
            "admin_pasword_hash",
            "passwd",
            "Password",
            "pwd",
            "api_token",
            "secret",
            "dkim_key",
            "pasword",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "hostname", "domain", "timezone", "device", "baud", "name", "value",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn values_are_hidden_in_lines_and_messages() {
        let text =
            "[console]\nadmin_pasword_hash = \"hunter2\"\nx = { api_token = 'tok3n', a = 1 }\n";
        let s = Secrets::find(text);
        assert_eq!(
            s.line("admin_pasword_hash = \"hunter2\"", 10),
            "admin_pasword_hash = (not shown)"
        );
        assert_eq!(
            s.line("x = { api_token = 'tok3n', a = 1 }", 42),
            "x = { api_token = (not shown)"
        );
        assert_eq!(
            s.message("bad \"hunter2\" and `tok3n`; hunter2s stays"),
            "bad (not shown) and `(not shown)`; hunter2s stays"
        );
    }

    #[test]
    fn the_lines_of_a_multi_line_secret_are_hidden() {
        let text = "pass = \"\"\"\nhunter2\n\"\"\"\nname = \"x\"\n";
        let s = Secrets::find(text);
        assert_eq!(s.line("hunter2", 11), HIDDEN);
        assert_eq!(s.line("name = \"x\"", 23), "name = \"x\"");
        assert!(!s.message("got hunter2\n").contains("hunter2"));
    }

    #[test]
    fn a_short_secret_hides_only_whole_words() {
        assert_eq!(
            replace_whole("invalid type: `e`", "e"),
            "invalid type: `(not shown)`"
        );
    }
}
