//! The running agent: the configuration in force, the supervisor of its units, and the
//! admin commands it executes, whichever way they arrive (serial console, control
//! socket, `letterbox ctl`).
//!
//! The agent owns the [`Supervisor`], so units can be started, stopped and restarted by
//! name while it runs. `init` builds it at boot; `console` and the control socket drive it.

pub mod accounts;
mod acme_unit;
mod boxes_unit;
mod clock_unit;
pub mod commands;
mod containers_unit;
pub mod control;
mod dns_unit;
mod front_unit;
mod health;
mod imap_tls_unit;
mod mail_container;
mod maps_unit;
mod milter_unit;
pub mod provisioning;
mod status;
mod webmail_unit;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::clock::ClockStatus;
use crate::dns::{DnsError, DnsHandle};
use crate::net::NetError;
use crate::supervise::{Supervisor, Unit};
use containers_unit::MailImage;
pub use containers_unit::MailSettings;
use provisioning::Provisioning;

/// Where the agent finds its files.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The provisioning file; `None` runs the embedded default.
    pub provisioning_file: Option<PathBuf>,
    /// Persistent state: the last good configuration, DKIM keys, the DNS serial.
    pub state_dir: PathBuf,
    /// Root under which /etc/hostname, /etc/hosts and /etc/resolv.conf are written.
    pub system_root: PathBuf,
    /// containerd and the mail image; `None`: no mail (`letterbox run` without
    /// `--mail-image`).
    pub mail: Option<MailSettings>,
}

/// Why the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Reboot,
    PowerOff,
}

