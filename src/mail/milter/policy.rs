//! What the milter does with a message at its end: mail from a trusted client (one that
//! logged in, or this machine itself) whose From: is our domain is signed with both DKIM
//! keys; any other mail is checked (SPF for the HELO name and MAIL FROM, DKIM, ARC and
//! DMARC), gets one `Authentication-Results:` header under our host name (any such header
//! already there in our name is forged and removed), and is refused when it fails DMARC
//! under its domain's `p=reject`.
//!
//! A DNS failure never loses mail: the check records `temperror` and the message is
//! accepted (DMARC never rejects on a temporary error), so an outage of the resolver does
//! not defer every message from outside.

use std::net::IpAddr;
use std::sync::Mutex;

use mail_auth::common::crypto::{Ed25519Key, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, NeedHeaders};
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    Parameters, RecordSet, SpfResult, Txt, MX,
};

use super::keys::{RingRsaKey, SigningKeys};
use super::own_zone::{Answers, NoPtr, OwnZone};
use super::session::{Action, Message, Verdict};

const AUTH_RESULTS: &str = "Authentication-Results";
const DKIM_SIGNATURE: &str = "DKIM-Signature";

/// The headers signed: those that say who sent what, when, and how it is encoded.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Who we are: the host name that signs the results, the domain that signs mail.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `<hostname>.<domain>`, lowercase.
    pub hostname: String,
    pub domain: String,
}

impl Identity {
    /// Whether mail from `domain` (lowercase) is ours to sign: the domain or one of its
    /// accounts' (`<name>.<domain>`).
    fn is_ours(&self, domain: &str) -> bool {
        domain == self.domain || domain.ends_with(&format!(".{}", self.domain))
    }

    /// The account address of a login (lowercase, as Dovecot passes it): the address
    /// itself, or `box@<name>.<domain>` for the short name.
    fn account_address(&self, login: &str) -> String {
        let login = login.to_ascii_lowercase();
        if login.contains('@') {
            login
        } else {
            format!("box@{login}.{}", self.domain)
        }
    }
}

/// The two signers, relaxed/relaxed. Each signs for the domain of the message's From:
/// (our DMARC policy asks for strict alignment): the domain is set in the signer's
/// template under its lock, as the signer owns its key.
pub struct Signers {
    ed25519: Mutex<DkimSigner<Ed25519Key, Done>>,
    rsa: Mutex<DkimSigner<RingRsaKey, Done>>,
}

impl Signers {
    pub fn new(keys: SigningKeys, domain: &str) -> Signers {
        let (ed_selector, ed_key) = keys.ed25519;
        let (rsa_selector, rsa_key) = keys.rsa;
        Signers {
            ed25519: Mutex::new(relaxed(
                DkimSigner::from_key(ed_key)
                    .domain(domain)
                    .selector(ed_selector),
            )),
            rsa: Mutex::new(relaxed(
                DkimSigner::from_key(rsa_key)
                    .domain(domain)
                    .selector(rsa_selector),
            )),
        }
    }

    /// The two signatures' values, Ed25519 first (verifiers that know it meet it first).
    fn sign(&self, domain: &str, raw: &[u8]) -> Vec<String> {
        let ed25519 = sign_as(&self.ed25519, domain, raw);
        let rsa = sign_as(&self.rsa, domain, raw);
        let mut values = Vec::new();
        for signature in [ed25519, rsa] {
            match signature {
                // As a header (its Display is the relaxed form it was signed in), less
                // the name and the line end; and without a fold between b='s value and
                // its ';' (whitespace the tag's value may hold, but python3-dkim counts
                // it as the header's, and then fails the signature).
                Ok(s) => values.push(
                    s.to_header()
                        .trim_start_matches("DKIM-Signature:")
                        .trim()
                        .replace("\r\n\t;", ";"),
                ),
                Err(e) => log::warn!("DKIM: cannot sign a message for {domain}: {e}"),
            }
        }
        values
    }
}

fn sign_as<T: SigningKey>(
    signer: &Mutex<DkimSigner<T, Done>>,
    domain: &str,
    raw: &[u8],
) -> mail_auth::Result<mail_auth::dkim::Signature> {
    let mut signer = signer.lock().unwrap_or_else(|p| p.into_inner());
    signer.template.d = domain.to_string();
    signer.sign(raw)
}

