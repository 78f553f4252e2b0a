//! The appliance's TLS key and self-signed certificate for `<hostname>.<domain>` (and, with
//! the webmail, `<domain>` and `mail.<domain>`), made on the device and kept on the data
//! partition, or one an ACME CA issued for the same names (`mail::acme`), put in its place
//! by [`install_issued`].
//!
//! The key is ECDSA P-256: every TLS stack a mail client or Postfix/Dovecot (OpenSSL 3)
//! uses accepts it, while Ed25519 certificates are still refused by some (Windows'
//! Schannel, under Outlook, for one), and ring cannot make RSA keys.
//!
//! The certificate lives 824 days: Apple's clients refuse any TLS server certificate
//! valid for more than 825 days, self-signed and user-trusted ones included, so the ten
//! years usual for self-signed certificates would lock out every iPhone. It is remade 30
//! days before it expires; users then accept the new one, about every two years. A
//! CA-issued certificate is the ACME unit's to renew: it is replaced by a self-signed one
//! only once it has expired, so a restart in its renewal window keeps it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

/// The certificate's file in the TLS directory, PEM.
pub const CERT_FILE: &str = "cert.pem";
/// The private key's file in the TLS directory, PKCS#8 PEM.
pub const KEY_FILE: &str = "key.pem";

/// Both files are 0600, as the issue asks: only root reads them, and Postfix and Dovecot
/// load their certificates as root before dropping privileges.
const FILE_MODE: u32 = 0o600;
/// Any clock before this is wrong (the Pi has no real-time clock and starts in 1970):
/// 2026-11-01T00:00:00Z, before this code was written.
const EARLIEST_TRUSTED_TIME: i64 = 1_793_491_200;
const LIFETIME: Duration = Duration::days(824);
/// Backdated so that a client whose clock is a little behind still accepts a new one.
const BACKDATE: Duration = Duration::hours(1);
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::days(30);

/// Where the key and certificate are, ready for Postfix's and Dovecot's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Why a new key and certificate were made; `None` when the existing ones were kept.
    pub replaced: Option<Replaced>,
}

/// Why the key and certificate on disk could not be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Replaced {
    #[error("there were none")]
    Missing,
    #[error("they could not be read: {0}")]
    Unreadable(String),
    #[error("the certificate is not for the key beside it")]
    KeyMismatch,
    #[error("the certificate is for {found:?}, not {missing:?}")]
    OtherName {
        found: Vec<String>,
        missing: Vec<String>,
    },
    #[error("the certificate was made while the clock was wrong (valid from {not_before})")]
    MadeWithWrongClock { not_before: OffsetDateTime },
    #[error("the certificate is not valid yet (from {not_before})")]
    NotYetValid { not_before: OffsetDateTime },
    #[error("the certificate expires at {not_after}, in less than 30 days")]
    ExpiresSoon { not_after: OffsetDateTime },
    #[error("the CA-issued certificate expired at {not_after}")]
    Expired { not_after: OffsetDateTime },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the clock says {now}, before {floor}, so it cannot be trusted yet: \
         no TLS key or certificate is made until the time is set ({reason})"
    )]
    ClockNotTrusted {
        now: OffsetDateTime,
        floor: OffsetDateTime,
        /// Why the existing files, if any, could not be kept instead.
        reason: Replaced,
    },
    #[error("creating the TLS directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no name to make a TLS certificate for; expected the host's at least")]
    NoName,
    #[error("making a TLS certificate for {names:?}")]
    Generate {
        names: Vec<String>,
        source: rcgen::Error,
    },
    #[error("the certificate the CA issued cannot be used: {0}")]
    BadIssue(Replaced),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Keeps the key and certificate in `dir` if they are a matching pair for `names`, made
