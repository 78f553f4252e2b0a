//! The pair's keeping and remaking, by name, issuer and date.

use super::*;

const FQDN: &str = "mail.example.org";

fn days_after_floor(days: i64) -> OffsetDateTime {
    earliest_trusted_time() + Duration::days(days)
}

/// A key and a certificate for FQDN from `not_before` to `not_after`, signed by a CA's
/// own key, written to `dir` as an ACME order leaves them.
fn write_ca_issued(dir: &Path, not_before: OffsetDateTime, not_after: OffsetDateTime) {
    write_ca_issued_for(dir, &[FQDN], not_before, not_after);
}

/// A CA-issued pair for `names`, written to `dir`.
fn write_ca_issued_for(
    dir: &Path,
    names: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "letterbox test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(names).unwrap();
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf = leaf.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(CERT_FILE), leaf.pem() + &ca.as_ref().pem()).unwrap();
}

fn pair(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join(CERT_FILE)).unwrap(),
        std::fs::read(dir.join(KEY_FILE)).unwrap(),
    )
}

#[test]
fn a_ca_issued_certificate_in_its_renewal_window_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = days_after_floor(100);
    write_ca_issued(
        dir.path(),
        now - Duration::days(80),
        now + Duration::days(10),
    );
    let before = pair(dir.path());
    let files = ensure_self_signed(dir.path(), &[FQDN.to_string()], now.into()).unwrap();
    assert_eq!(files.replaced, None);
    assert_eq!(pair(dir.path()), before, "the CA's pair was rewritten");
    // It is still the ACME unit's to renew, and due.
    let due = acme_renewal_due(dir.path(), &[FQDN.to_string()]).expect("a CA-issued pair");
    assert!(due < now, "renewal due at {due}, not yet at {now}");
}

#[test]
fn an_expired_ca_issued_certificate_is_replaced_by_a_self_signed_one() {
    let dir = tempfile::tempdir().unwrap();
    let now = days_after_floor(100);
    write_ca_issued(
        dir.path(),
        now - Duration::days(91),
        now - Duration::days(1),
    );
    let files = ensure_self_signed(dir.path(), &[FQDN.to_string()], now.into()).unwrap();
    assert!(
        matches!(files.replaced, Some(Replaced::Expired { .. })),
        "{:?}",
        files.replaced
    );
    let validity = certificate_validity(dir.path(), &[FQDN.to_string()]).unwrap();
    assert!(validity.self_signed && validity.not_after > now);
    // A self-signed pair is no renewal's: the ACME unit orders at once.
    assert_eq!(acme_renewal_due(dir.path(), &[FQDN.to_string()]), None);
}

#[test]
fn a_self_signed_certificate_is_still_remade_30_days_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let made = days_after_floor(1);
    ensure_self_signed(dir.path(), &[FQDN.to_string()], made.into()).unwrap();
    let near_end = made + LIFETIME - Duration::days(29);
    let files = ensure_self_signed(dir.path(), &[FQDN.to_string()], near_end.into()).unwrap();
    assert!(
        matches!(files.replaced, Some(Replaced::ExpiresSoon { .. })),
        "{:?}",
        files.replaced
    );
}

/// The DNS names of the certificate in `dir`.
fn certificate_names(dir: &Path) -> Vec<String> {
    let pem = std::fs::read(dir.join(CERT_FILE)).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_self_signed_pair_lacking_a_wanted_name_is_remade_with_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let now = days_after_floor(1);
    let host_only = ["mx.example.org".to_string()];
    let all = ["mx.example.org", "example.org", "mail.example.org"].map(String::from);
    ensure_self_signed(dir.path(), &host_only, now.into()).unwrap();
    assert_eq!(certificate_names(dir.path()), host_only);

    let files = ensure_self_signed(dir.path(), &all, now.into()).unwrap();
    assert_eq!(
        files.replaced,
        Some(Replaced::OtherName {
            found: host_only.to_vec(),
            missing: all[1..].to_vec(),
        })
    );
    assert_eq!(certificate_names(dir.path()), all);

    // Right as it is: kept, and kept too when fewer names are wanted (the webmail off).
    let made = pair(dir.path());
    for wanted in [&all[..], &host_only[..]] {
        let files = ensure_self_signed(dir.path(), wanted, now.into()).unwrap();
        assert_eq!(files.replaced, None, "{wanted:?}");
        assert_eq!(pair(dir.path()), made, "{wanted:?}");
    }
}