fn relaxed<T: SigningKey>(signer: DkimSigner<T, NeedHeaders>) -> DkimSigner<T, Done> {
    signer
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// Whether `message` comes from a client we trust: one that logged in, or this machine
/// (the welcome mail, local submission).
fn is_trusted(message: &Message) -> bool {
    message.login.is_some() || message.client.is_none_or(|ip| ip.is_loopback())
}

/// The verdict on `message`. `signers` is `None` until the clock can be trusted and the
/// keys exist: trusted mail then goes out unsigned.
pub async fn judge(
    me: &Identity,
    resolver: &MessageAuthenticator,
    zone: &OwnZone,
    signers: Option<&Signers>,
    message: &Message,
) -> Verdict {
    let raw = message.raw();
    let parsed = AuthenticatedMessage::parse(&raw);
    let mut verdict = match message.client {
        Some(ip) if !is_trusted(message) => check(me, resolver, zone, message, parsed, ip).await,
        _ => sign(me, signers, message, parsed.as_ref(), &raw),
    };
    // Only we write results in our name, whoever sent the message.
    verdict.remove = forged_results(me, message);
    verdict
}

fn sign(
    me: &Identity,
    signers: Option<&Signers>,
    message: &Message,
    parsed: Option<&AuthenticatedMessage<'_>>,
    raw: &[u8],
) -> Verdict {
    let from = parsed
        .and_then(|m| m.from.first())
        .map(|from| from.to_ascii_lowercase());
    if let Some(login) = &message.login {
        // A login sends as its own account only: Postfix holds the envelope sender to
        // it (but lets the null sender through), the From: is held here.
        let own = me.account_address(login);
        if message.sender.is_empty() || from.as_deref() != Some(own.as_str()) {
            return Verdict {
                action: Action::Reject(format!(
                    "553 5.7.1 {login} sends as {own} only, in MAIL FROM and From:"
                )),
                ..Verdict::default()
            };
        }
    }
    let from_domain = from
        .as_deref()
        .and_then(|from| from.rsplit_once('@'))
        .map(|(_, domain)| domain.to_string())
        .filter(|domain| me.is_ours(domain));
    let mut verdict = Verdict::default();
    if let (Some(signers), Some(domain)) = (signers, from_domain) {
        for value in signers.sign(&domain, raw) {
            verdict.insert.push((DKIM_SIGNATURE.into(), value));
        }
    }
    verdict
}

async fn check(
    me: &Identity,
    resolver: &MessageAuthenticator,
    zone: &OwnZone,
    message: &Message,
    parsed: Option<AuthenticatedMessage<'_>>,
    ip: IpAddr,
) -> Verdict {
    let mut verdict = Verdict::default();
    let helo = message.helo.as_str();
    let sender = message.sender.as_str();
    let spf_helo = resolver
        .verify_spf(in_zone(
            zone,
            SpfParameters::verify_ehlo(ip, helo, &me.hostname),
        ))
        .await;
    let spf_mail = match sender.is_empty() {
        true => spf_helo.clone(),
        false => {
            resolver
                .verify_spf(in_zone(
                    zone,
                    SpfParameters::verify_mail_from(ip, helo, &me.hostname, sender),
                ))
                .await
        }
    };
    let results = AuthenticationResults::new(&me.hostname);
    let Some(parsed) = parsed else {
        let results = results
            .with_spf_ehlo_result(&spf_helo, ip, helo)
            .with_spf_mailfrom_result(&spf_mail, ip, sender, helo);
        verdict
            .insert
            .push((AUTH_RESULTS.into(), results.to_string()));
        return verdict;
    };
    let dkim = resolver.verify_dkim(in_zone(zone, &parsed)).await;
    let arc = resolver.verify_arc(in_zone(zone, &parsed)).await;
    let mail_from_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d);
    let dmarc = resolver
        .verify_dmarc(in_zone(
            zone,
            DmarcParameters::new(&parsed, &dkim, mail_from_domain, &spf_mail),
        ))
        .await;
    let from = parsed.from.first().map(String::as_str).unwrap_or_default();
    let results = results
        .with_dkim_results(&dkim, from)
        .with_spf_ehlo_result(&spf_helo, ip, helo)
        .with_spf_mailfrom_result(&spf_mail, ip, sender, helo)
        .with_arc_result(&arc, ip)
        .with_dmarc_result(&dmarc);
    verdict
        .insert
        .push((AUTH_RESULTS.into(), results.to_string()));
    let failed = |r: &DmarcResult| !matches!(r, DmarcResult::Pass | DmarcResult::TempError(_));
    // A temporary failure of a check that could have aligned might have passed: no refusal
    // on it (the header says temperror).
    let author = dmarc.domain();
    let unsure = (matches!(spf_mail.result(), SpfResult::TempError)
        && could_align(mail_from_domain, author))
        || dkim.iter().any(|o| {
            matches!(o.result(), DkimResult::TempError(_))
                && o.signature().is_some_and(|s| could_align(&s.d, author))
        });
    if dmarc.policy() == Policy::Reject
        && !unsure
        && failed(dmarc.dkim_result())
        && failed(dmarc.spf_result())
    {
        verdict.action = Action::Reject(format!(
            "550 5.7.1 DMARC policy of {} rejects this message (no aligned SPF or DKIM pass)",
            dmarc.domain()
        ));
    }
    verdict
}

/// Whether `domain` could align with the author's: the same, or one within the other.
fn could_align(domain: &str, author: &str) -> bool {
    let (domain, author) = (domain.to_ascii_lowercase(), author.to_ascii_lowercase());
    domain == author
        || domain.ends_with(&format!(".{author}"))
        || author.ends_with(&format!(".{domain}"))
}

