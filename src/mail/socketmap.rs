//! The front's routing tables, answered live: Postfix's `socketmap` protocol
//! (socketmap_table(5)), served by the agent from the mail plan in force, so that an
//! account added or deleted is routed, or refused, at once, with no `postfix reload` and
//! no moment when mail is refused.
//!
//! Each request and reply is one netstring (`LEN:DATA,`). A request is `MAP KEY`; a reply
//! `OK VALUE`, `NOTFOUND `, or `PERM reason` for a request that makes no sense. Hand-written:
//! the protocol is these few lines, and no maintained crate serves it.

use super::{MailPlan, LMTP_PORT};

/// The maps Postfix asks (main.cf names them).
pub const DOMAINS: &str = "domains";
pub const TRANSPORT: &str = "transport";
pub const RECIPIENTS: &str = "recipients";
/// An account's address → the logins that may send as it (smtpd_sender_login_maps): the
/// address and the short name, as Dovecot passes either login back after lowering it.
pub const SENDER_LOGINS: &str = "sender_logins";
/// An account's address → the refusal of a client that has not logged in and sends as
/// it (port 25's check_sender_access): no box, no stranger, may pass for an account.
pub const ACCOUNT_SENDERS: &str = "account_senders";

/// The longest request accepted: a map name, a space and an address (RFC 5321 caps a path
/// at 256 octets), with room to spare.
pub const MAX_REQUEST: usize = 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetstringError {
    #[error("a netstring's length is not a decimal number")]
    BadLength,
    #[error("a request of more than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("a netstring does not end with a comma")]
    NoComma,
}

