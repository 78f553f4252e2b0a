//! Compiler-style diagnostics for the provisioning file: every error names the file,
//! line and column, says what was expected, and all of them are reported at once.

use std::fmt;
use std::ops::Range;

use toml::Spanned;

use super::redact::Secrets;

/// One problem in the provisioning file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
    /// The offending source line, for the caret display.
    source_line: String,
    /// Width of the caret underline, in characters (at least 1).
    width: usize,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        let gutter = self.line.to_string().len();
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        write!(
            f,
            "{:gutter$} | {}{}",
            "",
            " ".repeat(self.column - 1),
            "^".repeat(self.width)
        )
    }
}

/// All problems found in one file, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics against one source text.
pub struct Collector<'a> {
    file: &'a str,
    text: &'a str,
    secrets: Secrets,
    found: Vec<Diagnostic>,
    /// (section, key) of each key whose value was reported bad and taken out.
    bad_values: Vec<(Range<usize>, String)>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Collector {
            file,
            text,
            secrets: Secrets::find(text),
            found: Vec::new(),
            bad_values: Vec::new(),
        }
    }

    /// Records an error at a byte span of the source.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let start = span.start.min(self.text.len());
        let end = span.end.clamp(start, self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let width = self.text[start..end.min(line_end)].chars().count().max(1);
        self.found.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: self.secrets.message(&message.into()),
            source_line: self
                .secrets
                .line(self.text[line_start..line_end].trim_end(), line_start),
            width,
        });
    }

    /// Records a deserialization or syntax error from the toml crate.
    pub fn toml_error(&mut self, err: &toml::de::Error) {
        let span = err.span().unwrap_or(0..0);
        self.error(span, err.message().trim_end().replace('\n', "; "));
    }

    /// Notes that `key` of the section whose header is at `section` had a bad value,
    /// reported already, and was taken out before the section was checked further.
    pub fn bad_value(&mut self, section: Range<usize>, key: String) {
        self.bad_values.push((section, key));
    }

    /// Whether [`Collector::bad_value`] took `key` out of the section at `section`: its
    /// absence is then no news, and checks that depend on it would only add noise.
    pub fn had_bad_value(&self, section: &Range<usize>, key: &str) -> bool {
        self.bad_values
            .iter()
            .any(|(s, k)| s == section && k == key)
    }

    /// A key its section cannot do without, reported at the section's header when absent.
    /// Such keys are optional to serde, so that a missing one (often a misspelt one) does
    /// not keep the section's other keys from being checked.
    pub fn require<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        key: &str,
        section: Range<usize>,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() && !self.had_bad_value(&section, key) {
            self.error(
                section,
                format!("missing field `{key}`; expected a `{key} = ...` line in this section"),
            );
        }
        value.as_ref()
    }

    pub fn has_errors(&self) -> bool {
        !self.found.is_empty()
    }

    pub fn finish(mut self) -> Result<(), Diagnostics> {
        if self.found.is_empty() {
            return Ok(());
        }
        self.found.sort_by_key(|d| (d.line, d.column));
        self.found.dedup();
        Err(Diagnostics(self.found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_values_are_never_quoted() {
        let text = "admin_password_hash = hunter2\n";
        let mut c = Collector::new("f.toml", text);
        c.error(22..29, "not a hash");
        let shown = c.finish().unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("1 | admin_password_hash = (not shown)"),
            "{shown}"
        );
    }

    #[test]
    fn a_misspelt_password_key_shows_its_value_nowhere() {
        let text = "[console]
admin_pasword_hash = \"hunter2\"\n";
        let mut c = Collector::new("f.toml", text);
        let value = text.find('"').unwrap();
        c.error(10..28, "unknown field `admin_pasword_hash`");
        c.error(
            value..value + 9,
            "invalid type: string \"hunter2\", expected a hash",
        );
        let shown = c.finish().unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("2 | admin_pasword_hash = (not shown)"),
            "{shown}"
        );
        assert!(
            shown.contains("invalid type: string (not shown), expected"),
            "{shown}"
        );
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\né = \"x\"\n";
        let mut c = Collector::new("f.toml", text);
        let start = text.rfind('=').unwrap();
        c.error(start..start + 1, "boom");
        let d = c.finish().unwrap_err().0.remove(0);
        assert_eq!((d.line, d.column), (2, 3));
        assert_eq!(
            d.to_string(),
            "f.toml:2:3: error: boom\n  |\n2 | é = \"x\"\n  |   ^"
        );
    }
}
