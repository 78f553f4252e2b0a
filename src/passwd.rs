//! Password hashing for `admin_password_hash` (and later account hashes): only hashes
//! ever reach letterbox.toml.

use std::io::{BufRead, IsTerminal, Write};

use nix::sys::termios::{self, LocalFlags, SetArg};
use sha_crypt::{PasswordHasher, PasswordVerifier, ShaCrypt};

#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read the password")]
    Read(#[source] std::io::Error),
    #[error("cannot switch terminal echo")]
    Terminal(#[source] nix::Error),
    #[error("the two passwords differ")]
    Mismatch,
    #[error("empty password; expected at least one character")]
    Empty,
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("no randomness for the salt")]
    Random(#[source] getrandom::Error),
}

/// Hashes a password with SHA-512 crypt and a random salt. SHA-512 crypt, rather than
/// yescrypt, because Dovecot and every libc verify it.
pub fn hash(password: &str) -> Result<String, PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::Empty);
    }
    // 12 bytes encode to the 16 salt characters that libc's crypt(3) keeps; a longer
    // salt would be cut there and the stored string would no longer compare equal.
    let mut salt = [0u8; 12];
    getrandom::fill(&mut salt).map_err(PasswdError::Random)?;
    ShaCrypt::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswdError::Hash(e.to_string()))
}

/// True when `password` matches a SHA-512 crypt or yescrypt hash.
pub fn verify(password: &str, hash: &str) -> bool {
    let Ok(parsed) = sha_crypt::PasswordHashRef::new(hash) else {
        return false;
    };
    match parsed.id() {
        "6" => ShaCrypt::default()
            .verify_password(password.as_bytes(), parsed)
            .is_ok(),
        "y" => yescrypt::Yescrypt::default()
            .verify_password(password.as_bytes(), parsed)
            .is_ok(),
        _ => false,
    }
}

/// Asks twice on a terminal (echo off), or reads one line from a pipe, and hashes it.
pub fn prompt_and_hash() -> Result<String, PasswdError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(PasswdError::Read)?;
        return hash(line.trim_end_matches(['\r', '\n']));
    }
    let first = read_hidden("Password: ")?;
    let second = read_hidden("Again: ")?;
    if first != second {
        return Err(PasswdError::Mismatch);
    }
    hash(&first)
}

fn read_hidden(prompt: &str) -> Result<String, PasswdError> {
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).map_err(PasswdError::Terminal)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(PasswdError::Terminal)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &saved).map_err(PasswdError::Terminal)?;
    eprintln!();
    read.map_err(PasswdError::Read)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_is_accepted_by_the_config_check() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$6$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        crate::config::check_password_hash(&h).unwrap();
    }

    #[test]
    fn hash_round_trips_through_libc_crypt() {
        // Dovecot and login tools verify with crypt(3), which compares whole strings.
        let h = hash("pw").unwrap();
        // perl-base is essential on Debian, so libc's crypt(3) is always reachable through it.
        let out = std::process::Command::new("perl")
            .args(["-e", "print crypt($ARGV[0], $ARGV[1])", "pw", &h])
            .output()
            .expect("perl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h);
    }

    #[test]
    fn verifies_hashes_made_by_other_tools() {
        // `openssl passwd -6 -salt saltsaltsalt letterbox`
        let sha512 = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";
        assert!(verify("letterbox", sha512));
        assert!(!verify("letterbax", sha512));
        // `mkpasswd -m yescrypt letterbox` (libxcrypt)
        let yes = "$y$j9T$l.4Kf7wcyQ20w/sxhEjQM0$NX6qsFMn96tMnY1br5GGM9L9SXp5CLU7qKRx8LB/14D";
        assert!(verify("letterbox", yes));
        assert!(!verify("letterbax", yes));
    }

    #[test]
    fn empty_password_is_refused() {
        assert!(matches!(hash(""), Err(PasswdError::Empty)));
    }
}
