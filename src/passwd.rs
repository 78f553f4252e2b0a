//! Password hashing for `admin_password_hash` (and later account hashes): only hashes
//! ever reach letterbox.toml.

use std::io::{BufRead, IsTerminal, Write};

use nix::sys::termios::{self, LocalFlags, SetArg};
use sha_crypt::{PasswordHasher, PasswordVerifier, ShaCrypt};
use yescrypt::Mode;

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

/// The password-hash schemes letterbox accepts: the one list that the console login
/// ([`verify`]) and the config check (`config::check_password_hash`) both go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// crypt(3) SHA-512: what [`hash`] makes.
    Sha512Crypt,
    /// yescrypt: accepted for hashes made by other tools, such as `mkpasswd -m yescrypt`.
    Yescrypt,
}

impl Scheme {
    pub const ALL: [Scheme; 2] = [Scheme::Sha512Crypt, Scheme::Yescrypt];
    /// The scheme [`hash`] makes, and so the one to show in examples.
    pub const MADE: Scheme = Scheme::Sha512Crypt;

    /// The start of every hash of this scheme: its crypt(3) id between `$` signs.
    pub fn prefix(self) -> &'static str {
        match self {
            Scheme::Sha512Crypt => "$6$",
            Scheme::Yescrypt => "$y$",
        }
    }

    /// The crypt(3) id alone, as `sha_crypt::PasswordHashRef::id` gives it.
    pub fn id(self) -> &'static str {
        self.prefix().trim_matches('$')
    }

    /// How error messages name the scheme.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Sha512Crypt => "crypt(3) SHA-512",
            Scheme::Yescrypt => "yescrypt",
        }
    }

    /// Length of the final (hash) field in crypt's base64: 512 bits for SHA-512 crypt,
    /// 256 for yescrypt. The crypt-string parser accepts any length, so checking this is
    /// what catches a truncated paste.
    pub fn hash_len(self) -> usize {
        match self {
            Scheme::Sha512Crypt => 86,
            Scheme::Yescrypt => 43,
        }
    }

    pub fn from_id(id: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.id() == id)
    }
}

/// Most SHA-512 crypt rounds accepted: 200 times the default of 5,000, and above the
/// 656,000 that passlib picks, yet about a second or two per login on a Raspberry Pi 3,
/// whose console login runs inside PID 1 (crypt(3) itself allows 999,999,999: hours).
pub const SHA512_MAX_ROUNDS: u64 = 1_000_000;
/// Most memory a yescrypt hash may make a login use, 128·N·r·p bytes (times t + 1, as
/// time grows with it): four times libxcrypt's default of 16 MiB (`mkpasswd -m yescrypt`,
/// N = 4096, r = 32). Its largest cost asks for 1 GiB, all of a Pi 3's memory: the
/// failed allocation would abort PID 1.
pub const YESCRYPT_MAX_BYTES: u64 = 64 << 20;
/// Largest yescrypt time factor `t` accepted; each step adds a pass over the memory.
const YESCRYPT_MAX_T: u32 = 3;

/// A hash whose cost letterbox refuses to compute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error(
        "SHA-512 crypt hash with {rounds} rounds; expected at most {SHA512_MAX_ROUNDS} \
         (each console login computes it); make a new hash with `letterbox passwd`"
    )]
    Sha512Rounds { rounds: String },
    #[error(
        "yescrypt hash needing {mib} MiB (N = {n}, r = {r}, p = {p}, t = {t}); expected at \
         most {} MiB (each console login computes it); make a new hash with \
         `letterbox passwd`",
        YESCRYPT_MAX_BYTES >> 20
    )]
    Yescrypt {
        mib: u64,
        n: u64,
        r: u32,
        p: u32,
        t: String,
    },
}

