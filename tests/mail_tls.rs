//! The mail TLS key and self-signed certificate: made with the right name, dates and
//! modes, read by Debian's openssl, kept when right, replaced when not, and never made
//! while the clock says 1970.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use letterbox::mail::tls::{ensure_self_signed, Replaced, TlsError, TlsFiles};

const FQDN: &str = "mail.example.org";
/// 2026-12-01T12:00:00Z, after the trusted-time floor.
const NOW: u64 = 1_796_126_400;
const DAY: u64 = 86_400;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn make(dir: &Path, fqdn: &str, now: u64) -> TlsFiles {
    ensure_self_signed(dir, &[fqdn.to_string()], at(now)).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn read_pair(files: &TlsFiles) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(&files.cert_path).unwrap(),
        std::fs::read(&files.key_path).unwrap(),
    )
}

fn openssl_text(cert: &Path) -> String {
    common::run(&[
        "openssl",
        "x509",
        "-noout",
        "-text",
        "-in",
        cert.to_str().unwrap(),
    ])
}

/// A certificate for FQDN signed by the key already in `dir`, with the dates given: what
/// this code never makes, written over its certificate.
fn write_cert_with_dates(files: &TlsFiles, not_before: i64, not_after: i64) {
    let key_pem = std::fs::read_to_string(&files.key_path).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![FQDN.to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(&files.cert_path, cert.pem()).unwrap();
}

#[test]
fn makes_a_p256_key_and_a_certificate_for_the_name_mode_0600_that_openssl_verifies() {
    let test = "makes_a_p256_key_and_a_certificate_for_the_name_mode_0600_that_openssl_verifies";
    if !common::installed(test, "openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let files = make(&dir, FQDN, NOW);
    assert_eq!(files.replaced, Some(Replaced::Missing));
    assert_eq!(files.cert_path, dir.join("cert.pem"));
    assert_eq!(files.key_path, dir.join("key.pem"));
    assert_eq!(mode(&files.key_path), 0o600);
    assert_eq!(mode(&files.cert_path), 0o600);
    assert_eq!(mode(&dir), 0o700);

    let text = openssl_text(&files.cert_path);
    for expected in [
        "DNS:mail.example.org",
        "Subject: CN = mail.example.org",
        "Public Key Algorithm: id-ecPublicKey",
        "NIST CURVE: P-256",
        "Signature Algorithm: ecdsa-with-SHA256",
        "TLS Web Server Authentication",
        // Backdated an hour; 824 days, within Apple's limit of 825.
        "Not Before: Dec  1 11:00:00 2026 GMT",
        "Not After : Mar  4 11:00:00 2029 GMT",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    // The key is the certificate's, and OpenSSL accepts the pair for a TLS server of that
    // name at that time (as Postfix and Dovecot will).
    let key = files.key_path.to_str().unwrap();
    let cert = files.cert_path.to_str().unwrap();
    assert_eq!(
        common::run(&["openssl", "pkey", "-pubout", "-in", key]),
        common::run(&["openssl", "x509", "-pubkey", "-noout", "-in", cert])
    );
    let attime = (NOW + DAY).to_string();
    let verified = common::run(&[
        "openssl",
        "verify",
        "-CAfile",
        cert,
        "-purpose",
        "sslserver",
        "-verify_hostname",
        FQDN,
        "-attime",
        &attime,
        cert,
    ]);
    assert_eq!(verified.trim(), format!("{cert}: OK"));
}

#[test]
fn a_second_call_keeps_the_same_files_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let first = make(tmp.path(), FQDN, NOW);
    let before = read_pair(&first);
    // A month before the end of its 824 days: still kept.
    let second = make(tmp.path(), "MAIL.example.org", NOW + 793 * DAY);
    assert_eq!(second.replaced, None);
    assert_eq!(read_pair(&second), before);
}

#[test]
fn a_certificate_for_another_name_is_replaced() {
    if !common::installed("a_certificate_for_another_name_is_replaced", "openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let old = read_pair(&make(tmp.path(), "other.example.org", NOW));
    let files = make(tmp.path(), FQDN, NOW);
    assert_eq!(
        files.replaced,
        Some(Replaced::OtherName {
            found: vec!["other.example.org".into()],
            missing: vec![FQDN.into()]
        })
    );
    let (cert, key) = read_pair(&files);
    assert_ne!(cert, old.0);
    assert_ne!(key, old.1, "a new name gets a new key");
    let text = openssl_text(&files.cert_path);
    assert!(text.contains("DNS:mail.example.org"), "{text}");
    assert!(!text.contains("other.example.org"), "{text}");
}

#[test]
fn a_corrupt_certificate_or_a_key_that_is_not_its_own_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make(tmp.path(), FQDN, NOW);
    std::fs::write(&files.cert_path, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let again = make(tmp.path(), FQDN, NOW);
    assert!(
        matches!(&again.replaced, Some(Replaced::Unreadable(why)) if why.contains("cert.pem")),
        "{:?}",
        again.replaced
    );
    assert_eq!(mode(&again.cert_path), 0o600);

    let other = tempfile::tempdir().unwrap();
    let other_key = std::fs::read(make(other.path(), FQDN, NOW).key_path).unwrap();
    std::fs::write(&files.key_path, other_key).unwrap();
    assert_eq!(
        make(tmp.path(), FQDN, NOW).replaced,
        Some(Replaced::KeyMismatch)
    );
    // The pair written then is whole again.
    assert_eq!(make(tmp.path(), FQDN, NOW).replaced, None);
}

#[test]
fn an_expiring_or_expired_certificate_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let first = read_pair(&make(tmp.path(), FQDN, NOW));
    // 29 days before it expires.
    let renewed = make(tmp.path(), FQDN, NOW + 795 * DAY);
    assert!(
        matches!(renewed.replaced, Some(Replaced::ExpiresSoon { .. })),
        "{:?}",
        renewed.replaced
    );
    assert_ne!(read_pair(&renewed), first);

    let expired = make(tmp.path(), FQDN, NOW + 795 * DAY + 2000 * DAY);
    assert!(
        matches!(expired.replaced, Some(Replaced::ExpiresSoon { .. })),
        "{:?}",
        expired.replaced
    );
}

#[test]
fn a_certificate_made_while_the_clock_was_wrong_or_not_yet_valid_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make(tmp.path(), FQDN, NOW);
    // Made in 1970, valid until 2100: its dates are what a wrong clock gives.
    write_cert_with_dates(&files, 0, 4_102_444_800);
    assert!(
        matches!(
            make(tmp.path(), FQDN, NOW).replaced,
            Some(Replaced::MadeWithWrongClock { .. })
        ),
        "kept a certificate made in 1970"
    );
    // Made by a clock that ran ahead.
    write_cert_with_dates(&files, (NOW + 10 * DAY) as i64, (NOW + 400 * DAY) as i64);
    assert!(matches!(
        make(tmp.path(), FQDN, NOW).replaced,
        Some(Replaced::NotYetValid { .. })
    ));
}

#[test]
fn nothing_is_made_while_the_clock_says_1970() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let err = ensure_self_signed(&dir, &[FQDN.to_string()], at(60)).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::ClockNotTrusted {
                reason: Replaced::Missing,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cannot be trusted"), "{err}");
    assert!(!dir.exists(), "made {} anyway", dir.display());
}

#[test]
fn a_good_pair_is_kept_while_the_clock_says_1970_and_a_wrong_one_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let before = read_pair(&make(tmp.path(), FQDN, NOW));
    let kept = ensure_self_signed(tmp.path(), &[FQDN.to_string()], at(60)).unwrap();
    assert_eq!(kept.replaced, None);
    assert_eq!(read_pair(&kept), before);

    let err =
        ensure_self_signed(tmp.path(), &["other.example.org".to_string()], at(60)).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::ClockNotTrusted {
                reason: Replaced::OtherName { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(read_pair(&kept), before);
}
