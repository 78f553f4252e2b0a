//! The DKIM signing keys, generated on the device and kept on the data partition:
//! `STATE/dkim/<selector>.key` (PEM, mode 0600) beside `<selector>.pub` (a PEM
//! SubjectPublicKeyInfo, which the zone publishes as `<selector>._domainkey.<domain>`).
//!
//! Two keys sign every message: Ed25519 (RFC 8463) and RSA-2048 for receivers that lack
//! Ed25519. Their selectors are the algorithm and the year the key was made, `ed2026` and
//! `rsa2026`: a new key later gets a new name, so the old record can stay published while
//! mail signed with it is in flight. Only generated once the clock can be trusted (the
//! selector's year comes from it); kept across restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Algorithm, CryptoError, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::EncodePublicKey;

/// The PEM labels of the two kinds of private key.
const ED25519_LABEL: &str = "PRIVATE KEY";
const RSA_LABEL: &str = "RSA PRIVATE KEY";
const RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot write {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", .path.display())]
    Bad { path: PathBuf, why: String },
    #[error("generating the {algorithm} key: {why}")]
    Generate {
        algorithm: &'static str,
        why: String,
    },
}

/// The signing keys with their selectors.
pub struct SigningKeys {
    pub ed25519: (String, Ed25519Key),
    pub rsa: (String, RingRsaKey),
}

/// The RSA key as mail-auth signs with it, on ring: its pure-Rust `rsa` took 3.5 ms of the
/// agent's CPU a message (`make bench-dkim`), ring about a third of that, and every message
/// sent is signed.
pub struct RingRsaKey {
    pair: RsaKeyPair,
    random: SystemRandom,
}

impl SigningKey for RingRsaKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(256);
        input.write(&mut data);
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.random, &data, &mut signature)
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))?;
        Ok(signature)
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// Loads the newest key of each kind from `STATE/dkim`, generating (with `year` in its
/// selector) any kind that has none. Each key's `.pub` is written again if missing.
pub fn load_or_generate(state: &Path, year: i32) -> Result<SigningKeys, KeyError> {
    let dir = state.join("dkim");
    std::fs::create_dir_all(&dir).map_err(|source| KeyError::Io {
        path: dir.clone(),
        source,
    })?;
    let (mut ed25519, mut rsa) = (None, None);
    for (selector, label, der) in read_private_keys(&dir)? {
        match label.as_str() {
            ED25519_LABEL => ed25519 = Some((selector, der)),
            RSA_LABEL => rsa = Some((selector, der)),
            _ => {}
        }
    }
    let (ed_selector, ed_der) = match ed25519 {
        Some(found) => found,
        None => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| KeyError::Generate {
                algorithm: "Ed25519",
                why: e.to_string(),
            })?;
            (format!("ed{year}"), der)
        }
    };
    let (rsa_selector, rsa_der) = match rsa {
        Some(found) => found,
        None => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS);
            let der = key.and_then(|k| Ok(k.to_pkcs1_der()?.as_bytes().to_vec()));
            let der = der.map_err(|e| KeyError::Generate {
                algorithm: "RSA-2048",
                why: e.to_string(),
            })?;
            (format!("rsa{year}"), der)
        }
    };
    let ed_path = dir.join(format!("{ed_selector}.key"));
    let ed_key = Ed25519Key::from_pkcs8_der(&ed_der).map_err(|e| KeyError::Bad {
        path: ed_path.clone(),
        why: format!("not an Ed25519 PKCS#8 key: {e}"),
    })?;
    let mut ed_spki = crate::dns::ED25519_SPKI.to_vec();
    ed_spki.extend_from_slice(&ed_key.public_key());
    keep(&dir, &ed_selector, ED25519_LABEL, &ed_der, &ed_spki)?;

    let rsa_path = dir.join(format!("{rsa_selector}.key"));
    let not_rsa = |why: String| KeyError::Bad {
        path: rsa_path.clone(),
        why: format!("not an RSA PKCS#1 key: {why}"),
    };
    let public = rsa::RsaPrivateKey::from_pkcs1_der(&rsa_der)
        .map_err(|e| not_rsa(e.to_string()))?
        .to_public_key();
    let rsa_spki = public
        .to_public_key_der()
        .map_err(|e| not_rsa(e.to_string()))?
        .into_vec();
    let rsa_key = RingRsaKey {
        pair: RsaKeyPair::from_der(&rsa_der).map_err(|e| not_rsa(e.to_string()))?,
        random: SystemRandom::new(),
    };
    keep(&dir, &rsa_selector, RSA_LABEL, &rsa_der, &rsa_spki)?;
    Ok(SigningKeys {
        ed25519: (ed_selector, ed_key),
        rsa: (rsa_selector, rsa_key),
    })
}