/// Every `Authentication-Results:` header that claims our host name: only we may write
/// one, so any that came with the message is forged.
fn forged_results(me: &Identity, message: &Message) -> Vec<(String, u32)> {
    let mut index = 0;
    let mut forged = Vec::new();
    for (name, value) in &message.headers {
        if !name.eq_ignore_ascii_case(AUTH_RESULTS) {
            continue;
        }
        index += 1;
        let value = String::from_utf8_lossy(value);
        // The authserv-id is the first word: a version or a comment may follow it.
        let authserv_id = value
            .split([';', '(', ' ', '\t', '\r', '\n'])
            .find(|word| !word.is_empty())
            .unwrap_or_default();
        if authserv_id.eq_ignore_ascii_case(&me.hostname) {
            forged.push((name.clone(), index));
        }
    }
    // Last first: Postfix counts the headers still there, so each removal renumbers those
    // after it.
    forged.reverse();
    forged
}

type InZone<'x, P> = Parameters<
    'x,
    P,
    Answers<Txt>,
    Answers<RecordSet<MX>>,
    Answers<RecordSet<std::net::Ipv4Addr>>,
    Answers<RecordSet<std::net::Ipv6Addr>>,
    NoPtr,
>;

/// `params` with our zone answering for its own names.
fn in_zone<P>(zone: &OwnZone, params: P) -> InZone<'_, P> {
    Parameters::new(params)
        .with_txt_cache(&zone.txt)
        .with_mx_cache(&zone.mx)
        .with_ipv4_cache(&zone.ipv4)
        .with_ipv6_cache(&zone.ipv6)
        .with_ptr_cache(&NoPtr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            hostname: "mail.example.org".into(),
            domain: "example.org".into(),
        }
    }

    #[test]
    fn only_results_in_our_name_are_taken_as_forged_counted_by_name() {
        let message = Message {
            headers: vec![
                (
                    "Authentication-Results".into(),
                    b" other.example.net; dkim=pass".to_vec(),
                ),
                ("Subject".into(), b" hi".to_vec()),
                (
                    "authentication-results".into(),
                    b" MAIL.example.org;\n\tdkim=pass".to_vec(),
                ),
            ],
            ..Message::default()
        };
        assert_eq!(
            forged_results(&me(), &message),
            [("authentication-results".to_string(), 2)]
        );
    }

    #[test]
    fn every_forged_result_is_removed_last_first_with_a_version_or_comment_after_our_name() {
        let header = |v: &[u8]| ("Authentication-Results".to_string(), v.to_vec());
        let message = Message {
            headers: vec![
                header(b" mail.example.org; dkim=pass"),
                header(b" mail.example.org 1; dmarc=pass"),
                header(b" mail.example.org (trust me); spf=pass"),
            ],
            ..Message::default()
        };
        let removed: Vec<u32> = forged_results(&me(), &message)
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        assert_eq!(removed, [3, 2, 1]);
    }

    #[test]
    fn a_login_sends_as_its_own_account_only() {
        let me = me();
        let from = |address: &str| Message {
            client: Some("192.0.2.20".parse().unwrap()),
            sender: "box@alice.example.org".into(),
            login: Some("alice".into()),
            headers: vec![
                ("From".into(), format!(" <{address}>").into_bytes()),
                ("Subject".into(), b" hi".to_vec()),
            ],
            body: b"hello\r\n".to_vec(),
            ..Message::default()
        };
        let verdict = |m: &Message| {
            let raw = m.raw();
            let parsed = AuthenticatedMessage::parse(&raw);
            sign(&me, None, m, parsed.as_ref(), &raw).action
        };
        assert_eq!(verdict(&from("box@alice.example.org")), Action::Accept);
        for other in ["box@bob.example.org", "postmaster@example.org"] {
            assert!(
                matches!(verdict(&from(other)), Action::Reject(r) if r.starts_with("553 5.7.1")),
                "{other}"
            );
        }
        let null_sender = Message {
            sender: String::new(),
            ..from("box@alice.example.org")
        };
        assert!(matches!(verdict(&null_sender), Action::Reject(_)));
    }

    #[test]
    fn our_domain_and_its_accounts_are_ours_to_sign_and_nothing_else() {
        let me = me();
        assert!(me.is_ours("example.org"));
        assert!(me.is_ours("alice.example.org"));
        assert!(!me.is_ours("badexample.org"));
        assert!(!me.is_ours("example.org.evil.net"));
    }

    #[test]
    fn trusted_clients_are_logged_in_or_this_machine() {
        let outside = Message {
            client: Some("192.0.2.20".parse().unwrap()),
            ..Message::default()
        };
        assert!(!is_trusted(&outside));
        let logged_in = Message {
            login: Some("alice".into()),
            ..outside.clone()
        };
        assert!(is_trusted(&logged_in));
        let local = Message {
            client: Some("127.0.0.1".parse().unwrap()),
            ..Message::default()
        };
        assert!(is_trusted(&local));
        assert!(is_trusted(&Message::default()), "a non-SMTP submission");
    }
}
