//! The agent's box units: `box-<name>` for each account, Dovecot alone in a container of
//! its own, on the agent's bridge.
//!
//! Each waits for the `mail` unit to have imported the image, then makes sure of what its
//! box needs (the bridge, the TLS pair, its network namespace, its Maildir, its rendered
//! Dovecot files), starts its container and waits on its task. A task that exits fails the
//! unit, and the supervisor restarts it with backoff; a clock that cannot be trusted yet
//! (no TLS pair can be made) fails it the same way, with that reason. On stop the task is
//! killed and the container deleted. They start after `mail`, so they stop before it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::containers_unit::{find_program, MailImage, MailSettings, CONNECT_LIMIT};
use super::Agent;
use crate::containers::{spec, task, BoxFiles, Client, ContainersError, Imported, Placement};
use crate::mail::{dovecot, maildir, paths, tls, BoxPlan, MailPlan};
use crate::net::boxes::{self, BoxNet, BoxNetError, Bridge};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// The agent's bridge, whose address is the front's on the boxes' network.
pub const BRIDGE: &str = "lbbr0";
/// The image's `dovecot` group (overlays/mail/etc/group): Dovecot's auth process reads a
/// box's passwd-file as it.
const DOVECOT_GID: u32 = 101;
/// How often a box waiting for the image looks again.
const IMAGE_POLL: Duration = Duration::from_millis(200);
/// How long a box's Dovecot has to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    #[error(transparent)]
    Net(#[from] BoxNetError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Maildir(#[from] maildir::MaildirError),
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Containers(#[from] ContainersError),
    #[error("containerd has no runc in any of the --containerd-dir directories or PATH")]
    NoRunc,
    #[error("the box's task exited with status {0} (its log: {1})")]
    Exited(u32, String),
}

/// Everything a box unit needs, fixed when the agent starts its units.
#[derive(Debug, Clone)]
pub struct BoxSetup {
    pub plan: MailPlan,
    pub account: BoxPlan,
    pub bridge: Bridge,
    pub memory_limit: u64,
    pub state_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub socket: PathBuf,
    pub settings: MailSettings,
}

impl BoxSetup {
    fn dovecot_dir(&self) -> PathBuf {
        self.state_dir
            .join("boxes")
            .join(&self.account.name)
            .join("dovecot")
    }

    fn log(&self) -> PathBuf {
        self.state_dir
            .join("boxes")
            .join(&self.account.name)
            .join("box.log")
    }

    fn net(&self) -> BoxNet {
        // IPv6 to the boxes comes with the front; until then a box is reached over IPv4.
        BoxNet {
            name: self.account.name.clone(),
            ipv4: self.account.ipv4,
            ipv6: None,
        }
    }
}

/// The bridge of `plan`: the front's address in the boxes' network.
pub fn bridge(plan: &MailPlan, network: ipnet::Ipv4Net) -> Bridge {
    Bridge {
        name: BRIDGE.into(),
        ipv4: ipnet::Ipv4Net::new(plan.front_ipv4, network.prefix_len())
            .expect("the network's own prefix length"),
        ipv6_gateway: None,
    }
}

/// The `box-<name>` task unit.
pub fn unit(agent: Arc<Agent>, setup: BoxSetup) -> Unit {
    let name = spec::box_id(&setup.account);
    Unit::task(&name, move |stop| {
        run_box(agent.clone(), setup.clone(), stop)
    })
    .logs_from(&[module_path!()])
}

async fn run_box(agent: Arc<Agent>, setup: BoxSetup, mut stop: StopSignal) -> TaskResult {
    let image = tokio::select! {
        image = imported(&agent, &setup.account.name) => image,
        _ = stop.requested() => return Ok(()),
    };
    let prepared = tokio::select! {
        prepared = prepare(&setup, &image) => prepared?,
        _ = stop.requested() => return Ok(()),
    };
    let (client, id) = prepared;
    let name = setup.account.name.clone();
    let exited = tokio::select! {
        exit = task::wait_task(&client, &id) => Some(exit),
        _ = stop.requested() => None,
    };
    match exited {
        Some(exit) => {
            let exit = exit?;
            task::delete_container(&client, &id).await?;
            Err(BoxError::Exited(exit.status, setup.log().display().to_string()).into())
        }
        None => {
            stop_container(&client, &id).await;
            remove_net(&setup).await;
            log::info!("box {name} stopped");
            Ok(())
        }
    }
}

/// The image, once the `mail` unit has imported it; the wait is logged, so that a box
/// shown running but not answering says why (`logs box-<name>`).
async fn imported(agent: &Agent, name: &str) -> Imported {
    let mut logged = false;
    loop {
        if let MailImage::Imported(image) = agent.mail_image() {
            return image;
        }
        if !logged {
            log::info!("box {name} waits for the mail unit to import the image");
            logged = true;
        }
        tokio::time::sleep(IMAGE_POLL).await;
    }
}

/// Everything the box needs, then its container, created and started; the client and the
/// container's id.
async fn prepare(setup: &BoxSetup, image: &Imported) -> Result<(Client, String), BoxError> {
    let account = &setup.account;
    boxes::ensure_bridge(&setup.bridge).await?;
    let tls_dir = setup.state_dir.join("tls");
    tls::ensure_self_signed(&tls_dir, &setup.plan.hostname, SystemTime::now())?;
    let (netns, _) = boxes::ensure_box_netns(&setup.bridge, &setup.netns_dir, &setup.net()).await?;
    let home = maildir::ensure_maildir(&setup.state_dir.join("mail"), &account.name, account.id)?;
    let dovecot_dir = setup.dovecot_dir();
    write_dovecot_files(&setup.plan, account, &dovecot_dir)?;

    let runtime = spec::box_spec(
        account,
        &netns,
        &BoxFiles {
            dovecot_dir,
            tls_dir,
            home: home.path,
        },
        setup.memory_limit,
    )?;
    let client = Client::connect(&setup.socket, CONNECT_LIMIT).await?;
    let containerd = super::containers_unit::daemon(&setup.state_dir, &setup.settings);
    let placement = Placement {
        id: spec::box_id(account),
        image: image.name.clone(),
        chain_id: image.chain_id.clone(),
        runc: find_program("runc", &containerd.shim_dirs).ok_or(BoxError::NoRunc)?,
        runc_root: containerd.state.join("runc"),
    };
    // What a previous run left (the agent killed, containerd kept its state) goes first.
    stop_container(&client, &placement.id).await;
    task::create_container_with(&client, &placement, &runtime).await?;
    let started = task::start_task(&client, &placement.id, &setup.log()).await;
    match started {
        Ok(pid) => {
            log::info!(
                "box {} started (pid {pid}), LMTP and IMAP on {}",
                account.name,
                account.ipv4
            );
            Ok((client, placement.id))
        }
        Err(e) => {
            let _ = task::delete_container(&client, &placement.id).await;
            Err(e.into())
        }
    }
}

/// The box's `dovecot.conf` and `passwd` (root:dovecot, 0640), in a directory Dovecot
/// can read.
fn write_dovecot_files(plan: &MailPlan, account: &BoxPlan, dir: &Path) -> Result<(), BoxError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BoxError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(write_error(dir))?;
    let conf = dir.join(file_name(paths::DOVECOT_CONFIG));
    std::fs::write(&conf, dovecot::box_conf(plan, account)).map_err(write_error(&conf))?;
    let passwd = dir.join(file_name(paths::DOVECOT_PASSWD));
    std::fs::write(&passwd, dovecot::box_passwd(account)).map_err(write_error(&passwd))?;
    std::os::unix::fs::chown(&passwd, Some(0), Some(DOVECOT_GID)).map_err(write_error(&passwd))?;
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o640))
        .map_err(write_error(&passwd))
}

fn file_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a config file's path has a file name")
}

/// SIGTERM to the container's task, SIGKILL if it outlives [`STOP_LIMIT`], then the task,
/// container and snapshot deleted; what does not exist is skipped.
async fn stop_container(client: &Client, id: &str) {
    let sigterm = nix::sys::signal::Signal::SIGTERM as u32;
    let sigkill = nix::sys::signal::Signal::SIGKILL as u32;
    if task::kill_task(client, id, sigterm).await.is_ok()
        && tokio::time::timeout(STOP_LIMIT, task::wait_task(client, id))
            .await
            .is_err()
    {
        log::warn!("{id} outlived SIGTERM by {STOP_LIMIT:?}: killing it");
        if task::kill_task(client, id, sigkill).await.is_ok() {
            let _ = task::wait_task(client, id).await;
        }
    }
    if let Err(e) = task::delete_container(client, id).await {
        log::error!("{}", crate::error_chain(&e));
    }
}

async fn remove_net(setup: &BoxSetup) {
    if let Err(e) = boxes::remove_box_netns(&setup.netns_dir, &setup.net()).await {
        log::error!("{}", crate::error_chain(&e));
    }
}
