//! The agent's box units: `box-<name>` for each account, Dovecot alone in a container of
//! its own, on the agent's bridge.
//!
//! Each makes sure of what its box needs (the bridge, the TLS pair, its network namespace
//! with its IPv4 and routed IPv6 address, its Maildir, its rendered Dovecot files), then
//! runs its container (`mail_container::run`). A clock that cannot be trusted yet (no TLS
//! pair can be made) fails the unit like an exited task, with that reason. They start after
//! `mail`, so they stop before it.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;

use oci_spec::runtime::Spec;

use super::mail_container::{self, ContainerUnitError, Rendered, Site, DOVECOT_GID};
use super::Agent;
use crate::containers::{spec, BoxFiles};
use crate::mail::{dovecot, maildir, paths, BoxPlan, MailPlan};
use crate::net::boxes::{self, BoxNet, Bridge};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// The agent's bridge, whose address is the front's on the boxes' network.
pub const BRIDGE: &str = "lbbr0";
/// The boxes' IPv6 default gateway on the bridge: link-local, so no global prefix is spent
/// on the bridge.
const IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Everything a box unit needs, fixed when the agent starts its units.
#[derive(Debug, Clone)]
pub struct BoxSetup {
    pub plan: MailPlan,
    pub account: BoxPlan,
    pub bridge: Bridge,
    pub memory_limit: u64,
    pub netns_dir: PathBuf,
    pub site: Site,
}

impl BoxSetup {
    fn dir(&self) -> PathBuf {
        self.site.state_dir.join("boxes").join(&self.account.name)
    }

    fn net(&self) -> BoxNet {
        BoxNet {
            name: self.account.name.clone(),
            ipv4: self.account.ipv4,
            ipv6: self.account.ipv6,
        }
    }
}

/// The bridge of `plan`: the front's address in the boxes' network, and the boxes' IPv6
/// gateway when the host has IPv6.
pub fn bridge(plan: &MailPlan, network: ipnet::Ipv4Net) -> Bridge {
    Bridge {
        name: BRIDGE.into(),
        ipv4: ipnet::Ipv4Net::new(plan.front_ipv4, network.prefix_len())
            .expect("the network's own prefix length"),
        ipv6_gateway: plan.ipv6.then_some(IPV6_GATEWAY),
    }
}

/// The `box-<name>` task unit.
pub fn unit(agent: Arc<Agent>, setup: BoxSetup) -> Unit {
    let name = spec::box_id(&setup.account);
    Unit::task(&name, move |stop| {
        run_box(agent.clone(), setup.clone(), stop)
    })
    .logs_from(&[module_path!(), "letterbox::agent::mail_container"])
    .with_grace(mail_container::UNIT_GRACE)
}

async fn run_box(agent: Arc<Agent>, setup: BoxSetup, mut stop: StopSignal) -> TaskResult {
    let id = spec::box_id(&setup.account);
    let log = setup.dir().join("box.log");
    mail_container::run(&agent, &setup.site, &id, &log, &mut stop, prepare(&setup)).await?;
    if let Err(e) = boxes::remove_box_netns(&setup.netns_dir, &setup.net()).await {
        log::error!("{}", crate::error_chain(&e));
    }
    Ok(())
}

/// Everything the box needs, and its runtime spec.
async fn prepare(setup: &BoxSetup) -> Result<Spec, ContainerUnitError> {
    let account = &setup.account;
    let state_dir = &setup.site.state_dir;
    boxes::ensure_bridge(&setup.bridge).await?;
    let tls_dir = state_dir.join("tls");
    mail_container::ensure_tls(&tls_dir, &setup.plan.certificate_names)?;
    let (netns, _) = boxes::ensure_box_netns(&setup.bridge, &setup.netns_dir, &setup.net()).await?;
    let home = maildir::ensure_maildir(&state_dir.join("mail"), &account.name, account.id)?;
    let dovecot_dir = setup.dir().join("dovecot");
    mail_container::write_files(
        &dovecot_dir,
        &[
            Rendered {
                name: mail_container::file_name(paths::DOVECOT_CONFIG),
                text: dovecot::box_conf(&setup.plan, account),
                readable_by: None,
            },
            Rendered {
                name: mail_container::file_name(paths::DOVECOT_PASSWD),
                text: dovecot::box_passwd(account),
                readable_by: Some(DOVECOT_GID),
            },
        ],
    )?;
    log::info!(
        "box {}: LMTP and IMAP on {}{}",
        account.name,
        account.ipv4,
        setup
            .net()
            .ipv6
            .map(|v6| format!(", IMAP on {v6}"))
            .unwrap_or_default()
    );
    let files = BoxFiles {
        dovecot_dir,
        tls_dir,
        home: home.path,
    };
    Ok(spec::box_spec(account, &netns, &files, setup.memory_limit)?)
}