/// Refuses a hash whose cost parameters are above [`SHA512_MAX_ROUNDS`] or
/// [`YESCRYPT_MAX_BYTES`]. Anything it cannot read is left to the hash parsers.
pub fn check_cost(hash: &str) -> Result<(), CostError> {
    let Ok(parsed) = sha_crypt::PasswordHashRef::new(hash) else {
        return Ok(());
    };
    let Some(params) = parsed.fields().next() else {
        return Ok(());
    };
    match Scheme::from_id(parsed.id()) {
        Some(Scheme::Sha512Crypt) => match params.as_str().strip_prefix("rounds=") {
            // Digits too many for a u64 are too many rounds all the same.
            Some(rounds)
                if rounds
                    .parse::<u64>()
                    .map_or(true, |n| n > SHA512_MAX_ROUNDS) =>
            {
                Err(CostError::Sha512Rounds {
                    rounds: rounds.chars().take(24).collect(),
                })
            }
            _ => Ok(()),
        },
        Some(Scheme::Yescrypt) => {
            let Ok(p) = params.as_str().parse::<yescrypt::Params>() else {
                return Ok(());
            };
            // `t` has no getter: it is found by rebuilding the parameters with each small
            // value. libxcrypt always writes 0; a larger one counts as too costly.
            let t = (0..=YESCRYPT_MAX_T).find(|&t| {
                [Mode::Classic, Mode::Worm, Mode::Rw]
                    .into_iter()
                    .any(|mode| {
                        yescrypt::Params::new_with_all_params(mode, p.n(), p.r(), p.p(), t, 0)
                            == Ok(p)
                    })
            });
            let bytes = 128
                * u128::from(p.n())
                * u128::from(p.r())
                * u128::from(p.p())
                * (u128::from(t.unwrap_or(YESCRYPT_MAX_T + 1)) + 1);
            if t.is_none() || bytes > u128::from(YESCRYPT_MAX_BYTES) {
                return Err(CostError::Yescrypt {
                    mib: u64::try_from(bytes >> 20).unwrap_or(u64::MAX),
                    n: p.n(),
                    r: p.r(),
                    p: p.p(),
                    t: t.map_or_else(|| format!("over {YESCRYPT_MAX_T}"), |t| t.to_string()),
                });
            }
            Ok(())
        }
        None => Ok(()),
    }
}

/// Hashes a password with SHA-512 crypt ([`Scheme::MADE`]) and a random salt. SHA-512
/// crypt, rather than yescrypt, because Dovecot and every libc verify it.
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

/// True when `password` matches a hash of one of the accepted [`Scheme`]s. A hash above
/// the cost limits ([`check_cost`]) matches nothing and is not computed: the config check
/// refuses it, and this is the last guard of the login in PID 1.
pub fn verify(password: &str, hash: &str) -> bool {
    if check_cost(hash).is_err() {
        return false;
    }
    let Ok(parsed) = sha_crypt::PasswordHashRef::new(hash) else {
        return false;
    };
    match Scheme::from_id(parsed.id()) {
        Some(Scheme::Sha512Crypt) => ShaCrypt::default()
            .verify_password(password.as_bytes(), parsed)
            .is_ok(),
        Some(Scheme::Yescrypt) => yescrypt::Yescrypt::default()
            .verify_password(password.as_bytes(), parsed)
            .is_ok(),
        None => false,
    }
}

/// Asks twice on a terminal (echo off), or reads one line from a pipe, and hashes it.
pub fn prompt_and_hash() -> Result<String, PasswdError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return hash(&read_line(&mut stdin.lock())?);
    }
    hash(&ask_twice()?)
}

