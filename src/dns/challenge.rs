//! The ACME DNS-01 answers in `STATE/acme/challenge`, one a line (the name certified, a
//! space, the answer), published as TXT records of `_acme-challenge.<name>` while an order
//! is being validated. The agent's ACME unit writes the file, reloads the zone, and removes
//! the file once the CA has looked, and at its start whatever an order cut short left. The
//! zone reads it only while `[tls] acme` is on.

use std::path::{Path, PathBuf};

use super::DnsError;

/// The file, under the state directory.
pub const ACME_CHALLENGE_FILE: &str = "acme/challenge";
/// The label the CA asks under the certified name (RFC 8555 §8.4).
pub const ACME_CHALLENGE_LABEL: &str = "_acme-challenge";

/// One DNS-01 answer: the TXT value the CA looks for under `_acme-challenge.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAnswer {
    /// The name certified (`example.org`), not the challenge's own.
    pub name: String,
    pub value: String,
}

fn path(state: &Path) -> PathBuf {
    state.join(ACME_CHALLENGE_FILE)
}

/// The answers to publish; no file, none. A line that is not a name and a DNS-01 answer
/// (base64url of a SHA-256 digest) makes the whole file an error: the zone leaves it out.
pub fn read_acme_challenges(state: &Path) -> Result<Vec<AcmeAnswer>, DnsError> {
    let path = path(state);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DnsError::Io { path, source }),
    };
    let mut answers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let answer = line
            .split_once(' ')
            .filter(|(name, value)| is_dns_name(name) && is_dns01_value(value));
        let Some((name, value)) = answer else {
            return Err(DnsError::AcmeChallenge { path, line: i + 1 });
        };
        answers.push(AcmeAnswer {
            name: name.to_string(),
            value: value.to_string(),
        });
    }
    Ok(answers)
}

/// A name the zone can publish an answer under, `_acme-challenge.<name>` being a valid DNS
/// name (checked here, so a bad line leaves the file out rather than the zone unbuilt).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && hickory_proto::rr::Name::from_ascii(format!("{ACME_CHALLENGE_LABEL}.{name}.")).is_ok()
}

/// Base64url, unpadded, of a SHA-256 digest (RFC 8555 §8.4).
fn is_dns01_value(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Replaces the answers with `answers`; none removes the file.
pub fn write_acme_challenges(state: &Path, answers: &[AcmeAnswer]) -> Result<(), DnsError> {
    let path = path(state);
    let io = |source| DnsError::Io {
        path: path.clone(),
        source,
    };
    if answers.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text: String = answers
        .iter()
        .map(|a| format!("{} {}\n", a.name, a.value))
        .collect();
    crate::atomic_file::replace_mode(&path, text.as_bytes(), 0o644).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_acme_challenges(dir.path()).unwrap().is_empty());
        let answers = [
            AcmeAnswer {
                name: "mail.example.org".into(),
                value: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".into(),
            },
            AcmeAnswer {
                name: "example.org".into(),
                value: "Qm9vdHN0cmFwIHRoZSBhbnN3ZXIgZm9yIHRoZSBkb20".into(),
            },
        ];
        write_acme_challenges(dir.path(), &answers).unwrap();
        assert_eq!(read_acme_challenges(dir.path()).unwrap(), answers);
        // A bare answer (the file of an older agent), a line that is no answer, and names
        // the zone cannot hold (a label of 64 characters; too long with the label before it).
        let long_label = format!("{} {}", "x".repeat(64), answers[0].value);
        // 241 characters: a name, but too long under `_acme-challenge.` (255 bytes at most).
        let long_name = format!(
            "{}example.org {}",
            "abcdefghi.".repeat(23),
            answers[0].value
        );
        for bad in [
            answers[0].value.as_str(),
            "example.org no way",
            &long_label,
            &long_name,
        ] {
            std::fs::write(
                dir.path().join(ACME_CHALLENGE_FILE),
                format!("example.org {}\n{bad}\n", answers[0].value),
            )
            .unwrap();
            let e = read_acme_challenges(dir.path()).unwrap_err().to_string();
            assert!(e.contains("challenge:2") && e.contains("expected"), "{e}");
        }
        write_acme_challenges(dir.path(), &[]).unwrap();
        assert!(!dir.path().join(ACME_CHALLENGE_FILE).exists());
    }
}
