//! The `milter` unit: the front's Postfix hands every message to it over a socket in the
//! directory the front's containers share (`mail::milter`), and it signs our outgoing
//! mail and checks incoming mail. The DKIM keys are made (or read) once the clock can be
//! trusted, then the zone is reloaded to publish them; until then (or when they cannot be
//! made) mail goes out unsigned.
//! Started before the front, so it stops after it. While it is down Postfix defers mail
//! (`milter_default_action = tempfail`): nothing passes unchecked or is lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::MessageAuthenticator;
use tokio::task::JoinSet;

use super::Agent;
use crate::mail::milter::keys;
use crate::mail::milter::own_zone::OwnZone;
use crate::mail::milter::policy::{self, Identity, Signers};
use crate::mail::milter::session::{self, Judge, Message, Verdict};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// How long one DNS question may take: Postfix waits for the milter's verdict, and a
/// failed lookup only makes a `temperror`.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// How many messages are judged at once; more wait their turn.
const JUDGED_AT_ONCE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("the milter socket {}", .path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the DKIM keys")]
    Keys(#[from] keys::KeyError),
    #[error("the DNS resolver for the mail checks")]
    Resolver(#[source] mail_auth::hickory_resolver::net::NetError),
}

/// The `milter` task unit, serving `socket` as `me`.
pub fn unit(agent: Arc<Agent>, socket: PathBuf, me: Identity) -> Unit {
    Unit::task("milter", move |stop| {
        serve(agent.clone(), socket.clone(), me.clone(), stop)
    })
    .logs_from(&[module_path!(), "letterbox::mail::milter"])
}

/// What each connection judges with.
struct Front {
    agent: Arc<Agent>,
    me: Identity,
    resolver: MessageAuthenticator,
    signers: ArcSwapOption<Signers>,
    judging: tokio::sync::Semaphore,
    /// Our zone's answers and the serial they were built from.
    own_zone: ArcSwapOption<(u32, OwnZone)>,
}

impl Front {
    /// Our zone's answers, built again only when the zone served changes (its serial
    /// does): building them parses every TXT record, which each message would pay for.
    fn own_zone(&self) -> Arc<(u32, OwnZone)> {
        let serial = self.agent.dns_serial();
        match (self.own_zone.load_full(), serial) {
            (Some(built), Some(serial)) if built.0 == serial => built,
            _ => {
                // The zone itself says which serial it has: it may have changed since.
                let built = Arc::new(match self.agent.dns_zone() {
                    Some(zone) => (zone.serial(), OwnZone::new(&zone)),
                    None => (0, OwnZone::default()),
                });
                self.own_zone.store(Some(built.clone()));
                built
            }
        }
    }
}

impl Judge for Front {
    async fn judge(&self, message: &Message) -> Verdict {
        let zone = self.own_zone();
        let signers = self.signers.load_full();
        // A few messages judged at once: each holds a copy and a parse of a message of up
        // to 10 MB, in PID 1's memory.
        let _permit = self.judging.acquire().await;
        policy::judge(
            &self.me,
            &self.resolver,
            &zone.1,
            signers.as_deref(),
            message,
        )
        .await
    }
}

async fn serve(
    agent: Arc<Agent>,
    socket: PathBuf,
    me: Identity,
    mut stop: StopSignal,
) -> TaskResult {
    let listener = super::maps_unit::bind(&socket).map_err(|source| MilterError::Socket {
        path: socket.clone(),
        source,
    })?;
    let front = Arc::new(Front {
        agent: agent.clone(),
        me,
        resolver: resolver()?,
        signers: ArcSwapOption::empty(),
        judging: tokio::sync::Semaphore::new(JUDGED_AT_ONCE),
        own_zone: ArcSwapOption::empty(),
    });
    log::info!("the milter (DKIM, SPF, DMARC) serves {}", socket.display());
    let mut keys = Box::pin(make_keys(front.clone()));
    let mut keys_done = false;
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    let front = front.clone();
                    clients.spawn(async move {
                        if let Err(e) = session::serve(&mut stream, &*front).await {
                            log::warn!("milter: {}", crate::error_chain(&e));
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    log::warn!("milter socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            made = &mut keys, if !keys_done => {
                // Without keys, mail still flows, unsigned: the unit keeps serving.
                if let Err(e) = made {
                    log::error!("DKIM: no signing: {}", crate::error_chain(&e));
                }
                keys_done = true;
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = stop.requested() => break,
        }
    }
    clients.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Once the clock can be trusted: the keys read or made, signing on, the zone reloaded
/// so that it publishes them.
async fn make_keys(front: Arc<Front>) -> Result<(), MilterError> {
    let agent = &front.agent;
    agent.clock().trusted().await;
    let state = agent.state_dir().to_path_buf();
    let year = time::OffsetDateTime::now_utc().year();
    let made = tokio::task::spawn_blocking(move || keys::load_or_generate(&state, year))
        .await
        .expect("the key task does not panic")?;
    log::info!(
        "DKIM: signing for {} with selectors {} and {}",
        front.me.domain,
        made.ed25519.0,
        made.rsa.0
    );
    front
        .signers
        .store(Some(Arc::new(Signers::new(made, &front.me.domain))));
    if let Err(e) = agent.reload_dns().await {
        log::warn!(
            "DKIM: the zone was not reloaded, the keys are published at its next load: {}",
            crate::error_chain(&e)
        );
    }
    Ok(())
}

/// The system's resolver (/etc/resolv.conf, which the agent writes from the
/// configuration's name servers), with short timeouts; without one, every outside
/// question fails and is recorded as `temperror`.
fn resolver() -> Result<MessageAuthenticator, MilterError> {
    let (config, mut options) = read_system_conf().unwrap_or_else(|e| {
        log::warn!("milter: no resolver configuration ({e}); outside checks give temperror");
        (ResolverConfig::default(), ResolverOpts::default())
    });
    options.timeout = DNS_TIMEOUT;
    options.attempts = 1;
    MessageAuthenticator::new(config, options).map_err(MilterError::Resolver)
}