/// Takes one netstring off the front of `buffer`: its data, or None while it is incomplete.
pub fn take_netstring(buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>, NetstringError> {
    let Some(colon) = buffer.iter().position(|b| *b == b':') else {
        return if buffer.len() > 6 || !buffer.iter().all(u8::is_ascii_digit) {
            Err(NetstringError::BadLength)
        } else {
            Ok(None)
        };
    };
    let digits = &buffer[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(NetstringError::BadLength);
    }
    let length: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(NetstringError::BadLength)?;
    if length > MAX_REQUEST {
        return Err(NetstringError::TooLong);
    }
    let end = colon + 1 + length;
    if buffer.len() <= end {
        return Ok(None);
    }
    if buffer[end] != b',' {
        return Err(NetstringError::NoComma);
    }
    let data = buffer[colon + 1..end].to_vec();
    buffer.drain(..=end);
    Ok(Some(data))
}

/// `data` as a netstring.
pub fn netstring(data: &str) -> Vec<u8> {
    format!("{}:{data},", data.len()).into_bytes()
}

/// The reply to one request, from `plan` (None: no valid configuration, so nothing is
/// ours).
pub fn answer(plan: Option<&MailPlan>, request: &[u8]) -> String {
    let Some((map, key)) = std::str::from_utf8(request)
        .ok()
        .and_then(|r| r.split_once(' '))
    else {
        return "PERM a request is MAP KEY".into();
    };
    let key = key.to_ascii_lowercase();
    let boxes = plan.map(|p| p.boxes.as_slice()).unwrap_or_default();
    let found = match map {
        // The bare domain is ours too (it is the MX's), though no box's: its addresses are
        // refused as unknown recipients (550 5.1.1), not as relaying (554 5.7.1).
        DOMAINS => (plan.is_some_and(|p| p.domain == key)
            || boxes.iter().any(|b| b.mail_domain == key))
        .then(|| key.clone()),
        // Postfix asks a socketmap with the whole address only (it makes no partial keys
        // for it, as for regexp tables): the route is the domain's.
        TRANSPORT => boxes
            .iter()
            .find(|b| b.mail_domain == key.rsplit('@').next().unwrap_or(&key))
            .map(|b| format!("lmtp:inet:[{}]:{LMTP_PORT}", b.ipv4)),
        RECIPIENTS => boxes.iter().any(|b| b.address == key).then(|| "ok".into()),
        // Whole addresses only: Postfix also asks the domain and `box@` of the sender,
        // which own nothing.
        SENDER_LOGINS => boxes
            .iter()
            .find(|b| b.address == key)
            .map(|b| format!("{} {}", b.address, b.name)),
        ACCOUNT_SENDERS => boxes.iter().any(|b| b.address == key).then(|| {
            "REJECT 5.7.1 this is an account's address: send through submission \
             (port 587 or 465) with its login"
                .into()
        }),
        other => return format!("PERM no map {other:?}"),
    };
    match found {
        Some(value) => format!("OK {value}"),
        None => "NOTFOUND ".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::BoxPlan;

    fn plan() -> MailPlan {
        MailPlan {
            hostname: "mail.example.org".into(),
            domain: "example.org".into(),
            certificate_names: vec!["mail.example.org".into()],
            front_ipv4: "10.88.0.1".parse().unwrap(),
            ipv6: false,
            boxes: vec![BoxPlan {
                name: "alice".into(),
                mail_domain: "alice.example.org".into(),
                address: "box@alice.example.org".into(),
                ipv4: "10.88.0.7".parse().unwrap(),
                ipv6: None,
                id: 20_005,
                password_hash: "$6$x$y".into(),
            }],
            relayhost: None,
            nameservers: Vec::new(),
        }
    }

    #[test]
    fn each_map_answers_for_the_accounts_of_the_plan_only() {
        let plan = plan();
        let ask = |request: &str| answer(Some(&plan), request.as_bytes());
        assert_eq!(ask("domains alice.example.org"), "OK alice.example.org");
        assert_eq!(ask("domains Alice.Example.ORG"), "OK alice.example.org");
        assert_eq!(ask("domains bob.example.org"), "NOTFOUND ");
        assert_eq!(ask("domains example.org"), "OK example.org");
        assert_eq!(ask("domains other.example"), "NOTFOUND ");
        assert_eq!(ask("recipients postmaster@example.org"), "NOTFOUND ");
        assert_eq!(
            ask("transport alice.example.org"),
            "OK lmtp:inet:[10.88.0.7]:24"
        );
        assert_eq!(
            ask("transport box@alice.example.org"),
            "OK lmtp:inet:[10.88.0.7]:24"
        );
        assert_eq!(
            ask("transport other@alice.example.org"),
            "OK lmtp:inet:[10.88.0.7]:24",
            "routed, then refused by recipients"
        );
        assert_eq!(ask("transport box@bob.example.org"), "NOTFOUND ");
        assert_eq!(ask("recipients box@alice.example.org"), "OK ok");
        assert_eq!(ask("recipients other@alice.example.org"), "NOTFOUND ");
        assert_eq!(ask("recipients @alice.example.org"), "NOTFOUND ");
        assert_eq!(
            ask("sender_logins Box@Alice.example.org"),
            "OK box@alice.example.org alice"
        );
        for not_an_owner in ["alice.example.org", "box@", "box@bob.example.org", "alice"] {
            assert_eq!(ask(&format!("sender_logins {not_an_owner}")), "NOTFOUND ");
            assert_eq!(ask(&format!("account_senders {not_an_owner}")), "NOTFOUND ");
        }
        assert!(ask("account_senders box@alice.example.org").starts_with("OK REJECT 5.7.1 "));
        assert!(ask("aliases x").starts_with("PERM"));
        assert!(ask("nospace").starts_with("PERM"));
        assert_eq!(
            answer(None, b"domains alice.example.org"),
            "NOTFOUND ",
            "with no configuration nothing is ours"
        );
    }

    #[test]
    fn netstrings_are_taken_whole_one_at_a_time() {
        let mut buffer = b"7:domains,3:a b,1".to_vec();
        assert_eq!(take_netstring(&mut buffer), Ok(Some(b"domains".to_vec())));
        assert_eq!(take_netstring(&mut buffer), Ok(Some(b"a b".to_vec())));
        assert_eq!(take_netstring(&mut buffer), Ok(None), "incomplete");
        buffer.extend_from_slice(b":x,");
        assert_eq!(take_netstring(&mut buffer), Ok(Some(b"x".to_vec())));
        assert!(buffer.is_empty());
        assert_eq!(netstring("OK ok"), b"5:OK ok,");

        for (bad, error) in [
            (&b"x:abc,"[..], NetstringError::BadLength),
            (b"3:abc;", NetstringError::NoComma),
            (b"99999:", NetstringError::TooLong),
            (b"1234567", NetstringError::BadLength),
        ] {
            assert_eq!(take_netstring(&mut bad.to_vec()), Err(error), "{bad:?}");
        }
    }
}
