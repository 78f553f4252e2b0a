//! The welcome mail a new account receives: how to connect a mail client to its box; and
//! `status`'s probe mail. Built with lettre, and handed over plain SMTP to the front's
//! Postfix on the appliance itself, which delivers them like any other mail (so they also
//! show that delivery works).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::plan::{BoxPlan, MailPlan};

/// For the whole exchange, connection included: the front is on the same host, so one
/// slower than this means it is not serving. (lettre's own timeout covers the connection
/// only.)
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WelcomeError {
    #[error("{address:?} is not a mail address")]
    Address {
        address: String,
        source: lettre::address::AddressError,
    },
    #[error("building the mail to {to}")]
    Build {
        to: String,
        source: lettre::error::Error,
    },
    #[error("sending mail to {to} through {server}: no answer within {SEND_TIMEOUT:?}")]
    Timeout { to: String, server: SocketAddr },
    #[error("sending mail to {to} through {server}")]
    Send {
        to: String,
        server: SocketAddr,
        source: lettre::transport::smtp::Error,
    },
}

/// The welcome mail of `account`: from `postmaster@<domain>`, dated `now`, with a
/// Message-ID made of the account, the time and the host, so that the same account and
/// time give the same bytes.
pub fn welcome_message(
    plan: &MailPlan,
    account: &BoxPlan,
    now: SystemTime,
) -> Result<Message, WelcomeError> {
    let from = mailbox(&format!("postmaster@{}", plan.domain))?;
    let to = mailbox(&account.address)?;
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let host = &plan.hostname;
    Message::builder()
        .from(from)
        .to(to)
        .subject(format!("Welcome to {host}"))
        .date(now)
        .message_id(Some(format!("<welcome.{}.{seconds}@{host}>", account.name)))
        .header(ContentType::TEXT_PLAIN)
        // Lines under 76 characters, so that lettre sends it as 7bit, readable as it is
        // (it would choose quoted-printable for a longer line, or a trailing space).
        .body(body(plan, account))
        .map_err(|source| WelcomeError::Build {
            to: account.address.clone(),
            source,
        })
}

/// `status`'s probe to `account`, with Message-ID `<ID@HOST>`: found in the box by that
/// ID, then removed.
pub fn probe_message(
    plan: &MailPlan,
    account: &BoxPlan,
    id: &str,
    now: SystemTime,
) -> Result<Message, WelcomeError> {
    Message::builder()
        .from(mailbox(&format!("postmaster@{}", plan.domain))?)
        .to(mailbox(&account.address)?)
        .subject("letterbox status probe")
        .date(now)
        .message_id(Some(format!("<{id}@{}>", plan.hostname)))
        .header(ContentType::TEXT_PLAIN)
        .body("A probe of `status`: it is removed as soon as it has arrived.\n".to_string())
        .map_err(|source| WelcomeError::Build {
            to: account.address.clone(),
            source,
        })
}

fn mailbox(address: &str) -> Result<Mailbox, WelcomeError> {
    let parsed = address
        .parse::<Address>()
        .map_err(|source| WelcomeError::Address {
            address: address.to_string(),
            source,
        })?;
    Ok(Mailbox::new(None, parsed))
}

fn body(plan: &MailPlan, account: &BoxPlan) -> String {
    let host = &plan.hostname;
    let (name, address) = (&account.name, &account.address);
    format!(
        "Hello {name},

your mailbox {address} is ready:
mail sent to that address arrives here.

To read it, add an IMAP account to your mail client:

  Server:     {host}
  User name:  {name} (or {address})
  Password:   the one you chose for {name}
  Port:       993 with SSL/TLS, or 143 with STARTTLS

The server's certificate is self-signed, so the first time your mail
client connects, it warns that it cannot verify it. Check that the
server name is {host}, then accept the certificate
permanently. Should the warning come back later without a change on
the server, do not accept it.

letterbox, the mail server of {host}
"
    )
}

/// Hands `message` to the SMTP server `server` (the front's Postfix, `127.0.0.1:25`) over
/// plain SMTP: a connection to the host itself, which nobody else can see.
pub async fn send(message: Message, server: SocketAddr) -> Result<(), WelcomeError> {
    let to = message
        .envelope()
        .to()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.ip().to_string())
            .port(server.port())
            .timeout(Some(SEND_TIMEOUT))
            .build();
    match tokio::time::timeout(SEND_TIMEOUT, transport.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(WelcomeError::Send { to, server, source }),
        Err(_) => Err(WelcomeError::Timeout { to, server }),
    }
}