#[test]
fn a_ca_issued_pair_for_the_host_alone_is_kept_whatever_else_is_wanted() {
    let dir = tempfile::tempdir().unwrap();
    let now = days_after_floor(100);
    write_ca_issued(
        dir.path(),
        now - Duration::days(10),
        now + Duration::days(80),
    );
    let before = pair(dir.path());
    let all = [FQDN, "example.org"].map(String::from);
    let files = ensure_self_signed(dir.path(), &all, now.into()).unwrap();
    assert_eq!(files.replaced, None);
    assert_eq!(pair(dir.path()), before);
}

#[test]
fn no_name_is_an_error_not_a_nameless_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let made = ensure_self_signed(dir.path(), &[], days_after_floor(1).into());
    assert!(matches!(made, Err(TlsError::NoName)), "{made:?}");
    assert!(!dir.path().join(CERT_FILE).exists());
}

#[test]
fn renewal_is_30_days_before_expiry_or_a_third_of_a_shorter_lifetime() {
    let start = days_after_floor(0);
    let renewal_before_end = |lifetime: Duration| {
        let end = start + lifetime;
        end - renewal_date(start, end)
    };
    // Let's Encrypt's 90 days: 30 days before.
    assert_eq!(renewal_before_end(Duration::days(90)), Duration::days(30));
    // step-ca's default of a day, and 30 days: a third, never due at issue.
    assert_eq!(renewal_before_end(Duration::days(1)), Duration::hours(8));
    assert_eq!(renewal_before_end(Duration::days(30)), Duration::days(10));
    assert_eq!(
        renewal_before_end(Duration::days(30) + Duration::seconds(90)),
        Duration::days(10) + Duration::seconds(30)
    );
    // Dates the wrong way round: due at expiry, not before the start.
    assert_eq!(
        renewal_date(start, start - Duration::days(1)),
        start - Duration::days(1)
    );
}

#[test]
fn the_trusted_time_floor_is_november_2026() {
    let floor = earliest_trusted_time();
    assert_eq!(
        (floor.year(), floor.month(), floor.day(), floor.hour()),
        (2026, time::Month::November, 1, 0)
    );
}

#[test]
fn a_ca_issued_pair_lacking_a_webmail_name_serves_on_but_is_ordered_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = days_after_floor(100);
    let all = [FQDN, "example.org"].map(String::from);
    write_ca_issued(
        dir.path(),
        now - Duration::days(1),
        now + Duration::days(89),
    );
    let before = pair(dir.path());
    // Mail clients still get it: a restart keeps it.
    let files = ensure_self_signed(dir.path(), &all, now.into()).unwrap();
    assert_eq!(files.replaced, None);
    assert_eq!(pair(dir.path()), before);
    // But the ACME unit orders one for every name now, not at its renewal date.
    assert_eq!(acme_renewal_due(dir.path(), &all), None);
    assert!(acme_renewal_due(dir.path(), &all[..1]).is_some());

    // An issue for every name is installed; one lacking a name is refused, the pair kept.
    let (chain, key) = issued_for(&[FQDN], now);
    let refused = install_issued(dir.path(), &all, &chain, &key).unwrap_err();
    assert!(
        matches!(&refused, TlsError::BadIssue(Replaced::OtherName { missing, .. }) if missing == &all[1..]),
        "{refused:?}"
    );
    assert_eq!(pair(dir.path()), before);
    let (chain, key) = issued_for(&[FQDN, "example.org"], now);
    install_issued(dir.path(), &all, &chain, &key).unwrap();
    assert_eq!(certificate_names(dir.path()), all);
    assert!(acme_renewal_due(dir.path(), &all).is_some());
}

/// A CA-issued chain and key for `names`, valid around `now`, as an ACME order returns them.
fn issued_for(names: &[&str], now: OffsetDateTime) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    write_ca_issued_for(
        dir.path(),
        names,
        now - Duration::days(1),
        now + Duration::days(89),
    );
    let (chain, key) = pair(dir.path());
    (
        String::from_utf8(chain).unwrap(),
        String::from_utf8(key).unwrap(),
    )
}
