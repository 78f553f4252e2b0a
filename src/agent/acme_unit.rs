//! The `acme` unit (`[tls] acme = true`): keeps the mail's certificate issued by the ACME
//! CA. Once the clock can be trusted it orders a certificate for `<hostname>.<domain>` and,
//! with the webmail on, `<domain>` and `mail.<domain>` (the self-signed one serves until
//! then), answers the CA's DNS-01 challenges from our own zone, installs the issued pair in
//! `STATE/tls`, and has the front's Postfix, every box's Dovecot (which serves IPv6 clients
//! itself) and the webmail's nginx reload it with SIGHUP to their masters, so that open
//! connections carry on. The front's IMAP needs no signal: the agent ends its TLS, and
//! reads the new pair at the next handshake (`mail::imap_tls`). It renews 30 days before expiry (a third of the
//! lifetime before, for shorter-lived certificates), and retries a failure with backoff,
//! each time logging why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::Agent;
use crate::config::Acme;
use crate::containers::spec::{self, FRONT_POSTFIX, WEBMAIL_NGINX};
use crate::containers::{task, Client};
use crate::mail::{acme, tls};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// How often the certificate's dates are looked at again, at most: a clock stepped
/// forward, or a certificate replaced by hand, is noticed within this.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// The first retry after a failure; each further one waits twice as long, up to
/// [`RETRY_MAX`] (Let's Encrypt limits failed validations to 5 an hour). Also the least
/// time between two orders that succeed, whatever the certificates' dates say.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// How long one order may take, from the account to the reload: a CA that stops answering
/// mid-way (instant-acme's requests have no time limit of their own) counts as a failure.
const ORDER_LIMIT: Duration = Duration::from_secs(10 * 60);
/// How long containerd gets to be reached for the reload.
const SIGNAL_LIMIT: Duration = Duration::from_secs(10);

/// What the unit needs, fixed when the agent starts its units.
#[derive(Debug, Clone)]
pub struct AcmeSetup {
    pub acme: Acme,
    /// The names certified, `<hostname>.<domain>` first
    /// (`config::Webmail::certificate_names`).
    pub names: Vec<String>,
    pub state_dir: PathBuf,
    /// containerd's socket, to signal the containers that serve the certificate.
    pub containerd: PathBuf,
    /// Whether the webmail's nginx runs, and so serves the certificate too.
    pub webmail: bool,
}

impl AcmeSetup {
    fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
}

pub fn unit(agent: Arc<Agent>, setup: AcmeSetup) -> Unit {
    Unit::task("acme", move |stop| run(agent.clone(), setup.clone(), stop))
        .logs_from(&[module_path!(), "letterbox::mail::acme"])
}

async fn run(agent: Arc<Agent>, setup: AcmeSetup, mut stop: StopSignal) -> TaskResult {
    tokio::select! {
        () = keep_certified(agent, setup) => Ok(()),
        _ = stop.requested() => Ok(()),
    }
}