/// under a trusted clock and not about to expire (a CA-issued one: not expired, since the
/// ACME unit renews it); otherwise makes new ones. `names` starts with the host's fqdn,
/// the one name a CA-issued pair must have to be kept (the mail's; the ACME unit orders a
/// new one for any name it lacks); a self-signed pair lacking any of the others (the
/// webmail's) is remade with them all.
/// Refuses to make any while `now` is before a plausible time: the caller retries once the
/// clock is set. With such a clock, a pair that is right but for its dates is kept, since
/// its dates cannot be judged, so mail still starts at boot before the time is known.
pub fn ensure_self_signed(
    dir: &Path,
    names: &[String],
    now: SystemTime,
) -> Result<TlsFiles, TlsError> {
    if names.is_empty() {
        return Err(TlsError::NoName);
    }
    let _one_writer = writing();
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let now = OffsetDateTime::from(now);
    let floor = earliest_trusted_time();
    let clock_trusted = now >= floor;
    let existing = check_existing(&cert_path, &key_path, names, floor).and_then(|validity| {
        if clock_trusted {
            check_dates(&validity, now)
        } else {
            Ok(())
        }
    });
    let reason = match existing {
        Ok(()) => {
            return Ok(TlsFiles {
                cert_path,
                key_path,
                replaced: None,
            })
        }
        Err(reason) => reason,
    };
    if !clock_trusted {
        return Err(TlsError::ClockNotTrusted { now, floor, reason });
    }
    let (cert_pem, key_pem) = generate(names, now).map_err(|source| TlsError::Generate {
        names: names.to_vec(),
        source,
    })?;
    create_dir(dir)?;
    write_pair(&key_path, &key_pem, &cert_path, &cert_pem)?;
    log::info!(
        "made a TLS key and certificate for {} in {}: {reason}",
        names.join(", "),
        dir.display()
    );
    Ok(TlsFiles {
        cert_path,
        key_path,
        replaced: Some(reason),
    })
}

/// The directory of the pair, root's only.
fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes a key and its certificate, each atomically, mode 0600. The key first: a power
/// cut between the two leaves a new key beside the old certificate, which
/// `ensure_self_signed` sees as a mismatch and replaces.
fn write_pair(key: &Path, key_pem: &str, cert: &Path, cert_pem: &str) -> Result<(), TlsError> {
    for (path, contents) in [(key, key_pem), (cert, cert_pem)] {
        crate::atomic_file::replace_mode(path, contents.as_bytes(), FILE_MODE).map_err(
            |source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

/// One writer of the pair at a time: a self-signed pair made while an issued one is put in
/// place could leave one's key beside the other's certificate.
fn writing() -> std::sync::MutexGuard<'static, ()> {
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Replaces the pair in `dir` with a CA-issued one: `chain_pem`, the certificate then its
/// issuers, and its key, each written atomically, mode 0600. The pair is checked first
/// (the key is the certificate's, it names each of `names`), so a bad issue never replaces
/// a working pair.
pub fn install_issued(
    dir: &Path,
    names: &[String],
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), TlsError> {
    let _one_writer = writing();
    create_dir(dir)?;
    let staged = tempfile::Builder::new()
        .prefix(".letterbox-issued-")
        .tempdir_in(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let (staged_cert, staged_key) = (staged.path().join(CERT_FILE), staged.path().join(KEY_FILE));
    write_pair(&staged_key, key_pem, &staged_cert, chain_pem)?;
    check_existing(&staged_cert, &staged_key, names, earliest_trusted_time())
        .and_then(|validity| validity.names_each(names))
        .map_err(TlsError::BadIssue)?;
    // The lock keeps `ensure_self_signed` from seeing the two apart.
    write_pair(&key_path, key_pem, &cert_path, chain_pem)?;
    Ok(())
}

/// When the pair in `dir` should be replaced by an ACME order for `names`: now (`None`)
/// when it is self-signed, unusable or lacks one of them, else at [`renewal_date`].
pub fn acme_renewal_due(dir: &Path, names: &[String]) -> Option<OffsetDateTime> {
    let validity = certificate_validity(dir, names).ok()?;
    validity.names_each(names).ok()?;
    (!validity.self_signed).then(|| renewal_date(validity.not_before, validity.not_after))
}

/// When a CA-issued certificate valid from `not_before` to `not_after` is renewed: 30 days
/// before it expires, or a third of its lifetime before when that is shorter, so that a CA
/// issuing for 30 days or less (step-ca's default is a day) leaves time between renewals.
pub fn renewal_date(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    let lifetime = (not_after - not_before).max(Duration::ZERO);
    not_after - RENEW_BEFORE_EXPIRY.min(lifetime / 3)
}

/// The validity of the certificate in `dir`, for `status` and the ACME unit, or why it
/// cannot serve `names` whatever the time (missing, unreadable, another key or name, made
/// while the clock was wrong); a CA-issued one need only name the first.
pub fn certificate_validity(dir: &Path, names: &[String]) -> Result<Validity, Replaced> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    check_existing(&cert, &key, names, earliest_trusted_time())
}

/// The earliest time the clock may say before it is trusted.
pub fn earliest_trusted_time() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(EARLIEST_TRUSTED_TIME).expect("a valid constant")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Made here (issuer and subject the same), not issued by a CA.
    pub self_signed: bool,
    /// The DNS names it is for.
    pub names: Vec<String>,
}

impl Validity {
    /// Whether the certificate is for every one of `wanted`, or which it lacks.
    fn names_each(&self, wanted: &[String]) -> Result<(), Replaced> {
        let missing: Vec<String> = (wanted.iter())
            .filter(|w| !self.names.iter().any(|n| n.eq_ignore_ascii_case(w)))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Replaced::OtherName {
            found: self.names.clone(),
            missing,
        })
    }
}

/// Everything about the existing pair that does not depend on the current time. A
/// self-signed certificate must name each of `names`; a CA-issued one the first, the
/// host's, enough to serve mail until the ACME unit's order for the others is issued.
fn check_existing(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
    floor: OffsetDateTime,
) -> Result<Validity, Replaced> {
    let read = |path: &Path| match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Replaced::Missing),
        Err(e) => Err(Replaced::Unreadable(format!("{}: {e}", path.display()))),
    };
    let key_pem = read(key_path)?;
    let cert_pem = read(cert_path)?;
    // The parser's message only: it never quotes the key.
    let key = std::str::from_utf8(&key_pem)
        .ok()
        .and_then(|pem| KeyPair::from_pem(pem).ok())
        .ok_or_else(|| {
            Replaced::Unreadable(format!("{}: not a PEM private key", key_path.display()))
        })?;
    let unreadable_cert = |e: String| Replaced::Unreadable(format!("{}: {e}", cert_path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem)
        .map_err(|e| unreadable_cert(format!("not a PEM certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| unreadable_cert(format!("not an X.509 certificate: {e}")))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(Replaced::KeyMismatch);
    }
    let found: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(unreadable_cert(format!(
                "its subject alternative names: {e}"
            )))
        }
    };
    let self_signed = is_self_signed(&cert);
    let validity = Validity {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        self_signed,
        names: found,
    };
    let required = if self_signed { names.len() } else { 1 };
    validity.names_each(&names[..required.min(names.len())])?;
    if validity.not_before + BACKDATE < floor {
        return Err(Replaced::MadeWithWrongClock {
            not_before: validity.not_before,
        });
    }
    Ok(validity)
}