/// `<selector>.key` (written if missing, mode 0600 either way) and `<selector>.pub`
/// (written if missing): the private key first, so a published key always has its
/// private half.
fn keep(dir: &Path, selector: &str, label: &str, der: &[u8], spki: &[u8]) -> Result<(), KeyError> {
    let key = dir.join(format!("{selector}.key"));
    let public = dir.join(format!("{selector}.pub"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    if !key.exists() {
        crate::atomic_file::replace_mode(&key, pem(label, der).as_bytes(), 0o600)
            .map_err(io(&key))?;
        log::info!("DKIM: generated the {label} for selector {selector}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(io(&key))?;
    if !public.exists() {
        crate::atomic_file::replace_mode(&public, pem("PUBLIC KEY", spki).as_bytes(), 0o644)
            .map_err(io(&public))?;
    }
    Ok(())
}

/// Every `<selector>.key` with its PEM label and DER, sorted by selector (so the newest
/// year of each kind comes last).
fn read_private_keys(dir: &Path) -> Result<Vec<(String, String, Vec<u8>)>, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(selector) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        let (label, der) = unpem(&text).ok_or_else(|| KeyError::Bad {
            path: path.clone(),
            why: "expected a PEM private key".into(),
        })?;
        found.push((selector.to_string(), label, der));
    }
    found.sort();
    Ok(found)
}

fn pem(label: &str, der: &[u8]) -> String {
    let base64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}

/// The label and DER of the first PEM block in `text`.
fn unpem(text: &str) -> Option<(String, Vec<u8>)> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .find_map(|l| l.strip_prefix("-----BEGIN "))?
        .strip_suffix("-----")?
        .to_string();
    let end = format!("-----END {label}-----");
    let body: String = lines.take_while(|l| *l != end).collect();
    let der = data_encoding::BASE64.decode(body.as_bytes()).ok()?;
    Some((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn keys_are_made_once_private_0600_and_published_as_the_zone_reads_them() {
        let state = tempfile::tempdir().unwrap();
        let first = load_or_generate(state.path(), 2026).unwrap();
        assert_eq!(first.ed25519.0, "ed2026");
        assert_eq!(first.rsa.0, "rsa2026");
        for name in ["ed2026.key", "rsa2026.key"] {
            let mode = std::fs::metadata(state.path().join("dkim").join(name))
                .unwrap()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let published = crate::dns::read_dkim_keys(state.path());
        assert!(published.skipped.is_empty(), "{:?}", published.skipped);
        let kinds: Vec<(&str, &str)> = published
            .keys
            .iter()
            .map(|k| (k.selector.as_str(), k.key_type))
            .collect();
        assert_eq!(kinds, [("ed2026", "ed25519"), ("rsa2026", "rsa")]);

        // A later start (in a later year) keeps the keys it finds.
        let before = std::fs::read(state.path().join("dkim/rsa2026.key")).unwrap();
        let again = load_or_generate(state.path(), 2027).unwrap();
        assert_eq!(
            (again.ed25519.0.as_str(), again.rsa.0.as_str()),
            ("ed2026", "rsa2026")
        );
        assert_eq!(again.ed25519.1.public_key(), first.ed25519.1.public_key());
        assert_eq!(
            std::fs::read(state.path().join("dkim/rsa2026.key")).unwrap(),
            before
        );
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_named_in_the_error() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(state.path().join("dkim")).unwrap();
        std::fs::write(state.path().join("dkim/ed2026.key"), "garbage").unwrap();
        let e = load_or_generate(state.path(), 2026)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("ed2026.key") && e.contains("expected a PEM"),
            "{e}"
        );
    }
}
