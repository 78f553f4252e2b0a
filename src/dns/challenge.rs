//! The ACME DNS-01 answers in `STATE/acme/challenge`, one a line, published as TXT records
//! of `_acme-challenge.<hostname>.<domain>` while an order is being validated. The agent's
//! ACME unit writes the file, reloads the zone, and removes the file once the CA has looked,
//! and at its start whatever an order cut short left. The zone reads it only while
//! `[tls] acme` is on.

use std::path::{Path, PathBuf};

use super::DnsError;

/// The file, under the state directory.
pub const ACME_CHALLENGE_FILE: &str = "acme/challenge";
/// The label the CA asks under the certified name (RFC 8555 §8.4).
pub const ACME_CHALLENGE_LABEL: &str = "_acme-challenge";

fn path(state: &Path) -> PathBuf {
    state.join(ACME_CHALLENGE_FILE)
}

/// The answers to publish; no file, none. A line that is not a DNS-01 answer (base64url of
/// a SHA-256 digest) makes the whole file an error: the zone leaves it out.
pub fn read_acme_challenges(state: &Path) -> Result<Vec<String>, DnsError> {
    let path = path(state);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DnsError::Io { path, source }),
    };
    let mut answers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let is_answer = line.len() == 43
            && line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !is_answer {
            return Err(DnsError::AcmeChallenge { path, line: i + 1 });
        }
        answers.push(line.to_string());
    }
    Ok(answers)
}

/// Replaces the answers with `answers`; none removes the file.
pub fn write_acme_challenges(state: &Path, answers: &[String]) -> Result<(), DnsError> {
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
    let text: String = answers.iter().map(|a| format!("{a}\n")).collect();
    crate::atomic_file::replace_mode(&path, text.as_bytes(), 0o644).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_acme_challenges(dir.path()).unwrap().is_empty());
        let answer = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".to_string();
        write_acme_challenges(dir.path(), std::slice::from_ref(&answer)).unwrap();
        assert_eq!(read_acme_challenges(dir.path()).unwrap(), [answer.as_str()]);
        std::fs::write(
            dir.path().join(ACME_CHALLENGE_FILE),
            format!("{answer}\nno way\n"),
        )
        .unwrap();
        let e = read_acme_challenges(dir.path()).unwrap_err().to_string();
        assert!(e.contains("challenge:2") && e.contains("expected"), "{e}");
        write_acme_challenges(dir.path(), &[]).unwrap();
        assert!(!dir.path().join(ACME_CHALLENGE_FILE).exists());
    }
}
