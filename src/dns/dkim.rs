//! The DKIM public keys in `STATE/dkim/<selector>.pub`, published as
//! `<selector>._domainkey.<domain>`. A file that is not a usable key is skipped with
//! its reason, so that one bad file cannot take the rest of the zone down.

use std::path::{Path, PathBuf};

use super::DnsError;

/// A DKIM public key published as `<selector>._domainkey.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    pub selector: String,
    /// The `k=` tag: "rsa" or "ed25519".
    pub key_type: &'static str,
    /// The `p=` tag: base64 of the SubjectPublicKeyInfo for RSA (RFC 6376), of the raw
    /// 32-byte key for Ed25519 (RFC 8463).
    pub public_key: String,
}

/// The keys read, sorted by selector, and why each file left out was left out.
#[derive(Debug, Default)]
pub struct DkimKeys {
    pub keys: Vec<DkimKey>,
    pub skipped: Vec<DnsError>,
}

/// Reads `STATE/dkim/<selector>.pub` (PEM public keys); no directory, no keys.
pub fn read(state: &Path) -> DkimKeys {
    let dir = state.join("dkim");
    let mut found = DkimKeys::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return found,
        Err(source) => {
            found.skipped.push(DnsError::Io { path: dir, source });
            return found;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(source) => {
                found.skipped.push(DnsError::Io {
                    path: dir.clone(),
                    source,
                });
                continue;
            }
        };
        if path.extension().is_none_or(|e| e != "pub") {
            continue;
        }
        match read_key(path) {
            Ok(key) => found.keys.push(key),
            Err(e) => found.skipped.push(e),
        }
    }
    found.keys.sort_by(|a, b| a.selector.cmp(&b.selector));
    found
}

fn read_key(path: PathBuf) -> Result<DkimKey, DnsError> {
    let selector = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bad = |why: &str| DnsError::DkimKey {
        path: path.clone(),
        why: why.to_string(),
    };
    let is_label = (1..=63).contains(&selector.len())
        && selector
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !is_label {
        return Err(bad(
            "the file name is not a DNS label; expected <selector>.pub",
        ));
    }
    let pem = std::fs::read_to_string(&path).map_err(|source| DnsError::Io {
        path: path.clone(),
        source,
    })?;
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PUBLIC KEY-----")
        .collect();
    let der = data_encoding::BASE64.decode(body.as_bytes()).ok();
    let Some((key_type, public_key)) = der.as_deref().and_then(dkim_tags) else {
        return Err(bad(
            "expected a PEM RSA or Ed25519 public key (SubjectPublicKeyInfo) between \
             -----BEGIN PUBLIC KEY----- and -----END PUBLIC KEY-----",
        ));
    };
    Ok(DkimKey {
        selector,
        key_type,
        public_key,
    })
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32-byte key (the
/// milter writes its public key with it).
pub const ED25519_SPKI: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of the rsaEncryption OID, 1.2.840.113549.1.1.1.
const RSA_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// The `k=` and `p=` tags for a DER SubjectPublicKeyInfo, by its algorithm OID.
fn dkim_tags(der: &[u8]) -> Option<(&'static str, String)> {
    if let Some(raw) = der.strip_prefix(&ED25519_SPKI[..]) {
        return (raw.len() == 32).then(|| ("ed25519", data_encoding::BASE64.encode(raw)));
    }
    // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING }: the OID comes within
    // the first few bytes, after the two SEQUENCE headers (whose lengths vary).
    let head = &der[..der.len().min(24)];
    let is_rsa = der.first() == Some(&0x30) && head.windows(RSA_OID.len()).any(|w| w == RSA_OID);
    is_rsa.then(|| ("rsa", data_encoding::BASE64.encode(der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_come_from_the_key_and_a_bad_key_is_skipped_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dkim")).unwrap();
        std::fs::write(
            dir.path().join("dkim/ed.pub"),
            "-----BEGIN PUBLIC KEY-----\n\
             MCowBQYDK2VwAyEAQx7DIktYEEAF6BKKm1mM1YNfvISlwTacauhvqVfTaY8=\n\
             -----END PUBLIC KEY-----\n",
        )
        .unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/dns/state/dkim/letterbox.pub"
            ),
            dir.path().join("dkim/rsa.pub"),
        )
        .unwrap();
        // An EC (P-256) key is neither: skipped with a clear reason, not published as a
        // record that cannot verify.
        std::fs::write(
            dir.path().join("dkim/ec.pub"),
            "-----BEGIN PUBLIC KEY-----\n\
             MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\n\
             q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n\
             -----END PUBLIC KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("dkim/not a label.pub"), "").unwrap();
        let found = read(dir.path());
        let kinds: Vec<(&str, &str)> = found
            .keys
            .iter()
            .map(|k| (k.selector.as_str(), k.key_type))
            .collect();
        assert_eq!(kinds, [("ed", "ed25519"), ("rsa", "rsa")]);
        assert_eq!(
            found.keys[0].public_key, "Qx7DIktYEEAF6BKKm1mM1YNfvISlwTacauhvqVfTaY8=",
            "RFC 8463: the raw 32-byte key"
        );
        assert!(
            found.keys[1]
                .public_key
                .starts_with("MIICIjANBgkqhkiG9w0BAQEF"),
            "RSA: the whole SubjectPublicKeyInfo"
        );
        let mut reasons: Vec<String> = found.skipped.iter().map(|e| e.to_string()).collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].contains("ec.pub") && reasons[0].contains("expected a PEM RSA or Ed25519"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("not a label.pub") && reasons[1].contains("not a DNS label"),
            "{reasons:?}"
        );
    }
}