impl Shutdown {
    pub fn describe(self) -> &'static str {
        match self {
            Shutdown::Reboot => "reboot",
            Shutdown::PowerOff => "power-off",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no valid configuration{}", .0.as_ref().map(|p| format!(":\n{p}")).unwrap_or_default())]
    NoConfig(Option<String>),
    #[error("the DNS server is not running (see `status` and `logs dns`)")]
    DnsNotRunning,
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the {0} task failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

pub struct Agent {
    settings: Settings,
    provisioning: Mutex<Provisioning>,
    supervisor: Supervisor,
    started: Instant,
    shutdown: mpsc::UnboundedSender<Shutdown>,
    /// The DNS server's zone switch, while the DNS unit runs.
    dns: Mutex<Option<DnsHandle>>,
    /// Where the `mail` unit stands with the image.
    mail_image: Mutex<MailImage>,
    /// The accounts whose boxes the agent runs: what the front's routing tables answer.
    mail_plan: Mutex<Option<Arc<crate::mail::MailPlan>>>,
    /// Where the mail units run, once started: what a new account's box needs.
    mail_site: Mutex<Option<accounts::MailSite>>,
    /// Account commands run one at a time.
    accounts: tokio::sync::Mutex<()>,
    /// Whether the clock can be trusted yet, and from where it was set.
    clock: ClockStatus,
    /// Set once the units are being stopped for good: a unit stopping then is not
    /// restarting.
    shutting_down: AtomicBool,
}

impl Agent {
    /// The agent, and where its shutdown requests arrive.
    pub fn new(
        settings: Settings,
        provisioning: Provisioning,
        supervisor: Supervisor,
    ) -> (Arc<Agent>, mpsc::UnboundedReceiver<Shutdown>) {
        let (shutdown, requests) = mpsc::unbounded_channel();
        let agent = Agent {
            settings,
            provisioning: Mutex::new(provisioning),
            supervisor,
            started: Instant::now(),
            shutdown,
            dns: Mutex::new(None),
            mail_image: Mutex::new(MailImage::WaitingForContainerd),
            mail_plan: Mutex::new(None),
            mail_site: Mutex::new(None),
            accounts: tokio::sync::Mutex::new(()),
            clock: ClockStatus::new(clock_unit::initial_state()),
            shutting_down: AtomicBool::new(false),
        };
        (Arc::new(agent), requests)
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Starts a unit; the agent's own units are started once, so a clash is a bug.
    pub fn start_unit(&self, unit: Unit) {
        if let Err(e) = self.supervisor.start(unit) {
            log::error!("{e}");
        }
    }

    /// The clock, as a unit: started before DNS and mail, so it is stopped after them and
    /// saves the time last.
    pub fn start_clock(self: &Arc<Self>) {
        self.start_unit(clock_unit::unit(self.clone()));
    }

    /// Whether the clock can be trusted yet: what stamps or judges times (certificates,
    /// ACME, DKIM) waits for it.
    pub fn clock(&self) -> &ClockStatus {
        &self.clock
    }

    /// The authoritative DNS server, as a unit.
    pub fn start_dns(self: &Arc<Self>) {
        self.start_unit(dns_unit::unit(self.clone()));
    }

    /// containerd, then the `mail` unit that imports the image into it, then the front's
    /// routing, milter, IMAP TLS and two container units, the webmail's, and a
    /// `box-<name>` unit per account of the configuration in force, in the plan's order;
    /// nothing without mail settings.
    pub fn start_containers(self: &Arc<Self>) {
        let Some(mail) = self.settings.mail.clone() else {
            return;
        };
        let state_dir = self.settings.state_dir.clone();
        let socket = containers_unit::daemon(&state_dir, &mail).socket;
        let image = mail.image.clone();
        self.start_unit(containers_unit::containerd_unit(
            state_dir.clone(),
            mail.clone(),
        ));
        self.start_unit(containers_unit::mail_unit(
            self.clone(),
            socket.clone(),
            image,
        ));
        let Some((config, _)) = self.provisioning().config else {
            return;
        };
        let plan = crate::mail::MailPlan::from(&config);
        self.set_mail_plan(plan.clone());
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let site = mail_container::Site {
            state_dir: absolute(&state_dir),
            socket,
            settings: mail.clone(),
        };
        *self.mail_site.lock().expect("mail site") = Some(accounts::MailSite {
            site: site.clone(),
            netns_dir: absolute(&mail.netns_dir),
        });
        let front = front_unit::FrontSetup {
            plan: plan.clone(),
            site: site.clone(),
        };
        let maps = site
            .state_dir
            .join(front_unit::SOCKETS)
            .join(crate::mail::paths::MAPS_SOCKET);
        self.start_unit(maps_unit::unit(self.clone(), maps));
        let milter = site
            .state_dir
            .join(front_unit::SOCKETS)
            .join(crate::mail::paths::MILTER_SOCKET);
        let me = crate::mail::milter::policy::Identity {
            hostname: plan.hostname.clone(),
            domain: plan.domain.clone(),
        };
        self.start_unit(milter_unit::unit(self.clone(), milter, me));
        self.start_unit(imap_tls_unit::unit(site.state_dir.join("tls")));
        for unit in front_unit::units(self.clone(), front) {
            self.start_unit(unit);
        }
        let webmail = config.webmail.enabled && mail.webmail_image.is_some();
        if let Some(acme) = config.tls.acme.clone() {
            let setup = acme_unit::AcmeSetup {
                acme,
                names: config.webmail.certificate_names(&config.system),
                state_dir: site.state_dir.clone(),
                containerd: site.socket.clone(),
                webmail,
            };
            self.start_unit(acme_unit::unit(self.clone(), setup));
        }
        if config.webmail.enabled {
            match &mail.webmail_image {
                Some(image) => {
                    let setup = webmail_unit::WebmailSetup {
                        plan: crate::webmail::WebmailPlan::from(&config),
                        site: site.clone(),
                        image: image.clone(),
                        netns_dir: absolute(&mail.netns_dir),
                    };
                    self.start_unit(webmail_unit::unit(self.clone(), setup));
                }
                None => log::warn!(
                    "webmail: enabled in the file, but there is no webmail image here \
                     (an SD image carries it when built from a file that enables it)"
                ),
            }
        }
        let bridge = boxes_unit::bridge(&plan, config.containers.ipv4);
        for account in &plan.boxes {
            let setup = boxes_unit::BoxSetup {
                plan: plan.clone(),
                account: account.clone(),
                bridge: bridge.clone(),
                memory_limit: config.containers.memory_limit,
                netns_dir: absolute(&mail.netns_dir),
                site: site.clone(),
            };
            self.start_unit(boxes_unit::unit(self.clone(), setup));
        }
    }

    /// The control socket at `path`, as a unit.
    pub fn start_control_socket(self: &Arc<Self>, path: PathBuf) {
        self.start_unit(control::unit(self.clone(), path));
    }

    /// The configuration in force and the provisioning file's problem, if any.
    pub fn provisioning(&self) -> Provisioning {
        self.provisioning.lock().expect("provisioning").clone()
    }

    /// Re-reads the provisioning file (`check`); a valid file takes effect for the
    /// console at once and for the network at the next `net` or boot.
    pub fn reload(&self) -> Provisioning {
        let fresh = provisioning::read(
            self.settings.provisioning_file.as_deref(),
            &self.settings.state_dir,
        );
        *self.provisioning.lock().expect("provisioning") = fresh.clone();
        fresh
    }

    /// [`Agent::reload`] on the blocking pool: it reads the FAT partition and fsyncs.
    pub async fn reload_off_runtime(self: &Arc<Self>) -> Result<Provisioning, AgentError> {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || agent.reload())
            .await
            .map_err(|e| AgentError::Task("check", e))
    }

    /// Stops every unit, last started first, for a reboot or power-off.
    pub async fn stop_units(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.supervisor.stop_all().await;
    }

    /// Whether the agent is stopping its units for good (not restarting one).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn request_shutdown(&self, how: Shutdown, via: commands::Via) {
        log::info!("{} requested from {via}", how.describe());
        let _ = self.shutdown.send(how);
    }

    /// Takes each of the agent's locks once, for the main loop's watchdog heartbeat: a
    /// deadlock on the agent's state stops the petting, and the board resets.
    pub fn heartbeat(&self) {
        drop(self.provisioning.lock());
        drop(self.dns.lock());
        drop(self.mail_image.lock());
        drop(self.mail_plan.lock());
        drop(self.mail_site.lock());
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }

    fn set_dns(&self, handle: Option<DnsHandle>) {
        *self.dns.lock().expect("dns handle") = handle;
    }

    fn set_mail_plan(&self, plan: crate::mail::MailPlan) {
        *self.mail_plan.lock().expect("mail plan") = Some(Arc::new(plan));
    }

    /// The accounts whose boxes run, if the mail system runs.
    fn mail_plan(&self) -> Option<Arc<crate::mail::MailPlan>> {
        self.mail_plan.lock().expect("mail plan").clone()
    }

    fn set_mail_image(&self, state: MailImage) {
        *self.mail_image.lock().expect("mail image") = state;
    }

    fn mail_image(&self) -> MailImage {
        self.mail_image.lock().expect("mail image").clone()
    }

    /// The zone the DNS server is serving, if it runs.
    fn dns_zone(&self) -> Option<crate::dns::Zone> {
        let handle = self.dns.lock().expect("dns handle").clone();
        handle.map(|h| h.zone())
    }

    /// The serial the DNS server is serving, if it runs.
    pub fn dns_serial(&self) -> Option<u32> {
        self.dns
            .lock()
            .expect("dns handle")
            .as_ref()
            .map(|h| h.serial())
    }

    /// Re-reads the provisioning file and serves its zone without a restart (`dns
    /// reload`, SIGHUP). Returns what happened, as text. The reading, zone building and
    /// serial fsync run on the blocking pool, off the runtime's workers.
    pub async fn reload_dns(self: &Arc<Self>) -> Result<String, AgentError> {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || agent.reload_dns_blocking())
            .await
            .map_err(|e| AgentError::Task("DNS reload", e))?
    }

    fn reload_dns_blocking(&self) -> Result<String, AgentError> {
        let p = self.reload();
        let Some((cfg, source)) = p.config else {
            return Err(AgentError::NoConfig(p.problem));
        };
        let handle = self.dns.lock().expect("dns handle").clone();
        let handle = handle.ok_or(AgentError::DnsNotRunning)?;
        let serial = handle.reload(&cfg)?;
        let mut out = String::new();
        if let Some(problem) = p.problem {
            out.push_str(&problem);
            out.push('\n');
        }
        out.push_str(&format!(
            "zone {} from {source}: serving serial {serial}",
            cfg.system.domain
        ));
        Ok(out)
    }

    /// Applies the network of the configuration in force; the report, as text.
    pub async fn apply_network(&self) -> Result<String, AgentError> {
        let Some((cfg, _)) = self.provisioning().config else {
            return Err(AgentError::NoConfig(None));
        };
        let report = crate::net::apply(&cfg, &self.settings.system_root).await?;
        Ok(report.to_string())
    }
}