/// Ours, not a CA's: a CA never names itself as the subject of a server's certificate.
fn is_self_signed(cert: &x509_parser::certificate::X509Certificate) -> bool {
    cert.issuer() == cert.subject()
}

/// Whether the pair's dates let it serve on: a self-signed one is remade when not yet
/// valid or within 30 days of expiry; a CA-issued one is kept until it has expired, since
/// the ACME unit renews it and a self-signed one in its place would serve no client better.
fn check_dates(validity: &Validity, now: OffsetDateTime) -> Result<(), Replaced> {
    if !validity.self_signed {
        if validity.not_after <= now {
            return Err(Replaced::Expired {
                not_after: validity.not_after,
            });
        }
        return Ok(());
    }
    if validity.not_before > now {
        return Err(Replaced::NotYetValid {
            not_before: validity.not_before,
        });
    }
    if validity.not_after - now < RENEW_BEFORE_EXPIRY {
        return Err(Replaced::ExpiresSoon {
            not_after: validity.not_after,
        });
    }
    Ok(())
}

/// A new key and a certificate for `names` signed by it, the first also its subject:
/// (certificate PEM, key PEM).
fn generate(names: &[String], now: OffsetDateTime) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut subject = DistinguishedName::new();
    if let Some(host) = names.first() {
        subject.push(DnType::CommonName, host);
    }
    params.distinguished_name = subject;
    // Whole seconds: X.509 times carry no fraction.
    let start = now.replace_nanosecond(0).expect("0 is a valid nanosecond") - BACKDATE;
    params.not_before = start;
    params.not_after = start + LIFETIME;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Apple's clients require serverAuth in every TLS server certificate.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // The serial number is rcgen's default, a hash of the public key: a new key never
    // repeats an old serial, which Firefox and Thunderbird would refuse.
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests;