/// One line of `input` (a pipe), without its line ending.
pub fn read_line(input: &mut impl BufRead) -> Result<String, PasswdError> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(PasswdError::Read)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Asks for a password twice on the terminal on stdin, echo off; the two must match.
pub fn ask_twice() -> Result<String, PasswdError> {
    let first = read_hidden("Password: ")?;
    let second = read_hidden("Again: ")?;
    if first != second {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
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

    /// `openssl passwd -6 -salt saltsaltsalt letterbox`
    const SHA512: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";
    /// `mkpasswd -m yescrypt letterbox` (libxcrypt)
    const YESCRYPT: &str =
        "$y$j9T$l.4Kf7wcyQ20w/sxhEjQM0$NX6qsFMn96tMnY1br5GGM9L9SXp5CLU7qKRx8LB/14D";

    // That the config check accepts these hashes is tested in config, which depends on
    // passwd, not the other way round.
    #[test]
    fn hash_verifies() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$6$"));
        assert!(h.starts_with(Scheme::MADE.prefix()));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
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
        assert!(verify("letterbox", SHA512));
        assert!(!verify("letterbax", SHA512));
        assert!(verify("letterbox", YESCRYPT));
        assert!(!verify("letterbax", YESCRYPT));
    }

    #[test]
    fn schemes_match_real_hashes() {
        for (h, scheme) in [(SHA512, Scheme::Sha512Crypt), (YESCRYPT, Scheme::Yescrypt)] {
            assert!(h.starts_with(scheme.prefix()), "{h}");
            assert_eq!(Scheme::from_id(scheme.id()), Some(scheme));
            assert_eq!(
                h.rsplit('$').next().unwrap().len(),
                scheme.hash_len(),
                "{h}"
            );
        }
        assert_eq!(Scheme::from_id("1"), None);
    }

    /// A hash of `scheme`-shaped fields around `params`, with a made-up salt and digest.
    fn costly(prefix: &str, params: &str, digest_len: usize) -> String {
        format!("{prefix}{params}$saltsaltsalt${}", "A".repeat(digest_len))
    }

    #[test]
    fn sha512_rounds_above_the_limit_are_refused_without_computing() {
        let sha = |rounds: &str| costly("$6$", &format!("rounds={rounds}"), 86);
        assert_eq!(check_cost(&sha("1000000")), Ok(()));
        assert_eq!(check_cost(SHA512), Ok(()));
        for rounds in ["1000001", "999999999", "99999999999999999999999999"] {
            let why = check_cost(&sha(rounds)).unwrap_err().to_string();
            assert!(why.contains("at most 1000000"), "{why}");
            assert!(why.contains("letterbox passwd"), "{why}");
        }
        // 999,999,999 rounds would take minutes: refused at once instead.
        let started = std::time::Instant::now();
        assert!(!verify("letterbox", &sha("999999999")));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn yescrypt_memory_above_the_limit_is_refused_without_computing() {
        let yes = |n: u64, r: u32, p: u32| {
            let params = yescrypt::Params::new(Mode::Rw, n, r, p).unwrap();
            costly("$y$", &params.to_string(), 43)
        };
        // libxcrypt's default, N = 4096 and r = 32: 16 MiB.
        assert_eq!(yes(4096, 32, 1).split('$').nth(2), Some("j9T"));
        assert_eq!(check_cost(&yes(4096, 32, 1)), Ok(()));
        assert_eq!(check_cost(&yes(16384, 32, 1)), Ok(()), "64 MiB is allowed");
        for (n, r, p) in [(32768, 32, 1), (1 << 18, 32, 1), (16384, 32, 2)] {
            let why = check_cost(&yes(n, r, p)).unwrap_err().to_string();
            assert!(why.contains("expected at most 64 MiB"), "{why}");
        }
        // libxcrypt's largest cost, 1 GiB: an allocation a Pi 3 cannot make.
        let started = std::time::Instant::now();
        assert!(!verify("letterbox", &yes(1 << 18, 32, 1)));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn yescrypt_time_factor_counts_towards_the_cost() {
        let with_t = |t: u32| {
            let params = yescrypt::Params::new_with_all_params(Mode::Rw, 4096, 32, 1, t, 0);
            costly("$y$", &params.unwrap().to_string(), 43)
        };
        assert_eq!(check_cost(&with_t(0)), Ok(()));
        assert_eq!(check_cost(&with_t(3)), Ok(()), "16 MiB times 4");
        let why = check_cost(&with_t(1000)).unwrap_err().to_string();
        assert!(why.contains("t = over 3"), "{why}");
    }

    #[test]
    fn empty_password_is_refused() {
        assert!(matches!(hash(""), Err(PasswdError::Empty)));
    }
}
