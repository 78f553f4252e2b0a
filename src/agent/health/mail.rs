//! The mail system's checks: the TLS certificate, an open-relay probe of port 25 as a
//! stranger, the queue, each box, and a probe mail through the MX into a box.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use time::OffsetDateTime;

use super::{Agent, Check};
use crate::config::Config;
use crate::mail::dovecot::BOX_IMAP_PORT;
use crate::mail::{maildir, tls, MailPlan};
use crate::supervise::UnitState;

/// A deferred message older than this makes the queue check warn.
const OLD_DEFERRED: Duration = Duration::from_secs(3600);
/// The probe mail must be in its box within this.
const PROBE_WITHIN: Duration = Duration::from_secs(10);
/// A check that talks to port 25 is given this long: a Postfix that accepts connections
/// but never greets (its smtpd failing to start) must make `status` fail, not hang.
const SMTP_WITHIN: Duration = Duration::from_secs(15);

pub async fn checks(agent: &Arc<Agent>, plan: &MailPlan, config: &Config) -> Vec<Check> {
    let state = agent.state_dir();
    let port_25 = front_address(config);
    vec![
        certificate(&state.join("tls"), &plan.hostname),
        within("open relay", SMTP_WITHIN, open_relay(port_25, plan)).await,
        off_runtime(queue, state.join("postfix/spool")).await,
        boxes(agent, plan).await,
        within(
            "probe mail",
            SMTP_WITHIN + PROBE_WITHIN,
            probe(port_25, plan, state),
        )
        .await,
    ]
}

/// `check`'s outcome, or a failure once `limit` has passed without one.
async fn within(
    what: &'static str,
    limit: Duration,
    check: impl std::future::Future<Output = Check>,
) -> Check {
    tokio::time::timeout(limit, check)
        .await
        .unwrap_or_else(|_| {
            Check::fail(
                what,
                format!("no answer within {} s", limit.as_secs()),
                "port 25 accepts but does not answer: see `logs front-postfix`",
            )
        })
}

/// Where strangers reach port 25: the first configured IPv4 address, or loopback.
fn front_address(config: &Config) -> SocketAddr {
    let ip = config
        .interfaces
        .iter()
        .find_map(|i| i.ipv4.first())
        .map_or(Ipv4Addr::LOCALHOST, |n| n.addr());
    SocketAddr::new(IpAddr::V4(ip), 25)
}

fn certificate(dir: &Path, hostname: &str) -> Check {
    let hint = "`restart front-postfix` and `restart front-dovecot` make a new one";
    let validity = match tls::certificate_validity(dir, &[hostname.to_string()]) {
        Ok(validity) => validity,
        Err(why) => return Check::fail("certificate", why.to_string(), hint),
    };
    // A restart replaces a CA's certificate only once it has expired: until then, renewing
    // it is the ACME unit's.
    let hint = if validity.self_signed {
        hint
    } else {
        "`logs acme` says why it is not renewed"
    };
    certificate_verdict(
        validity.not_before,
        validity.not_after,
        OffsetDateTime::from(SystemTime::now()),
        hint,
    )
}

fn certificate_verdict(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    hint: &str,
) -> Check {
    let date = |t: OffsetDateTime| t.date().to_string();
    if now < not_before {
        Check::fail(
            "certificate",
            format!("not valid before {}", date(not_before)),
            hint,
        )
    } else if now >= not_after {
        Check::fail(
            "certificate",
            format!("expired on {}", date(not_after)),
            hint,
        )
    } else if not_after - now < tls::RENEW_BEFORE_EXPIRY {
        Check::warn(
            "certificate",
            format!("expires on {}", date(not_after)),
            hint,
        )
    } else {
        Check::ok("certificate", format!("valid until {}", date(not_after)))
    }
}

/// Port 25 asked, as a stranger, to relay to another domain, plainly and in the `%`
/// form: both must be refused.
async fn open_relay(port_25: SocketAddr, plan: &MailPlan) -> Check {
    let hint = "the front relays for strangers: check [mail] in letterbox.toml";
    let hello = ClientId::Domain(format!("status.{}", plan.hostname));
    let mut connection = match AsyncSmtpConnection::connect_tokio1(
        port_25,
        Some(Duration::from_secs(5)),
        &hello,
        None,
        None,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                "open relay",
                format!("port 25 at {port_25} does not answer: {e}"),
                "see `logs front-postfix`",
            )
        }
    };
    let mut accepted = Vec::new();
    for to in [
        "relay-probe@example.net".to_string(),
        format!("relay-probe%example.net@{}", plan.domain),
    ] {
        let _ = connection.command("RSET\r\n").await;
        let mail = connection
            .command("MAIL FROM:<relay-probe@example.com>\r\n")
            .await;
        let rcpt = connection.command(format!("RCPT TO:<{to}>\r\n")).await;
        if mail.is_ok() && rcpt.is_ok() {
            accepted.push(to);
        }
    }
    connection.abort().await;
    if accepted.is_empty() {
        Check::ok(
            "open relay",
            format!("{port_25} refuses to relay for strangers"),
        )
    } else {
        Check::fail(
            "open relay",
            format!("{port_25} accepted {}", accepted.join(" and ")),
            hint,
        )
    }
}