async fn keep_certified(agent: Arc<Agent>, setup: AcmeSetup) {
    withdraw_left_over_answers(&agent).await;
    agent.clock().trusted().await;
    let mut retry = RETRY_FIRST;
    let mut announced = None;
    loop {
        let (dir, names) = (setup.tls_dir(), setup.names.clone());
        let due = tokio::task::spawn_blocking(move || tls::acme_renewal_due(&dir, &names))
            .await
            .unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        if let Some(due) = due {
            if due > now {
                if announced != Some(due) {
                    log::info!("ACME: the certificate is renewed from {due}");
                    announced = Some(due);
                }
                let until_due = Duration::try_from(due - now).unwrap_or_default();
                tokio::time::sleep(until_due.min(CHECK_EVERY)).await;
                continue;
            }
        }
        let outcome = match tokio::time::timeout(ORDER_LIMIT, certify(&agent, &setup)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The order was dropped where it stood, perhaps with its answer published.
                withdraw_answers(&agent).await;
                Err(format!("no end to the order within {} s", ORDER_LIMIT.as_secs()).into())
            }
        };
        match outcome {
            Ok(()) => {
                retry = RETRY_FIRST;
                tokio::time::sleep(RETRY_FIRST).await;
            }
            Err(e) => {
                log::error!(
                    "ACME: no certificate for {} from {}: {}; trying again in {} s",
                    setup.names.join(", "),
                    setup.acme.directory,
                    crate::error_chain(&*e),
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One order, from the account to the reload of what serves the certificate.
async fn certify(
    agent: &Arc<Agent>,
    setup: &AcmeSetup,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let account = acme::account(&setup.state_dir, &setup.acme).await?;
    let names = setup.names.join(", ");
    log::info!("ACME: ordering a certificate for {names}");
    let publish = |answers| publish(agent.clone(), answers);
    let issued = acme::order(&account, &setup.acme.directory, &setup.names, publish).await?;
    let (dir, wanted) = (setup.tls_dir(), setup.names.clone());
    let validity = tokio::task::spawn_blocking(move || {
        tls::install_issued(&dir, &wanted, &issued.chain_pem, &issued.key_pem)
            .map(|()| tls::certificate_validity(&dir, &wanted))
    })
    .await??;
    match validity {
        Ok(validity) => log::info!(
            "ACME: installed a certificate for {names} valid until {}",
            validity.not_after
        ),
        Err(why) => log::warn!("ACME: the installed certificate does not read back: {why}"),
    }
    reload_servers(agent, setup).await;
    Ok(())
}

/// Puts `answers` in our zone (`STATE/acme/challenge`), served once this returns; an empty
/// list takes the earlier ones out.
async fn publish(agent: Arc<Agent>, answers: Vec<crate::dns::AcmeAnswer>) -> Result<(), String> {
    let state = agent.state_dir().to_path_buf();
    tokio::task::spawn_blocking(move || crate::dns::write_acme_challenges(&state, &answers))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| crate::error_chain(&e))?;
    agent
        .reload_dns()
        .await
        .map(|_| ())
        .map_err(|e| crate::error_chain(&e))
}

/// Takes out of the zone the DNS-01 answers an order cut short (a power cut, a stop) left
/// in `STATE/acme/challenge`: no order runs yet. A DNS server not yet started reads the
/// zone without them.
async fn withdraw_left_over_answers(agent: &Arc<Agent>) {
    let state = agent.state_dir().to_path_buf();
    let removed = tokio::task::spawn_blocking(move || {
        let left = state.join(crate::dns::ACME_CHALLENGE_FILE).exists();
        crate::dns::write_acme_challenges(&state, &[]).map(|()| left)
    })
    .await;
    match removed {
        Ok(Ok(false)) => {}
        Ok(Ok(true)) => match agent.reload_dns().await {
            Ok(_) | Err(super::AgentError::DnsNotRunning) => {
                log::info!("ACME: withdrew a DNS-01 answer an earlier order left published")
            }
            Err(e) => log::warn!(
                "ACME: a DNS-01 answer an earlier order left is still served: {}",
                crate::error_chain(&e)
            ),
        },
        Ok(Err(e)) => log::warn!(
            "ACME: a DNS-01 answer an earlier order left is still published: {}",
            crate::error_chain(&e)
        ),
        Err(e) => log::warn!("ACME: the DNS-01 answers were not looked at: {e}"),
    }
}

/// Takes any DNS-01 answer out of the zone, logging why when it cannot.
async fn withdraw_answers(agent: &Arc<Agent>) {
    if let Err(why) = publish(agent.clone(), Vec::new()).await {
        log::warn!("ACME: the DNS-01 answer was not withdrawn: {why}");
    }
}

/// SIGHUP to the masters of the front's Postfix, of each box's Dovecot (the
/// boxes of the accounts in force; each binds STATE/tls and serves 993 and 143 to IPv6
/// clients) and of the webmail's nginx: each reloads its configuration and certificate,
/// and its running processes finish their connections with the old one. A container that
/// is not running reads the new pair when it starts.
async fn reload_servers(agent: &Arc<Agent>, setup: &AcmeSetup) {
    let hangup = nix::sys::signal::Signal::SIGHUP as u32;
    let client = match Client::connect(&setup.containerd, SIGNAL_LIMIT).await {
        Ok(client) => client,
        Err(e) => {
            log::warn!(
                "ACME: containerd not reached, the front and the boxes read the certificate \
                 at their next start: {}",
                crate::error_chain(&e)
            );
            return;
        }
    };
    let boxes = agent.mail_plan().map_or_else(Vec::new, |plan| {
        plan.boxes.iter().map(spec::box_id).collect::<Vec<_>>()
    });
    let mut servers = vec![FRONT_POSTFIX.to_string()];
    servers.extend(setup.webmail.then(|| WEBMAIL_NGINX.to_string()));
    for id in servers.iter().chain(&boxes) {
        match task::kill_task(&client, id, hangup, false).await {
            Ok(()) => log::info!("ACME: {id} reloads the certificate"),
            Err(e) => log::warn!(
                "ACME: {id} not signalled, it reads the certificate at its next start: {}",
                crate::error_chain(&e)
            ),
        }
    }
}