/// The queue's length, and its oldest deferred message.
fn queue(spool: &Path) -> Check {
    let count = |dir: &str| files(&spool.join(dir));
    let deferred = count("deferred");
    let waiting = count("incoming").len() + count("active").len() + count("maildrop").len();
    let oldest = deferred
        .iter()
        .filter_map(|f| f.elapsed().ok())
        .max()
        .unwrap_or_default();
    let found = format!(
        "{waiting} message(s) on their way, {} deferred{}",
        deferred.len(),
        if deferred.is_empty() {
            String::new()
        } else {
            format!(", the oldest for {} min", oldest.as_secs() / 60)
        }
    );
    if oldest > OLD_DEFERRED {
        Check::warn("queue", found, "`logs front-postfix` says why they wait")
    } else {
        Check::ok("queue", found)
    }
}

/// The modification times of the files under `dir` (Postfix hashes its queues into
/// subdirectories).
fn files(dir: &Path) -> Vec<SystemTime> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            out.extend(files(&entry.path()));
        } else if let Ok(modified) = meta.modified() {
            out.push(modified);
        }
    }
    out
}

/// Every box's unit runs and its IMAP greets within two seconds.
async fn boxes(agent: &Agent, plan: &MailPlan) -> Check {
    let states: std::collections::HashMap<String, UnitState> =
        agent.supervisor().states().into_iter().collect();
    let mut sick = Vec::new();
    for b in &plan.boxes {
        let unit = format!("box-{}", b.name);
        match states.get(&unit) {
            Some(UnitState::Running { .. }) => {}
            Some(state) => {
                sick.push(format!("{unit} is {state}"));
                continue;
            }
            None => {
                sick.push(format!("{unit} does not exist"));
                continue;
            }
        }
        if !greets(SocketAddr::from((b.ipv4, BOX_IMAP_PORT))).await {
            sick.push(format!("{unit}'s IMAP does not answer"));
        }
    }
    if sick.is_empty() {
        Check::ok(
            "boxes",
            format!("{} running, each answering IMAP", plan.boxes.len()),
        )
    } else {
        Check::fail(
            "boxes",
            sick.join("; "),
            "`logs box-NAME`, then `restart box-NAME`",
        )
    }
}

/// Whether an IMAP server at `address` sends its greeting within two seconds.
async fn greets(address: SocketAddr) -> bool {
    use tokio::io::AsyncReadExt;
    let greeting = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"* OK"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), greeting).await,
        Ok(Some(true))
    )
}

/// Runs the file walk `check` on `dir` off the runtime: PID 1's tasks never wait on it.
async fn off_runtime(check: fn(&Path) -> Check, dir: std::path::PathBuf) -> Check {
    tokio::task::spawn_blocking(move || check(&dir))
        .await
        .unwrap_or_else(|e| Check::fail("queue", e.to_string(), "see the agent's log"))
}

/// A probe mail through port 25 into the first box, removed again once it has arrived:
/// it is looked for in new/ and cur/ (a mail client watching the INBOX moves it), among
/// the files made since it was sent.
async fn probe(port_25: SocketAddr, plan: &MailPlan, state: &Path) -> Check {
    let Some(b) = plan.boxes.first() else {
        return Check::ok("probe mail", "no account to send it to");
    };
    let hint = "`logs front-postfix`, then `logs box-NAME`";
    let started = std::time::Instant::now();
    let sent = SystemTime::now() - Duration::from_secs(1);
    let id = format!("probe.{}.{:x}", std::process::id(), rand());
    let message = match crate::mail::welcome::probe_message(plan, b, &id, SystemTime::now()) {
        Ok(m) => m,
        Err(e) => return Check::fail("probe mail", crate::error_chain(&e), hint),
    };
    if let Err(e) = crate::mail::welcome::send(message, port_25).await {
        return Check::fail("probe mail", crate::error_chain(&e), hint);
    }
    let maildir = state.join("mail").join(&b.name).join("Maildir");
    while started.elapsed() < PROBE_WITHIN {
        let (dirs, wanted) = ([maildir.join("new"), maildir.join("cur")], id.clone());
        let found = tokio::task::spawn_blocking(move || {
            dirs.iter()
                .find_map(|dir| maildir::find_by_message_id(dir, &wanted, sent))
        })
        .await
        .ok()
        .flatten();
        if let Some(file) = found {
            let _ = std::fs::remove_file(file);
            return Check::ok(
                "probe mail",
                format!(
                    "delivered to {} in {:.1} s",
                    b.address,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Check::fail(
        "probe mail",
        format!("not in {}'s box after {PROBE_WITHIN:?}", b.address),
        hint,
    )
}

fn rand() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::super::Level;
    use super::*;

    #[test]
    fn a_certificate_fails_when_expired_or_not_yet_valid_and_warns_within_a_month() {
        let day = time::Duration::days(1);
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let level = |from: time::Duration, to: time::Duration| {
            certificate_verdict(now + from, now + to, now, "").level
        };
        assert_eq!(level(-day * 10, day * 300), Level::Ok);
        assert_eq!(level(-day * 10, day * 10), Level::Warn);
        assert_eq!(level(-day * 10, -day), Level::Fail);
        assert_eq!(level(day, day * 300), Level::Fail);
    }
}
